"""What the service needs from a store, in domain terms; SQLite now, Redis later.

Routes and services only see ``Store``; the implementation decides how each method is made
atomic. Models travel as the core's ``.npz`` bytes, samples as NumPy arrays.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ACTIVE = ("buffering", "queued", "running", "cancelling")
TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass
class ModelRecord:
    model_id: str
    uid: str  # changes when a model is deleted and re-created under the same id
    version: int
    info: dict[str, Any]  # summary of the network: sizes, activations, n_params, epochs_trained, ...
    created_at: float
    updated_at: float
    buffer_size: int = 0
    latest_job: dict[str, Any] | None = None  # {"job_id", "status"}
    owner: str | None = None  # name of the API key that created it (api/auth.py); None without keys


@dataclass
class JobRecord:
    job_id: str
    model_id: str
    model_uid: str
    status: str
    params: dict[str, Any]  # the core's fit hyper-parameters
    min_samples: int
    consume_buffer: bool
    created_at: float
    n_samples: int = 0  # samples the job claimed from the buffer
    epochs_done: int = 0  # epochs covered by the latest checkpoint
    progress: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    worker_id: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    model_version: int | None = None  # version of the model this job produced
    kind: str = "training"  # or "search": trials any worker claims, then (apply_best) one training of the best
    stage: str | None = None  # search jobs: "trials" while trials run, "apply" while the best configuration trains
    trials: list[dict[str, Any]] | None = None  # search jobs, on reads: every trial by index (see TRIAL_STATUSES)
    owner: str | None = None  # name of the API key that submitted it (api/auth.py); None without keys
    notification: "Notification | None" = None  # attached by the service on reads, when the job has one


@dataclass
class VersionRecord:
    """One kept version of a model's weights, keyed by (model uid, version)."""

    model_id: str
    uid: str
    version: int
    info: dict[str, Any]  # the summary of that version's network, as ModelRecord.info
    source: dict[str, Any]  # {"source": "create" | "import" | "job" | "put" | "restore", "job_id", "job_status", "restored_from"}
    created_at: float
    metrics: dict[str, Any] | None = None  # filled by the service: the final metrics of the job that made it


@dataclass
class Notification:
    """Where to POST a job's final record when it ends, and how delivery went."""

    job_id: str
    url: str
    secret: str
    status: str = "pending"  # pending -> delivered | failed (gave up after NN_NOTIFY_RETRY_SECONDS)
    attempts: int = 0
    last_error: str | None = None
    last_attempt_at: float | None = None
    next_attempt_at: float = 0.0
    delivered_at: float | None = None


def source_of(kind: str, **details: Any) -> dict[str, Any]:
    """The ``source`` of a new version: what made it (create, import, job, put, restore) and details."""
    return {"source": kind, **{k: v for k, v in details.items() if v is not None}}


TRIAL_STATUSES = ("pending", "running", "succeeded", "failed", "cancelled")


def new_trial(index: int, params: dict, seed: int | None) -> dict[str, Any]:
    """A search trial as stores keep it; finished ones add score, metrics and error."""
    return {"index": index, "status": "pending", "params": params, "seed": seed, "score": None, "metrics": None,
            "error": None, "worker_id": None, "started_at": None, "finished_at": None}


