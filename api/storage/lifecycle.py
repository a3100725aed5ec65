"""The job life cycle, written once: the states, the allowed transitions, and what each transition
does to samples, checkpoints, search trials and model versions.

Every function here takes a ``Tx``, the store's atomic step (SQLite: one ``BEGIN IMMEDIATE``
transaction; Redis: WATCH/MULTI/EXEC, run again from the start when a watched key changed), reads
records through it, decides, and writes records back through it. A store implements only the
primitives of ``Tx`` (read a record, write a record, move sample batches); no rule lives in a store.

    buffering --promote--> queued --claim--> running --finish--> succeeded | failed | cancelled
        |                    |  ^              |  |
        +--cancel------------+--|--> cancelled |  +--cancel--> cancelling --finish/requeue--> cancelled
                                +---requeue----+

A search job (kind "search") runs its trials while ``queued``/``running`` in stage "trials"; when
none is left it ends, or with ``apply_best`` goes back to ``queued`` in stage "apply" and is then
claimed and finished like a training job.
"""

from typing import Protocol

import numpy as np

from api.errors import (JobNotCancellable, JobNotFound, ModelBusy, ModelExists, ModelNotFound, PayloadTooLarge,
                        StoreUnavailable, VersionConflict)
from api.storage.records import JobRecord, ModelRecord, source_of, with_trials

BUFFERING, QUEUED, RUNNING, CANCELLING = "buffering", "queued", "running", "cancelling"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
WAITING = (BUFFERING, QUEUED)
ACTIVE = (BUFFERING, QUEUED, RUNNING, CANCELLING)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
TRANSITIONS = {
    BUFFERING: {QUEUED, CANCELLED},  # promoted when the buffer holds min_samples; cancelled (or model deleted)
    QUEUED: {RUNNING, CANCELLED, FAILED},  # claimed by a worker (a search: its first trial); failed: RQ gave up its run
    RUNNING: {QUEUED, CANCELLING, *TERMINAL},  # requeued (worker stopped or lost), cancel asked, ended
    CANCELLING: {*TERMINAL},  # the worker stops at its next check, or the job is requeued: cancelled
}
TRIAL_STATUSES = ("pending", "running", "succeeded", "failed", "cancelled")
# a request's staged rows not written to for this long belong to a request that died (a live one writes its
# steps back to back); any step on the model, and a start, removes them
STALE_STAGING_SECONDS = 600.0


class IllegalTransition(RuntimeError):
    """A bug: code asked for a move the life cycle does not allow."""


class Tx(Protocol):
    """One atomic step of a store. Reads see this step's own writes; a ``JobRecord`` read here carries no trials and
    no history (``history`` reads it; ``add_history`` appends to it: a job's write never grows with its epochs). Jobs
    are listed oldest first (creation order)."""

    def model(self, model_id: str) -> ModelRecord | None: ...
    def job(self, job_id: str) -> JobRecord | None: ...
    def jobs(self, statuses: tuple[str, ...], model_id: str | None = None) -> list[JobRecord]: ...
    def buffered(self, model_id: str) -> int: ...
    def staged(self, model_id: str) -> dict[str, tuple[int, float]]: ...  # stage id -> (rows, last written)
    def staging_models(self) -> list[str]: ...  # the models with staged rows
    def trials(self, job_id: str) -> list[dict]: ...
    def checkpoint(self, job_id: str) -> tuple[bytes, dict] | None: ...
    def history(self, job_id: str) -> list[dict]: ...  # the whole history (not this step's appends)

    # a model's weights are also kept as its version (uid, version) with their source, in the same step
    def insert_model(self, model_id: str, uid: str, blob: bytes, info: dict, owner: str | None, source: dict,
                     now: float) -> None: ...
    def save_model(self, model_id: str, blob: bytes, info: dict, version: int, source: dict, now: float) -> None: ...
    def drop_model(self, model_id: str) -> None: ...  # the record, its buffer and its kept versions
    def insert_job(self, job: JobRecord) -> None: ...
    def save_job(self, job: JobRecord) -> None: ...  # every field but ``history`` (insert_job writes that too)
    def add_history(self, job_id: str, entries: list[dict]) -> None: ...  # appended, in order
    def put_checkpoint(self, job_id: str, blob: bytes, info: dict, best: bool = False) -> None: ...
    def drop_checkpoint(self, job_id: str) -> None: ...
    def insert_trials(self, job_id: str, trials: list[dict]) -> None: ...
    def save_trial(self, job_id: str, trial: dict) -> None: ...
    def add_samples(self, model_id: str, job_id: str | None, x: np.ndarray, y: np.ndarray) -> None: ...
    def claim_buffer(self, model_id: str, job_id: str, copy: bool) -> None: ...  # all of it, in order
    def return_samples(self, job_id: str, model_id: str, n: int) -> None: ...  # to the buffer's front
    def drop_samples(self, job_id: str) -> None: ...
    def clear_buffer(self, model_id: str) -> None: ...
    # a request's rows held apart (not in ``buffered``, no job takes them) until ``unstage`` moves them to the
    # buffer's end, in order; ``drop_model`` drops the model's staged rows too
    def stage_samples(self, model_id: str, stage_id: str, x: np.ndarray, y: np.ndarray, now: float) -> None: ...
    def unstage(self, model_id: str, stage_id: str) -> None: ...
    def drop_staged(self, model_id: str, stage_id: str) -> None: ...
    def ready(self, job_id: str) -> None: ...  # the job (or one more of its trials) can be claimed now: a runner may enqueue it


