"""The one place that chooses the backend: `open_backend(settings)` builds the store, the job runner and
the queue figures, and the rest of the service asks the object it returns.

- `EmbeddedBackend` (NN_BACKEND=sqlite): a SQLite file in NN_DATA_DIR, owned by one service process,
  which runs NN_WORKERS training processes (`api.worker.WorkerPool`).
- `RedisBackend` (NN_BACKEND=redis): a Redis store shared by stateless API replicas; RQ workers
  (`python main.py worker`, `api.rq_runner`) train, wherever they run.
"""

import asyncio
import fcntl
import logging
from abc import ABC, abstractmethod
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi.concurrency import run_in_threadpool

from api import records
from api.errors import StoreUnavailable
from api.settings import Settings
from api.storage.base import Store
from api.storage.lifecycle import STALE_STAGING_SECONDS
from api.worker import WorkerPool, open_store

log = logging.getLogger("api")


class DataDirInUse(RuntimeError):
    """Another service process holds the data directory."""


class DataDirLock:
    """One service owns a data directory: a second one would requeue the first one's running jobs."""

    def __init__(self, settings: Settings):
        self.path = settings.data_dir / "service.lock"
        self.handle = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "w")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise DataDirInUse(f"another service is using {self.path.parent.resolve()}; stop it or set another "
                               "NN_DATA_DIR") from None

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None


class Backend(ABC):
    """A store, the job runner behind it and the figures /health shows; `running()` is the app's lifespan part."""

    name: str

    def __init__(self, settings: Settings, store: Store):
        self.settings = settings
        self.store = store

    def check_exclusive(self) -> None:
        """Raises DataDirInUse where this backend's data belongs to another running service."""

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        yield

    @abstractmethod
    def run_worker(self) -> int:
        """`python main.py worker`: a training worker outside the API process; its exit status."""

    @abstractmethod
    def _queue(self) -> dict[str, int]:
        """queued_jobs and queue_length (raises when the store is away)."""

    @abstractmethod
    def _workers(self, queue: dict[str, int]) -> tuple[int, int]:
        """(workers, workers_alive)."""

    def status(self, store_ok: bool) -> dict[str, int | None]:
        """workers, workers_alive, queued_jobs and queue_length; queue figures are None when the store is away."""
        queue: dict[str, int] = {}
        if store_ok:
            try:
                queue = self._queue()
            except Exception:
                log.exception("queue check failed")
        workers, alive = self._workers(queue)
        return {"workers": workers, "workers_alive": alive, "queued_jobs": queue.get("queued_jobs"),
                "queue_length": queue.get("queue_length")}


class EmbeddedBackend(Backend):
    name = "sqlite"

    def __init__(self, settings: Settings):
        super().__init__(settings, open_store(settings))
        self.pool: WorkerPool | None = None

    def check_exclusive(self) -> None:
        lock = DataDirLock(self.settings)
        lock.acquire()
        lock.release()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        lock = DataDirLock(self.settings)
        lock.acquire()
        await run_in_threadpool(records.requeue_interrupted, self.store)  # a crash's running jobs resume from their checkpoint
        await run_in_threadpool(records.drop_unfinished_appends, self.store, 0)  # no other service appends here
        await run_in_threadpool(records.promote, self.store)  # full buffers an older version left waiting
        self.pool = WorkerPool(self.settings, self.store)
        self.pool.start()
        log.info("service started: backend sqlite, %d workers, data in %s", self.settings.workers, self.settings.data_dir)
        try:
            yield
        finally:
            await self.pool.stop()
            self.pool = None
            lock.release()

    def run_worker(self) -> int:
        log.error("`python main.py worker` needs NN_BACKEND=redis (the sqlite backend runs NN_WORKERS processes "
                  "inside `python main.py`)")
        return 2

    def _queue(self) -> dict[str, int]:
        queued = self.store.count_queued()
        return {"queued_jobs": queued, "queue_length": queued}

    def _workers(self, queue: dict[str, int]) -> tuple[int, int]:
        return self.settings.workers, self.pool.alive if self.pool else 0


class RedisBackend(Backend):
    name = "redis"

    def __init__(self, settings: Settings):
        from api import rq_runner  # redis and rq are the `redis` extra: imported only for this backend

        self.rq = rq_runner
        super().__init__(settings, rq_runner.open_redis_store(settings))
        rq_runner.check_redis_url(self.store)  # a database or credentials Redis refuses: one line, no start

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        # a stateless replica: RQ workers (python main.py worker) train; RQ and the sweep below requeue abandoned jobs
        log.info("service started: backend redis at %s, queue %r", self.store.url_for_humans, self.settings.redis_queue)
        try:
            await run_in_threadpool(self.store.index_existing_jobs)  # for GET /jobs, once per prefix
            await run_in_threadpool(records.promote, self.store)  # full buffers an older version left waiting
            # left by a replica that died mid-append; another replica's live append writes more often than this
            await run_in_threadpool(records.drop_unfinished_appends, self.store, STALE_STAGING_SECONDS)
        except StoreUnavailable as exc:
            log.warning("jobs stored before GET /jobs existed, buffering jobs whose buffer an older version filled, "
                        "and rows staged by appends that died are handled at the next start: %s", exc)
        sweeping = asyncio.create_task(self._sweep_expired())
        try:
            yield
        finally:
            sweeping.cancel()
            await self.store.aclose()  # the event loop's own connections (api/storage/redis_stamps.py)

    async def _sweep_expired(self) -> None:
        """Every lease/2 s while no worker is alive: RQ's registry cleanup, which requeues a dead worker's job, runs
        only in a live worker, so with every worker dead a job said ``running`` and a cancel or a model delete left it
        ``cancelling`` until a worker came back. ``RedisStore.sweep_expired`` (api/storage/redis_leases.py) shows it
        ``queued`` meanwhile, as the embedded backend does after a restart, and ends cancelling ones; no new RQ job
        is queued, so RQ's retries still count every run. Fenced as any takeover; replicas take turns."""
        while True:
            await asyncio.sleep(self.settings.lease_seconds / 2)
            try:
                if (await run_in_threadpool(self._queue)).get("workers_alive", 0) == 0:
                    await run_in_threadpool(self.store.sweep_expired)
            except StoreUnavailable as exc:
                log.warning("jobs whose worker died are requeued once the store answers: %s", exc)
            except Exception:  # the sweep goes on; one bad round is logged, not the replica's end
                log.exception("sweeping jobs whose worker died failed; retrying")

    def run_worker(self) -> int:
        return self.rq.run_worker(self.settings)

    def _queue(self) -> dict[str, int]:
        return self.rq.queue_stats(self.store, self.settings)

    def _workers(self, queue: dict[str, int]) -> tuple[int, int]:
        alive = queue.get("workers_alive", 0)
        return alive, alive


def open_backend(settings: Settings) -> Backend:
    return {"sqlite": EmbeddedBackend, "redis": RedisBackend}[settings.backend](settings)
