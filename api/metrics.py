"""Prometheus metrics: HTTP requests and latency (middleware), and training state read from the
store at scrape time (so every replica and backend reports the same shared numbers)."""
import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.storage.base import ACTIVE, TERMINAL

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # others count as OTHER
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class TrainingCollector(Collector):
    """Jobs by state, training samples/s of running jobs, each model's buffer size, and the workers and queue
    /health shows (so Prometheus can alert on dead workers or a growing queue)."""

    def __init__(self, service, backend):
        self.service, self.backend = service, backend

    def collect(self):
        jobs = GaugeMetricFamily("nn_jobs", "Training jobs by state.", labels=["state"])
        rate = GaugeMetricFamily("nn_training_samples_per_second", "Samples per second over all running jobs.")
        buffers = GaugeMetricFamily("nn_buffer_samples", "Samples waiting in a model's training buffer.", labels=["model_id"])
        up = GaugeMetricFamily("nn_store_up", "1 when the store (SQLite or Redis) answers.")
        cache = self.service.cache.stats()  # this process's model cache (api/model_cache.py)
        yield CounterMetricFamily("nn_model_cache_hits", "Requests served by a cached network.", value=cache["hits"])
        yield CounterMetricFamily("nn_model_cache_misses", "Requests that loaded a network from the store.",
                                  value=cache["misses"])
        yield GaugeMetricFamily("nn_model_cache_bytes", "Memory held by cached networks (NN_MODEL_CACHE_MB bounds it).",
                                value=cache["bytes"])
        try:
            snapshot = self.service.metrics_snapshot()
        except Exception:  # the store is away: say so, keep the HTTP metrics
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        for state in ACTIVE + TERMINAL:
            jobs.add_metric([state], snapshot["jobs"].get(state, 0))
        rate.add_metric([], snapshot["samples_per_second"])
        for model_id, size in snapshot["buffers"].items():
            buffers.add_metric([model_id], size)
        yield from (up, jobs, rate, buffers)
        status = self.backend.status(True)  # as /health: workers alive, jobs waiting for one, RQ's queue (Redis)
        yield GaugeMetricFamily("nn_workers_alive", "Training worker processes running now (Redis: live RQ workers "
                                                    "of this store).", value=status["workers_alive"])
        for name, help_text in (("queued_jobs", "Training jobs queued and waiting for a worker."),
                                ("queue_length", "Redis: RQ jobs waiting on the training queue.")):
            if status[name] is not None:
                yield GaugeMetricFamily(f"nn_{name}", help_text, value=status[name])


def build_registry(service, backend):
    registry = CollectorRegistry()
    requests = Counter("nn_http_requests", "HTTP requests by route template, method and status.",
                       ["method", "route", "status"], registry=registry)
    latency = Histogram("nn_http_request_duration_seconds", "HTTP request latency by route template and method.",
                        ["method", "route"], buckets=LATENCY_BUCKETS, registry=registry)
    registry.register(TrainingCollector(service, backend))
    return registry, requests, latency


def labels(scope: Scope) -> tuple[str, str]:
    """(method, route) from fixed sets, so no client can grow the registry: a known HTTP method or
    OTHER, and the matched route's template (/models/{model_id}, not the raw path) or unmatched."""
    method = scope["method"] if scope["method"] in METHODS else "OTHER"
    route = scope.get("route")
    return method, getattr(route, "path", None) or "unmatched"


class MetricsMiddleware:
    """Counts each request by its labels (above) and observes its latency up to the end of the response body."""

    def __init__(self, app: ASGIApp, requests: Counter, latency: Histogram):
        self.app, self.requests, self.latency = app, requests, latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            method, template = labels(scope)
            self.requests.labels(method, template, str(status)).inc()
            if not template.endswith("/events"):  # streams last as long as the job; their latency says nothing
                self.latency.labels(method, template).observe(time.perf_counter() - started)
