"""Domain errors and the one table that maps them (and the core's errors) to HTTP statuses."""

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
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
        super().__init__(f"job {job_id!r} does not exist; list jobs with GET /jobs (GET /jobs?model_id=... for "
                         "one model's)")


class VersionNotFound(ModelVersionNotFound):
    def __init__(self, model_id: str, version: int):
        super().__init__(f"model {model_id!r} has no version {version} (never made, or pruned: NN_KEEP_VERSIONS); "
                         f"GET /models/{model_id}/versions lists the kept ones")


class NoJobs(ServiceError):
    def __init__(self, model_id: str):
        super().__init__(f"model {model_id!r} has no training jobs yet; start one with POST /models/{model_id}/training-jobs")


class DatasetNotFound(ServiceError):
    def __init__(self, dataset_id: str, named: list[str] | None = None):
        if named:  # the caller gave a name (?name= of the upload) where an id belongs
            super().__init__(f"dataset {dataset_id!r} does not exist; {dataset_id!r} is the name of dataset "
                             f"{' and '.join(map(repr, named[:3]))}: give its dataset_id")
        else:
            super().__init__(f"dataset {dataset_id!r} does not exist; list datasets with GET /datasets or upload one "
                             "with POST /datasets")


class DatasetExists(ServiceError):
    def __init__(self, dataset_id: str):
        super().__init__(f"dataset {dataset_id!r} already exists; choose another dataset_id or DELETE "
                         f"/datasets/{dataset_id} first")


class DatasetInUse(ServiceError):
    """A training or search job still reads the dataset."""


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


class UnsupportedEncoding(ServiceError):
    """A request body compressed in a way the route cannot read; ``accept`` lists the codings it reads."""

    def __init__(self, message: str, accept: str):
        super().__init__(message)
        self.headers = {"Accept-Encoding": accept}  # RFC 7694: what the server would have read


class FeatureUnavailable(ServiceError):
    """An optional part of the service is not installed (its message says which extra to install)."""


class StoreUnavailable(ServiceError):
    """The store cannot be used: Redis cannot be reached (the request may be retried), or the SQLite
    database is unreadable or damaged (the message says how to recover)."""


class TooManyStreams(ServiceError):
    """Every event-stream slot (NN_MAX_STREAMS) of this process is taken; retry after `retry_after` seconds."""

    def __init__(self, limit: int, retry_after: int = 5):
        super().__init__(f"{limit} event streams are open on this server (NN_MAX_STREAMS); retry in {retry_after} s, "
                         "or poll GET /jobs/{job_id} instead")
        self.retry_after = retry_after


class LeaseLost(ServiceError):
    """A worker's lease on its job expired (backend=redis); another worker may own the job, so it writes nothing."""


CLIENT_CLOSED = 499  # nginx's "client closed request": counted in /metrics apart from the server's own errors

