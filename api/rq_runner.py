"""The Redis backend's job runner: training jobs go through an RQ queue to worker processes on any machine.

The embedded backend's runner is `api.worker.WorkerPool` (processes polling the SQLite store); this
one enqueues one RQ job per training job, ``train(job_id)``, whose worker claims the job in the
`RedisStore` with a lease and runs the same `api.worker.run_job` as the embedded workers.

- ``python main.py worker`` (or ``rq worker -w api.rq_runner.TrainingWorker nn-training`` with the
  same NN_ environment) starts a worker. It retries with backoff while Redis is unreachable.
- A heartbeat thread renews the job's lease every lease/3 seconds; every write for the job is
  fenced by the lease token, so a worker that lost its lease cannot overwrite anything.
- Each worker also runs a sweeper thread: buffering jobs whose buffer filled are promoted, running
  jobs whose lease expired (a worker SIGKILLed) go back to the queue from their checkpoint, and
  every queued job that no live RQ job carries is enqueued again.
"""

import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass

import redis
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus

from api.errors import LeaseLost, StoreUnavailable
from api.settings import Settings, get_settings
from api.storage.redis_store import RedisStore

log = logging.getLogger("api.rq")

TRAIN_FUNCTION = "api.rq_runner.train"
LIVE = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED, JobStatus.CREATED}
WORKER_TTL = 60  # seconds an RQ worker stays listed after its last heartbeat


class Dispatcher:
    """Puts training jobs on the RQ queue; remembers which RQ job carries which training job."""

    def __init__(self, connection: redis.Redis, queue_name: str, prefix: str):
        self.connection, self.prefix = connection, prefix
        self.queue = Queue(queue_name, connection=connection)

    def _marker(self, job_id: str) -> str:
        return f"{self.prefix}:dispatch:{job_id}"

    def enqueue(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            rq_job = self.queue.enqueue(TRAIN_FUNCTION, job_id, job_timeout=-1, result_ttl=300, failure_ttl=86400,
                                        description=f"train {job_id}")
            self.connection.set(self._marker(job_id), rq_job.id, ex=7 * 86400)

    def enqueue_missing(self, job_ids: list[str]) -> list[str]:
        """Enqueues those of ``job_ids`` that no queued or running RQ job carries (lost or no-op runs)."""
        if not job_ids:
            return []
        markers = self.connection.mget([self._marker(j) for j in job_ids])
        carried = {j: m.decode() for j, m in zip(job_ids, markers) if m}
        live = set()
        if carried:
            for job_id, rq_job in zip(carried, Job.fetch_many(list(carried.values()), connection=self.connection)):
                if rq_job is not None and rq_job.get_status(refresh=False) in LIVE:
                    live.add(job_id)
        missing = [j for j in job_ids if j not in live]
        self.enqueue(missing)
        return missing


def open_redis_store(settings: Settings, *, worker: bool = False) -> RedisStore:
    """The store with its dispatcher. Workers retry commands through short outages; the API answers 503 at once."""
    store = RedisStore(settings.redis_url, prefix=settings.redis_prefix, lease_seconds=settings.lease_seconds,
                       socket_timeout=settings.redis_timeout, retries=5 if worker else 0,
                       keep_versions=settings.keep_versions)
    store.on_queued = Dispatcher(store.redis, settings.redis_queue, settings.redis_prefix).enqueue
    return store


def queue_stats(store: RedisStore, settings: Settings) -> dict:
    """What /health shows for the redis backend: RQ queue length, live workers, queued training jobs."""
    queue = Queue(settings.redis_queue, connection=store.redis)
    from rq import Worker

    return {"queue_length": queue.count, "workers_alive": Worker.count(connection=store.redis, queue=queue),
            "queued_jobs": store.count_queued()}


# -- the worker side -------------------------------------------------------------------------------
@dataclass
class _Context:
    settings: Settings
    store: RedisStore
    dispatcher: Dispatcher
    worker_id: str
    stop_event: threading.Event


_context: _Context | None = None
_context_lock = threading.Lock()


def context() -> _Context:
    """The worker process's settings, store and stop flag (made on first use, from the NN_ environment)."""
    global _context
    with _context_lock:
        if _context is None:
            settings = get_settings()
            store = open_redis_store(settings, worker=True)
            _context = _Context(settings, store, Dispatcher(store.redis, settings.redis_queue, settings.redis_prefix),
                                f"{socket.gethostname()}-{os.getpid()}", threading.Event())
        return _context


def sweep(ctx: _Context) -> None:
    """Promote full buffers, requeue jobs with an expired lease, enqueue queued jobs nothing carries."""
    ctx.store.promote_ready_jobs()
    ctx.store.recover_expired()
    ctx.store.recover_expired_trials()
    ctx.dispatcher.enqueue_missing(ctx.store.runnable_queued())


class _Heartbeat(threading.Thread):
    def __init__(self, store: RedisStore, job_id: str, interval: float):
        super().__init__(name=f"lease-{job_id[:8]}", daemon=True)
        self.store, self.job_id, self.interval = store, job_id, interval
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval):
            try:
                if not self.store.renew_lease(self.job_id):
                    log.warning("job %s: lease lost; the training stops at its next check", self.job_id)
                    return
            except StoreUnavailable as exc:
                log.warning("job %s: cannot renew the lease: %s", self.job_id, exc)


