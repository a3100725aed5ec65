"""RedisStore's reads and writes for model versions, the all-jobs list and job notifications.

Kept apart from `api.storage.redis_store` (which delegates to these functions) because none of them is
a job transition. The keys (P is the prefix):

    P:vers:{uid}            zset  the kept versions of a model incarnation (score = version)
    P:v:{uid}:{version}     hash  model_id, blob, info, source (JSON), created_at
    P:jobs, P:jobs:m:{model}, P:jobs:k:{kind}, P:jobs:s:{status}, P:jobs:active
                            zsets of job ids by sequence number (GET /jobs)
    P:n:{job}               hash  a job's notification: url, secret, status, attempts, last_error, times
    P:npending              zset  job id -> next attempt time, while pending
    P:nclaim:{job}          a deliverer's claim (SET NX PX), so two API replicas never send one at once

Versions and the job indexes are written inside the transactions that change weights and create or end
jobs (``RedisTx.insert_model``, ``save_model``, ``insert_job`` and ``save_job`` in api.storage.redis_tx).
"""

import json
import time
import uuid
from typing import TYPE_CHECKING

from api.errors import ModelNotFound, VersionNotFound
from api.storage.base import TERMINAL, JobRecord, Notification, VersionRecord

if TYPE_CHECKING:
    from api.storage.redis_store import RedisStore
    from api.storage.redis_tx import RedisTx

VERSION_FIELDS = ("model_id", "info", "source", "created_at")
NOTE_FIELDS = ("url", "secret", "status", "attempts", "last_error", "last_attempt_at", "next_attempt_at",
               "delivered_at", "created_at")
CLAIM_SECONDS = 120.0  # a deliverer's claim on the notifications it took (a round: attempts side by side, each <= 60 s)
RECHECK_SECONDS = 1.0  # a pending notification of a job still running is looked at again after this
ORPHAN_SECONDS = 3600.0  # a notification whose job was never stored (its submit failed) is dropped after this


def buffer_sizes(store: "RedisStore", chunk: int = 1000) -> dict[str, int]:
    """Rows in each non-empty buffer: the model ids, then their P:bufn counters a chunk at a time."""
    ids, sizes = [m.decode() for m in store.redis.zrange(store._key("models"), 0, -1)], {}
    for start in range(0, len(ids), chunk):
        pipe = store.redis.pipeline(transaction=False)
        for model_id in ids[start:start + chunk]:
            pipe.get(store._key("bufn", model_id))
        sizes.update((m, int(n)) for m, n in zip(ids[start:start + chunk], pipe.execute()) if n and int(n) > 0)
    return sizes


# -- versions -------------------------------------------------------------------------------
def _current(store: "RedisStore", model_id: str) -> tuple[str, int]:
    uid, version = store.redis.hmget(store._key("m", model_id), ["uid", "version"])
    if uid is None:
        raise ModelNotFound(model_id)
    return uid.decode(), int(version)


def _version(uid: str, version: int, f: list) -> VersionRecord:
    return VersionRecord(model_id=f[0].decode(), uid=uid, version=version, info=json.loads(f[1]),
                         source=json.loads(f[2]), created_at=float(f[3]))


def list_versions(store: "RedisStore", model_id: str) -> list[VersionRecord]:
    """One snapshot, read in an atomic step whose reads are WATCHed and made again when one changed: read apart, a
    listing racing PUTs on another replica left out a kept version."""
    def read(tx: "RedisTx") -> list[VersionRecord]:
        model = tx.model(model_id)
        if model is None:
            raise ModelNotFound(model_id)
        versions = [int(v) for v in tx._read(store._key("vers", model.uid), "zrevrangebyscore", model.version, "-inf")]
        rows = [tx._read(store._key("v", model.uid, str(v)), "hmget", VERSION_FIELDS) for v in versions]
        return [_version(model.uid, v, f) for v, f in zip(versions, rows) if f[0] is not None]

    return store.atomic(read)


