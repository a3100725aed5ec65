"""The Redis half of ``lifecycle.Tx``: one WATCH/MULTI/EXEC transaction, and how records and sample
batches are encoded in Redis keys (the layout is in ``api.storage.redis_store``).

Samples are stored as raw array bytes behind a small fixed header (never pickle, never JSON floats).
"""

import json
import struct
from typing import Any, Callable

import numpy as np
import redis

from api.errors import LeaseLost, StoreUnavailable
from api.storage.lifecycle import TERMINAL
from api.storage.records import JobRecord, ModelRecord

_HEADER = struct.Struct("<4sIII8s")  # magic, rows, n_in, n_out, dtype (NumPy str, e.g. b"<f4")
_MAGIC = b"NNS1"
_JSON_FIELDS = ("params", "progress")  # a job's history is a list of its own, P:hist:{job} (decode_job)
_INT_FIELDS = ("min_samples", "n_samples", "epochs_done", "model_version")
_FLOAT_FIELDS = ("created_at", "started_at", "finished_at")
MODEL_FIELDS = ("uid", "version", "info", "created_at", "updated_at", "owner")


def unavailable(where: str, exc: Exception) -> StoreUnavailable:
    """Redis down or too slow: a StoreUnavailable (503) that says so, never a hang or a 500."""
    if isinstance(exc, redis.AuthenticationError):
        return StoreUnavailable(f"the Redis store at {where} refused the service's credentials ({exc}); the operator "
                                "must fix NN_REDIS_URL")
    return StoreUnavailable(f"the Redis store at {where} is unreachable ({exc.__class__.__name__}: {exc}); "
                            "retry in a few seconds")


def pack_samples(x: np.ndarray, y: np.ndarray) -> bytes:
    x = np.ascontiguousarray(x)
    y = np.ascontiguousarray(y, dtype=x.dtype)
    return _HEADER.pack(_MAGIC, len(x), x.shape[1], y.shape[1], x.dtype.str.encode()) + x.tobytes() + y.tobytes()