def move(job: JobRecord, status: str) -> JobRecord:
    if status != job.status and status not in TRANSITIONS.get(job.status, ()):
        raise IllegalTransition(f"job {job.job_id}: {job.status} -> {status} is not a transition of the life cycle")
    job.status = status
    return job


def existing_job(tx: Tx, job_id: str) -> JobRecord:
    job = tx.job(job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job


def existing_model(tx: Tx, model_id: str) -> ModelRecord:
    model = tx.model(model_id)
    if model is None:
        raise ModelNotFound(model_id)
    return model


def busy_with(tx: Tx, model_id: str) -> str | None:
    """The job that writes the model now (one at a time); search trials never write it."""
    return next((j.job_id for j in tx.jobs((RUNNING, CANCELLING), model_id) if j.stage != "trials"), None)


# -- models and the buffer ---------------------------------------------------------------------
def create_model(tx: Tx, model_id: str, uid: str, blob: bytes, info: dict, owner: str | None, source: dict,
                 now: float) -> None:
    if tx.model(model_id) is not None:
        raise ModelExists(model_id)
    tx.insert_model(model_id, uid, blob, info, owner, source, now)


def replace_model(tx: Tx, model_id: str, blob: bytes, info: dict, expected_version: int | None, source: dict,
                  now: float, expected_uid: str | None = None) -> None:
    """New weights from a client, version += 1; never while a job trains the model, nor onto a model other than
    ``expected_uid`` (a namesake created since has the same versions: the old layers landed on it)."""
    model = existing_model(tx, model_id)
    if expected_uid is not None and expected_uid != model.uid:
        raise VersionConflict(f"model {model_id!r} was deleted and created again since it was read (its ETags changed); "
                              f"GET it again and retry")
    if expected_version is not None and expected_version != model.version:
        raise VersionConflict(f"model {model_id!r} is at version {model.version}, not {expected_version}; "
                              f"GET its weights again and retry")
    busy = busy_with(tx, model_id)
    if busy is not None:
        raise ModelBusy(f"model {model_id!r} is being trained by job {busy!r}; wait for it to finish "
                        f"or cancel it with POST /jobs/{busy}/cancel")
    # a job put back in the queue with epochs done resumes from its checkpoint and commits over whatever came since
    resuming = next((j for j in tx.jobs((QUEUED,), model_id) if j.stage != "trials" and j.epochs_done), None)
    if resuming is not None:
        raise ModelBusy(f"model {model_id!r} has job {resuming.job_id!r} queued to resume from its checkpoint (epoch "
                        f"{resuming.epochs_done}), which it would commit over these weights; wait for it to finish "
                        f"or cancel it with POST /jobs/{resuming.job_id}/cancel")
    tx.save_model(model_id, blob, info, model.version + 1, source, now)


def delete_model(tx: Tx, model_id: str, now: float) -> list[str]:
    """Waiting jobs end cancelled, running ones are told to stop; the model, its buffer and every
    sample its jobs hold go. Returns the ids of the jobs it stopped."""
    existing_model(tx, model_id)
    stopped = tx.jobs(ACTIVE, model_id)
    for job in stopped:
        job.error = "model deleted"
        if job.status in WAITING:
            move(job, CANCELLED).finished_at = now
            tx.drop_checkpoint(job.job_id)
            for trial in tx.trials(job.job_id) if job.kind == "search" else []:
                _stop_trial(tx, job.job_id, trial, now)
        else:
            move(job, CANCELLING)
        tx.save_job(job)
        tx.drop_samples(job.job_id)
    tx.drop_model(model_id)
    for job in stopped:
        settle(tx, job.job_id, now)
    return [j.job_id for j in stopped]


def _stagings(tx: Tx, model_id: str, now: float) -> dict[str, int]:
    """The rows of each request the model is staging now; those of requests that died (not written to for
    ``STALE_STAGING_SECONDS``) are dropped in this step."""
    stale = now - STALE_STAGING_SECONDS
    drop_staged(tx, model_id, before=stale)
    return {stage_id: n for stage_id, (n, written) in tx.staged(model_id).items() if written >= stale}


def _check_room(tx: Tx, model_id: str, size: int, others: int, max_buffer: int) -> None:
    """``size``: the buffer with this request's rows; ``others``: rows other requests are staging, which count too, so
    the limit bounds what can ever reach the buffer."""
    if max_buffer and size + others > max_buffer:
        staging = f" (and {others} rows of other requests being appended)" if others else ""
        raise PayloadTooLarge(f"the buffer of model {model_id!r} would hold {size} samples{staging}, more than "
                              f"NN_MAX_BUFFER_SAMPLES={max_buffer}; train on it or clear it first")


def stage_samples(tx: Tx, model_id: str, stage_id: str, x: np.ndarray, y: np.ndarray, max_buffer: int,
                  now: float) -> int:
    """One step of a large request: its rows are held apart under ``stage_id`` (not counted in the buffer, no job
    takes them) until ``append_samples`` moves them in. Returns the rows staged so far."""
    existing_model(tx, model_id)
    stagings = _stagings(tx, model_id, now)
    mine = stagings.pop(stage_id, 0) + len(x)
    _check_room(tx, model_id, tx.buffered(model_id) + mine, sum(stagings.values()), max_buffer)
    tx.stage_samples(model_id, stage_id, x, y, now)
    return mine


def append_samples(tx: Tx, model_id: str, x: np.ndarray, y: np.ndarray, max_buffer: int, now: float,
                   staged: tuple[str, int] | None = None, batch_rows: int | None = None) -> tuple[int, list[JobRecord]]:
    """A request's rows reach the buffer in one step, all or none: those it staged (``staged``: its stage id and
    how many rows it staged), then ``x``. The model's jobs that now have enough are promoted in this same step.
    Returns the new buffer size and those jobs."""
    existing_model(tx, model_id)
    stagings = _stagings(tx, model_id, now)
    mine = stagings.pop(staged[0], 0) if staged else 0
    if staged and mine != staged[1]:
        raise StoreUnavailable(f"{staged[1] - mine} of the rows this request staged for model {model_id!r} were removed "
                               f"(no store step reached them for {STALE_STAGING_SECONDS:.0f} s, or the model was "
                               "deleted meanwhile); nothing was added to the buffer: send the request again")
    size = tx.buffered(model_id) + mine + len(x)
    _check_room(tx, model_id, size, sum(stagings.values()), max_buffer)
    if staged:
        tx.unstage(model_id, staged[0])
    step = batch_rows or max(1, len(x))
    for start in range(0, len(x), step):
        tx.add_samples(model_id, None, x[start:start + step], y[start:start + step])
    promoted = promote_ready(tx, model_id)
    return (tx.buffered(model_id) if promoted else size), promoted  # a job it queued may have taken the rows


def drop_staged(tx: Tx, model_id: str, stage_id: str | None = None, before: float | None = None) -> int:
    """Drops the rows staged under ``stage_id`` (a request that failed), or those of each of the model's requests
    last written before ``before`` (requests that died); returns how many rows went."""
    dropped = 0
    for sid, (n, written) in tx.staged(model_id).items():
        if sid == stage_id or (before is not None and written < before):
            tx.drop_staged(model_id, sid)
            dropped += n
    return dropped


def drop_stale_staging(tx: Tx, before: float) -> int:
    """Drops the staged rows of every request last written before ``before`` (requests that died)."""
    return sum(drop_staged(tx, model_id, before=before) for model_id in tx.staging_models())


def clear_buffer(tx: Tx, model_id: str) -> int:
    existing_model(tx, model_id)
    n = tx.buffered(model_id)
    tx.clear_buffer(model_id)
    return n


# -- jobs --------------------------------------------------------------------------------------
def create_job(tx: Tx, job: JobRecord, x: np.ndarray | None, y: np.ndarray | None,
               trials: list[dict] | None = None) -> JobRecord:
    """A new job. Its inline samples are its own from this step on: it is queued at once and never
    touches the buffer. Without them it is ``buffering``, and promoted in this same step when its model's
    buffer already holds enough (``promote_ready``)."""
    model = existing_model(tx, job.model_id)
    inline = x is not None and len(x) > 0
    job.model_uid, job.status, job.n_samples = model.uid, QUEUED if inline else BUFFERING, len(x) if inline else 0
    tx.insert_job(job)
    if trials is not None:
        tx.insert_trials(job.job_id, trials)
    if not inline:
        return next((j for j in promote_ready(tx, job.model_id) if j.job_id == job.job_id), job)
    tx.add_samples(job.model_id, job.job_id, x, y)
    _offer(tx, job)
    return job


def _head(tx: Tx, model_id: str) -> JobRecord | None:
    """The model's oldest queued job that writes it (the next one ``claim`` takes)."""
    return next((j for j in tx.jobs((QUEUED,), model_id) if j.stage != "trials"), None)


def _offer_head(tx: Tx, model_id: str) -> None:
    """The model's writer changed or its head of line left: the new head can be claimed, if nothing writes now."""
    head = _head(tx, model_id)
    if head is not None and busy_with(tx, model_id) is None:
        tx.ready(head.job_id)


def _offer(tx: Tx, job: JobRecord) -> None:
    """A job just became queued: it can be claimed now if it heads its model's line and nothing writes the model
    (one ``ready`` per claimable job, so a queue built from them never holds a job twice); a search in its
    trials stage once per pending trial (trials never wait for the model)."""
    if job.stage == "trials":
        for _ in [t for t in tx.trials(job.job_id) if t["status"] == "pending"]:
            tx.ready(job.job_id)
    elif _head(tx, job.model_id).job_id == job.job_id and busy_with(tx, job.model_id) is None:
        tx.ready(job.job_id)


def promote_ready(tx: Tx, model_id: str | None = None) -> list[JobRecord]:
    """Each buffering job (of ``model_id`` only, if given) whose model's buffer holds >= min_samples takes
    the buffer (or a copy of it) and is queued; first come, first served within a model. Every step that
    fills a buffer or lets a line move runs it for that model (append, create_job, finish), so a job never
    waits with a full buffer; ``Store.promote_ready_jobs`` heals state older than that."""
    promoted, blocked = [], set()
    for job in tx.jobs((BUFFERING,), model_id):
        if job.model_id in blocked:
            continue
        available = tx.buffered(job.model_id)
        if available < job.min_samples:
            blocked.add(job.model_id)
            continue
        tx.claim_buffer(job.model_id, job.job_id, copy=not job.consume_buffer)
        move(job, QUEUED).n_samples = available
        tx.save_job(job)
        _offer(tx, job)
        promoted.append(job)
    return promoted


def claim(tx: Tx, worker_id: str, now: float, job_id: str | None = None) -> JobRecord | None:
    """The oldest queued job (``job_id`` only, if given) whose model no job writes now becomes running."""
    candidates = [tx.job(job_id)] if job_id else tx.jobs((QUEUED,))
    for job in candidates:
        if job is None or job.status != QUEUED or job.stage == "trials" or busy_with(tx, job.model_id):
            continue
        move(job, RUNNING).worker_id = worker_id
        job.started_at = job.started_at or now
        tx.save_job(job)
        return job
    return None


def record_progress(tx: Tx, job_id: str, progress: dict) -> None:
    job = tx.job(job_id)
    if job is not None and job.status in (RUNNING, CANCELLING):
        job.progress = progress
        tx.save_job(job)


def record_checkpoint(tx: Tx, job_id: str, blob: bytes, info: dict, epochs_done: int, history: list[dict],
                      progress: dict, best: bool = False) -> None:
    """The network after ``epochs_done`` epochs; the job resumes from it when it is requeued. ``history``: the entries
    of the epochs since the last checkpoint, appended in this step (those of epochs it already covers are skipped)."""
    job = tx.job(job_id)
    if job is not None and job.status in (RUNNING, CANCELLING):
        tx.add_history(job_id, [h for h in history if h.get("epoch", 0) > job.epochs_done])
        job.epochs_done, job.progress = epochs_done, progress
        tx.save_job(job)
        tx.put_checkpoint(job_id, blob, info, best)


def finish(tx: Tx, job: JobRecord, status: str, now: float, *, blob: bytes | None = None, info: dict | None = None,
           use_checkpoint: bool = False, error: str | None = None) -> JobRecord:
    """Ends a job. The model (if it is still the one the job was made for) takes ``blob``, or with
    ``use_checkpoint`` the last checkpoint, version += 1. A job whose model was deleted ends ``cancelled``
    whatever status was asked (its training may have ended: nothing reached a model). Samples that changed
    the model are used up; otherwise consumed ones go back to the buffer's front and copies are dropped. A
    search's trials that had not ended are cancelled. Finishing an ended job changes nothing."""
    if job.status in TERMINAL:
        return job
    waited = job.status == BUFFERING
    writer = job.stage != "trials" and (job.status in (RUNNING, CANCELLING) or (job.status == QUEUED and
                                                                                  _head(tx, job.model_id).job_id == job.job_id))
    if blob is None and use_checkpoint:
        blob, info = tx.checkpoint(job.job_id) or (None, None)
    model = tx.model(job.model_id)
    same = model is not None and model.uid == job.model_uid
    if not same:  # deleted (delete_model told the job to stop) and perhaps made again: another model
        status, error = CANCELLED, "model deleted"
    job.model_version = None
    if blob is not None and same:
        job.model_version = model.version + 1
        tx.save_model(job.model_id, blob, info, job.model_version, source_of("job", job_id=job.job_id, job_status=status),
                      now)
    returned = blob is None and same and job.consume_buffer and job.n_samples
    if returned:
        tx.return_samples(job.job_id, job.model_id, job.n_samples)
    else:
        tx.drop_samples(job.job_id)
    move(job, status)
    job.error, job.finished_at, job.worker_id = error or job.error, now, None
    tx.save_job(job)
    tx.drop_checkpoint(job.job_id)
    if job.kind == "search":
        for trial in tx.trials(job.job_id):
            _stop_trial(tx, job.job_id, trial, now)
    if writer:  # it wrote the model, or headed its line: the next job may go
        _offer_head(tx, job.model_id)
    if returned or (waited and same):  # the buffer grew, or a buffering job ahead in line left
        promote_ready(tx, job.model_id)
    return job


def cancel(tx: Tx, job_id: str, now: float) -> JobRecord:
    """Waiting jobs end ``cancelled`` at once (a checkpoint, if any, goes to the model); running ones
    become ``cancelling`` and their worker stops."""
    job = existing_job(tx, job_id)
    if job.status in WAITING:
        return finish(tx, job, CANCELLED, now, use_checkpoint=True)
    if job.status == RUNNING:
        tx.save_job(move(job, CANCELLING))
        settle(tx, job_id, now)  # a search with no running trial ends now
        return job
    if job.status == CANCELLING:
        return job
    raise JobNotCancellable(f"job {job_id!r} already ended {job.status!r}; only waiting or running jobs can be cancelled")


def requeue(tx: Tx, job: JobRecord, now: float, reason: str | None = None) -> JobRecord:
    """An interrupted job (worker stopped, crashed or lost): ``running`` goes back to ``queued`` and
    resumes from its checkpoint; ``cancelling`` ends ``cancelled``. A ``reason`` goes into the history."""
    if job.status == CANCELLING:
        return finish(tx, job, CANCELLED, now, use_checkpoint=True)
    if job.status != RUNNING:
        return job
    move(job, QUEUED).worker_id = None
    if reason is not None:
        restarts = sum(1 for h in tx.history(job.job_id) if h.get("event") == "restart")
        tx.add_history(job.job_id, [{"event": "restart", "restart": restarts + 1, "epoch": job.epochs_done, "time": now,
                                     "reason": reason}])
    tx.save_job(job)
    _offer_head(tx, job.model_id)
    return job


def requeue_interrupted(tx: Tx, now: float, worker_ids: list[str] | None = None,
                        job_ids: list[str] | None = None) -> list[JobRecord]:
    """Requeues the running jobs of those workers (or those jobs; with neither: all); their running
    search trials go back to pending."""
    changed = []
    for job in tx.jobs((QUEUED, RUNNING, CANCELLING)):
        if job_ids is not None and job.job_id not in job_ids:
            continue
        if job.stage == "trials":
            released = [t for t in tx.trials(job.job_id) if t["status"] == "running"
                        and (worker_ids is None or t["worker_id"] in worker_ids)]
            for trial in released:
                release_trial(tx, job.job_id, trial["index"], now)
        elif job.status != QUEUED and (worker_ids is None or job.worker_id in worker_ids):
            changed.append(requeue(tx, job, now))
    return changed


# -- search trials -----------------------------------------------------------------------------
def _stop_trial(tx: Tx, job_id: str, trial: dict, now: float) -> None:
    if trial["status"] in ("pending", "running"):
        trial.update(status="cancelled", finished_at=now)
        tx.save_trial(job_id, trial)


def settle(tx: Tx, job_id: str, now: float) -> None:
    """A search job in its trials stage ends (or goes to its apply stage) once nothing is left to run."""
    job = tx.job(job_id)
    if job is None or job.kind != "search" or job.stage != "trials" or job.status not in (QUEUED, RUNNING, CANCELLING):
        return
    counts: dict[str, int] = {}
    for trial in tx.trials(job_id):
        counts[trial["status"]] = counts.get(trial["status"], 0) + 1
    if counts.get("running"):
        return
    if job.status == CANCELLING:
        finish(tx, job, CANCELLED, now)
    elif counts.get("pending"):
        return
    elif not counts.get("succeeded"):
        finish(tx, job, FAILED, now, error="every trial failed; see each trial's error")
    elif job.params.get("apply_best"):
        job.stage = "apply"
        tx.save_job(move(job, QUEUED))
        _offer(tx, job)
    else:
        finish(tx, job, SUCCEEDED, now)


def claim_trial(tx: Tx, worker_id: str, now: float, job_id: str | None = None) -> tuple[JobRecord, dict] | None:
    """The oldest pending trial of a queued or running search (``job_id``'s only, if given) runs."""
    for job in [tx.job(job_id)] if job_id else tx.jobs((QUEUED, RUNNING)):
        if job is None or job.stage != "trials" or job.status not in (QUEUED, RUNNING):
            continue
        trials = tx.trials(job.job_id)
        trial = next((t for t in trials if t["status"] == "pending"), None)
        if trial is None:
            continue
        trial.update(status="running", worker_id=worker_id, started_at=now)
        tx.save_trial(job.job_id, trial)
        move(job, RUNNING).started_at = job.started_at or now
        tx.save_job(job)
        return with_trials(job, trials), trial
    return None


def finish_trial(tx: Tx, job_id: str, index: int, status: str, now: float, *, score: float | None = None,
                 metrics: dict | None = None, error: str | None = None) -> None:
    """A running trial's end (ignored when it no longer runs); the job settles."""
    existing_job(tx, job_id)
    trial = next((t for t in tx.trials(job_id) if t["index"] == index), None)
    if trial is None or trial["status"] != "running":
        return
    trial.update(status=status, score=score, metrics=metrics, error=error, finished_at=now)
    tx.save_trial(job_id, trial)
    settle(tx, job_id, now)


def release_trial(tx: Tx, job_id: str, index: int, now: float) -> None:
    """A running trial goes back to pending (its worker stopped or was lost); the job settles."""
    job = existing_job(tx, job_id)
    trial = next((t for t in tx.trials(job_id) if t["index"] == index), None)
    if trial is not None and trial["status"] == "running":
        trial.update(status="pending", worker_id=None, started_at=None)
        tx.save_trial(job_id, trial)
        if job.status in (QUEUED, RUNNING):
            tx.ready(job_id)
    settle(tx, job_id, now)