STATUS_BY_ERROR: dict[type[Exception], int] = {
    ModelNotFound: 404,
    ModelVersionNotFound: 404,
    JobNotFound: 404,
    NoJobs: 404,
    DatasetNotFound: 404,
    DatasetExists: 409,
    DatasetInUse: 409,
    ModelExists: 409,
    ModelBusy: 409,
    VersionConflict: 409,
    PreconditionFailed: 412,
    JobNotCancellable: 409,
    InvalidInput: 422,
    PayloadTooLarge: 413,
    UnsupportedEncoding: 415,
    FeatureUnavailable: 501,
    StoreUnavailable: 503,
    TooManyStreams: 503,
    NeuralNetError: 422,  # ShapeError, UnknownNameError, NonFiniteError, ConfigError
    ClientDisconnect: CLIENT_CLOSED,  # the client hung up while its body was read: nobody reads the answer
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
    if status == CLIENT_CLOSED:  # what it sent is dropped (uploads are removed); the answer goes nowhere
        log.info("%s %s: the client closed the connection before its body was read", request.method, request.url.path)
    headers = dict(getattr(exc, "headers", None) or {})
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return error_response(request.url.path, status, str(exc), headers=headers or None)


# A union member's tag in pydantic's error locations, e.g. 'list[list[float]]' in body.targets.list[list[float]].0
_UNION_TAG = re.compile(r"[\[\]-]|^(int|float|str|bool|list|dict|none)$")
_NUMBER_ERRORS = {"float_type": "a number", "float_parsing": "a number", "int_type": "a whole number",
                  "int_parsing": "a whole number", "int_from_float": "a whole number"}
NO_BODY = "the request has no body; send a JSON object with Content-Type: application/json, as in the examples of /docs"
FLAT_INPUTS = "inputs is a list of rows, e.g. [[1, 2, 3, 4]]; for a single vector use input"
NESTED_INPUT = "input is a single vector, e.g. [1, 2, 3, 4]; for rows use inputs"
BOOLEAN_TARGETS = ("targets hold true/false; send numbers: class indices (e.g. [0, 1, 1]) or values, "
                   "with 1 for true and 0 for false")


def _clean(loc) -> list:
    """The location without 'body' and without union tags: ['inputs', 0, 1]."""
    parts = list(loc)[1:] if loc and loc[0] in ("body", "query", "path", "header") else list(loc)
    return [p for p in parts if not (isinstance(p, str) and _UNION_TAG.search(p))]


def _where(loc) -> str:
    """'inputs[0][1]', 'layers[2].units'."""
    text = ""
    for part in _clean(loc):
        text += f"[{part}]" if isinstance(part, int) else ("." if text else "") + str(part)
    return text or "body"


def _received(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"the text {value[:40]!r}" + ("..." if len(value) > 40 else "")
    if value is None:
        return "null"
    return {list: "a list", dict: "an object"}.get(type(value), repr(value))


def _one_branch(errors: list[dict]) -> list[dict]:
    """For a field that takes one of several shapes (targets: rows, or one number per sample), keep the
    errors of the shape the value came closest to: the deepest one, leaf mistakes before wrong nesting."""
    kept, branches = [], {}
    for error in errors:
        loc = tuple(error.get("loc", ()))
        at = next((i for i, p in enumerate(loc) if isinstance(p, str) and _UNION_TAG.search(p)), None)
        if at is None:
            kept.append(error)
        else:
            branches.setdefault(loc[:at], []).append(error)
    for prefix, group in branches.items():
        best = max(group, key=lambda e: (len(e["loc"]), e.get("type") not in ("list_type", "dict_type", "model_type")))
        kept.extend(e for e in group if e["loc"][len(prefix)] == best["loc"][len(prefix)])
    return kept


def _describe(error: dict) -> str:
    kind, value, where = error.get("type"), error.get("input"), _where(error.get("loc", ()))
    field = (_clean(error.get("loc", ())) or ["body"])[0]
    if kind == "missing" and where == "body":  # was "body: Field required", for an empty body too
        return NO_BODY
    if kind == "extra_forbidden":
        return f"{where}: unknown field; check its spelling against the schema in /docs"
    if field == "inputs" and kind == "list_type" and isinstance(value, (int, float, str)):
        return FLAT_INPUTS
    if field == "input" and kind in _NUMBER_ERRORS and isinstance(value, list):
        return NESTED_INPUT
    if field == "targets" and isinstance(value, bool):
        return BOOLEAN_TARGETS
    if kind in _NUMBER_ERRORS:
        in_body = bool(error.get("loc")) and error["loc"][0] == "body"  # a path or query is text: no quotes to drop
        hint = "; send numbers without quotes" if isinstance(value, str) and in_body else ""
        return f"{where}: expected {_NUMBER_ERRORS[kind]}; received {_received(value)}{hint}"
    if kind in ("bool_type", "bool_parsing"):
        return f"{where}: expected true or false; received {_received(value)}"
    if kind == "string_type":
        return f"{where}: expected text in quotes; received {_received(value)}"
    if kind == "list_type":
        return f"{where}: expected a list [...]; received {_received(value)}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        if where == "body":
            return f"send a JSON object with Content-Type: application/json; received {_received(value)}"
        return f"{where}: expected an object {{...}}; received {_received(value)}"
    return f"{where}: {error.get('msg', 'invalid value')}"


def _lines(errors: list[dict]) -> list[str]:
    """One line per kind of mistake in a field: the first place, and how many more are like it."""
    groups: dict[tuple, list[str]] = {}
    for error in errors:
        field = (_clean(error.get("loc", ())) or ["body"])[0]
        groups.setdefault((field, error.get("type")), []).append(_describe(error))
    lines = []
    for (field, _), described in groups.items():
        unique = list(dict.fromkeys(described))
        more = len(unique) - 1
        lines.append(unique[0] + (f" (and {more} more like it in {field})" if more else ""))
    return lines


def _mixed_targets(body: Any) -> str | None:
    """One line for targets that hold class names and something else (a class index, null): the number branch's
    "expected a number; received the text 'a'" told a client whose names were right to send numbers."""
    targets = body.get("targets") if isinstance(body, dict) else None
    if not isinstance(targets, list):
        return None
    name = next((i for i, t in enumerate(targets) if isinstance(t, str)), None)
    other = next((i for i, t in enumerate(targets) if not isinstance(t, str)), None)
    if name is None or other is None:
        return None
    return (f"targets mixes class names (targets[{name}] is {targets[name]!r}) with targets[{other}], which is "
            f"{_received(targets[other])}: send every target as a class name, or every one as a class index")


async def handle_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """Pydantic's errors as one readable line per mistake (the same mistake in many places once), the
    raw list kept under ``errors``."""
    errors = _one_branch(list(exc.errors()))
    mixed = _mixed_targets(getattr(exc, "body", None))
    described = [e for e in errors if (_clean(e.get("loc", ())) or ["body"])[0] != "targets"] if mixed else errors
    lines = ([mixed] if mixed else []) + list(dict.fromkeys(_lines(described)))
    shown = "; ".join(lines[:5])
    if len(lines) > 5:
        shown += f"; and {len(lines) - 5} more"
    raw = [{"loc": _clean(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors[:20]]
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
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media.startswith("multipart/") or media == "application/x-www-form-urlencoded":  # the parser's own reason
            # Starlette's form parser says why in the detail; FastAPI's own body parse keeps it as the cause
            generic = exc.detail == "There was an error parsing the body"
            cause = str((exc.__cause__ or "") if generic else exc.detail).strip().rstrip(".") or "it is malformed"
            return error_response(request.url.path, 422, f"the {media} body could not be parsed: {cause}; send a multipart "
                                                         "body whose boundary is in its Content-Type, or the file itself "
                                                         "as the raw body")
        return error_response(request.url.path, 422, "the request body could not be parsed: send UTF-8 JSON "
                                                     "(Content-Type: application/json) as in the examples of /docs")
    return error_response(request.url.path, exc.status_code, detail, headers=headers or None)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
    app.add_exception_handler(ServiceError, handle_error)
    app.add_exception_handler(NeuralNetError, handle_error)
    app.add_exception_handler(ClientDisconnect, handle_error)  # not Exception's: Starlette re-raises those (a traceback)
    app.add_exception_handler(Exception, handle_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
