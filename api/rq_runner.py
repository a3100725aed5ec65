"""The Redis backend's job runner: RQ's queue and registries are the one queue; the store holds state.

What RQ does (its own mechanisms, nothing re-implemented here):
- **The queue.** Each job that can be claimed now (a queued training job whose model is free, or
  one pending trial of a search) is one RQ job ``train(job_id)`` on NN_REDIS_QUEUE. It is enqueued
  by ``Queue.enqueue_call(pipeline=...)`` inside the same MULTI/EXEC that makes the job claimable
  (``RedisStore(enqueue=...)``), so the store's state and RQ's queue never disagree and nothing
  reconciles them. ``rq info`` and rq-dashboard show the true queue.
- **Workers on any machine**: ``python main.py worker`` or ``rq worker -w api.rq_runner.TrainingWorker``.
- **Worker heartbeats and abandoned jobs.** While a job trains, a heartbeat thread refreshes RQ's
  worker, execution and job heartbeats (``maintain_heartbeats``) every lease/3 s with a TTL of about
  one lease (the worker key: WORKER_TTL + lease/3). An idle worker refreshes its key every dequeue timeout
  (WORKER_TTL - 15 s, RQ's rule) with a TTL of WORKER_TTL, so a SIGKILLed worker's key is gone within
  WORKER_TTL s idle (WORKER_TTL + lease/3 busy) and /health, which counts only workers whose key exists,
  stops counting it. When a worker is SIGKILLed its execution in RQ's StartedJobRegistry expires; RQ's
  registry cleanup (``StartedJobRegistry.cleanup``, run by one worker every lease/2 s) treats the RQ job
  as abandoned and **retries** it (``Retry(max=RETRIES)``); the next ``train(job_id)`` takes
  the job over from its checkpoint. When the retries are spent RQ moves the RQ job to its **failed
  registry** and the training job ends ``failed`` (``cancelled`` if a cancel was asked).

- **Jobs of one store only.** Each RQ job carries the key prefix of the store that queued it
  (``meta["nn_prefix"]``). A worker of another prefix (a wrong NN_REDIS_PREFIX, or two services on one
  queue) logs an ERROR naming both, puts the RQ job back at the head of the queue untouched and pauses, so
  a worker of the right store takes it: no job is completed by a worker that cannot see it.

What the project adds (RQ lacks it): the **lease with fencing**. A claim sets ``P:lease:{job}`` with
a random token; the heartbeat renews it, and every write for the job is a transaction that checks
the token, so a worker that lost its job (frozen, cut off, presumed dead) can never overwrite the
work of the worker that took it over: a resumed job ends bitwise equal to an uninterrupted one.
"""

import logging
import math
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import redis
from rq import Queue, Retry, SimpleWorker, get_current_job, worker_registration
from rq.exceptions import AbandonedJobError
from rq.job import Callback, Job
from rq.registry import StartedJobRegistry
from rq.timeouts import TimerDeathPenalty
from rq.worker import WorkerStatus

from api.errors import LeaseLost, StoreUnavailable
from api.malloc import keep_freed_memory
from api.settings import Settings, get_settings
from api.search_trials import run_search_trial
from api.storage.redis_store import RedisStore
from api.worker import run_job

log = logging.getLogger("api.rq")

TRAIN_FUNCTION = "api.rq_runner.train"
WORKER_TTL = 20  # seconds an idle RQ worker's key lives after its heartbeat (sent every WORKER_TTL - 15 s)
RETRIES = 5  # times RQ runs a job again whose worker died, before the job fails
PREFIX_META = "nn_prefix"  # the RQ job's meta key naming the store prefix it was queued under
REFUSED_PAUSE_MAX = 60.0  # seconds, at most, a worker waits after putting back a job of another store
PREFIX_FIELD = "nn_prefix"  # the field of a TrainingWorker's RQ key naming the store prefix it serves (/health counts by it)


class Enqueuer:
    """Adds one RQ job per claimable job to a MULTI/EXEC of the store (``RedisStore(enqueue=...)``)."""

    def __init__(self, connection: redis.Redis, queue_name: str, prefix: str):
        self.queue = Queue(queue_name, connection=connection)
        self.prefix = prefix

    def __call__(self, pipe: redis.client.Pipeline, job_ids: list[str]) -> None:
        for job_id in job_ids:
            self.queue.enqueue_call(TRAIN_FUNCTION, args=(job_id,), timeout=-1, result_ttl=300, failure_ttl=86400,
                                    description=f"train {job_id}", retry=Retry(max=RETRIES),
                                    on_failure=Callback(train_failed), meta={PREFIX_META: self.prefix}, pipeline=pipe)


