"""Prometheus metrics: HTTP requests and latency (middleware), and training state read from the
store at scrape time (so every replica and backend reports the same shared numbers). Every label comes from a
bounded set: HTTP methods and route templates, job states, and the NN_METRICS_MAX_MODELS largest buffers."""
import heapq
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.storage.base import ACTIVE, TERMINAL

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # others count as OTHER
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


BUFFER_SCAN_MIN_SECONDS = 5.0  # one scan of the buffers serves every scrape this long at least,
BUFFER_SCAN_SHARE = 10.0  # and this many times as long as it took: at most a tenth of one thread, however many models


class BufferScan:
    """The buffers /metrics shows: the ``top`` largest non-empty ones, and the sum and count of all of them.

    No store keeps its buffer sizes in one place, so they come from a scan of every model
    (``Service.metrics_snapshot``): 0.2 s on SQLite and 0.4 s on Redis for 5,000 models. One scan serves every
    scrape for max(BUFFER_SCAN_MIN_SECONDS, BUFFER_SCAN_SHARE x its own duration), and scrapes that come together
    wait for the same scan, so a client calling /metrics in a loop costs the process at most a tenth of a thread.
    """

    def __init__(self, service, top: int, clock=time.monotonic):
        self.service, self.top, self.clock = service, top, clock
        self.lock = threading.Lock()
        self.figures: tuple[list[tuple[str, int]], int, int] | None = None
        self.fresh_until = 0.0

    def read(self) -> tuple[list[tuple[str, int]], int, int]:
        """([(model_id, samples)] largest first, samples in every buffer, models with a non-empty buffer)."""
        with self.lock:
            started = self.clock()
            if self.figures is None or started >= self.fresh_until:
                sizes = self.service.metrics_snapshot(buffers=True)["buffers"]
                largest = heapq.nsmallest(self.top, sizes.items(), key=lambda item: (-item[1], item[0]))
                self.figures = (largest, sum(sizes.values()), len(sizes))
                ended = self.clock()
                self.fresh_until = ended + max(BUFFER_SCAN_MIN_SECONDS, BUFFER_SCAN_SHARE * (ended - started))
            return self.figures


class TrainingCollector(Collector):
    """Jobs by state, training samples/s of running jobs, the largest buffers and the sum of all, and the workers
    and queue /health shows (so Prometheus can alert on dead workers or a growing queue)."""

    def __init__(self, service, backend):
        self.service, self.backend = service, backend
        self.top = service.settings.metrics_max_models
        self.buffers = BufferScan(service, self.top)

    def collect(self):
        jobs = GaugeMetricFamily("nn_jobs", "Training jobs by state.", labels=["state"])
        rate = GaugeMetricFamily("nn_training_samples_per_second", "Samples per second over all running jobs.")
        buffers = GaugeMetricFamily("nn_buffer_samples", f"Samples waiting in a model's training buffer, for the top "
                                    f"{self.top} models by buffer size (NN_METRICS_MAX_MODELS); empty buffers are not "
                                    "shown, nn_buffered_samples sums every buffer.", labels=["model_id"])
        up = GaugeMetricFamily("nn_store_up", "1 when the store (SQLite or Redis) answers.")
        cache = self.service.cache.stats()  # this process's model cache (api/model_cache.py)
        yield CounterMetricFamily("nn_model_cache_hits", "Requests served by a cached network.", value=cache["hits"])
        yield CounterMetricFamily("nn_model_cache_misses", "Requests that loaded a network from the store.",
                                  value=cache["misses"])
        yield GaugeMetricFamily("nn_model_cache_bytes", "Memory held by cached networks (NN_MODEL_CACHE_MB bounds it).",
                                value=cache["bytes"])
        try:
            snapshot = self.service.metrics_snapshot(buffers=False)
            largest, buffered, models = self.buffers.read()
        except Exception:  # the store is away: say so, keep the HTTP metrics
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        for state in ACTIVE + TERMINAL:
            jobs.add_metric([state], snapshot["jobs"].get(state, 0))
        rate.add_metric([], snapshot["samples_per_second"])
        for model_id, size in largest:
            buffers.add_metric([model_id], size)
        yield from (up, jobs, rate, buffers)
        yield GaugeMetricFamily("nn_buffered_samples", "Samples waiting in every model's training buffer.", value=buffered)
        yield GaugeMetricFamily("nn_buffered_models", "Models whose training buffer holds samples (nn_buffer_samples "
                                                      "shows the largest NN_METRICS_MAX_MODELS of them).", value=models)
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
