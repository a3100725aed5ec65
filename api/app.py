"""`create_app(settings)`: the FastAPI application, its lifespan (store, recovery, workers) and middleware."""

import functools
import logging
from contextlib import asynccontextmanager, nullcontext
from typing import Callable
from urllib.parse import unquote_plus

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.datastructures import Default
from fastapi_offline import FastAPIOffline
from threadpoolctl import threadpool_limits
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import __version__, logs
from api.auth import install_access_control, match_route
from api.errors import error_response, install_error_handlers, is_v2
from api.json_body import OrjsonResponse
from api.malloc import keep_freed_memory
from api.openapi_errors import document_errors
from api.metrics import MetricsMiddleware, build_registry
from api.notify import Deliverer
from api.routes import auth, datasets, health, jobs, metrics, models, pages, search, v2, versions
from api.backend import DataDirInUse, open_backend
from api.services import Service
from api.settings import Settings, get_settings, max_import_bytes

log = logging.getLogger("api")

DESCRIPTION = """Create NumPy neural networks, compute their outputs and gradients, buffer samples and train
them asynchronously in worker processes, with progress you can poll or stream."""


def _streams_itself(scope: Scope) -> bool:
    """File uploads (POST /datasets, a file body to /models/{id}/samples) stream to disk under their own
    limit, NN_MAX_DATASET_BYTES (api/uploads.py); JSON bodies stay under NN_MAX_REQUEST_BYTES here."""
    path = scope["path"]
    if scope["method"] != "POST":
        return False
    if path == "/datasets":
        return True
    if path.startswith("/models/") and path.endswith("/samples"):
        media = dict(scope["headers"]).get(b"content-type", b"").split(b";")[0].strip().lower()
        return bool(media) and media != b"application/json" and not media.endswith(b"+json")
    return False


class BodyLimit:
    """Answers 413 when a request body is larger than NN_MAX_REQUEST_BYTES (declared or streamed), and 415 for a
    compressed body outside /v2 (V2 infer reads gzip and deflate: api/inference_body.py): it was read as text and
    refused as "not valid JSON" or "not UTF-8", which sends the user looking in the wrong place."""

    def __init__(self, app: ASGIApp, max_bytes: int, import_bytes: int):
        self.app, self.max_bytes, self.import_bytes = app, max_bytes, import_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length, codings, chunked = None, [], False  # one pass over the headers
        for name, value in scope["headers"]:
            if name == b"content-length" and length is None:
                length = value
            elif name == b"content-encoding":  # every line: repeated lines form one list (RFC 9110)
                codings += [v.strip().lower() for v in value.split(b",") if v.strip()]
            elif name == b"transfer-encoding":
                chunked = True
        has_body = chunked or (length is not None and length.strip() not in (b"0", b""))  # GET /health has none
        if has_body and any(c != b"identity" for c in codings) and not is_v2(scope["path"]):
            coding = b", ".join(codings).decode("latin-1")[:40]
            response = error_response(scope["path"], 415, f"Content-Encoding {coding!r} is not supported here; send the "
                                                          "body uncompressed", headers={"Accept-Encoding": "identity"})
            return await response(scope, receive, send)
        if _streams_itself(scope):
            return await self.app(scope, receive, send)
        # a model file: an export of the largest model the service makes was over NN_MAX_REQUEST_BYTES (float64, Adam)
        limit = self.import_bytes if scope["path"] == "/models/import" else self.max_bytes
        if length is not None:
            if length.isdigit() and int(length) > limit:
                return await self._too_large(scope, receive, send)
            return await self.app(scope, receive, send)
        # no declared length (chunked): read up to the limit here, then replay it to the app
        messages, received = [], 0
        while True:
            message = await receive()
            messages.append(message)
            received += len(message.get("body", b""))
            if received > limit:
                return await self._too_large(scope, receive, send)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Built only when needed: the common request should not pay for rendering an error."""
        if scope["path"] == "/models/import":
            detail = (f"a model file larger than {self.import_bytes} bytes, more than any model of at most "
                      "NN_MAX_PARAMETERS parameters takes; send a file exported by GET /models/{model_id}/export")
        else:
            detail = f"request body larger than {self.max_bytes} bytes (NN_MAX_REQUEST_BYTES); send fewer samples per request"
        response = error_response(scope["path"], 413, detail)
        await response(scope, receive, send)


class SingleQueryValues:
    """A query parameter that takes one value, given more than once (``?model_id=a&model_id=b``), is a 422 naming it:
    FastAPI would quietly use the last one. Parameters documented as arrays (``?target=`` of POST /datasets)
    repeat, and names no route declares are ignored, repeated or not, as FastAPI ignores them (a probe's
    ``/v2/health/ready?x=1&x=2`` stays a 200)."""

    def __init__(self, app: ASGIApp, single: Callable[[], set[str]]):
        self.app, self.single = app, single

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and b"&" in scope["query_string"]:  # no "&", no repeat: the common case costs this
            names = [unquote_plus(part.split(b"=", 1)[0].decode("latin-1")) for part in scope["query_string"].split(b"&")]
            repeated = sorted({name for name in names if names.count(name) > 1} & self.single())
            if repeated:
                name = repeated[0]
                response = error_response(scope["path"], 422, f"query parameter {name[:64]!r} is given {names.count(name)} "
                                                              "times; it takes one value, so send it once")
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def single_query_parameters(app: FastAPI) -> Callable[[], set[str]]:
    """The names of query parameters that the OpenAPI document declares with one value (not arrays), read once
    when first asked."""
    def is_array(schema: dict) -> bool:
        return schema.get("type") == "array" or any(is_array(s) for s in schema.get("anyOf", []))

    @functools.cache
    def names() -> set[str]:
        return {p["name"] for item in app.openapi()["paths"].values() for operation in item.values()
                for p in operation.get("parameters", []) if p["in"] == "query" and not is_array(p.get("schema", {}))}
    return names


class HeadAsGet:
    """HEAD on a GET route answers as GET does, without the body: FastAPI's routes answered 405 where Starlette's
    answer, and load balancers probe ``HEAD /health``. The route runs as for GET (API keys check it as a read);
    the server, whose scope still says HEAD, sends the head alone. A route with a HEAD handler of its own (a
    dataset's download, which then reads no file) keeps it, and an event stream answers 405 as before: run as a GET
    it would hold one of NN_MAX_STREAMS while the prober's connection stays open."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope["method"] == "HEAD" and not scope["path"].endswith("/events")
                and match_route(scope["app"], scope)[0] != Match.FULL):
            as_get = {**scope, "method": "GET"}
            try:
                return await self.app(as_get, receive, send)
            finally:  # the route the router found, for /metrics, which reads the scope it passed on
                if "route" in as_get:
                    scope["route"] = as_get["route"]
        await self.app(scope, receive, send)


