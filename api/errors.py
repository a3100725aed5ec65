"""Domain errors and the one table that maps them (and the core's errors) to HTTP statuses."""

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match

from neural_net.errors import NeuralNetError

log = logging.getLogger("api")


class ServiceError(Exception):
    """Base of the errors the service layer raises; the message is shown to the client."""


class ModelNotFound(ServiceError):
    def __init__(self, model_id: str):
        super().__init__(f"model {model_id!r} does not exist; list models with GET /models or create it with POST /models")


class ModelVersionNotFound(ServiceError):
    """The model exists, but not at the version asked for (or that version is not kept)."""


class JobNotFound(ServiceError):
    def __init__(self, job_id: str):
        super().__init__(f"training job {job_id!r} does not exist; list a model's jobs with GET /models/{{model_id}}/jobs")


class VersionNotFound(ModelVersionNotFound):
    def __init__(self, model_id: str, version: int):
        super().__init__(f"model {model_id!r} has no version {version} (never made, or pruned: NN_KEEP_VERSIONS); "
                         f"GET /models/{model_id}/versions lists the kept ones")


class NoJobs(ServiceError):
    def __init__(self, model_id: str):
        super().__init__(f"model {model_id!r} has no training jobs yet; start one with POST /models/{model_id}/training-jobs")


class ModelExists(ServiceError):
    def __init__(self, model_id: str):
        super().__init__(f"model {model_id!r} already exists; choose another model_id or DELETE /models/{model_id} first")


class ModelBusy(ServiceError):
    """The model is being trained, so its weights cannot be replaced now."""


class VersionConflict(ServiceError):
    """The client's idea of the model version is out of date."""


class PreconditionFailed(ServiceError):
    """If-Match names a model version that is no longer current."""


class JobNotCancellable(ServiceError):
    """The job already finished."""


class InvalidInput(ServiceError):
    """Well-formed JSON whose values do not fit the model or the settings."""


class PayloadTooLarge(ServiceError):
    """A request exceeds a size limit from the settings."""


class StoreUnavailable(ServiceError):
    """The shared store (Redis) cannot be reached; the request may be retried."""


class LeaseLost(ServiceError):
    """A worker's lease on its job expired (backend=redis); another worker may own the job, so it writes nothing."""


STATUS_BY_ERROR: dict[type[Exception], int] = {
    ModelNotFound: 404,
    ModelVersionNotFound: 404,
    JobNotFound: 404,
    NoJobs: 404,
    ModelExists: 409,
    ModelBusy: 409,
    VersionConflict: 409,
    PreconditionFailed: 412,
    JobNotCancellable: 409,
    InvalidInput: 422,
    PayloadTooLarge: 413,
    StoreUnavailable: 503,
    NeuralNetError: 422,  # ShapeError, UnknownNameError, NonFiniteError, ConfigError
}


V2_STATUS = {422: 400}  # the Open Inference Protocol answers a bad request with 400


def is_v2(path: str) -> bool:
    """Paths of the Open Inference Protocol (api/routes/v2.py), whose errors are ``{"error": "..."}``."""
    return path == "/v2" or path.startswith("/v2/")


def error_response(path: str, status: int, message: str, headers: dict | None = None, **extra) -> JSONResponse:
    """``{"detail": message, **extra}``, or on /v2 ``{"error": message}`` with the protocol's status."""
    if is_v2(path):
        return JSONResponse({"error": message}, status_code=V2_STATUS.get(status, status), headers=headers)
    return JSONResponse({"detail": message, **extra}, status_code=status, headers=headers)


def status_for(exc: Exception) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


async def handle_error(request: Request, exc: Exception) -> JSONResponse:
    status = status_for(exc)
    if status == 500:
        log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(request.url.path, 500, "internal error; the server log has the details")
    return error_response(request.url.path, status, str(exc))


def _describe(error: dict) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()))
    if error.get("type") == "extra_forbidden":
        return f"{where}: unknown field; check its spelling against the schema in /docs"
    return f"{where}: {error.get('msg', 'invalid value')}"


async def handle_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """Pydantic's errors as one readable sentence, the raw list kept under ``errors``."""
    errors = list(exc.errors())
    shown = "; ".join(_describe(e) for e in errors[:5])
    if len(errors) > 5:
        shown += f"; and {len(errors) - 5} more"
    raw = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors[:20]]
    return error_response(request.url.path, 422, shown, errors=raw)


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> list[str]:
    """The methods of the documented path that fits best (fewest parameters: /models/import before
    /models/{model_id}); for undocumented pages, those of any route that matches."""
    path = request.url.path
    best = None
    for template, operations in request.app.openapi().get("paths", {}).items():
        if re.fullmatch(re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template)), path):
            n_params = template.count("{")
            if best is None or n_params < best[0]:
                best = (n_params, [m.upper() for m in operations if m.upper() in METHODS])
    if best is not None:
        return best[1]
    return [method for method in METHODS if any(isinstance(route, BaseRoute) and
            route.matches({**request.scope, "method": method})[0] == Match.FULL for route in request.app.routes)]


async def handle_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own errors (404 no route, 405) as ``{"detail"}``; a 405 lists every method the path
    supports in ``Allow`` (Starlette names only those of the first route that matched the path)."""
    headers = dict(exc.headers or {})
    detail = exc.detail
    if exc.status_code == 405:
        allowed = _allowed_methods(request)
        headers["Allow"] = ", ".join(allowed)
        detail = f"{request.method} is not allowed on {request.url.path}; use {', '.join(allowed)}"
    if exc.status_code == 400:  # FastAPI's "error parsing the body": not UTF-8 or not decodable; 422 like other bad input
        return error_response(request.url.path, 422, "the request body could not be parsed: send UTF-8 JSON "
                                                     "(Content-Type: application/json) as in the examples of /docs")
    return error_response(request.url.path, exc.status_code, detail, headers=headers or None)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
    app.add_exception_handler(ServiceError, handle_error)
    app.add_exception_handler(NeuralNetError, handle_error)
    app.add_exception_handler(Exception, handle_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