def unpack_samples(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    magic, n, n_in, n_out, dtype = _HEADER.unpack_from(blob)
    if magic != _MAGIC:
        raise ValueError("not a sample batch")
    dtype = np.dtype(dtype.rstrip(b"\0").decode())
    x = np.frombuffer(blob, dtype=dtype, count=n * n_in, offset=_HEADER.size).reshape(n, n_in)
    y = np.frombuffer(blob, dtype=dtype, count=n * n_out, offset=_HEADER.size + x.nbytes).reshape(n, n_out)
    return x, y


def encode_job(job: JobRecord) -> tuple[dict[str, str], list[str]]:
    """The job's hash fields, and the names of those that are None (deleted)."""
    values: dict[str, Any] = {f: getattr(job, f) for f in ("model_id", "model_uid", "status", "error", "worker_id", "kind",
                                                           "stage", "owner", *_JSON_FIELDS, *_INT_FIELDS, *_FLOAT_FIELDS)}
    values["consume_buffer"] = "1" if job.consume_buffer else "0"
    for f in _JSON_FIELDS:
        values[f] = None if values[f] is None else json.dumps(values[f])
    for f in _FLOAT_FIELDS:
        values[f] = None if values[f] is None else repr(values[f])
    return {k: str(v) for k, v in values.items() if v is not None}, [k for k, v in values.items() if v is None]


def decode_history(legacy: bytes | None, entries: list[bytes]) -> list[dict]:
    """A job's history: the JSON list older versions kept in its hash (rewritten whole every epoch; never written
    now, so a job of then keeps it as its first entries), then the entries of its list, in one parse."""
    return (json.loads(legacy) if legacy else []) + json.loads(b"[" + b",".join(entries) + b"]")


def decode_job(job_id: str, raw: dict[bytes, bytes], history: list[bytes] | None = None) -> JobRecord:
    """``history``: the entries of the job's list (LRANGE P:hist:{job}); None leaves the history empty (a step's read)."""
    v = {k.decode(): x.decode() for k, x in raw.items() if k != b"history"}
    return JobRecord(
        job_id=job_id, model_id=v["model_id"], model_uid=v["model_uid"], status=v["status"], params=json.loads(v["params"]),
        min_samples=int(v["min_samples"]), consume_buffer=v["consume_buffer"] == "1", n_samples=int(v["n_samples"]),
        epochs_done=int(v["epochs_done"]), progress=json.loads(v["progress"]) if "progress" in v else None,
        history=[] if history is None else decode_history(raw.get(b"history"), history), error=v.get("error"),
        worker_id=v.get("worker_id"),
        model_version=int(v["model_version"]) if "model_version" in v else None, created_at=float(v["created_at"]),
        started_at=float(v["started_at"]) if "started_at" in v else None,
        finished_at=float(v["finished_at"]) if "finished_at" in v else None, kind=v.get("kind", "training"),
        stage=v.get("stage"), owner=v.get("owner"))


def decode_model(model_id: str, f: list, buffer_size: int = 0, latest: dict | None = None) -> ModelRecord:
    return ModelRecord(model_id=model_id, uid=f[0].decode(), version=int(f[1]), info=json.loads(f[2]),
                       created_at=float(f[3]), updated_at=float(f[4]), buffer_size=buffer_size, latest_job=latest,
                       owner=f[5].decode() if f[5] is not None else None)



class RedisTx:
    """``lifecycle.Tx`` over one WATCHing pipeline: reads WATCH their keys and are cached (so the rule
    sees its own writes); writes are queued in ``ops`` for the MULTI/EXEC."""

    def __init__(self, pipe: redis.client.Pipeline, key: Callable[..., str], client: redis.Redis, keep_versions: int = 10):
        self.pipe, self.key, self.client, self.keep_versions = pipe, key, client, keep_versions
        self.ops: list[tuple] = []
        self.ready_ids: list[str] = []
        self._models: dict[str, ModelRecord | None] = {}
        self._jobs: dict[str, JobRecord | None] = {}
        self._seq: dict[str, int] = {}
        self._stored_status: dict[str, str | None] = {}
        self._buffered: dict[str, int] = {}
        self._staged: dict[str, dict[str, tuple[int, float]]] = {}
        self._trials: dict[str, list[dict]] = {}

    def _read(self, key: str, name: str, *args) -> Any:
        self.pipe.watch(key)
        return getattr(self.pipe, name)(key, *args)

    def reads_changed(self) -> bool:
        """Whether a key the step has read (WATCHed) changed since: an empty MULTI/EXEC fails then. A step reads key by
        key, so one that raised may have seen two states: a job read as buffering, then the samples another replica's
        claim gave it ("already holds samples", a 500 for an append racing a submit). Such an error is a conflict."""
        try:
            self.pipe.multi()
            self.pipe.execute()
            return False
        except redis.WatchError:
            return True

    def fence(self, key: str, token: str) -> None:
        if self._read(self.key("lease", key), "get") != token.encode():
            raise LeaseLost(f"job {key}: this worker's lease expired; another worker owns the job now")

    # -- reads --
    def model(self, model_id: str) -> ModelRecord | None:
        if model_id not in self._models:
            f = self._read(self.key("m", model_id), "hmget", MODEL_FIELDS)
            self._models[model_id] = None if f[0] is None else decode_model(model_id, f)
        return self._models[model_id]

    def job(self, job_id: str) -> JobRecord | None:
        if job_id not in self._jobs:
            raw = self._read(self.key("j", job_id), "hgetall")
            self._jobs[job_id] = decode_job(job_id, raw) if raw else None
            self._seq[job_id] = int(raw[b"seq"]) if raw else 0
            self._stored_status[job_id] = raw[b"status"].decode() if raw else None
        return self._jobs[job_id]

    def jobs(self, statuses: tuple[str, ...], model_id: str | None = None) -> list[JobRecord]:
        """Jobs in ``statuses`` (of ``model_id``), oldest first. A model's come from its own index of active jobs
        once the store has one for every job (``jobs:ma-indexed``): reading every model's jobs of a status, with
        a thousand buffering jobs elsewhere, took a submit 0.2 s alone and 7 s under 4 clients."""
        if model_id is not None and self._read(self.key("jobs", "ma-indexed"), "exists"):
            ids = {j.decode() for j in self._read(self.key("jobs:ma", model_id), "zrange", 0, -1)}
        else:
            ids = {j.decode() for s in statuses for j in self._read(self.key("jobs:s", s), "zrange", 0, -1)}
        ids |= {j for j, job in self._jobs.items() if job is not None}
        found = [self.job(j) for j in ids]
        found = [j for j in found if j is not None and j.status in statuses and model_id in (None, j.model_id)]
        return sorted(found, key=lambda j: self._seq[j.job_id])

    def buffered(self, model_id: str) -> int:
        if model_id not in self._buffered:
            self._buffered[model_id] = int(self._read(self.key("bufn", model_id), "get") or 0)
        return self._buffered[model_id]

    def staged(self, model_id: str) -> dict[str, tuple[int, float]]:
        return dict(self._stagings(model_id))

    def _stagings(self, model_id: str) -> dict[str, tuple[int, float]]:
        if model_id not in self._staged:
            raw = self._read(self.key("stg", model_id), "hgetall")
            self._staged[model_id] = {k.decode(): tuple(json.loads(v)) for k, v in raw.items()}
        return self._staged[model_id]

    def staging_models(self) -> list[str]:
        return [m.decode() for m in self._read(self.key("staging"), "smembers")]

    def trials(self, job_id: str) -> list[dict]:
        if job_id not in self._trials:
            raw = self._read(self.key("tr", job_id), "hgetall")
            self._trials[job_id] = sorted((json.loads(v) for v in raw.values()), key=lambda t: t["index"])
        return self._trials[job_id]

    def checkpoint(self, job_id: str) -> tuple[bytes, dict] | None:
        blob, info = self._read(self.key("ck", job_id), "hmget", ["blob", "info"])
        return None if blob is None else (bytes(blob), json.loads(info))

    def history(self, job_id: str) -> list[dict]:
        return decode_history(self._read(self.key("j", job_id), "hget", "history"),
                              self._read(self.key("hist", job_id), "lrange", 0, -1))

    # -- writes --
    def insert_model(self, model_id: str, uid: str, blob: bytes, info: dict, owner: str | None, source: dict,
                     now: float) -> None:
        fields = {"uid": uid, "version": 1, "info": json.dumps(info), "blob": blob, "created_at": repr(now),
                  "updated_at": repr(now), **({"owner": owner} if owner is not None else {})}
        self.ops += [("delete", *(self.key(p, model_id) for p in ("buf", "bufn", "mjobs"))),
                     ("hset", self.key("m", model_id), None, None, fields), ("zadd", self.key("models"), {model_id: now})]
        if owner is not None:
            self.ops.append(("zadd", self.key("owned", owner), {model_id: now}))
        self._models[model_id] = ModelRecord(model_id, uid, 1, info, now, now, owner=owner)
        self._keep_version(model_id, uid, 1, blob, info, source, now)

    def save_model(self, model_id: str, blob: bytes, info: dict, version: int, source: dict, now: float) -> None:
        self.ops.append(("hset", self.key("m", model_id), None, None,
                         {"blob": blob, "info": json.dumps(info), "version": version, "updated_at": repr(now)}))
        model = self.model(model_id)
        model.version, model.info, model.updated_at = version, info, now
        self._keep_version(model_id, model.uid, version, blob, info, source, now)

    def _keep_version(self, model_id: str, uid: str, version: int, blob: bytes, info: dict, source: dict,
                      now: float) -> None:
        """The weights become the kept version (uid, version); those older than the newest keep + 1 go."""
        index, oldest = self.key("vers", uid), version - self.keep_versions
        self.ops += [("hset", self.key("v", uid, str(version)), None, None,
                      {"model_id": model_id, "blob": blob, "info": json.dumps(info), "source": json.dumps(source),
                       "created_at": repr(now)}), ("zadd", index, {str(version): version})]
        old = [v.decode() for v in self._read(index, "zrangebyscore", "-inf", f"({oldest}")]
        if old:
            self.ops += [("delete", *(self.key("v", uid, v) for v in old)), ("zremrangebyscore", index, "-inf", f"({oldest}")]

    def drop_model(self, model_id: str) -> None:
        model = self.model(model_id)
        self.ops += [("delete", *(self.key(p, model_id) for p in ("m", "buf", "bufn", "mjobs"))),
                     ("zrem", self.key("models"), model_id)]
        if model is not None:
            if model.owner is not None:
                self.ops.append(("zrem", self.key("owned", model.owner), model_id))
            kept = [v.decode() for v in self._read(self.key("vers", model.uid), "zrange", 0, -1)]
            self.ops.append(("delete", self.key("vers", model.uid), *(self.key("v", model.uid, v) for v in kept)))
        stagings = self._stagings(model_id)
        self.ops += [("delete", self.key("stg", model_id), *(self.key("stage", s) for s in stagings)),
                     ("srem", self.key("staging"), model_id)]
        self._models[model_id], self._buffered[model_id], self._staged[model_id] = None, 0, {}

    def insert_job(self, job: JobRecord) -> None:
        seq = int(self.client.incr(self.key("seq")))  # outside the transaction: a gap if it runs again
        self._jobs[job.job_id], self._seq[job.job_id], self._stored_status[job.job_id] = job, seq, None
        self.ops += [("hset", self.key("j", job.job_id), "seq", seq)] + [
            ("zadd", key, {job.job_id: seq}) for key in (self.key("mjobs", job.model_id), self.key("jobs"),
                                                         self.key("jobs:active"), self.key("jobs:m", job.model_id),
                                                         self.key("jobs:k", job.kind),  # GET /jobs (redis_registry)
                                                         self.key("jobs:ma", job.model_id))]  # its model's active jobs
        self.save_job(job)
        self.add_history(job.job_id, job.history)

    def save_job(self, job: JobRecord) -> None:
        values, unset = encode_job(job)
        key = self.key("j", job.job_id)
        self.ops.append(("hset", key, None, None, values))
        if unset:
            self.ops.append(("hdel", key, *unset))
        old = self._stored_status.get(job.job_id)
        if old != job.status:
            if old is not None:
                self.ops.append(("zrem", self.key("jobs:s", old), job.job_id))
            self.ops.append(("zadd", self.key("jobs:s", job.status), {job.job_id: self._seq[job.job_id]}))
            if job.status in TERMINAL:
                self.ops += [("zrem", self.key("jobs:active"), job.job_id), ("zrem", self.key("jobs:ma", job.model_id), job.job_id)]
            self._stored_status[job.job_id] = job.status

    def add_history(self, job_id: str, entries: list[dict]) -> None:
        if entries:  # RPUSH: O(1) an entry, whatever the list holds
            self.ops.append(("rpush", self.key("hist", job_id), *(json.dumps(e) for e in entries)))

    def put_checkpoint(self, job_id: str, blob: bytes, info: dict, best: bool = False) -> None:
        fields = {"blob": blob, "info": json.dumps(info), **({"best": blob} if best else {})}  # best stays till dropped
        self.ops.append(("hset", self.key("ck", job_id), None, None, fields))

    def drop_checkpoint(self, job_id: str) -> None:
        self.ops.append(("delete", self.key("ck", job_id)))

    def insert_trials(self, job_id: str, trials: list[dict]) -> None:
        self._trials[job_id] = trials
        self.ops.append(("hset", self.key("tr", job_id), None, None, {t["index"]: json.dumps(t) for t in trials}))

    def save_trial(self, job_id: str, trial: dict) -> None:
        self.ops.append(("hset", self.key("tr", job_id), trial["index"], json.dumps(trial)))

    def add_samples(self, model_id: str, job_id: str | None, x: np.ndarray, y: np.ndarray) -> None:
        if job_id is not None:
            self.ops.append(("rpush", self.key("js", job_id), pack_samples(x, y)))
            return
        self._buffered[model_id] = self.buffered(model_id) + len(x)
        self.ops += [("rpush", self.key("buf", model_id), pack_samples(x, y)), ("incrby", self.key("bufn", model_id), len(x))]

    def claim_buffer(self, model_id: str, job_id: str, copy: bool) -> None:
        buf, js = self.key("buf", model_id), self.key("js", job_id)
        if not self.buffered(model_id):  # counts the batches this step pushes too (not yet in Redis: no EXISTS)
            return
        if self._read(js, "exists"):
            raise RuntimeError(f"job {job_id} already holds samples")  # never: only buffering jobs claim
        self.ops.append(("copy", buf, js) if copy else ("rename", buf, js))
        if not copy:
            self.ops.append(("delete", self.key("bufn", model_id)))
            self._buffered[model_id] = 0

    def return_samples(self, job_id: str, model_id: str, n: int) -> None:
        buf, js = self.key("buf", model_id), self.key("js", job_id)
        theirs, ours = self._read(buf, "llen"), self._read(js, "llen")
        if theirs <= ours:  # move the shorter list: the buffer's batches after the job's, then rename
            self.ops += [("lmove", buf, js, "LEFT", "RIGHT")] * theirs + [("rename", js, buf)] * bool(ours)
        else:
            self.ops += [("lmove", js, buf, "RIGHT", "LEFT")] * ours
        self.ops.append(("incrby", self.key("bufn", model_id), n))
        self._buffered[model_id] = self.buffered(model_id) + n

    def drop_samples(self, job_id: str) -> None:
        self.ops.append(("delete", self.key("js", job_id)))

    def clear_buffer(self, model_id: str) -> None:
        self.ops.append(("delete", self.key("buf", model_id), self.key("bufn", model_id)))
        self._buffered[model_id] = 0

    def stage_samples(self, model_id: str, stage_id: str, x: np.ndarray, y: np.ndarray, now: float) -> None:
        stagings = self._stagings(model_id)
        stagings[stage_id] = (stagings.get(stage_id, (0, 0.0))[0] + len(x), now)
        self.ops += [("rpush", self.key("stage", stage_id), pack_samples(x, y)),
                     ("hset", self.key("stg", model_id), stage_id, json.dumps(stagings[stage_id])),
                     ("sadd", self.key("staging"), model_id)]

    def unstage(self, model_id: str, stage_id: str) -> None:
        """The staged batches move, in order, to the buffer's end. Into an empty buffer the list is renamed: LMOVE
        answers with the element it moves, so a MULTI of LMOVEs sends every staged byte back to this client (a
        60,000-row dataset copied into an empty buffer ran at under half its speed)."""
        stage, buffer, n = self.key("stage", stage_id), self.key("buf", model_id), self._stagings(model_id)[stage_id][0]
        if not self.buffered(model_id) and not self._read(buffer, "exists"):  # nothing pushed by this step either
            self.ops.append(("rename", stage, buffer))
        else:
            self.ops += [("lmove", stage, buffer, "LEFT", "RIGHT")] * self._read(stage, "llen")
        self.ops.append(("incrby", self.key("bufn", model_id), n))
        self._buffered[model_id] = self.buffered(model_id) + n
        self.drop_staged(model_id, stage_id)

    def drop_staged(self, model_id: str, stage_id: str) -> None:
        stagings = self._stagings(model_id)
        stagings.pop(stage_id, None)
        self.ops += [("delete", self.key("stage", stage_id)), ("hdel", self.key("stg", model_id), stage_id)]
        if not stagings:
            self.ops.append(("srem", self.key("staging"), model_id))

    def ready(self, job_id: str) -> None:
        self.ready_ids.append(job_id)
