"""Access control: API keys with scopes (NN_API_KEYS), tenancy (NN_TENANCY) and CORS (NN_CORS_ORIGINS), all off
by default.

Keys. With keys configured, every route but the open ones below needs ``Authorization: Bearer <key>`` or
``X-API-Key: <key>``; otherwise 401 with ``WWW-Authenticate: Bearer``. An entry of NN_API_KEYS is
``name:key:scope`` or, as before scopes existed, a bare ``key`` (full access, named "admin"). Keys are compared
in constant time and never logged.

Scopes. ``read`` < ``train`` < ``admin``; each allows what the ones before it allow. A route needs the scope that
``ROUTE_SCOPES`` names for its method and path template, else the one ``SCOPE_BY_METHOD`` gives, so routes added
later get a sensible scope without an edit here. A key with less gets 403 naming both scopes. /docs shows each
operation's scope (``x-required-scope``), generated from the same table.

Tenancy (NN_TENANCY=true). Models and jobs belong to the name of the key that created them. A key other than
``admin`` sees only its name's: a model or job of another name answers 404 as if absent (checked here for every
route with a ``model_id``, ``model_name`` or ``job_id`` path parameter), and lists hold only its own.

Every check is an ASGI middleware, so it covers routes added later (and the event stream) and refuses a request
before its body is read.
"""

import hmac
import logging
import re
from dataclasses import dataclass

import fastapi.routing
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import error_response, handle_error, is_v2
from api.settings import Settings

log = logging.getLogger("api")

# Pages and documents that hold no data: the dashboard asks for the key itself and sends it on its fetches.
# The V2 liveness and readiness probes are open like /health: Kubernetes and KServe probes send no key.
OPEN_PATHS = frozenset({"/", "/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/dashboard",
                        "/favicon.svg", "/favicon.ico", "/v2/health/live", "/v2/health/ready"})
OPEN_PREFIXES = ("/static-offline-docs/",)  # the Swagger UI and ReDoc bundles

SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer",
               "description": "`Authorization: Bearer <key>` with one of the keys in NN_API_KEYS."},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
               "description": "`X-API-Key: <key>` with one of the keys in NN_API_KEYS."},
}

# -- the scope table ---------------------------------------------------------------------------------
SCOPES = ("read", "train", "admin")  # each allows what the ones before it allow
SCOPE_BY_METHOD = {"GET": "read", "HEAD": "read", "DELETE": "admin"}
DEFAULT_SCOPE = "train"  # POST, PUT, PATCH: create models, samples, jobs, searches, uploads; cancel jobs
# The exceptions, by method and path template; "{}" stands for any path parameter, whatever its name.
ROUTE_SCOPES = {
    ("POST", "/models/{}/output"): "read",  # computes, changes nothing
    ("POST", "/models/{}/evaluate"): "read",
    ("POST", "/v2/models/{}/infer"): "read",  # Open Inference Protocol
    ("POST", "/v2/models/{}/versions/{}/infer"): "read",
    ("PUT", "/models/{}/weights"): "admin",  # overwrites what training produced
    ("POST", "/models/import"): "admin",
    ("POST", "/models/{}/versions/{}/restore"): "admin",
    ("GET", "/auth/whoami"): "read",  # every key may ask what it may do (the dashboard does, to grey out the rest)
}
# Routes that report on every tenant's models: under NN_TENANCY only keys that see every tenant may call them.
CROSS_TENANT = {("GET", "/metrics"), ("HEAD", "/metrics")}

BARE_KEY_NAME = "admin"  # the name (owner) of bare keys, which have every scope
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
OWNED_PARAMETERS = {"model_id": "model", "model_name": "model", "job_id": "job"}  # path parameters tenancy checks