def open_redis_store(settings: Settings, *, worker: bool = False) -> RedisStore:
    """The store, enqueuing on RQ. Workers retry commands through short outages; the API answers 503 at once."""
    store = RedisStore(settings.redis_url, prefix=settings.redis_prefix, lease_seconds=settings.lease_seconds,
                       socket_timeout=settings.redis_timeout, retries=5 if worker else 0,
                       keep_versions=settings.keep_versions)
    store.enqueue = Enqueuer(store.redis, settings.redis_queue, settings.redis_prefix)
    return store


def queue_stats(store: RedisStore, settings: Settings) -> dict:
    """What /health shows for the redis backend: RQ queue length, live workers, queued training jobs.

    A worker is alive while its key exists: RQ's set of a queue's workers keeps a SIGKILLed worker until
    some worker's maintenance cleans it (every 10 minutes), so ``Worker.count`` would count it that long."""
    from rq import Worker

    queue = Queue(settings.redis_queue, connection=store.redis)
    keys = sorted(Worker.all_keys(queue=queue))
    with store.redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hget(key, PREFIX_FIELD)  # None once the key expired (a dead worker) or for another kind of worker
        prefixes = pipe.execute()
    alive = sum(p is not None and p.decode() == settings.redis_prefix for p in prefixes)
    return {"queue_length": queue.count, "workers_alive": alive, "queued_jobs": store.count_queued()}


def redis_refusal(url_for_humans: str, exc: Exception) -> str | None:
    """The NN_REDIS_URL mistake behind a Redis error that waiting does not fix; None for an outage."""
    text = str(exc)
    if isinstance(exc, redis.AuthenticationError) or "WRONGPASS" in text or "NOAUTH" in text:
        return (f"NN_REDIS_URL=redis://{url_for_humans}: Redis refused the credentials ({text}); put the right user and "
                f"password in the URL: redis://USER:PASSWORD@host:port/db")
    if isinstance(exc, redis.ResponseError) and "DB index is out of range" in text:
        db = url_for_humans.rsplit("/", 1)[-1]
        return (f"NN_REDIS_URL=redis://{url_for_humans}: database {db} does not exist on this Redis ({text}); use a "
                f"number below its `databases` setting (16 by default)")
    return None


def check_redis_url(store: RedisStore) -> None:
    """Raises ValueError (one line naming NN_REDIS_URL) for a database number or credentials Redis refuses;
    an unreachable Redis passes (the replica starts degraded, a worker waits for it)."""
    try:
        store.redis.ping()
    except redis.RedisError as exc:
        if (message := redis_refusal(store.url_for_humans, exc)) is not None:
            raise ValueError(message) from None
    except StoreUnavailable:
        pass


# -- the worker side -------------------------------------------------------------------------------
@dataclass
class _Context:
    settings: Settings
    store: RedisStore
    worker_id: str
    stop_event: threading.Event
    worker: "TrainingWorker | None" = None


_context: _Context | None = None
_context_lock = threading.Lock()


def context() -> _Context:
    """The worker process's settings, store and stop flag (made on first use, from the NN_ environment)."""
    global _context
    with _context_lock:
        if _context is None:
            settings = get_settings()
            _context = _Context(settings, open_redis_store(settings, worker=True), f"{socket.gethostname()}-{os.getpid()}",
                                threading.Event())
        return _context


class _Heartbeat(threading.Thread):
    """Renews the job's lease and RQ's heartbeats (worker, execution, job) every lease/3 seconds."""

    def __init__(self, ctx: _Context, lease: str, rq_job: Job | None):
        super().__init__(name=f"lease-{lease[:8]}", daemon=True)
        self.ctx, self.lease, self.rq_job = ctx, lease, rq_job
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.ctx.settings.lease_seconds / 3):
            try:
                if not self.ctx.store.renew_lease(self.lease):
                    log.warning("job %s: lease lost; the training stops at its next check", self.lease)
                    return
                _rq_heartbeats(self.ctx, self.rq_job)
            except (StoreUnavailable, redis.RedisError) as exc:
                log.warning("job %s: cannot renew the lease: %s", self.lease, exc)


