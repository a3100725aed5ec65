"""The error responses of every operation in the OpenAPI document, so clients (and schema-driven
fuzzers) know each status a route can answer and the one body they all share."""

from fastapi import FastAPI

from api.auth import is_open, parse_keys
from api.errors import is_v2
from api.settings import Settings

ERROR_DETAIL = {
    "title": "ErrorDetail",
    "type": "object",
    "required": ["detail"],
    "properties": {
        "detail": {"type": "string", "description": "What was wrong and what to do about it."},
        "errors": {"type": "array", "description": "For 422 on invalid request fields: each field's problem.",
                   "items": {"type": "object", "properties": {
                       "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                       "msg": {"type": "string"}, "type": {"type": "string"}}}},
    },
}

V2_ERROR = {
    "title": "V2Error",
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string", "description": "What was wrong and what to do about it."}},
}

DESCRIPTIONS = {
    "400": "Invalid inference request: input name, datatype, shape, data or binary sizes",
    "401": "Missing or wrong API key (when NN_API_KEYS is set)",
    "404": "Unknown model, job or model version",
    "409": "Conflict: the model exists, is being trained, or is at another version; or the job already ended",
    "412": "If-Match names a version of the model that is no longer current",
    "413": "Over a size limit: request body (decompressed too), samples per request, or buffer",
    "415": "A Content-Encoding the route cannot read: V2 infer reads gzip and deflate, other routes uncompressed "
           "bodies only (Accept-Encoding lists what is read)",
    "422": "Invalid input: wrong types, shapes, names, NaN/Inf, unknown fields, values out of range",
    "503": "The store (Redis) cannot be reached, or (event streams) NN_MAX_STREAMS are open; retry later "
           "(Retry-After says when)",
}
ETAG_GETS = ("/models/{model_id}", "/models/{model_id}/weights")  # GETs that answer 304 to If-None-Match


def _error(status: str, path: str = "") -> dict:
    schema = "V2Error" if is_v2(path) else "ErrorDetail"
    return {"description": DESCRIPTIONS[status],
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _v2_statuses(path: str, operation: dict, secured: bool) -> list[str]:
    """The Open Inference Protocol's statuses (api/routes/v2.py): 400 for a bad request, never 422."""
    statuses = [] if path in ("/v2", "/v2/health/live") else ["503"]
    if "{" in path:
        statuses.append("404")
    if "requestBody" in operation:
        statuses += ["400", "413", "415"]  # 415: Content-Encoding other than gzip and deflate
    return statuses + (["401"] if secured else [])


def _statuses(path: str, method: str, operation: dict, secured: bool) -> list[str]:
    if is_v2(path):
        return _v2_statuses(path, operation, secured)
    statuses = ["422", "503"]
    if "{" in path:
        statuses.append("404")
    if method != "get":
        statuses.append("409")
    if "requestBody" in operation:
        statuses += ["413", "415"]  # 415: a compressed body (api/app.py's BodyLimit)
    if method == "put":
        statuses.append("412")
    if secured:
        statuses.append("401")
    return statuses


def document_errors(app: FastAPI, settings: Settings) -> None:
    make_schema = app.openapi
    secured = bool(parse_keys(settings.api_keys))

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = make_schema()
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas["ErrorDetail"] = ERROR_DETAIL
        schemas["V2Error"] = V2_ERROR
        for path, operations in schema.get("paths", {}).items():
            if is_open(path):
                continue
            for method, operation in operations.items():
                responses = operation.setdefault("responses", {})
                if is_v2(path):
                    responses.pop("422", None)  # FastAPI's own; the protocol answers bad requests with 400
                for status in _statuses(path, method, operation, secured):
                    responses[status] = _error(status, path)
                if method == "get" and path in ETAG_GETS:
                    responses["304"] = {"description": "Not modified: If-None-Match holds the current ETag"}
                for parameter in operation.get("parameters", []):
                    if parameter.get("in") == "path" and parameter.get("name") == "model_id":
                        parameter.setdefault("example", "iris")
        # FastAPI's own 422 body is replaced by ErrorDetail (api/errors.py answers every 422 that way)
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