def template_shape(path: str) -> str:
    """``/models/{model_id}/output`` -> ``/models/{}/output``: the table holds no parameter names."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def required_scope(method: str, template: str | None, tenancy: bool = False) -> str:
    """The scope a request needs: the table's entry for its route, else the method's default."""
    method = method.upper()
    shape = template_shape(template) if template is not None else None
    if tenancy and (method, shape) in CROSS_TENANT:
        return "admin"
    return ROUTE_SCOPES.get((method, shape), SCOPE_BY_METHOD.get(method, DEFAULT_SCOPE))


def allows(held: str, needed: str) -> bool:
    return SCOPES.index(held) >= SCOPES.index(needed)


# -- keys and callers ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ApiKey:
    name: str
    key: bytes
    scope: str


@dataclass(frozen=True)
class Caller:
    """Who sent a request: its key's name and scope, and whether it sees every tenant's models and jobs."""

    name: str
    scope: str
    sees_all: bool


def parse_keys(value: str) -> list[ApiKey]:
    """NN_API_KEYS: comma-separated entries, each ``name:key:scope`` (two or more colons; the key is what lies
    between the first and the last) or a bare key (fewer than two colons): full access, named "admin".
    Several entries may share a name (a read key beside a train key, or a key being rotated): they share
    ownership. Raises ValueError, naming the entry by position alone, for an entry that does not fit: a bare key
    with two colons reads as name:key:scope, so any part of such an entry may be a piece of a key."""
    keys: list[ApiKey] = []
    for position, entry in enumerate((e.strip() for e in value.split(",")), start=1):
        if not entry:
            continue
        if entry.count(":") < 2:
            keys.append(ApiKey(BARE_KEY_NAME, entry.encode(), "admin"))
            continue
        name, rest = entry.split(":", 1)
        key, scope = rest.rsplit(":", 1)
        shape = ("(entries are name:key:scope, or a bare key with at most one colon; no part of it is shown: it may be "
                 "a key)")
        if not NAME_PATTERN.match(name):
            raise ValueError(f"NN_API_KEYS entry {position}: its name, before the first colon, is not 1-64 letters, "
                             f"digits or _.@- {shape}")
        if not key.strip():
            raise ValueError(f"NN_API_KEYS entry {position} has an empty key {shape}")
        if scope not in SCOPES:
            raise ValueError(f"NN_API_KEYS entry {position}: its scope, after the last colon, is not one of "
                             f"{', '.join(SCOPES)} {shape}")
        keys.append(ApiKey(name, key.strip().encode(), scope))
    seen: set[bytes] = set()
    for entry in keys:
        if entry.key in seen:
            raise ValueError(f"NN_API_KEYS holds the same key twice (the second time for {entry.name!r}); "
                             f"each key must be unique so its name and scope are certain")
        seen.add(entry.key)
    return keys


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


def find_key(candidate: bytes, keys: list[ApiKey]) -> ApiKey | None:
    """Constant time: every configured key is compared, and each comparison takes as long for any candidate."""
    found = None
    for entry in keys:
        if hmac.compare_digest(candidate, entry.key):
            found = entry
    return found


def http_routes(app: FastAPI) -> list:
    """The app's HTTP routes, whoever added them, each with its full path template (``path``), ``methods`` and
    ``matches``. FastAPI versions that keep included routers nested are walked with ``iter_route_contexts``."""
    iterate = getattr(fastapi.routing, "iter_route_contexts", None)
    routes = iterate(app.router.routes) if iterate is not None else app.router.routes
    return [route for route in routes if getattr(route, "methods", None)]


def match_route(app: FastAPI, scope: Scope) -> tuple[Match, object | None, dict]:
    """How a request matches the app's routes, with the route (its template in ``path``) and its path parameters:
    FULL, or PARTIAL (the path's route takes other methods: the router answers 405), or (NONE, None, {})."""
    partial: tuple[Match, object | None, dict] = (Match.NONE, None, {})
    for route in http_routes(app):
        match, child = route.matches(scope)
        if match == Match.FULL:
            return match, route, child.get("path_params", {})
        if match == Match.PARTIAL and partial[0] == Match.NONE:
            partial = (match, route, child.get("path_params", {}))
    return partial


def check_visible(service, owner: str, path_params: dict) -> None:
    """Tenancy: the models and jobs a path names must be ``owner``'s, else they answer 404 as if absent."""
    for parameter, value in path_params.items():
        kind = OWNED_PARAMETERS.get(parameter)
        if kind == "model":
            service.check_model_owner(value, owner)
        elif kind == "job":
            service.check_job_owner(value, owner)


class AccessControl:
    """Answers 401 without a valid key, 403 when the key's scope is too low, and (with tenancy) 404 for another
    name's model or job, before the body is read; passes the ``Caller`` on in ``request.state.caller``."""

    def __init__(self, app: ASGIApp, keys: list[ApiKey], tenancy: bool = False):
        self.app, self.keys, self.tenancy = app, keys, tenancy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["path"]):
            return await self.app(scope, receive, send)
        match, route, path_params = match_route(scope["app"], scope)
        template = route.path if route is not None else None
        if match == Match.FULL:  # /metrics counts a refusal under its route, as the router would have
            scope["route"] = route
        key = key_from_headers(dict(scope["headers"]))
        entry = find_key(key, self.keys) if key is not None else None
        if entry is None:
            return await self._unauthorized(key is None, scope, receive, send)
        if match == Match.PARTIAL:  # a method no scope may use here: the router's 405 names those it takes
            return await self.app(scope, receive, send)
        needed = required_scope(scope["method"], template, self.tenancy)
        if not allows(entry.scope, needed):
            what = f"{scope['method']} {template or scope['path']}"
            log.info("403 for %s: key %r has scope %s, needs %s", what, entry.name, entry.scope, needed)
            detail = (f"{what} needs an API key with scope '{needed}'; this key ({entry.name!r}) has scope "
                      f"'{entry.scope}'. Use a key with scope '{needed}'"
                      + (" or 'admin'" if needed != "admin" else "") + " (NN_API_KEYS entries are name:key:scope)")
            return await error_response(scope["path"], 403, detail)(scope, receive, send)
        caller = Caller(entry.name, entry.scope, sees_all=entry.scope == "admin" or not self.tenancy)
        if not caller.sees_all and path_params:
            try:
                await run_in_threadpool(check_visible, scope["app"].state.service, caller.name, path_params)
            except Exception as exc:  # ModelNotFound, JobNotFound, StoreUnavailable: the one error table
                return await (await handle_error(Request(scope), exc))(scope, receive, send)
        scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send)

    @staticmethod
    async def _unauthorized(no_key: bool, scope: Scope, receive: Receive, send: Send) -> None:
        if no_key:
            detail = "this service needs an API key: send `Authorization: Bearer <key>` (or `X-API-Key: <key>`)"
            challenge = 'Bearer realm="nn"'
        else:
            detail = "the API key is not valid; check it against the service's NN_API_KEYS"
            challenge = 'Bearer realm="nn", error="invalid_token"'
        log.info("401 for %s %s (%s key)", scope["method"], scope["path"], "no" if no_key else "a wrong")
        response = error_response(scope["path"], 401, detail, headers={"WWW-Authenticate": challenge})
        await response(scope, receive, send)