def _rq_heartbeats(ctx: _Context, rq_job: Job | None) -> None:
    """RQ's worker, execution and job heartbeats (a TrainingWorker's; other workers keep their own)."""
    worker = ctx.worker
    execution = worker.execution if worker is not None else None
    if execution is not None and rq_job is not None:
        worker.maintain_heartbeats(rq_job, execution)


def _claim(ctx: _Context, job_id: str, rq_job: Job | None):
    """Takes the job (or one trial) over, waiting out the lease of a worker that RQ presumed dead early
    (up to two leases: RQ's heartbeats go on meanwhile, so the worker stays counted and its execution alive)."""
    deadline = time.monotonic() + 2 * ctx.settings.lease_seconds + 1
    beat = time.monotonic() + ctx.settings.lease_seconds / 3
    while True:
        job = ctx.store.claim_job(ctx.worker_id, job_id=job_id, take_over=True)
        trial = None if job is not None else ctx.store.claim_trial(ctx.worker_id, job_id=job_id, take_over=True)
        if job is not None or trial is not None or not ctx.store.lease_alive(job_id) or time.monotonic() > deadline:
            return job, trial
        ctx.stop_event.wait(0.2)
        if time.monotonic() >= beat:
            _rq_heartbeats(ctx, rq_job)
            beat = time.monotonic() + ctx.settings.lease_seconds / 3


def foreign_prefix(rq_job: Job | None, settings: Settings) -> str | None:
    """The store prefix an RQ job was queued under when it is not this worker's (None: ours, or not recorded)."""
    prefix = rq_job.meta.get(PREFIX_META) if rq_job is not None else None
    return prefix if prefix is not None and prefix != settings.redis_prefix else None


def mismatch_message(rq_job: Job, prefix: str, settings: Settings) -> str:
    return (f"RQ job {rq_job.id} ({rq_job.description}) was queued by a service with NN_REDIS_PREFIX={prefix!r}, "
            f"but this worker has NN_REDIS_PREFIX={settings.redis_prefix!r} and cannot see its job; give the worker "
            f"the prefix of the API replicas, and give each service on one Redis database its own NN_REDIS_QUEUE")


def train(job_id: str) -> str:
    """The RQ job: claim the training job (or one trial of a search job) and run it."""
    ctx = context()
    rq_job = get_current_job()
    prefix = foreign_prefix(rq_job, ctx.settings)
    if prefix is not None:  # only a worker other than TrainingWorker gets here: fail, so RQ retries it
        raise RuntimeError(mismatch_message(rq_job, prefix, ctx.settings))
    job, trial = _claim(ctx, job_id, rq_job)
    if job is None and trial is None:
        if ctx.store.job_status(job_id) is None:
            log.warning("job %s: no record under prefix %r at %s; nothing to run", job_id, ctx.settings.redis_prefix,
                        ctx.store.url_for_humans)
            return f"skipped: no job {job_id} under prefix {ctx.settings.redis_prefix!r}"
        return "skipped: not claimable (ended, cancelled, or already taken)"
    lease = job_id if trial is None else f"{job_id}|{trial[1]['index']}"
    heartbeat = _Heartbeat(ctx, lease, rq_job)
    heartbeat.start()
    try:
        if trial is not None:
            return f"trial {trial[1]['index']}: " + run_search_trial(ctx.store, *trial, ctx.settings, ctx.stop_event).status
        return run_job(ctx.store, job, ctx.settings, ctx.stop_event).status
    except LeaseLost as exc:
        log.warning("%s", exc)
        return "abandoned (lease lost): another worker runs it"
    finally:
        heartbeat.done.set()
        try:
            ctx.store.release_lease(lease)
        except StoreUnavailable:
            pass


def train_failed(rq_job: Job, connection, exc_type, exc_value, tb) -> None:
    """RQ's failure callback (also called for abandoned jobs): once RQ retries no more, the job ends failed.
    Called before RQ decides on a retry: a run that ended because Redis was unreachable gets its retry back."""
    if _ended_by_outage(rq_job, connection, exc_type):
        rq_job.retries_left = (rq_job.retries_left or 0) + 1  # RQ's retry takes it again: none used up
        log.warning("RQ job %s (%s): its run ended while Redis was unreachable; RQ runs it again, without counting "
                    "one of its %d retries (those are for dead workers)", rq_job.id, rq_job.description, RETRIES)
        return
    if rq_job.retries_left:
        return  # RQ runs it again; that run takes the job over from its checkpoint
    if foreign_prefix(rq_job, context().settings) is not None:
        log.error("%s", mismatch_message(rq_job, rq_job.meta[PREFIX_META], context().settings))
        return  # not this store's job: leave it alone
    job_id = rq_job.args[0]
    detail = str(exc_value or "")  # RQ's AbandonedJobError (its worker died) has no message
    reason = f"{exc_type.__name__ if exc_type else 'error'}: {detail}" if detail else "its worker died"
    context().store.fail_abandoned(job_id, f"given up after {RETRIES + 1} runs by RQ ({reason}); see RQ's failed "
                                           f"registry, RQ job {rq_job.id}")


