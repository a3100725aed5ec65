"""Training workers: processes that claim queued jobs from the store and run the core's `fit`.

`WorkerPool` (used by the app's lifespan) starts NN_WORKERS processes with the "spawn" context,
replaces any that die and stops them at shutdown. Each worker loops: claim the oldest runnable queued
job (buffering jobs are queued by the store step that fills their buffer), train it with progress written
to the store (throttled), a checkpoint after every epoch, and the cancel flag checked between batches.
"""

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
import time
import uuid
from typing import Any

import numpy as np

from neural_net import Callback, EarlyStopping, Network, schedules
from neural_net.errors import NeuralNetError, NonFiniteError
from neural_net.training import model_state, put_back

from api.datasets import job_samples
from api.errors import DatasetNotFound, InvalidInput, LeaseLost, StoreUnavailable
from api.malloc import keep_freed_memory
from api import records
from api.records import describe, jsonable, log_transition
from api.search_trials import apply_plan, run_search_trial
from api.settings import Settings
from api.specs import FitConfig
from api.storage.base import JobRecord, Store
from api.storage.sqlite import SQLiteStore

log = logging.getLogger("api.worker")

CANCEL_CHECK_INTERVAL = 0.05  # seconds between reads of a job's cancel flag


def open_store(settings: Settings) -> SQLiteStore:
    """The embedded backend's store, as a worker process opens it (api/backend.py opens the service's)."""
    return SQLiteStore(settings.data_dir / "nn.sqlite3", keep_versions=settings.keep_versions)


class _JobCallback(Callback):
    """Writes progress (throttled) and checkpoints; says stop when the job is cancelled or the worker stops."""

    def __init__(self, store: Store, job: JobRecord, net: Network, snapshot, stop_event, interval: float,
                 stopper: EarlyStopping | None = None):
        self.store, self.job, self.net, self.snapshot, self.stopper = store, job, net, snapshot, stopper
        self.stop_event, self.interval = stop_event, interval
        self.unsaved: list[dict] = []  # history entries of the epochs since the last checkpoint
        self.last_write = self.last_check = 0.0
        self.stop_reason: str | None = None
        self.epoch = job.epochs_done

    def _progress(self, p) -> dict[str, Any]:
        # percent over the whole job, so a resumed job continues where it was
        done = (p.epoch - 1) + (p.batch / p.batches if p.batches else 0.0)
        return jsonable({
            "epoch": p.epoch, "epochs": p.epochs, "batch": p.batch, "batches": p.batches,
            "percent": round(min(100.0, 100.0 * done / p.epochs), 3), "loss": p.loss, "learning_rate": p.learning_rate,
            "samples_per_second": p.samples_per_second, "eta_seconds": p.eta_seconds, "elapsed": p.elapsed,
        })

    def _should_stop(self, force_check: bool = False) -> bool:
        if self.stop_event.is_set():
            self.stop_reason = self.stop_reason or "shutdown"
        now = time.monotonic()
        if force_check or now - self.last_check >= CANCEL_CHECK_INTERVAL:
            self.last_check = now
            if self.store.cancel_requested(self.job.job_id):
                self.stop_reason = "cancel"
        return self.stop_reason is not None

    def on_batch_end(self, p) -> bool:
        self.epoch = p.epoch
        now = time.monotonic()
        if now - self.last_write >= self.interval:
            self.last_write = now
            self.store.set_progress(self.job.job_id, self._progress(p))
        return self._should_stop()

    def on_epoch_end(self, p) -> bool:
        self.unsaved.append(jsonable({"epoch": p.epoch, **{k: v for k, v in p.logs.items() if k != "epoch"}}))
        blob, info = self.snapshot()
        # the best epoch so far of early stopping's restore_best is kept too: a resumed job puts it back at its end
        best = self.stopper is not None and self.stopper.restore_best and self.stopper.improves(p.logs)
        # only this epoch's entry goes: the store appends it (the whole history each epoch made a job quadratic)
        self.store.save_checkpoint(self.job.job_id, blob, info, p.epoch, self.unsaved, self._progress(p), best)
        self.unsaved = []
        self.last_write = time.monotonic()
        return self._should_stop(force_check=True)