def train(job_id: str) -> str:
    """The RQ job: claim the training job (if it still waits and its model is free) and run it."""
    from api.worker import run_job

    ctx = context()
    job = ctx.store.claim_job(ctx.worker_id, job_id=job_id)
    trial = None if job is not None else ctx.store.claim_trial(ctx.worker_id, job_id=job_id)  # one trial of a search
    if job is None and trial is None:
        return "skipped: not queued, or its model is being trained by another job"
    lease = job_id if trial is None else f"{job_id}|{trial[1]['index']}"
    heartbeat = _Heartbeat(ctx.store, lease, ctx.settings.lease_seconds / 3)
    heartbeat.start()
    try:
        if trial is not None:
            from api.search import run_search_trial

            status = f"trial {trial[1]['index']}: " + run_search_trial(ctx.store, *trial, ctx.settings, ctx.stop_event).status
        else:
            status = run_job(ctx.store, job, ctx.settings, ctx.stop_event).status
    except LeaseLost as exc:
        log.warning("%s", exc)
        status = "abandoned (lease lost)"
    except StoreUnavailable as exc:
        log.warning("job %s: %s; it resumes from its checkpoint when its lease expires", job_id, exc)
        status = "abandoned (Redis unreachable)"
    finally:
        heartbeat.done.set()
        try:
            ctx.store.release_lease(lease)
        except StoreUnavailable:
            pass
    try:
        sweep(ctx)  # the model's next queued job can run now
    except StoreUnavailable:
        pass
    return status


class TrainingWorker(SimpleWorker):
    """An RQ worker that trains in its own process (a SIGKILL takes the training with it, and the lease
    expires), sweeps in a background thread and, on SIGTERM/SIGINT, puts its job back on the queue
    from the last checkpoint instead of finishing it."""

    def work(self, *args, **kwargs) -> bool:
        ctx = context()
        self._sweeper_stop = threading.Event()
        sweeper = threading.Thread(target=self._sweep_loop, args=(ctx,), name="nn-sweeper", daemon=True)
        sweeper.start()
        try:
            return super().work(*args, **kwargs)
        finally:
            self._sweeper_stop.set()

    def _sweep_loop(self, ctx: _Context) -> None:
        interval = min(1.0, ctx.settings.lease_seconds / 4)
        delay, last_beat = interval, time.monotonic()
        while not self._sweeper_stop.wait(delay):
            try:
                sweep(ctx)
                if time.monotonic() - last_beat > WORKER_TTL / 3:  # stay listed during long jobs
                    last_beat = time.monotonic()
                    self.connection.expire(self.key, WORKER_TTL + 60)
                delay = interval
            except Exception as exc:  # Redis away: back off, keep trying
                delay = min(30.0, delay * 2)
                log.warning("sweeper: %s; next try in %.1fs", exc, delay)

    def request_stop(self, signum, frame):
        context().stop_event.set()  # a running job goes back to the queue after its current batch
        super().request_stop(signum, frame)


def run_worker(settings: Settings) -> int:
    """``python main.py worker``: an RQ worker on the training queue, restarted with backoff while Redis is away."""
    if settings.backend != "redis":
        log.error("`python main.py worker` needs NN_BACKEND=redis (the sqlite backend runs NN_WORKERS processes "
                  "inside `python main.py`)")
        return 2
    ctx = context()
    stop = ctx.stop_event
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    delay = 1.0
    while not stop.is_set():
        started = time.monotonic()
        try:
            connection = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=settings.redis_timeout)
            connection.ping()
            worker = TrainingWorker([Queue(settings.redis_queue, connection=connection)], connection=connection,
                                    worker_ttl=WORKER_TTL)
            log.info("worker %s listening on queue %r at %s", worker.name, settings.redis_queue, ctx.store.url_for_humans)
            worker.work(logging_level=settings.log_level.upper())
            reason = "the worker loop ended"
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            reason = f"Redis unreachable ({exc})"
        except Exception as exc:
            reason = f"{exc!r}"
        if stop.is_set():
            break
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        delay = 1.0 if time.monotonic() - started > 60 else min(30.0, delay * 2)
        log.warning("%s; starting again in %.0fs", reason, delay)
        stop.wait(delay)
    log.info("worker stopped")
    return 0