def get_version(store: "RedisStore", model_id: str, version: int) -> tuple[bytes, VersionRecord]:
    uid, current = _current(store, model_id)
    f = store.redis.hmget(store._key("v", uid, str(version)), [*VERSION_FIELDS, "blob"]) if version <= current else [None]
    if f[0] is None:
        raise VersionNotFound(model_id, version)
    return bytes(f[4]), _version(uid, version, f)


def version_kept(store: "RedisStore", uid: str, version: int) -> bool:
    return store.redis.zscore(store._key("vers", uid), str(version)) is not None


# -- all jobs -------------------------------------------------------------------------------
def list_all_jobs(store: "RedisStore", offset: int, limit: int, status: str | None, model_id: str | None,
                  kind: str | None, owner: str | None) -> tuple[list[JobRecord], int]:
    """One index per filter (every status has its own, kept by ``RedisTx.save_job``); several are intersected
    in Redis (ZINTERSTORE into a short-lived key). An owner (tenancy) is checked here on each candidate, 500
    at a time, as ``list_jobs`` does."""
    indexes = [store._key("jobs", "m", model_id)] if model_id is not None else []
    if kind is not None:
        indexes.append(store._key("jobs", "k", kind))
    if status is not None:
        indexes.append(store._key("jobs", "s", status))
    indexes = indexes or [store._key("jobs")]
    key = indexes[0]
    if len(indexes) > 1:
        key = store._key("tmp", uuid.uuid4().hex)
        pipe = store.redis.pipeline(transaction=True)
        pipe.zinterstore(key, indexes, aggregate="MAX")
        pipe.expire(key, 60)
        pipe.execute()
    try:
        if owner is None:
            ids = [j.decode() for j in store.redis.zrevrange(key, offset, offset + limit - 1)]
            return store._jobs(ids), int(store.redis.zcard(key))
        page, total, start, chunk = [], 0, 0, 500
        while ids := [j.decode() for j in store.redis.zrevrange(key, start, start + chunk - 1)]:
            pipe = store.redis.pipeline(transaction=False)
            for job_id in ids:
                pipe.hget(store._key("j", job_id), "owner")
            for job_id, who in zip(ids, pipe.execute()):
                if who is None or who.decode() != owner:
                    continue
                if offset <= total < offset + limit:
                    page.append(job_id)
                total += 1
            start += chunk
        return store._jobs(page), total
    finally:
        if key not in indexes:
            store.redis.delete(key)


def index_existing_jobs(store: "RedisStore") -> int:
    """Indexes, once per prefix, the jobs stored before GET /jobs existed (``RedisTx`` indexes every new job).
    Safe to run from several replicas at once; returns the number of jobs it indexed."""
    flag = store._key("jobs", "indexed")
    if store.redis.exists(flag):
        index_active_by_model(store)
        return 0
    count = 0
    for raw in store.redis.scan_iter(match=store._key("j", "*"), count=500):
        job_id = raw.decode().removeprefix(store._key("j", ""))
        seq, model_id, kind, status = store.redis.hmget(raw, ["seq", "model_id", "kind", "status"])
        if seq is None or model_id is None or status is None:
            continue
        status = status.decode()
        pipe = store.redis.pipeline(transaction=False)
        indexes = ["jobs", f"jobs:m:{model_id.decode()}", f"jobs:k:{(kind or b'training').decode()}", f"jobs:s:{status}"]
        for index in indexes + ([] if status in TERMINAL else ["jobs:active"]):
            pipe.zadd(f"{store.prefix}:{index}", {job_id: int(seq)})
        pipe.execute()
        count += 1
    store.redis.set(flag, "1")
    index_active_by_model(store)
    return count


def index_active_by_model(store: "RedisStore") -> None:
    """Each model's index of active jobs (``jobs:ma:<model>``, which RedisTx keeps for every new job), for the jobs
    that were active before it existed; then ``jobs:ma-indexed``, from which RedisTx.jobs reads a model's jobs there.
    A job that ends meanwhile may stay listed: readers check each job's status."""
    flag = store._key("jobs", "ma-indexed")
    if store.redis.exists(flag):
        return
    for raw in store.redis.zrange(store._key("jobs", "active"), 0, -1):
        job_id = raw.decode()
        seq, model_id, status = store.redis.hmget(store._key("j", job_id), ["seq", "model_id", "status"])
        if seq is not None and model_id is not None and status is not None and status.decode() not in TERMINAL:
            store.redis.zadd(store._key("jobs", "ma", model_id.decode()), {job_id: int(seq)})
    store.redis.set(flag, "1")