def run_job(store: Store, job: JobRecord, settings: Settings, stop_event) -> JobRecord:
    """Trains one claimed job to its end (or back to the queue when the worker stops)."""
    log_transition(job, "queued")
    params = dict(job.params)
    checkpoint = store.load_checkpoint(job.job_id)
    try:
        start = None
        if job.kind == "search":  # its apply stage: a new network of the best trial's configuration
            params, start = apply_plan(store, job)
        net = Network.from_bytes(checkpoint or start or store.load_model(job.model_id)[0])
    except Exception as exc:  # model deleted meanwhile, or unreadable
        return _finish(store, job, "failed", error=f"cannot load the model: {exc}")
    try:
        x, y, validation = job_samples(store, job, settings, describe(net))
    except (InvalidInput, DatasetNotFound) as exc:  # its dataset
        return _finish(store, job, "failed", error=str(exc))
    if len(x) == 0:
        return _finish(store, job, "failed", error="the job has no samples; add samples and submit a new job")
    config = FitConfig.from_params(params)
    own_dropout = [layer.dropout for layer in net.layers]
    job_dropout = own_dropout if config.dropout is None else config.dropout
    max_loss_ratio = config.max_loss_ratio or settings.max_loss_ratio
    start_loss, trained_before = None, 0
    try:  # the loss the job starts from, on the samples its final metrics use (the blow-up guard below)
        start_net = net if checkpoint is None else Network.from_bytes(start or store.load_model(job.model_id)[0])
        trained_before = start_net.epochs_trained  # the model's epochs before this job
        start_loss = (_final_metrics(start_net, x, y, config.validation_split, validation) or {}).get("loss")
    except Exception:  # model deleted meanwhile: the job ends below as usual
        pass
    net.epochs_trained = job.epochs_done  # while it trains: the job's own epochs, as fit counts them (initial_epoch)
    if config.seed is not None and checkpoint is None:  # a resumed job keeps the RNG state of its checkpoint
        net.reseed(config.seed)

    def snapshot() -> tuple[bytes, dict]:
        """The network as the model should keep it: the model's own dropout rates, not the job's, and its epochs
        over all jobs (fit counts this job's). Non-finite weights are never checkpointed nor committed (the core
        restores finite ones first)."""
        if not np.isfinite(net._flat).all():
            raise NonFiniteError("training diverged: the weights became NaN or Inf; lower the learning_rate, "
                                 "add clip_norm, or scale the inputs", epoch=callback.epoch)
        job_epochs = net.epochs_trained
        net.set_dropout(own_dropout)
        net.epochs_trained = trained_before + job_epochs
        try:
            return net.to_bytes(), describe(net)
        finally:
            net.set_dropout(job_dropout)
            net.epochs_trained = job_epochs

    try:
        net.set_dropout(job_dropout)
    except NeuralNetError as exc:
        return _finish(store, job, "failed", error=str(exc))
    try:
        # a resumed job's schedule continues from its epochs so far (reduce_on_plateau keeps state), and so does its
        # early stopping: patience, the best value, and the best epoch's checkpoint, which it puts back at its end
        schedule = schedules.get(config.schedule or "constant", **(config.schedule_options or {})).replay(job.history)
        stopper = EarlyStopping.coerce(config.fit_kwargs().get("early_stopping"))
        best = store.load_checkpoint(job.job_id, best=True) if checkpoint is not None and stopper is not None else None
        best_state = None if best is None else model_state(Network.from_bytes(best))
        # a checkpoint from before the best one was kept (an upgrade mid-job) restores the best of the epochs to come,
        # as then: replayed, restore_best would have nothing to put back
        if stopper is not None and checkpoint is not None and (best_state is not None or not stopper.restore_best):
            stopper.resume(job.history, best_state)
        callback = _JobCallback(store, job, net, snapshot, stop_event, settings.progress_interval, stopper)
        if checkpoint is None or job.epochs_done < config.epochs:
            net.fit(x, y, callbacks=[callback], initial_epoch=job.epochs_done, validation_data=validation,
                    **{**config.fit_kwargs(), "schedule": schedule, "schedule_options": None, "early_stopping": stopper})
        elif best_state is not None and stopper.restore_best:  # the checkpoint covers every epoch: the best goes back
            put_back(net, best_state)
    except NonFiniteError as exc:
        message = str(exc).removeprefix("training ")
        if not message.startswith("diverged"):
            message = f"diverged at epoch {exc.epoch or callback.epoch + 1}: {message}"
        # the core restored the last finished epoch, which is the checkpoint: the model takes it unless it blew up
        blown_up = _blown_up(start_loss, _final_metrics(net, x, y, config.validation_split, validation), max_loss_ratio)
        if blown_up:
            return _finish(store, job, "failed", error=f"{message} Nor is that epoch kept: {blown_up}")
        return _finish(store, job, "failed", use_checkpoint=True, error=message)
    except NeuralNetError as exc:
        return _finish(store, job, "failed", use_checkpoint=True, error=str(exc))
    except (LeaseLost, StoreUnavailable):
        raise  # backend=redis: the job is not this worker's any more, or Redis is away; its lease decides
    except Exception as exc:
        log.exception("job %s crashed", job.job_id)
        return _finish(store, job, "failed", use_checkpoint=True, error=f"internal error: {exc!r}")

    if callback.stop_reason == "cancel":
        return _finish(store, job, "cancelled", use_checkpoint=True)
    if callback.stop_reason == "shutdown":
        requeued = store.requeue_jobs(job_ids=[job.job_id])
        for record in requeued:
            log_transition(record, "running")
        return requeued[0] if requeued else store.get_job(job.job_id)
    try:
        blob, info = snapshot()
    except NonFiniteError as exc:
        return _finish(store, job, "failed", use_checkpoint=True, error=str(exc).removeprefix("training "))
    metrics = _final_metrics(net, x, y, config.validation_split, validation)
    blown_up = _blown_up(start_loss, metrics, max_loss_ratio)
    if blown_up:  # the model keeps its weights from before the job
        return _finish(store, job, "failed", error=f"diverged: {blown_up}")
    final = store.get_job(job.job_id).progress or {}
    final.update(percent=100.0, eta_seconds=0.0, metrics=metrics)
    store.set_progress(job.job_id, final)
    return _finish(store, job, "succeeded", blob=blob, info=info)


