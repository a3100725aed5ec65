"""Service settings: every knob comes from an ``NN_``-prefixed environment variable."""

from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class Settings(BaseSettings):
    """Read once at start-up; tests pass their own instance to ``create_app``."""

    model_config = SettingsConfigDict(env_prefix="NN_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address uvicorn binds to.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port uvicorn listens on.")
    data_dir: Path = Field(Path("./data"), description="Folder of the SQLite database (models, buffers, jobs, checkpoints).")
    workers: int = Field(1, ge=0, le=64, description="Training worker processes the service starts (0: none, jobs wait).")
    backend: Literal["sqlite", "redis"] = Field("sqlite", description="Where state lives: 'sqlite' (embedded, one machine) "
                                                "or 'redis' (shared by API replicas and RQ workers on many machines).")
    redis_url: str = Field("redis://localhost:6379/0", description="Redis URL for backend=redis.")
    redis_prefix: str = Field("nn", min_length=1, description="Prefix of the service's Redis keys (backend=redis), the "
                              "same on its replicas and workers; a worker of another prefix puts the service's jobs back.")
    redis_queue: str = Field("nn-training", min_length=1, description="RQ queue of training jobs (backend=redis); each "
                             "service on one Redis database needs its own (RQ's keys carry no prefix).")
    redis_timeout: float = Field(2.0, gt=0, description="Seconds a Redis command may take before the request answers 503.")
    lease_seconds: float = Field(10.0, gt=0, description="A running job's lease (backend=redis): a worker silent this long "
                                                         "loses the job, which resumes elsewhere from its checkpoint.")
    api_keys: str = Field("", description="Comma-separated API keys, each `name:key:scope` (scope read, train or admin) "
                                          "or a bare key (full access); when set, every route but /health, the docs and "
                                          "the dashboard page needs `Authorization: Bearer <key>` or `X-API-Key: <key>`.")
    tenancy: bool = Field(False, description="Models and jobs belong to the name of the key that created them; keys "
                                             "other than admin see only their own (others answer 404). Needs NN_API_KEYS.")
    cors_origins: str = Field("", description="Comma-separated origins allowed by CORS (e.g. https://app.example.com, "
                                              "or *); CORS is off when empty.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level of the service and workers.")

    max_parameters: int = Field(5_000_000, ge=1, description="Largest parameter count of one model.")
    max_layers: int = Field(32, ge=1, description="Most layers after the input of a model, batch_norm layers "
                            "included, whether created over HTTP, imported from a file or tried by a search.")
    max_layer_size: int = Field(4096, ge=1, description="Most units in one layer, input included.")
    max_samples_per_request: int = Field(10_000, ge=1, description="Most samples (rows) in one request.")
    max_buffer_samples: int = Field(1_000_000, ge=1, description="Most samples waiting in one model's training buffer.")
    max_epochs: int = Field(10_000, ge=1, description="Most epochs of one training job.")
    max_loss_ratio: float = Field(10.0, gt=1, description="A training job fails as diverged, and its model keeps the "
                                  "weights it had before the job, when its loss on the samples of its final metrics ends "
                                  "more than this many times the loss it started from (a job's max_loss_ratio overrides it).")
    max_response_values: int = Field(1_000_000, ge=1000, description="Most numbers in one answer of /output or "
                                     "V2 infer (rows x outputs, activations, gradients); a request asking for more is a "
                                     "413 before anything is computed.")
    max_list_bytes: int = Field(8 * MiB, ge=64 * 1024, description="Most bytes of items in one page of GET /models "
                                "or /jobs; a page holds fewer than `limit` when more would pass it (next_offset says where "
                                "the next begins).")
    max_request_bytes: int = Field(32 * MiB, ge=1024, description="Largest request body in bytes (file uploads to "
                                                                  "/datasets and /samples have their own limit).")
    dataset_dir: Path | None = Field(None, description="Folder of uploaded datasets; default NN_DATA_DIR/datasets. With "
                                                      "backend=redis, a folder every API replica and worker reaches "
                                                      "(a shared file system).")
    max_dataset_bytes: int = Field(2 * 1024 * MiB, ge=1024, description="Largest dataset upload (a file body) in bytes.")
    max_dataset_rows: int = Field(10_000_000, ge=1, description="Most samples (rows) in one dataset.")
    api_blas_threads: int = Field(1, ge=0, description="BLAS threads of each API process's requests (1: concurrent "
                                  "requests each compute on one core; 0: the BLAS library's default). Training workers "
                                  "are other processes and keep the default.")
    malloc_keep_mb: float = Field(64, ge=0, description="Freed memory each malloc arena of a service or worker process "
                                  "keeps for reuse (glibc): a request's large NumPy temporaries then reuse pages instead "
                                  "of faulting in fresh ones (api/malloc.py); 0: glibc's defaults.")
    malloc_arenas: int | None = Field(None, ge=0, description="Most malloc arenas of a service or worker process, each "
                                      "keeping up to NN_MALLOC_KEEP_MB (glibc makes up to 8 per core: an idle API process "
                                      "held 0.6-1.1 GB after bursts); default one per core, 0: glibc's default.")
    upload_buffer_mb: float = Field(64, ge=1, description="Upload batches (1 MiB each) held in memory at once in one API "
                                    "process, across uploads, while threads write and hash them; past it each upload "
                                    "waits with one batch (api/uploads.py).")
    model_cache_mb: float = Field(256, ge=0, description="Memory each API process may hold in deserialised models "
                                                          "(least recently used go first; 0: load on every request).")
    max_json_depth: int = Field(32, ge=4, le=512, description="Deepest nesting of arrays and objects in a JSON body.")
    max_streams: int = Field(64, ge=1, description="Most event streams (/jobs/{id}/events) open at once in one API "
                                                  "process; past it 503 with Retry-After.")
    stream_max_seconds: float = Field(3600.0, gt=0, description="A stream ends after this many seconds with a "
                                                               "'timeout' event; clients reconnect (EventSource does).")
    stream_keepalive_seconds: float = Field(15.0, gt=0, description="Seconds between keep-alive comments on a quiet stream.")
    metrics_max_models: int = Field(100, ge=0, le=10_000, description="Models whose buffer size /metrics shows one by "
                                    "one (nn_buffer_samples{model_id}): those with the largest non-empty buffers; "
                                    "nn_buffered_samples and nn_buffered_models count every buffer.")
    header_timeout: float = Field(10.0, gt=0, description="Seconds a client gets to send a request's headers (from "
                                                          "connecting, or from the previous response) before the "
                                                          "connection is closed (python main.py only).")
    forwarded_allow_ips: str = Field("", description="Addresses of reverse proxies whose X-Forwarded-For and "
                                                     "X-Forwarded-Proto are believed (comma-separated, or *); empty: "
                                                     "none, the log shows the peer's own address (python main.py only).")
    body_timeout: float = Field(30.0, gt=0, description="Seconds a request body may go without a byte arriving while "
                                                        "the service waits for it; then 408 and the connection is "
                                                        "closed (python main.py only).")
    keep_alive_timeout: int = Field(5, ge=1, description="Seconds an idle keep-alive connection stays open (uvicorn).")
    max_connections: int = Field(1000, ge=1, description="Connections and requests at once in one API process; past "
                                                         "it uvicorn answers 503 (python main.py only).")

    progress_interval: float = Field(0.2, gt=0, description="Seconds between progress writes of a running job.")
    poll_interval: float = Field(0.2, gt=0, description="Seconds an idle worker waits before looking for work again.")
    shutdown_timeout: float = Field(10.0, gt=0, description="Seconds workers get to stop at shutdown before they are killed.")
    keep_versions: int = Field(10, ge=0, le=1000, description="Previous versions of a model's weights kept beside the current "
                                                             "one (GET /models/{model_id}/versions); older ones are pruned.")
    notify_allow: str = Field("", description="Comma-separated hosts that job notifications may be sent to (exact names or "
                                              "IPs, or *.example.com for subdomains); empty: notifications are refused.")
    notify_timeout: float = Field(5.0, gt=0, le=60, description="Seconds one notification request may take.")
    notify_retry_seconds: float = Field(3600.0, gt=0, description="Seconds after a job's end during which a failed "
                                                                  "notification is retried; then it is marked failed.")
    notify_backoff: float = Field(1.0, gt=0, description="Seconds before the first retry of a notification; doubles "
                                                         "after each failure, up to 300.")
    notify_interval: float = Field(0.5, gt=0, description="Seconds between the deliverer's looks for notifications due.")
    worker_nice: int = Field(10, ge=0, le=19, description="Niceness added to training workers, so requests go first "
                                                          "when the CPUs are shared (0: same priority).")

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, url: str) -> str:
        """A URL redis-py reads as meant: it takes redis://host:6379/abc as database 0 without a word."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("use redis://host:6379/0 (or rediss:// for TLS, unix:///path/to/redis.sock)")
        database = parts.path.strip("/") if parts.scheme != "unix" else ""
        if database and not database.isdigit():
            raise ValueError(f"the database {database!r} is not a number; use e.g. redis://host:6379/0")
        return url

    @field_validator("notify_allow")
    @classmethod
    def _notify_allow(cls, setting: str) -> str:
        """Host names or IPs: an entry such as http://x.com/ matches no URL's host, and 422s would list it."""
        for entry in (e.strip() for e in setting.split(",")):
            if any(c in entry for c in "/:@ ") and not (entry.startswith("[") and entry.endswith("]")):
                raise ValueError(f"{entry!r} is not a host; list host names or IPs, e.g. hooks.example.com,10.0.0.5 "
                                 "(or *.example.com, [::1])")
        return setting


def max_import_bytes(settings: Settings) -> int:
    """The largest body POST /models/import takes: any file the service exports, NN_MAX_PARAMETERS float64 weights
    with an optimizer's two moment arrays (24 bytes a parameter) and the header; at least NN_MAX_REQUEST_BYTES."""
    return max(settings.max_request_bytes, 24 * settings.max_parameters + 8 * MiB)


def dataset_root(settings: Settings) -> Path:
    return settings.dataset_dir or settings.data_dir / "datasets"


@lru_cache
def get_settings() -> Settings:
    return Settings()