class StartupRefused:
    """A start the operator can fix (another service holds NN_DATA_DIR) fails the ASGI lifespan with one line
    instead of Starlette's traceback: uvicorn logs it, then "Application startup failed. Exiting." (status 3)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            return await self.app(scope, receive, send)
        failed: list[Message] = []

        async def hold_failure(message: Message) -> None:  # its message is a traceback: sent once we know why
            if message["type"] == "lifespan.startup.failed":
                failed.append(message)
            else:
                await send(message)

        try:
            await self.app(scope, receive, hold_failure)
        except DataDirInUse as exc:
            failed[:] = [{"type": "lifespan.startup.failed", "message": str(exc)}]  # reported, not raised
        finally:
            for message in failed:
                await send(message)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    logs.install()  # control characters in logged paths, ids and headers are escaped
    logging.getLogger("api").setLevel(settings.log_level.upper())
    backend = open_backend(settings)
    service = Service(backend.store, settings)
    service.store.check_integrity()  # a damaged SQLite database refuses to start (StoreUnavailable says how to recover)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        keep_freed_memory(settings.malloc_keep_mb, settings.malloc_arenas)  # temporaries reuse pages (api/malloc.py)
        # BLAS threads of this process's requests (workers are other processes): concurrent requests each computing
        # on one core serve many small requests far better than one BLAS thread pool they all queue for
        blas = threadpool_limits(limits=settings.api_blas_threads, user_api="blas") if settings.api_blas_threads else nullcontext()
        with blas:
            async with service_lifespan(app):
                yield

    @asynccontextmanager
    async def service_lifespan(app: FastAPI):
        deliverer = Deliverer(service.store, settings)  # job notifications, sent by every API process (api/notify.py)
        async with backend.running():
            deliverer.start()
            try:
                yield
            finally:
                await run_in_threadpool(deliverer.stop)
        log.info("service stopped")

    app = FastAPIOffline(title="Neural network training service", version=__version__, description=DESCRIPTION,
                         lifespan=lifespan, redoc_url=None,  # api/routes/pages.py serves /redoc
                         # routes with a response model are serialised by pydantic-core; the others by orjson
                         default_response_class=Default(OrjsonResponse))
    app.state.settings = settings
    app.state.service = service
    app.state.backend = backend
    install_error_handlers(app)
    app.add_middleware(StartupRefused)  # `uvicorn main:app` on a data directory in use: one line (`python main.py` checks first)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes, import_bytes=max_import_bytes(settings))
    app.add_middleware(SingleQueryValues, single=single_query_parameters(app))
    document_errors(app, settings)
    install_access_control(app, settings)  # outside BodyLimit: a request without a key is refused before its body is read
    app.add_middleware(HeadAsGet)  # outside the keys' check, which then sees a GET
    registry, requests, latency = build_registry(service, backend)
    app.state.metrics_registry = registry
    app.add_middleware(MetricsMiddleware, requests=requests, latency=latency)  # outermost: sees 413s too
    include_routers(app)
    return app


DOCUMENTED = (health.router, auth.router, models.router, versions.router, jobs.model_router, search.router,
              jobs.router, datasets.router, pages.router, metrics.router, v2.router)  # the order of /docs
# A request is matched against the routes one pattern at a time, in the order they were included: the hot paths
# (V2 inference, /output) go first. V2 last cost 15% of a 1-sample infer's requests/s under wrk. No two routers
# have patterns that match the same path, so the order changes nothing else.
MATCHED_FIRST = (v2.router, models.router)


def include_routers(app: FastAPI) -> None:
    for router in MATCHED_FIRST + tuple(r for r in DOCUMENTED if r not in MATCHED_FIRST):
        app.include_router(router)
    rank = {route.path: i for i, router in enumerate(DOCUMENTED) for route in router.routes}
    make_schema = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = make_schema()
            schema["paths"] = dict(sorted(schema["paths"].items(), key=lambda item: rank.get(item[0], -1)))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
