"""Access control: optional API keys (NN_API_KEYS) checked before a request body is read, and CORS
(NN_CORS_ORIGINS), both off by default.

With keys configured, every route but the open ones below needs ``Authorization: Bearer <key>``
or ``X-API-Key: <key>``; otherwise 401 with ``WWW-Authenticate: Bearer``. The check is an ASGI
middleware, so it covers routes added later (and the event stream) and refuses a request before
its body is read. Keys are compared in constant time and never logged.
"""

import hmac
import logging

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import error_response
from api.settings import Settings

log = logging.getLogger("api")

# Pages and documents that hold no data: the dashboard asks for the key itself and sends it on its fetches.
OPEN_PATHS = frozenset({"/", "/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/dashboard"})
OPEN_PREFIXES = ("/static-offline-docs/",)  # the Swagger UI and ReDoc bundles

SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer",
               "description": "`Authorization: Bearer <key>` with one of the keys in NN_API_KEYS."},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
               "description": "`X-API-Key: <key>` with one of the keys in NN_API_KEYS."},
}


def parse_keys(value: str) -> list[bytes]:
    return [key.strip().encode() for key in value.split(",") if key.strip()]


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def key_from_headers(headers: dict[bytes, bytes]) -> bytes | None:
    """The key of ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; None when neither is there."""
    authorization = headers.get(b"authorization")
    if authorization is not None:
        scheme, _, credentials = authorization.partition(b" ")
        if scheme.lower() == b"bearer" and credentials.strip():
            return credentials.strip()
    key = headers.get(b"x-api-key")
    return key.strip() if key is not None and key.strip() else None


def key_matches(candidate: bytes, keys: list[bytes]) -> bool:
    """Constant time: every configured key is compared, and each comparison takes as long for any candidate."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(candidate, key)
    return found


class ApiKeyAuth:
    """Answers 401 to requests for protected paths without a valid key, before the body is read."""

    def __init__(self, app: ASGIApp, keys: list[bytes]):
        self.app, self.keys = app, keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["path"]):
            return await self.app(scope, receive, send)
        key = key_from_headers(dict(scope["headers"]))
        if key is not None and key_matches(key, self.keys):
            return await self.app(scope, receive, send)
        if key is None:
            detail = "this service needs an API key: send `Authorization: Bearer <key>` (or `X-API-Key: <key>`)"
            challenge = 'Bearer realm="nn"'
        else:
            detail = "the API key is not valid; check it against the service's NN_API_KEYS"
            challenge = 'Bearer realm="nn", error="invalid_token"'
        log.info("401 for %s %s (%s key)", scope["method"], scope["path"], "no" if key is None else "a wrong")
        response = error_response(scope["path"], 401, detail, headers={"WWW-Authenticate": challenge})
        await response(scope, receive, send)


def _document_security(app: FastAPI) -> None:
    """Security schemes in the OpenAPI document, so Swagger UI offers "Authorize" and sends the key."""
    make_schema = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = make_schema()
        schema.setdefault("components", {}).setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
        for path, operations in schema.get("paths", {}).items():
            if is_open(path):
                continue
            for operation in operations.values():
                operation["security"] = [{"bearer": []}, {"apiKey": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi


def install_access_control(app: FastAPI, settings: Settings) -> None:
    """API keys when NN_API_KEYS is set, then CORS (outermost, so preflights and 401s carry its headers)."""
    keys = parse_keys(settings.api_keys)
    if keys:
        app.add_middleware(ApiKeyAuth, keys=keys)
        _document_security(app)
    origins = [origin.strip() for origin in settings.cors_origins.split(",") if origin.strip()]
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type", "If-Match", "If-None-Match"],
                           expose_headers=["ETag", "Location", "WWW-Authenticate"])
