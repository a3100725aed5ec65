"""The shared store: every API replica and worker talks to one Redis.

The rules are those of ``api.storage.lifecycle``; this file supplies its ``Tx`` primitives as one
WATCH/MULTI/EXEC transaction: every key a rule reads is WATCHed, its writes are queued and sent in
one MULTI/EXEC, and when another client changed a watched key meanwhile the rule runs again from
the start (``atomic``). Keys are plain, so this needs one Redis (or a primary with replicas), not
Redis Cluster.

Keys (P is the prefix, "nn" by default):

    P:models          zset  model_id -> created_at (oldest first, ties by id, as SQLite)
    P:owned:{owner}   zset  the same, of the models that owner (an API key name) created
    P:m:{model}       hash  uid, version, info (JSON), blob (.npz), created_at, updated_at, owner (API key name)
    P:buf:{model}     list  sample batches waiting in the buffer, oldest first;  P:bufn:{model}  their rows
    P:stg:{model}     hash  stage id -> [rows, last written] of each append request still staging its rows, kept in
                            P:stage:{stage id} (list of batches); P:staging  set  the models that have such requests
    P:mjobs:{model}   zset  the model's jobs by sequence number (P:seq counts)
    P:j:{job}         hash  the JobRecord fields (JSON where structured) and seq; P:hist:{job}  list  its history
    P:ck:{job}        hash  the job's checkpoint: blob, info
    P:js:{job}        list  sample batches the job holds
    P:tr:{job}        hash  a search job's trials: index -> trial (JSON)
    P:jobs:s:{status} zset  the jobs in each status by sequence number (kept by save_job; GET /jobs too)
    versions, notifications and the other GET /jobs indexes: see api.storage.redis_registry
    P:lease:{job}, P:lease:{job}|{trial}   the token of the worker that runs it (SET PX), renewed while it runs

Fencing (what RQ lacks): a store that claimed a job or trial keeps its lease token and the
transaction of every later write for it WATCHes the lease and checks the token, so a worker whose
lease expired (and whose job another worker may own now) raises ``LeaseLost`` and writes nothing. The primitives
and the key encoding are in ``api.storage.redis_tx``.
"""

import json
import logging
import random
import threading
import time
import uuid
from functools import wraps
from typing import Callable, TypeVar

import numpy as np
import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from api.errors import JobNotFound, ModelNotFound, StoreUnavailable
from api.storage import lifecycle
from api.storage import redis_registry as registry
from api.storage.base import JobRecord, ModelRecord, Notification, Store, with_trials
from api.storage.lifecycle import QUEUED, RUNNING
from api.storage.redis_leases import LeaseRecovery
from api.storage.redis_stamps import StampReader
from api.storage.redis_tx import MODEL_FIELDS, RedisTx, decode_job, decode_model, unavailable, unpack_samples

log = logging.getLogger("api.redis")
T = TypeVar("T")

def _guard(method: Callable) -> Callable:
    """Redis down or too slow: a StoreUnavailable (503) that says so, never a hang or a 500."""

    @wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise unavailable(self.url_for_humans, exc) from None

    return wrapper