# -- what routes ask about the caller ------------------------------------------------------------------
def get_caller(request: Request) -> Caller | None:
    """The caller AccessControl let in; None when the service has no keys."""
    return getattr(request.state, "caller", None)


async def creator_name(request: Request) -> str | None:
    """The owner of what this request creates: its key's name (None without keys). async (as visible_owner): a
    plain def dependency costs a hop to a worker thread per request."""
    caller = get_caller(request)
    return caller.name if caller is not None else None


async def visible_owner(request: Request) -> str | None:
    """The owner that lists are filtered to: the caller's name under tenancy, None (everything) for admin keys,
    without tenancy or without keys."""
    caller = get_caller(request)
    return None if caller is None or caller.sees_all else caller.name


def whoami(app: FastAPI, caller: Caller | None, tenancy: bool) -> dict:
    """The caller's name and scope, and each operation its scope does not allow (``"METHOD /template"`` -> the
    scope it needs), from the table above. Without keys (no caller): no name, full access, nothing denied."""
    if caller is None:
        return {"name": None, "scope": SCOPES[-1], "tenancy": False, "keys_required": False, "denied": {}}
    denied = {}
    for route in http_routes(app):
        for method in sorted(route.methods):
            needed = required_scope(method, route.path, tenancy)
            if not is_open(route.path) and not allows(caller.scope, needed):
                denied[f"{method} {route.path}"] = needed
    return {"name": caller.name, "scope": caller.scope, "tenancy": tenancy, "keys_required": True, "denied": denied}