def _ended_by_outage(rq_job: Job, connection: redis.Redis, exc_type) -> bool:
    """The run raised because Redis was unreachable, or RQ found it abandoned while its worker is alive (an outage
    let its execution expire). Alive: its worker heartbeat is younger than one lease; a dead worker's last one is
    older than its execution's TTL (ceil(lease) + 1 s) when RQ finds the execution expired."""
    if exc_type is not None and issubclass(exc_type, (StoreUnavailable, redis.ConnectionError, redis.TimeoutError)):
        return True
    if exc_type is not AbandonedJobError or not rq_job.worker_name:
        return False
    try:
        beat = connection.hget(SimpleWorker.redis_worker_namespace_prefix + rq_job.worker_name, "last_heartbeat")
        age = (datetime.now(timezone.utc) - datetime.fromisoformat(beat.decode().replace("Z", "+00:00"))).total_seconds()
    except (redis.RedisError, AttributeError, ValueError):
        return False
    return age < context().settings.lease_seconds


def _started_registry(queue: Queue) -> StartedJobRegistry:
    """The queue's StartedJobRegistry for a cleanup off the main thread: RQ runs the failure callback of an
    abandoned job under a death penalty, and its default (SIGALRM) raises ValueError outside the main thread,
    so the callback never ran; RQ's TimerDeathPenalty (a timer thread) works in any thread."""
    return StartedJobRegistry(queue=queue, job_class=queue.job_class, serializer=queue.serializer,
                              death_penalty_class=TimerDeathPenalty)