def _blown_up(start_loss: float | None, metrics: dict | None, ratio: float) -> str | None:
    """Why a job must not replace its model: its loss on the samples of its final metrics ended more than `ratio`
    times the loss it started from (NN_MAX_LOSS_RATIO, or the job's max_loss_ratio). None if fine."""
    end_loss = (metrics or {}).get("loss")
    if start_loss is None or not start_loss > 0:
        return None
    if end_loss is None:  # evaluate failed or gave Inf/NaN: the trained network's outputs overflow
        return (f"the loss, {start_loss:.4g} before the job, cannot be computed after it (the outputs overflow); the "
                "model keeps its weights from before the job. Lower the learning_rate, add clip_norm, or scale the inputs.")
    if end_loss <= ratio * start_loss:
        return None
    return (f"the loss on the {metrics['samples']} {metrics['on']} samples rose from {start_loss:.4g} before "
            f"the job to {end_loss:.4g}, more than max_loss_ratio={ratio:g} times; the model keeps its weights from "
            "before the job. Lower the learning_rate, add clip_norm, or raise max_loss_ratio if this is expected.")


def _final_metrics(net: Network, x, y, validation_split: float | None, validation: tuple | None = None) -> dict | None:
    """The trained model's loss and metrics (confusion matrix included for classifiers) on its
    validation_dataset, or the samples fit held out for validation (the last fraction), or on all its
    samples without any."""
    n_val = int(round(len(x) * validation_split)) if validation_split else 0
    if validation is not None:
        on, (x, y) = "validation", validation
    else:
        on, (x, y) = ("validation", (x[-n_val:], y[-n_val:])) if 0 < n_val < len(x) else ("training", (x, y))
    try:
        return jsonable({"on": on, "samples": len(x), **net.evaluate(x, y)})
    except NeuralNetError:  # e.g. outputs that overflow: the job still succeeded
        return None


def _finish(store: Store, job: JobRecord, status: str, **kwargs) -> JobRecord:
    before = store.get_job(job.job_id).status
    done = store.finish_job(job.job_id, status, **kwargs)
    log_transition(done, before)
    return done