# -- the OpenAPI document ------------------------------------------------------------------------------
def _forbidden(path: str) -> dict:
    schema = "V2Error" if is_v2(path) else "ErrorDetail"
    return {"description": "The API key's scope is too low for this operation (the message names both scopes)",
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _document_access(app: FastAPI, secured: bool, tenancy: bool) -> None:
    """Each operation's scope (``x-required-scope`` and a line of its description), from the table above; with
    keys, the security schemes (Swagger UI offers "Authorize" and sends the key) and the 403."""
    make_schema = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = make_schema()
        if secured:
            schema.setdefault("components", {}).setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
        for path, operations in schema.get("paths", {}).items():
            if is_open(path):
                continue
            for method, operation in operations.items():
                needed = required_scope(method, path, tenancy)
                operation["x-required-scope"] = needed
                line = f"API key scope: `{needed}` or higher (read < train < admin), when NN_API_KEYS is set."
                operation["description"] = f"{operation['description']}\n\n{line}" if operation.get("description") else line
                if secured:
                    operation["security"] = [{"bearer": []}, {"apiKey": []}]
                    operation.setdefault("responses", {})["403"] = _forbidden(path)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi


def install_access_control(app: FastAPI, settings: Settings) -> None:
    """API keys (scopes, tenancy) when NN_API_KEYS is set, then CORS (outermost, so preflights and 401s carry
    its headers). Raises ValueError for a malformed NN_API_KEYS, or NN_TENANCY without keys."""
    keys = parse_keys(settings.api_keys)
    if settings.tenancy and not keys:
        raise ValueError("NN_TENANCY=true needs NN_API_KEYS: models and jobs belong to the names of its keys "
                         "(entries name:key:scope)")
    if keys:
        app.add_middleware(AccessControl, keys=keys, tenancy=settings.tenancy)
    _document_access(app, secured=bool(keys), tenancy=settings.tenancy and bool(keys))
    origins = [origin.strip() for origin in settings.cors_origins.split(",") if origin.strip()]
    if origins:  # V2's binary extension and gzip bodies need their headers too, or a browser's preflight is refused
        app.add_middleware(JsonCORS, allow_origins=origins, allow_methods=["*"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type", "Content-Encoding", "If-Match",
                                          "If-None-Match", "Inference-Header-Content-Length"],
                           expose_headers=["ETag", "Location", "WWW-Authenticate", "Retry-After",
                                           "Inference-Header-Content-Length"])


class JsonCORS(CORSMiddleware):
    """Starlette's CORS middleware, its refused preflights as ``{"detail"}`` like every other error (they were
    text/plain "Disallowed CORS origin"), saying what is allowed."""

    def preflight_response(self, request_headers):
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        allowed = (f"origins {', '.join(sorted(self.allow_origins)) or '*'} (NN_CORS_ORIGINS), request headers "
                   f"{', '.join(sorted(self.allow_headers))}")
        kept = {k: v for k, v in response.headers.items() if k not in ("content-type", "content-length")}
        return JSONResponse({"detail": f"{response.body.decode()}: this service allows {allowed}"}, status_code=400,
                            headers=kept)
