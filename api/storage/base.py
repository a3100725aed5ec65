"""What the service needs from a store, in domain terms, and the generic half of every store.

Routes and services only see ``Store``. The rules of the job life cycle live in
``api.storage.lifecycle``; this class runs each of them as one atomic step of the store
(``atomic``), so a store implements only that step's primitives (``lifecycle.Tx``) and its reads:
``SQLiteStore`` (one file, ``BEGIN IMMEDIATE``) and ``RedisStore`` (WATCH/MULTI/EXEC, shared by
API replicas and RQ workers). Models travel as the core's ``.npz`` bytes, samples as NumPy arrays.
"""

import time
import uuid
from abc import ABC, abstractmethod
from typing import Callable, TypeVar

import numpy as np

from api.storage import lifecycle
from api.storage.lifecycle import ACTIVE, BUFFERING, QUEUED, TERMINAL, TRIAL_STATUSES, Tx  # noqa: F401 (re-exported)
from api.storage.records import (JobRecord, ModelRecord, Notification, VersionRecord, new_trial, rank_trials,  # noqa: F401
                                 search_progress, source_of, with_trials)

T = TypeVar("T")


class Store(ABC):
    """Persistent state of the service. Every method is atomic on its own."""

    # One step can hold an append request of any size: a SQLite transaction writes its pages as it goes. A Redis
    # MULTI holds every write in memory until EXEC, so there a large request stages its rows first (stage_samples).
    appends_in_one_step = False

    def check_integrity(self) -> None:
        """Raises StoreUnavailable when the stored data is damaged (the service refuses to start); a no-op
        where the store has nothing to check."""

    # -- what each store implements ---------------------------------------------------------
    @abstractmethod
    def atomic(self, step: Callable[[Tx], T], fence: str | None = None, read_first: bool = False) -> T:
        """Runs ``step`` as one atomic step and returns its result. ``fence``: a job id (or
        "job|trial") whose lease this store must still hold (stores with leases; LeaseLost otherwise).
        ``read_first``: the step often finds nothing to do (workers polling), so a store that locks
        may try it without the lock first."""

    @abstractmethod
    def has_jobs(self, statuses: tuple[str, ...]) -> bool:
        """A cheap read: is any job in one of these states (so a write step is worth taking)?"""

    @abstractmethod
    def job_status(self, job_id: str) -> str | None:
        """A cheap read of one job's status (None when it does not exist)."""

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

    async def model_stamp_on_loop(self, model_id: str) -> tuple[str, int] | None:
        """``model_stamp`` from the event loop, without blocking it: the (uid, version), or None where this store
        cannot answer at once (the caller then asks ``model_stamp`` in a worker thread). Raises ModelNotFound."""
        return None

    @abstractmethod
    def load_model(self, model_id: str) -> tuple[bytes, ModelRecord]:
        """The committed ``.npz`` bytes and the record of that same version."""

    @abstractmethod
    def count_samples(self, model_id: str) -> int:
        """Rows in the buffer (not those of requests still being staged)."""

    @abstractmethod
    def buffer_sizes(self) -> dict[str, int]:
        """Rows in each non-empty buffer, by model id, read without the models' records (/metrics: a summary holds
        up to 1.7 MB of class names, and a scan of them was hundreds of MB)."""

    @abstractmethod
    def get_job(self, job_id: str, history_from: int | None = 0) -> JobRecord:
        """Raises JobNotFound; a search job comes with its trials and its history from entry ``history_from`` on
        (None: none). A reader that polls (an event stream, a dashboard) reads what grows with the epochs once."""

    @abstractmethod
    def list_jobs(self, model_id: str, offset: int, limit: int, owner: str | None = None) -> tuple[list[JobRecord], int]:
        """A page of the model's jobs, newest first, and their total count; with ``owner``, of that owner's jobs only."""

    @abstractmethod
    def list_all_jobs(self, offset: int, limit: int, *, status: str | None = None, model_id: str | None = None,
                      kind: str | None = None, owner: str | None = None) -> tuple[list[JobRecord], int]:
        """Jobs of every model (deleted ones included), newest first, filtered (``owner``: tenancy); and the
        number that match."""

    @abstractmethod
    def job_samples(self, job_id: str) -> tuple[np.ndarray, np.ndarray]:
        """The inputs and targets the job claimed, in the order they were appended."""

    @abstractmethod
    def load_checkpoint(self, job_id: str, best: bool = False) -> bytes | None:
        """The job's last checkpoint (``best``: the one kept at early stopping's best epoch so far), or None."""

    @abstractmethod
    def count_queued(self) -> int:
        """Jobs in ``queued`` (for /health)."""

    # -- versions: every change of a model's weights (create, job commit, PUT, restore) is kept in the same
    # atomic step (``Tx.insert_model``/``Tx.save_model``), keyed by (model uid, version); the newest
    # NN_KEEP_VERSIONS + 1 (the current one included)
    @abstractmethod
    def list_versions(self, model_id: str) -> list[VersionRecord]:
        """The kept versions of the model, newest (the current one) first. Raises ModelNotFound."""

    @abstractmethod
    def get_version(self, model_id: str, version: int) -> tuple[bytes, VersionRecord]:
        """The ``.npz`` bytes and record of one kept version. Raises ModelNotFound, VersionNotFound."""

    @abstractmethod
    def version_kept(self, uid: str, version: int) -> bool:
        """Whether version ``version`` of the model incarnation ``uid`` (``model_stamp``) is still kept, not pruned:
        one small read, made before serving an older version's cached network."""

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

    # -- models and the buffer ----------------------------------------------------------------
    def create_model(self, model_id: str, blob: bytes, info: dict, owner: str | None = None,
                     source: dict | None = None) -> ModelRecord:
        """Raises ModelExists. ``owner`` is kept on the record (tenancy, api/auth.py). Version 1 is kept with
        ``source`` (default: create)."""
        self.atomic(lambda tx: lifecycle.create_model(tx, model_id, uuid.uuid4().hex, blob, info, owner,
                                                      source or source_of("create"), time.time()))
        return self.get_model(model_id)

    def replace_model(self, model_id: str, blob: bytes, info: dict, expected_version: int | None = None,
                      source: dict | None = None, expected_uid: str | None = None) -> ModelRecord:
        """New weights from a client; version += 1, kept with ``source`` (default: put). Raises ModelBusy
        while a job trains it, VersionConflict when ``expected_version`` is given and stale or the model is no
        longer the one of ``expected_uid`` (deleted and created again since the caller read it)."""
        self.atomic(lambda tx: lifecycle.replace_model(tx, model_id, blob, info, expected_version,
                                                       source or source_of("put"), time.time(), expected_uid))
        return self.get_model(model_id)

    def delete_model(self, model_id: str) -> list[str]:
        """Cancels the model's active jobs, deletes it, its buffer and its versions; returns the cancelled job ids."""
        return self.atomic(lambda tx: lifecycle.delete_model(tx, model_id, time.time()))

    def append_samples(self, model_id: str, x: np.ndarray, y: np.ndarray, max_buffer: int,
                       staged: tuple[str, int] | None = None, batch_rows: int | None = None) -> tuple[int, list[JobRecord]]:
        """Appends a request's rows in one step: those it staged (``staged``: its stage id and the rows
        ``stage_samples`` last returned), then ``x``; returns the new buffer size and the ``buffering`` jobs it
        queued in the same step. Raises PayloadTooLarge past max_buffer (staged rows of other requests count),
        StoreUnavailable when some staged rows are gone (the request is refused whole). ``x`` is written in batches
        of ``batch_rows`` (all at once when None)."""
        size, promoted = self.atomic(lambda tx: lifecycle.append_samples(tx, model_id, x, y, max_buffer, time.time(),
                                                                         staged, batch_rows))
        return size, [self.get_job(j.job_id) for j in promoted]

    def stage_samples(self, model_id: str, stage_id: str, x: np.ndarray, y: np.ndarray, max_buffer: int) -> int:
        """One step of a request too large for one (``stage_id``: new for each request): the rows are kept apart,
        neither counted in the buffer nor seen by jobs, until ``append_samples`` moves them in. Returns the rows
        staged so far. Raises PayloadTooLarge when the buffer and every request's staged rows would pass max_buffer."""
        return self.atomic(lambda tx: lifecycle.stage_samples(tx, model_id, stage_id, x, y, max_buffer, time.time()))

    def discard_staged(self, model_id: str, stage_id: str) -> int:
        """Drops the rows a request staged (it failed); returns how many went."""
        return self.atomic(lambda tx: lifecycle.drop_staged(tx, model_id, stage_id))

    def drop_stale_staging(self, max_age: float = lifecycle.STALE_STAGING_SECONDS, now: float | None = None) -> int:
        """Drops the staged rows of requests that died (a crash between two of their steps): those not written to
        for ``max_age`` seconds (0 for all, when no other process can be appending); returns how many went."""
        before = (time.time() if now is None else now) - max_age
        return self.atomic(lambda tx: lifecycle.drop_stale_staging(tx, before), read_first=True)

    def staging_models(self) -> list[str]:
        """The models that hold staged rows of an append request (``stage_samples``)."""
        return self.atomic(lambda tx: tx.staging_models(), read_first=True)

    def clear_samples(self, model_id: str) -> int:
        """Empties the buffer (not samples already claimed by jobs); returns how many left."""
        return self.atomic(lambda tx: lifecycle.clear_buffer(tx, model_id))

    # -- jobs ---------------------------------------------------------------------------------
    def create_job(self, job: JobRecord, x: np.ndarray | None = None, y: np.ndarray | None = None,
                   max_buffer: int = 0) -> JobRecord:
        """Stores a ``buffering`` job (with ``job.owner``), ``queued`` in the same step when the model's buffer already
        holds ``min_samples``; with inline samples, a ``queued`` one that owns exactly those samples (claimed in the
        same step; the buffer is untouched). ``max_buffer`` is unused."""
        self.atomic(lambda tx: lifecycle.create_job(tx, job, x, y))
        return self.get_job(job.job_id)

    def create_search_job(self, job: JobRecord, trials: list[dict], x: np.ndarray | None = None,
                          y: np.ndarray | None = None, max_buffer: int = 0) -> JobRecord:
        """As ``create_job`` for a job of kind "search" (stage "trials") with these ``new_trial`` records.
        Once queued, its pending trials can be claimed; ``claim_job`` never takes a job in stage "trials"
        and such a job does not block its model's training jobs or weight updates."""
        if [t["index"] for t in trials] != list(range(len(trials))):
            raise ValueError("trials must be indexed 0, 1, ... in order")
        job.kind, job.stage = "search", "trials"
        self.atomic(lambda tx: lifecycle.create_job(tx, job, x, y, trials))
        return self.get_job(job.job_id)

    def promote_ready_jobs(self) -> list[JobRecord]:
        """Moves each ``buffering`` job whose model's buffer holds >= min_samples to ``queued``,
        claiming the buffered rows for it in the same step. The steps that fill a buffer do this for their
        model already; this heals what an older version (or a crash between two steps of one) left."""
        if not self.has_jobs((BUFFERING,)):
            return []  # the common case takes no write step
        return [self.get_job(j.job_id) for j in self.atomic(lifecycle.promote_ready)]

    def claim_job(self, worker_id: str, job_id: str | None = None) -> JobRecord | None:
        """Marks the oldest ``queued`` job (``job_id`` only, if given) whose model has no running job as ``running``."""
        if job_id is None and not self.has_jobs((QUEUED,)):
            return None
        job = self.atomic(lambda tx: lifecycle.claim(tx, worker_id, time.time(), job_id), read_first=True)
        return None if job is None else self.get_job(job.job_id)

    def set_progress(self, job_id: str, progress: dict) -> None:
        """Records a running job's progress (ignored once the job left ``running``/``cancelling``)."""
        self.atomic(lambda tx: lifecycle.record_progress(tx, job_id, progress), fence=job_id)

    def save_checkpoint(self, job_id: str, blob: bytes, info: dict, epochs_done: int, history: list[dict],
                        progress: dict, best: bool = False) -> None:
        """Keeps the network after ``epochs_done`` epochs (weights, optimizer and RNG state); ``best``: also as the
        best epoch so far of the job's early stopping, which a resumed job puts back at its end. ``history``: the
        entries of the epochs since the previous checkpoint (usually one), appended to the job's history in the same
        step, so the history always ends at the checkpoint and a write costs the same at epoch 10 and epoch 10,000."""
        self.atomic(lambda tx: lifecycle.record_checkpoint(tx, job_id, blob, info, epochs_done, history, progress,
                                                           best), fence=job_id)

    def cancel_job(self, job_id: str) -> JobRecord:
        """Waiting jobs end ``cancelled`` at once (a checkpoint, if any, goes to the model),
        running ones become ``cancelling``. Raises JobNotCancellable for finished jobs."""
        self.atomic(lambda tx: lifecycle.cancel(tx, job_id, time.time()))
        return self.get_job(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        """True when a running job should stop (cancel asked, model deleted, job gone)."""
        return self.job_status(job_id) != lifecycle.RUNNING

    def finish_job(self, job_id: str, status: str, *, blob: bytes | None = None, info: dict | None = None,
                   use_checkpoint: bool = False, error: str | None = None) -> JobRecord:
        """Ends a job (``lifecycle.finish``): the model takes ``blob`` or the checkpoint, version += 1,
        in the same step, unless it was deleted meanwhile."""
        def step(tx: Tx) -> JobRecord:
            return lifecycle.finish(tx, lifecycle.existing_job(tx, job_id), status, time.time(), blob=blob, info=info,
                                    use_checkpoint=use_checkpoint, error=error)

        self.atomic(step, fence=job_id)
        return self.get_job(job_id)

    def requeue_jobs(self, *, worker_ids: list[str] | None = None, job_ids: list[str] | None = None) -> list[JobRecord]:
        """Interrupted jobs (shutdown, crash, dead worker): ``running`` goes back to ``queued`` and
        keeps its checkpoint, ``cancelling`` ends ``cancelled``. With neither filter: all of them.
        Running search trials of those workers (all, with no filter) go back to pending."""
        fence = job_ids[0] if job_ids is not None and len(job_ids) == 1 else None
        changed = self.atomic(lambda tx: lifecycle.requeue_interrupted(tx, time.time(), worker_ids, job_ids), fence=fence)
        return [self.get_job(j.job_id) for j in changed]

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

    # -- search trials: any worker claims them; they never write the model --------------------
    def claim_trial(self, worker_id: str, job_id: str | None = None) -> tuple[JobRecord, dict] | None:
        """Marks the oldest pending trial of a queued or running search job (``job_id``'s only, if given)
        as running, and the job as running; returns the job and the trial."""
        return self.atomic(lambda tx: lifecycle.claim_trial(tx, worker_id, time.time(), job_id), read_first=True)

    def finish_trial(self, job_id: str, index: int, status: str, *, score: float | None = None,
                     metrics: dict | None = None, error: str | None = None) -> JobRecord:
        """Records a running trial's end (ignored when it is no longer running); see ``lifecycle.settle``."""
        self.atomic(lambda tx: lifecycle.finish_trial(tx, job_id, index, status, time.time(), score=score,
                                                      metrics=metrics, error=error), fence=f"{job_id}|{index}")
        return self.get_job(job_id)

    def release_trial(self, job_id: str, index: int) -> JobRecord:
        """A running trial goes back to pending (its worker stops); a "cancelling" job may end."""
        self.atomic(lambda tx: lifecycle.release_trial(tx, job_id, index, time.time()), fence=f"{job_id}|{index}")
        return self.get_job(job_id)