class TrainingWorker(SimpleWorker):
    """An RQ worker that trains in its own process (a SIGKILL takes the training with it, and RQ
    finds the job abandoned), keeps RQ's heartbeats short (about one lease) and runs RQ's abandoned-job
    handling every lease/2 s; on SIGTERM/SIGINT it puts its job back on the queue from the last
    checkpoint instead of finishing it."""

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return math.ceil(context().settings.lease_seconds) + 1

    def heartbeat(self, timeout: int | None = None, pipeline: redis.client.Pipeline | None = None) -> None:
        """RQ's worker heartbeat with this worker's key TTL (RQ's own is worker_ttl + 60 s, so a SIGKILLed worker
        stayed listed that long): worker_ttl while idle, when RQ heartbeats every dequeue timeout (worker_ttl - 15 s);
        worker_ttl + lease/3 while busy, when the heartbeat thread refreshes it every lease/3 s."""
        super().heartbeat(self.key_ttl(), pipeline=pipeline)
        if self.birth_date is not None:  # registered again each time: a Redis restart that lost data dropped it
            connection = pipeline if pipeline is not None else self.connection.pipeline(transaction=False)
            connection.hset(self.key, mapping={**self.serialize(), PREFIX_FIELD: context().settings.redis_prefix})
            worker_registration.register(self, connection)
            if pipeline is None:
                connection.execute()

    def key_ttl(self) -> int:
        busy = self.get_state() == WorkerStatus.BUSY
        return self.worker_ttl + (math.ceil(context().settings.lease_seconds / 3) if busy else 0)

    def execute_job(self, job: Job, queue: Queue):
        """Runs the RQ job, unless another store queued it: then it goes back to the head of the queue
        untouched (out of RQ's intermediate queue, in one MULTI/EXEC) and this worker pauses, so a worker of
        that store takes it."""
        ctx = context()
        prefix = foreign_prefix(job, ctx.settings)
        if prefix is None:
            self._refused_pause = 0.0
            return super().execute_job(job, queue)
        with self.connection.pipeline() as pipe:
            pipe.lrem(queue.intermediate_queue_key, 1, job.id)
            pipe.lpush(queue.key, job.id)
            pipe.execute()
        self._refused_pause = min(REFUSED_PAUSE_MAX, max(1.0, 2 * getattr(self, "_refused_pause", 0.0)))
        log.error("%s; put it back on queue %r, taking jobs again in %.0fs", mismatch_message(job, prefix, ctx.settings),
                  queue.name, self._refused_pause)
        end = time.monotonic() + self._refused_pause
        while (left := end - time.monotonic()) > 0 and not ctx.stop_event.wait(min(left, self.dequeue_timeout)):
            self.heartbeat()  # paused, not dead: stays counted

    def register_birth(self) -> None:
        super().register_birth()
        self.connection.hset(self.key, PREFIX_FIELD, context().settings.redis_prefix)

    def check_store(self, ctx: _Context) -> None:
        """Refuses to start (exit status 2, one ERROR line) when NN_REDIS_URL names a database Redis refuses, or
        another Redis than the queue's (`rq worker --url`): a probe key written on the queue's connection must be
        visible to the store, or the worker would take jobs whose records it cannot see."""
        try:
            check_redis_url(ctx.store)
            probe = f"{ctx.settings.redis_prefix}:rq-probe:{self.name}"
            self.connection.set(probe, "1", ex=60)
            same = ctx.store.redis.get(probe) is not None
            self.connection.delete(probe)
        except ValueError as exc:
            log.error("error: %s", exc)
            raise SystemExit(2) from None
        if not same:
            kwargs = self.connection.connection_pool.connection_kwargs
            log.error("error: the worker's store NN_REDIS_URL=redis://%s is another Redis than its RQ queue's "
                      "(redis://%s:%s/%s): it could run none of the queue's jobs; give the worker the NN_REDIS_URL of "
                      "the API replicas and the same URL for its queue (or use `python main.py worker`)",
                      ctx.store.url_for_humans, kwargs.get("host", "?"), kwargs.get("port", "?"), kwargs.get("db", 0))
            raise SystemExit(2)

    def work(self, *args, **kwargs) -> bool:
        ctx = context()
        self.check_store(ctx)
        ctx.worker = self
        self._maintenance_stop = threading.Event()
        threading.Thread(target=self._maintain, args=(ctx,), name="nn-rq-maintenance", daemon=True).start()
        try:
            return super().work(*args, **kwargs)
        finally:
            self._maintenance_stop.set()

    def _maintain(self, ctx: _Context) -> None:
        """RQ's abandoned-job handling (StartedJobRegistry.cleanup: retry, or the failed registry) every
        lease/2 seconds, also while this worker trains; one worker at a time (a lock that just expires)."""
        delay = interval = max(0.5, ctx.settings.lease_seconds / 2)
        lock = f"{ctx.settings.redis_prefix}:rq-cleanup"
        while not self._maintenance_stop.wait(delay):
            try:
                if self.connection.set(lock, self.name, nx=True, px=int(interval * 1000)):
                    for queue in self.queues:
                        _started_registry(queue).cleanup(exception_handlers=self._exc_handlers)
                delay = interval
            except Exception as exc:  # Redis away: back off, keep trying
                delay = min(30.0, delay * 2)
                log.warning("RQ maintenance: %s; next try in %.1fs", exc, delay)

    def request_stop(self, signum, frame):
        context().stop_event.set()  # a running job goes back to the queue after its current batch
        super().request_stop(signum, frame)


def run_worker(settings: Settings) -> int:
    """``python main.py worker``: an RQ worker on the training queue, restarted with backoff while Redis is away."""
    keep_freed_memory(settings.malloc_keep_mb, settings.malloc_arenas)
    ctx = context()
    stop = ctx.stop_event
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    delay = 1.0
    while not stop.is_set():
        started = time.monotonic()
        try:
            check_redis_url(ctx.store)
            connection = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=settings.redis_timeout)
            connection.ping()
            worker = TrainingWorker([Queue(settings.redis_queue, connection=connection)], connection=connection,
                                    worker_ttl=WORKER_TTL)
            log.info("worker %s listening on queue %r at %s, prefix %r", worker.name, settings.redis_queue,
                     ctx.store.url_for_humans, settings.redis_prefix)
            worker.work(logging_level=settings.log_level.upper())
            reason = "the worker loop ended"
        except ValueError as exc:
            log.error("error: %s", exc)
            return 2
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if (refusal := redis_refusal(ctx.store.url_for_humans, exc)) is not None:
                log.error("error: %s", refusal)
                return 2
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