def rank_trials(trials: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Succeeded trials best first by ``metric`` (ties by index, as the core's ``rank``), then the others by index."""
    from neural_net.selection import Trial, rank

    scored = [t for t in trials if t["status"] == "succeeded" and t["score"] is not None]
    order = rank([Trial(t["index"], t["params"], t["score"], t["metrics"]) for t in scored], metric)
    by_index = {t["index"]: t for t in scored}
    return [by_index[t.index] for t in order] + sorted((t for t in trials if t not in scored), key=lambda t: t["index"])


def search_progress(job: JobRecord) -> dict[str, Any]:
    """Progress of a search job's trials stage, derived from its trials: done/total and the best so far."""
    trials = job.trials or []
    done = [t for t in trials if t["status"] in ("succeeded", "failed", "cancelled")]
    metric = job.params.get("metric", "loss")
    ranked = rank_trials(trials, metric)
    best = ranked[0] if ranked and ranked[0]["status"] == "succeeded" and ranked[0]["score"] is not None else None
    total = len(trials)
    return {"percent": round(100.0 * len(done) / total, 3) if total else 0.0, "trials_done": len(done),
            "trials_total": total, "trials_running": sum(t["status"] == "running" for t in trials), "metric": metric,
            "best": None if best is None else {"index": best["index"], "score": best["score"], "params": best["params"]}}


def with_trials(job: JobRecord, trials: list[dict[str, Any]]) -> JobRecord:
    """Attaches a search job's trials; during the trials stage its progress is derived from them."""
    job.trials = sorted(trials, key=lambda t: t["index"])
    if job.stage == "trials" or job.progress is None:
        job.progress = search_progress(job)
    return job


class Store(ABC):
    """Persistent state of the service. Every method is atomic on its own."""

    # -- models ---------------------------------------------------------------
    @abstractmethod
    def create_model(self, model_id: str, blob: bytes, info: dict, owner: str | None = None,
                     source: dict | None = None) -> ModelRecord:
        """Raises ModelExists. ``owner`` is kept on the record (tenancy, api/auth.py). Version 1 is kept with
        ``source`` (default: create)."""

    @abstractmethod
    def get_model(self, model_id: str) -> ModelRecord:
        """Raises ModelNotFound."""

    @abstractmethod
    def list_models(self, offset: int, limit: int, owner: str | None = None) -> tuple[list[ModelRecord], int]:
        """A page of models (oldest first) and the total count; with ``owner``, of that owner's models only."""

    @abstractmethod
    def model_stamp(self, model_id: str) -> tuple[str, int]:
        """The model's (uid, version), read cheaply on every request that serves a cached network.
        Raises ModelNotFound."""

    @abstractmethod
    def load_model(self, model_id: str) -> tuple[bytes, ModelRecord]:
        """The committed ``.npz`` bytes and the record of that same version."""

    @abstractmethod
    def replace_model(self, model_id: str, blob: bytes, info: dict, expected_version: int | None = None,
                      source: dict | None = None) -> ModelRecord:
        """New weights from a client; version += 1, kept with ``source`` (default: put). Raises ModelBusy
        while a job trains it, VersionConflict when ``expected_version`` is given and stale."""

    @abstractmethod
    def delete_model(self, model_id: str) -> list[str]:
        """Cancels the model's active jobs, deletes it, its buffer and its versions; returns the cancelled job ids."""

    # -- versions: every change of a model's weights (create, job commit, PUT, restore) is kept in the same
    # atomic step, keyed by (model uid, version); the newest NN_KEEP_VERSIONS + 1 (the current one included)
    @abstractmethod
    def list_versions(self, model_id: str) -> list[VersionRecord]:
        """The kept versions of the model, newest (the current one) first. Raises ModelNotFound."""

    @abstractmethod
    def get_version(self, model_id: str, version: int) -> tuple[bytes, VersionRecord]:
        """The ``.npz`` bytes and record of one kept version. Raises ModelNotFound, VersionNotFound."""

    # -- training buffer ------------------------------------------------------
    @abstractmethod
    def append_samples(self, model_id: str, x: np.ndarray, y: np.ndarray, max_buffer: int) -> int:
        """Appends one batch of rows; returns the new buffer size. Raises PayloadTooLarge past max_buffer."""

    @abstractmethod
    def count_samples(self, model_id: str) -> int: ...

    @abstractmethod
    def clear_samples(self, model_id: str) -> int:
        """Empties the buffer (not samples already claimed by jobs); returns how many left."""

    # -- jobs -----------------------------------------------------------------
    @abstractmethod
    def create_job(self, job: JobRecord, x: np.ndarray | None = None, y: np.ndarray | None = None, max_buffer: int = 0) -> JobRecord:
        """Stores a ``buffering`` job (with ``job.owner``); with inline samples, a ``queued`` one that owns exactly those samples
        (claimed in the same transaction; the buffer is untouched). ``max_buffer`` is unused."""

    @abstractmethod
    def get_job(self, job_id: str) -> JobRecord:
        """Raises JobNotFound."""

    @abstractmethod
    def list_jobs(self, model_id: str, offset: int, limit: int, owner: str | None = None) -> tuple[list[JobRecord], int]:
        """A page of the model's jobs, newest first, and their total count; with ``owner``, of that owner's jobs only."""

    @abstractmethod
    def promote_ready_jobs(self) -> list[JobRecord]:
        """Moves each ``buffering`` job whose model's buffer holds >= min_samples to ``queued``,
        claiming the buffered rows for it in the same transaction."""

    @abstractmethod
    def claim_job(self, worker_id: str) -> JobRecord | None:
        """Marks the oldest ``queued`` job whose model has no running job as ``running``."""

    @abstractmethod
    def job_samples(self, job_id: str) -> tuple[np.ndarray, np.ndarray]:
        """The inputs and targets the job claimed, in the order they were appended."""

    @abstractmethod
    def set_progress(self, job_id: str, progress: dict) -> None:
        """Records a running job's progress (ignored once the job left ``running``/``cancelling``)."""

    @abstractmethod
    def save_checkpoint(self, job_id: str, blob: bytes, info: dict, epochs_done: int, history: list[dict],
                        progress: dict) -> None:
        """Keeps the network after ``epochs_done`` epochs (weights, optimizer and RNG state)."""

    @abstractmethod
    def load_checkpoint(self, job_id: str) -> bytes | None: ...

    @abstractmethod
    def cancel_job(self, job_id: str) -> JobRecord:
        """Waiting jobs end ``cancelled`` at once (a checkpoint, if any, goes to the model),
        running ones become ``cancelling``. Raises JobNotCancellable for finished jobs."""

    @abstractmethod
    def cancel_requested(self, job_id: str) -> bool:
        """True when a running job should stop (cancel asked, model deleted, job gone)."""

    @abstractmethod
    def finish_job(self, job_id: str, status: str, *, blob: bytes | None = None, info: dict | None = None,
                   use_checkpoint: bool = False, error: str | None = None) -> JobRecord:
        """Ends a job. The model takes ``blob`` (or, with ``use_checkpoint``, the job's last
        checkpoint if there is one), version += 1, in the same transaction, unless the model was
        deleted meanwhile. A job that changed no weights gives its samples back to the buffer;
        otherwise they are gone."""

    @abstractmethod
    def list_all_jobs(self, offset: int, limit: int, *, status: str | None = None, model_id: str | None = None,
                      kind: str | None = None, owner: str | None = None) -> tuple[list[JobRecord], int]:
        """Jobs of every model (deleted ones included), newest first, filtered (``owner``: tenancy); and the
        number that match."""

    # -- notifications: kept beside the jobs; a deliverer sends those of ended jobs (api/notify.py)
    @abstractmethod
    def add_notification(self, note: Notification) -> None:
        """Stores where to notify job ``note.job_id`` (written before the job, so none is ever missed)."""

    @abstractmethod
    def get_notifications(self, job_ids: list[str]) -> dict[str, Notification]:
        """The notifications of these jobs, by job id (jobs without one are absent)."""

    @abstractmethod
    def due_notifications(self, now: float, limit: int) -> list[tuple[Notification, JobRecord]]:
        """Pending notifications of ended jobs whose next attempt is due, oldest due first, claimed for a
        while (so that several deliverers never send the same one at once)."""

    @abstractmethod
    def record_attempt(self, job_id: str, *, status: str, error: str | None, next_attempt_at: float, now: float) -> None:
        """The result of one delivery attempt: attempts += 1, and the new status."""

    @abstractmethod
    def count_queued(self) -> int:
        """Jobs in ``queued`` (for /health)."""

    def jobs_overview(self) -> tuple[dict[str, int], list[dict]]:
        """(jobs per status, progress of every running job), for /metrics. This generic version
        walks every model's jobs page by page; a store can answer it with one query."""
        counts: dict[str, int] = {}
        running: list[dict] = []
        models_seen = 0
        while True:
            models, total = self.list_models(models_seen, 500)
            for model in models:
                jobs_seen = 0
                while True:
                    jobs, count = self.list_jobs(model.model_id, jobs_seen, 500)
                    for job in jobs:
                        counts[job.status] = counts.get(job.status, 0) + 1
                        if job.status == "running" and job.progress:
                            running.append(job.progress)
                    jobs_seen += len(jobs)
                    if not jobs or jobs_seen >= count:
                        break
            models_seen += len(models)
            if not models or models_seen >= total:
                return counts, running

    # -- search jobs: trials that any worker claims; they never write the model -----------
    @abstractmethod
    def create_search_job(self, job: JobRecord, trials: list[dict], x: np.ndarray | None = None,
                          y: np.ndarray | None = None, max_buffer: int = 0) -> JobRecord:
        """As ``create_job`` for a job of kind "search" (stage "trials") with these ``new_trial`` records, except
        that inline samples belong to the job alone: it is ``queued`` at once and the buffer is untouched.
        Once promoted, its pending trials can be claimed; ``claim_job`` never takes a job in stage "trials"
        and such a job does not block its model's training jobs or weight updates."""

    @abstractmethod
    def claim_trial(self, worker_id: str, job_id: str | None = None) -> tuple[JobRecord, dict] | None:
        """Marks the oldest pending trial of a queued or running search job (``job_id``'s only, if given)
        as running, and the job as running; returns the job and the trial."""

    @abstractmethod
    def finish_trial(self, job_id: str, index: int, status: str, *, score: float | None = None,
                     metrics: dict | None = None, error: str | None = None) -> JobRecord:
        """Records a running trial's end (ignored when it is no longer running). When no trial is left:
        the job ends "succeeded" (or "failed" if every trial failed), or with ``apply_best`` goes to stage
        "apply" and "queued" so that ``claim_job`` trains the best configuration on the model. A
        "cancelling" job with no running trial ends "cancelled"."""

    @abstractmethod
    def release_trial(self, job_id: str, index: int) -> JobRecord:
        """A running trial goes back to pending (its worker stops); a "cancelling" job may end."""

    @abstractmethod
    def requeue_jobs(self, *, worker_ids: list[str] | None = None, job_ids: list[str] | None = None) -> list[JobRecord]:
        """Interrupted jobs (shutdown, crash, dead worker): ``running`` goes back to ``queued`` and
        keeps its checkpoint, ``cancelling`` ends ``cancelled``. With neither filter: all of them.
        Running search trials of those workers (all, with no filter) go back to pending."""