# -- notifications ----------------------------------------------------------------------------
def _note(job_id: str, f: list) -> Notification:
    v = dict(zip(NOTE_FIELDS, (None if x is None else x.decode() for x in f)))
    num = lambda key: None if v[key] in (None, "") else float(v[key])  # noqa: E731
    return Notification(job_id=job_id, url=v["url"], secret=v["secret"], status=v["status"],
                        attempts=int(v["attempts"] or 0), last_error=v["last_error"] or None,
                        last_attempt_at=num("last_attempt_at"), next_attempt_at=num("next_attempt_at") or 0.0,
                        delivered_at=num("delivered_at"))


def add_notification(store: "RedisStore", note: Notification) -> None:
    pipe = store.redis.pipeline(transaction=True)
    pipe.hset(store._key("n", note.job_id), mapping={
        "url": note.url, "secret": note.secret, "status": note.status, "attempts": note.attempts,
        "next_attempt_at": repr(note.next_attempt_at), "created_at": repr(time.time())})
    pipe.zadd(store._key("npending"), {note.job_id: note.next_attempt_at})
    pipe.execute()


def get_notifications(store: "RedisStore", job_ids: list[str]) -> dict[str, Notification]:
    pipe = store.redis.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hmget(store._key("n", job_id), NOTE_FIELDS)
    rows = pipe.execute() if job_ids else []
    return {j: _note(j, f) for j, f in zip(job_ids, rows) if f[0] is not None}


def due_notifications(store: "RedisStore", now: float, limit: int) -> list[tuple[Notification, JobRecord]]:
    ids = [j.decode() for j in store.redis.zrangebyscore(store._key("npending"), "-inf", now, start=0, num=limit)]
    due = []
    for job_id, note in get_notifications(store, ids).items():
        status = store.redis.hget(store._key("j", job_id), "status")
        if status is None or status.decode() not in TERMINAL:
            # not ended yet, or not stored yet (a notification is written just before its job)
            created = float(store.redis.hget(store._key("n", job_id), "created_at") or now)
            if status is None and now - created > ORPHAN_SECONDS:
                store.redis.delete(store._key("n", job_id))
                store.redis.zrem(store._key("npending"), job_id)
            else:
                store.redis.zadd(store._key("npending"), {job_id: now + RECHECK_SECONDS})
            continue
        if store.redis.set(store._key("nclaim", job_id), "1", nx=True, px=int(CLAIM_SECONDS * 1000)):
            # read again under the claim: another replica may have sent it between the read above and the claim
            # (its record_attempt drops its claim in the same MULTI as the new state), so send only if still due
            fresh = get_notifications(store, [job_id]).get(job_id)
            if fresh is None or fresh.status != "pending" or fresh.next_attempt_at > now:
                store.redis.delete(store._key("nclaim", job_id))
                continue
            due.append((fresh, store.get_job(job_id)))
    return due


def record_attempt(store: "RedisStore", job_id: str, status: str, error: str | None, next_attempt_at: float,
                   now: float) -> None:
    fields = {"status": status, "last_error": error or "", "last_attempt_at": repr(now),
              "next_attempt_at": repr(next_attempt_at)}
    if status == "delivered":
        fields["delivered_at"] = repr(now)
    pipe = store.redis.pipeline(transaction=True)
    pipe.hset(store._key("n", job_id), mapping=fields)
    pipe.hincrby(store._key("n", job_id), "attempts", 1)
    if status == "pending":
        pipe.zadd(store._key("npending"), {job_id: next_attempt_at})
    else:
        pipe.zrem(store._key("npending"), job_id)
    pipe.delete(store._key("nclaim", job_id))
    pipe.execute()