def _die_with_parent(parent_pid: int | None) -> None:
    """A worker must not outlive its service (killed with SIGKILL, say): the next service requeues
    the job, and an orphan still training it would write over the new run. On Linux the kernel
    kills us when the parent dies; elsewhere the loops below notice the new parent id."""
    if parent_pid is None:
        return
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    _exit_if_orphaned(parent_pid)


def _exit_if_orphaned(parent_pid: int | None) -> None:
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # write nothing more: the job belongs to whoever recovers it


def worker_main(settings_data: dict, worker_id: str, parent_pid: int | None = None) -> None:
    """Entry point of a worker process. SIGTERM asks it to stop: a running job goes back to the
    queue after its current batch. (A shared multiprocessing.Event would deadlock the service's
    shutdown once a worker died while waiting on it, so each worker has a local one.)"""
    _die_with_parent(parent_pid)
    stop_event = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop_event.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C reaches the whole group; the service stops us
    settings = Settings(**settings_data)
    keep_freed_memory(settings.malloc_keep_mb, settings.malloc_arenas)
    if settings.worker_nice:
        os.nice(settings.worker_nice)  # training yields the CPU to the service's requests
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = open_store(settings)
    log.info("worker %s started", worker_id)
    while not stop_event.is_set():
        try:
            job = store.claim_job(worker_id)
            trial = None if job is not None else store.claim_trial(worker_id)  # a search's trial (api/search.py)
        except Exception:
            log.exception("worker %s: store error; retrying", worker_id)
            job = trial = None
        if job is None and trial is None:
            stop_event.wait(settings.poll_interval)
            _exit_if_orphaned(parent_pid)
            continue
        if trial is not None:
            run_search_trial(store, *trial, settings, stop_event)
        else:
            run_job(store, job, settings, stop_event)
    log.info("worker %s stopped", worker_id)


class WorkerPool:
    """The embedded backend's training processes, owned by the app's lifespan."""

    def __init__(self, settings: Settings, store: Store):
        self.settings = settings
        self.store = store
        self.context = multiprocessing.get_context("spawn")
        self.stopping = False
        self.processes: dict[str, multiprocessing.process.BaseProcess] = {}
        self._supervisor: asyncio.Task | None = None

    @property
    def alive(self) -> int:
        return sum(p.is_alive() for p in self.processes.values())

    def _spawn(self) -> None:
        worker_id = f"w-{uuid.uuid4().hex[:8]}"
        settings_data = self.settings.model_dump(mode="json")
        process = self.context.Process(target=worker_main, args=(settings_data, worker_id, os.getpid()),
                                       name=f"nn-worker-{worker_id}", daemon=True)
        process.start()
        self.processes[worker_id] = process

    def start(self) -> None:
        for _ in range(self.settings.workers):
            self._spawn()
        if self.settings.workers:
            self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    async def _supervise(self) -> None:
        """Replaces dead workers; their interrupted jobs go back to the queue first."""
        while not self.stopping:
            await asyncio.sleep(0.5)
            dead = [wid for wid, p in self.processes.items() if not p.is_alive()]
            if not dead or self.stopping:
                continue
            for worker_id in dead:
                log.warning("worker %s died (exit code %s); starting a new one", worker_id, self.processes[worker_id].exitcode)
                del self.processes[worker_id]
            await asyncio.to_thread(records.requeue_interrupted, self.store, dead)
            for _ in dead:
                self._spawn()

    async def stop(self) -> None:
        """SIGTERM to every worker (each requeues its running job after the current batch), then
        SIGKILL for any still alive after NN_SHUTDOWN_TIMEOUT; their jobs are requeued here."""
        self.stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
        for process in self.processes.values():
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + self.settings.shutdown_timeout
        for process in self.processes.values():
            await asyncio.to_thread(process.join, max(0.0, deadline - time.monotonic()))
        for worker_id, process in self.processes.items():
            if process.is_alive():
                log.warning("worker %s did not stop in time; killing it", worker_id)
                process.kill()
                await asyncio.to_thread(process.join, 5)
        try:
            await asyncio.to_thread(records.requeue_interrupted, self.store, list(self.processes))
        except StoreUnavailable as exc:  # a damaged database: the next start refuses and says how to recover
            log.error("cannot requeue interrupted jobs: %s", exc)
        self.processes.clear()