class RedisStore(LeaseRecovery, Store):
    def __init__(self, url: str, *, prefix: str = "nn", lease_seconds: float = 10.0, socket_timeout: float = 5.0,
                 retries: int = 0, enqueue: Callable[[redis.client.Pipeline, list[str]], None] | None = None,
                 keep_versions: int = 10):
        self.prefix = prefix
        self.keep_versions = keep_versions
        self.lease_ms = int(lease_seconds * 1000)
        # the runner's queue (api/rq_runner.py): called inside the MULTI of every step that made jobs claimable
        self.enqueue = enqueue
        # retries=0 (the API): a request answers 503 at once; workers ride out short outages
        retry = Retry(ExponentialBackoff(cap=2.0, base=0.1), retries) if retries else Retry(NoBackoff(), 0)
        self.redis = redis.Redis.from_url(url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout,
                                          health_check_interval=30, retry=retry)
        kwargs = self.redis.connection_pool.connection_kwargs
        self.url_for_humans = f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
        self._tokens: dict[str, str] = {}  # job id (or "job|trial") -> lease token, for what this store claimed
        self._lock = threading.Lock()
        self._stamps = StampReader(url, self._key, socket_timeout, self.url_for_humans)  # reads on the event loop

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _token(self, key: str) -> str:
        with self._lock:
            return self._tokens.get(key, "")

    @_guard
    def atomic(self, step: Callable[["RedisTx"], T], fence: str | None = None, read_first: bool = False) -> T:
        """WATCH what ``step`` reads, then MULTI/EXEC its writes, and the runner's enqueue of every job it made
        claimable; again from the start on a conflict (optimistic already: ``read_first`` changes nothing)."""
        token = self._token(fence) if fence else ""
        for attempt in range(10_000):
            with self.redis.pipeline(transaction=True) as pipe:
                tx = RedisTx(pipe, self._key, self.redis, self.keep_versions)
                try:
                    if token:
                        tx.fence(fence, token)
                    try:
                        result = step(tx)
                    except Exception as exc:  # raised on a torn read (tx.reads_changed): retried as a conflict
                        raise redis.WatchError if not isinstance(exc, redis.RedisError) and tx.reads_changed() else exc
                    pipe.multi()
                    for name, *args in tx.ops:
                        getattr(pipe, name)(*args)
                    if tx.ready_ids and self.enqueue is not None:
                        self.enqueue(pipe, tx.ready_ids)
                    pipe.execute()
                except redis.WatchError:
                    time.sleep(random.random() * min(0.05, 0.0002 * 2 ** min(attempt, 10)))
                    continue
            return result
        raise StoreUnavailable("the Redis store is too contended to commit; retry in a few seconds")

    # -- plumbing beyond the Store interface ----------------------------------------------
    def ping(self) -> bool:
        return bool(self.redis.ping())

    def close(self) -> None:
        self.redis.close()

    async def aclose(self) -> None:
        """Closes the event loop's connections (the app's lifespan ends)."""
        await self._stamps.aclose()

    def reset(self) -> None:
        """Deletes every key under the prefix (tests and benchmarks)."""
        keys = list(self.redis.scan_iter(match=f"{self.prefix}:*", count=1000))
        for i in range(0, len(keys), 500):
            self.redis.delete(*keys[i:i + 500])

    # -- reads ----------------------------------------------------------------------------
    @_guard
    def has_jobs(self, statuses: tuple[str, ...]) -> bool:
        return bool(self.redis.exists(*[self._key("jobs", "s", s) for s in statuses]))

    @_guard
    def job_status(self, job_id: str) -> str | None:
        status = self.redis.hget(self._key("j", job_id), "status")
        return None if status is None else status.decode()

    def _read_models(self, ids: list[str], with_blob: bool = False) -> list[tuple[ModelRecord, bytes | None] | None]:
        pipe = self.redis.pipeline(transaction=True)  # one snapshot of each model, its buffer and latest job
        for mid in ids:
            pipe.hmget(self._key("m", mid), [*MODEL_FIELDS, "blob"] if with_blob else MODEL_FIELDS)
            pipe.get(self._key("bufn", mid))
            pipe.zrevrange(self._key("mjobs", mid), 0, 0)
        raw = pipe.execute() if ids else []
        latest_ids = [r[0].decode() if r else None for r in raw[2::3]]
        pipe = self.redis.pipeline(transaction=False)
        for job_id in latest_ids:
            pipe.hmget(self._key("j", job_id or "-"), ["status", "owner"])
        latest_jobs = pipe.execute() if ids else []
        out = []
        for i, mid in enumerate(ids):
            f, size = raw[3 * i], raw[3 * i + 1]
            if f[0] is None:
                out.append(None)
                continue
            status, owner = latest_jobs[i]
            latest = ({"job_id": latest_ids[i], "status": status.decode(), "owner": owner and owner.decode()}
                      if latest_ids[i] and status else None)
            out.append((decode_model(mid, f, int(size or 0), latest), bytes(f[6]) if with_blob else None))
        return out

    def get_model(self, model_id: str) -> ModelRecord:
        return self.load_model(model_id, with_blob=False)[1]

    @_guard
    def list_models(self, offset: int, limit: int, owner: str | None = None) -> tuple[list[ModelRecord], int]:
        index = self._key("owned", owner) if owner is not None else self._key("models")
        ids = [m.decode() for m in self.redis.zrange(index, offset, offset + limit - 1)]
        return [r[0] for r in self._read_models(ids) if r], int(self.redis.zcard(index))

    @_guard
    def model_stamp(self, model_id: str) -> tuple[str, int]:
        uid, version = self.redis.hmget(self._key("m", model_id), ["uid", "version"])
        if uid is None:
            raise ModelNotFound(model_id)
        return uid.decode(), int(version)

    async def model_stamp_on_loop(self, model_id: str) -> tuple[str, int] | None:
        return await self._stamps.read(model_id)  # one HMGET shared by the requests asking together

    @_guard
    def load_model(self, model_id: str, with_blob: bool = True) -> tuple[bytes, ModelRecord]:
        found = self._read_models([model_id], with_blob)[0]
        if found is None:
            raise ModelNotFound(model_id)
        return found[1], found[0]

    def count_samples(self, model_id: str) -> int:
        return self.get_model(model_id).buffer_size

    @_guard
    def get_job(self, job_id: str, history_from: int | None = 0) -> JobRecord:
        found = self._jobs([job_id], history_from)
        if not found:
            raise JobNotFound(job_id)
        return found[0]

    def _with_trials(self, job: JobRecord) -> JobRecord:
        if job.kind != "search":
            return job
        raw = self.redis.hgetall(self._key("tr", job.job_id))
        return with_trials(job, [json.loads(v) for v in raw.values()])

    def _owned_jobs(self, index: str, owner: str, offset: int, limit: int) -> tuple[list[str], int]:
        """A page (newest first) of the job ids in the zset ``index`` that ``owner`` submitted, and how many did.
        Reads the owners 500 at a time: O(the model's jobs), bounded memory."""
        page, total, start, chunk = [], 0, 0, 500
        while True:
            ids = self.redis.zrevrange(index, start, start + chunk - 1)
            if not ids:
                return page, total
            pipe = self.redis.pipeline(transaction=False)
            for raw in ids:
                pipe.hget(self._key("j", raw.decode()), "owner")
            for raw, found in zip(ids, pipe.execute()):
                if found is not None and found.decode() == owner:
                    if offset <= total < offset + limit:
                        page.append(raw.decode())
                    total += 1
            start += chunk

    @_guard
    def list_jobs(self, model_id: str, offset: int, limit: int, owner: str | None = None) -> tuple[list[JobRecord], int]:
        self.get_model(model_id)
        key = self._key("mjobs", model_id)
        if owner is not None:
            ids, total = self._owned_jobs(key, owner, offset, limit)
        else:
            ids, total = [j.decode() for j in self.redis.zrevrange(key, offset, offset + limit - 1)], int(self.redis.zcard(key))
        return self._jobs(ids), total

    def _jobs(self, ids: list[str], history_from: int | None = 0) -> list[JobRecord]:
        pipe = self.redis.pipeline(transaction=True)  # each record with its history, from one snapshot
        for job_id in ids:
            pipe.hgetall(self._key("j", job_id))
            pipe.lrange(self._key("hist", job_id), *((history_from, -1) if history_from is not None else (1, 0)))
        rows = pipe.execute() if ids else []
        jobs = [self._with_trials(decode_job(j, r, None if history_from is None else h))
                for j, r, h in zip(ids, rows[::2], rows[1::2]) if r]
        for job, raw in zip(jobs, [r for r in rows[::2] if r]):
            if history_from and b"history" in raw:  # a job of an older version: its first entries are in its hash
                job.history = self._jobs([job.job_id])[0].history[history_from:]
        return jobs

    @_guard
    def job_samples(self, job_id: str) -> tuple[np.ndarray, np.ndarray]:
        blobs = self.redis.lrange(self._key("js", job_id), 0, -1)
        if not blobs:
            return np.empty((0, 0)), np.empty((0, 0))
        pairs = [unpack_samples(b) for b in blobs]
        return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])

    @_guard
    def load_checkpoint(self, job_id: str, best: bool = False) -> bytes | None:
        if not self.redis.exists(self._key("j", job_id)):
            raise JobNotFound(job_id)
        blob = self.redis.hget(self._key("ck", job_id), "best" if best else "blob")
        return None if blob is None else bytes(blob)

    # -- versions (api/storage/redis_registry.py) ----------------------------------------
    list_versions = _guard(registry.list_versions)
    get_version = _guard(registry.get_version)
    version_kept = _guard(registry.version_kept)
    buffer_sizes = _guard(registry.buffer_sizes)  # /metrics

    @_guard
    def list_all_jobs(self, offset: int, limit: int, *, status: str | None = None, model_id: str | None = None,
                      kind: str | None = None, owner: str | None = None) -> tuple[list[JobRecord], int]:
        return registry.list_all_jobs(self, offset, limit, status, model_id, kind, owner)

    @_guard
    def index_existing_jobs(self) -> int:
        """Jobs stored before GET /jobs had its indexes get them (once per prefix; at the API's start)."""
        return registry.index_existing_jobs(self)

    # -- notifications (api/storage/redis_registry.py) --------------------------------------
    @_guard
    def add_notification(self, note: Notification) -> None:
        registry.add_notification(self, note)

    @_guard
    def get_notifications(self, job_ids: list[str]) -> dict[str, Notification]:
        return registry.get_notifications(self, job_ids)

    @_guard
    def due_notifications(self, now: float, limit: int) -> list[tuple[Notification, JobRecord]]:
        return registry.due_notifications(self, now, limit)

    @_guard
    def record_attempt(self, job_id: str, *, status: str, error: str | None, next_attempt_at: float, now: float) -> None:
        registry.record_attempt(self, job_id, status, error, next_attempt_at, now)

    @_guard
    def count_queued(self) -> int:
        return int(self.redis.zcard(self._key("jobs", "s", QUEUED)))

    @_guard
    def jobs_overview(self) -> tuple[dict[str, int], list[dict]]:
        statuses = (*lifecycle.ACTIVE, *lifecycle.TERMINAL)
        counts = {s: int(self.redis.zcard(self._key("jobs", "s", s))) for s in statuses}
        running = [j.decode() for j in self.redis.zrange(self._key("jobs", "s", RUNNING), 0, -1)]
        progress = [self.redis.hget(self._key("j", j), "progress") for j in running]
        return {s: n for s, n in counts.items() if n}, [json.loads(p) for p in progress if p]

    # -- leases: claims take one, fenced writes check it (Store.atomic's ``fence``) ------------------
    def claim_job(self, worker_id: str, job_id: str | None = None, take_over: bool = False) -> JobRecord | None:
        """As the interface says, taking a lease; with ``job_id``, that job only (the RQ runner's case). With
        ``take_over``, a job whose worker's lease expired is first requeued from its checkpoint."""
        if job_id is None and not self.has_jobs((QUEUED,)):
            return None
        token = uuid.uuid4().hex

        def step(tx: RedisTx) -> JobRecord | None:
            if take_over and job_id is not None:
                self._requeue_expired(tx, job_id)
            job = lifecycle.claim(tx, worker_id, time.time(), job_id)
            if job is not None:
                tx.ready_ids = [j for j in tx.ready_ids if j != job.job_id]  # the caller carries it
                tx.ops.append(("set", self._key("lease", job.job_id), token, None, self.lease_ms))
            return job

        job = self.atomic(step)
        if job is None:
            return None
        with self._lock:
            self._tokens[job.job_id] = token
        return self.get_job(job.job_id)

    def claim_trial(self, worker_id: str, job_id: str | None = None, take_over: bool = False) -> tuple[JobRecord, dict] | None:
        """As the interface says, taking a lease; with ``take_over``, ``job_id``'s trials whose worker's lease
        expired go back to pending first (their own RQ jobs, retried by RQ, claim them)."""
        token = uuid.uuid4().hex

        def step(tx: RedisTx) -> tuple[JobRecord, dict] | None:
            if take_over and job_id is not None:
                self._release_expired_trials(tx, job_id)
                tx.ready_ids = [j for j in tx.ready_ids if j != job_id]
            claimed = lifecycle.claim_trial(tx, worker_id, time.time(), job_id)
            if claimed is not None:
                tx.ops.append(("set", self._key("lease", f"{claimed[0].job_id}|{claimed[1]['index']}"), token, None,
                               self.lease_ms))
            return claimed

        claimed = self.atomic(step)
        if claimed is not None:
            with self._lock:
                self._tokens[f"{claimed[0].job_id}|{claimed[1]['index']}"] = token
        return claimed

    @_guard
    def renew_lease(self, key: str) -> bool:
        """Extends this store's lease on a job (or "job|trial") it claimed; False once it was lost."""
        token = self._token(key)
        return bool(token) and self._lease_op(key, token, "pexpire", self.lease_ms)

    @_guard
    def release_lease(self, key: str) -> None:
        with self._lock:
            token = self._tokens.pop(key, "")
        if token:
            self._lease_op(key, token, "delete")

    def _lease_op(self, key: str, token: str, name: str, *args) -> bool:
        with self.redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(self._key("lease", key))
                if pipe.get(self._key("lease", key)) != token.encode():
                    return False
                pipe.multi()
                getattr(pipe, name)(self._key("lease", key), *args)
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    def cancel_requested(self, job_id: str) -> bool:
        if super().cancel_requested(job_id):
            return True
        token = self._token(job_id)
        return bool(token) and self.redis.get(self._key("lease", job_id)) != token.encode()
