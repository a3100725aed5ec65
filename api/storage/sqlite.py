"""The embedded store: one SQLite file in WAL mode, one connection per thread and process.

Every write runs in a ``BEGIN IMMEDIATE`` transaction, so the buffer rows a job claims change
owner in the same transaction that queues the job: no sample is used twice or lost.
"""

import json
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from api.errors import (JobNotCancellable, JobNotFound, ModelBusy, ModelExists, ModelNotFound, PayloadTooLarge,
                        VersionConflict, VersionNotFound)
from api.storage.base import JobRecord, ModelRecord, Notification, Store, VersionRecord, source_of, with_trials

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    model_id   TEXT PRIMARY KEY,
    uid        TEXT NOT NULL,
    version    INTEGER NOT NULL,
    info       TEXT NOT NULL,
    blob       BLOB NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS samples (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    model_id TEXT NOT NULL,
    job_id   TEXT,               -- NULL: waiting in the buffer; else claimed by that job
    n        INTEGER NOT NULL,
    n_in     INTEGER NOT NULL,
    n_out    INTEGER NOT NULL,
    dtype    TEXT NOT NULL,
    x        BLOB NOT NULL,
    y        BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_by_owner ON samples (model_id, job_id);
CREATE INDEX IF NOT EXISTS samples_by_job ON samples (job_id);
CREATE TABLE IF NOT EXISTS jobs (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id          TEXT NOT NULL UNIQUE,
    model_id        TEXT NOT NULL,
    model_uid       TEXT NOT NULL,
    status          TEXT NOT NULL,
    params          TEXT NOT NULL,
    min_samples     INTEGER NOT NULL,
    consume_buffer  INTEGER NOT NULL,
    n_samples       INTEGER NOT NULL DEFAULT 0,
    epochs_done     INTEGER NOT NULL DEFAULT 0,
    progress        TEXT,
    history         TEXT NOT NULL DEFAULT '[]',
    error           TEXT,
    worker_id       TEXT,
    checkpoint      BLOB,
    checkpoint_info TEXT,
    model_version   INTEGER,
    created_at      REAL NOT NULL,
    started_at      REAL,
    finished_at     REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_model ON jobs (model_id, seq);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
CREATE TABLE IF NOT EXISTS trials (  -- a search job's trials (api/search.py)
    job_id      TEXT NOT NULL,
    idx         INTEGER NOT NULL,
    status      TEXT NOT NULL,      -- pending, running, succeeded, failed, cancelled
    params      TEXT NOT NULL,
    seed        INTEGER,
    score       REAL,
    metrics     TEXT,
    error       TEXT,
    worker_id   TEXT,
    started_at  REAL,
    finished_at REAL,
    PRIMARY KEY (job_id, idx)
);
CREATE INDEX IF NOT EXISTS trials_by_status ON trials (status, job_id, idx);
CREATE TABLE IF NOT EXISTS versions (  -- kept versions of models' weights, written in the transaction that made them
    uid        TEXT NOT NULL,
    version    INTEGER NOT NULL,
    model_id   TEXT NOT NULL,
    blob       BLOB NOT NULL,
    info       TEXT NOT NULL,
    source     TEXT NOT NULL,       -- JSON: {"source": "create" | "import" | "job" | "put" | "restore", ...}
    created_at REAL NOT NULL,
    PRIMARY KEY (uid, version)
);
CREATE TABLE IF NOT EXISTS notifications (  -- where to POST a job's final record (api/notify.py)
    job_id          TEXT PRIMARY KEY,
    url             TEXT NOT NULL,
    secret          TEXT NOT NULL,
    status          TEXT NOT NULL,  -- pending, delivered, failed
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    last_attempt_at REAL,
    next_attempt_at REAL NOT NULL,
    delivered_at    REAL
);
CREATE INDEX IF NOT EXISTS notifications_due ON notifications (status, next_attempt_at);
"""
# columns added after the first release; added to older databases on open
JOB_MIGRATIONS = {"kind": "ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'training'",
                  "stage": "ALTER TABLE jobs ADD COLUMN stage TEXT",
                  "owner": "ALTER TABLE jobs ADD COLUMN owner TEXT"}  # the API key name that submitted it
MODEL_MIGRATIONS = {"owner": "ALTER TABLE models ADD COLUMN owner TEXT"}  # the API key name that created it

JOB_COLUMNS = ("job_id, model_id, model_uid, status, params, min_samples, consume_buffer, n_samples, epochs_done, "
               "progress, history, error, worker_id, model_version, created_at, started_at, finished_at, kind, stage, owner")

MODEL_COLUMNS = """m.model_id, m.uid, m.version, m.info, m.created_at, m.updated_at, m.owner,
    (SELECT COALESCE(SUM(n), 0) FROM samples s WHERE s.model_id = m.model_id AND s.job_id IS NULL) AS buffer_size,
    (SELECT job_id FROM jobs j WHERE j.model_id = m.model_id AND j.model_uid = m.uid ORDER BY seq DESC LIMIT 1) AS latest_job_id,
    (SELECT status FROM jobs j WHERE j.model_id = m.model_id AND j.model_uid = m.uid ORDER BY seq DESC LIMIT 1) AS latest_job_status"""


def _job(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        job_id=row["job_id"], model_id=row["model_id"], model_uid=row["model_uid"], status=row["status"],
        params=json.loads(row["params"]), min_samples=row["min_samples"], consume_buffer=bool(row["consume_buffer"]),
        n_samples=row["n_samples"], epochs_done=row["epochs_done"],
        progress=json.loads(row["progress"]) if row["progress"] else None, history=json.loads(row["history"]),
        error=row["error"], worker_id=row["worker_id"], model_version=row["model_version"],
        created_at=row["created_at"], started_at=row["started_at"], finished_at=row["finished_at"],
        kind=row["kind"], stage=row["stage"], owner=row["owner"],
    )


def _trial(row: sqlite3.Row) -> dict:
    return {"index": row["idx"], "status": row["status"], "params": json.loads(row["params"]), "seed": row["seed"],
            "score": row["score"], "metrics": json.loads(row["metrics"]) if row["metrics"] else None,
            "error": row["error"], "worker_id": row["worker_id"], "started_at": row["started_at"],
            "finished_at": row["finished_at"]}


def _model(row: sqlite3.Row) -> ModelRecord:
    latest = None
    if row["latest_job_id"] is not None:
        latest = {"job_id": row["latest_job_id"], "status": row["latest_job_status"]}
    return ModelRecord(
        model_id=row["model_id"], uid=row["uid"], version=row["version"], info=json.loads(row["info"]),
        created_at=row["created_at"], updated_at=row["updated_at"], buffer_size=row["buffer_size"], latest_job=latest,
        owner=row["owner"],
    )


def _version(row: sqlite3.Row) -> VersionRecord:
    return VersionRecord(model_id=row["model_id"], uid=row["uid"], version=row["version"], info=json.loads(row["info"]),
                         source=json.loads(row["source"]), created_at=row["created_at"])


def _notification(row: sqlite3.Row) -> Notification:
    return Notification(**{k: row[k] for k in row.keys()})


class SQLiteStore(Store):
    def __init__(self, path: Path | str, busy_timeout: float = 30.0, keep_versions: int = 10):
        self.keep_versions = keep_versions
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        con = self._con()
        con.execute("PRAGMA journal_mode=WAL")
        con.executescript(SCHEMA)
        for table, migrations in (("jobs", JOB_MIGRATIONS), ("models", MODEL_MIGRATIONS)):
            columns = {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
            for column, statement in migrations.items():
                if column not in columns:
                    con.execute(statement)
        con.execute("CREATE INDEX IF NOT EXISTS models_by_owner ON models (owner, created_at)")

    # -- plumbing -------------------------------------------------------------
    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=True)
            con.row_factory = sqlite3.Row
            con.execute(f"PRAGMA busy_timeout={int(self._busy_timeout * 1000)}")
            con.execute("PRAGMA synchronous=NORMAL")
            self._local.con = con
        return con

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    @staticmethod
    def _buffered(con: sqlite3.Connection, model_id: str) -> int:
        row = con.execute("SELECT COALESCE(SUM(n), 0) FROM samples WHERE model_id = ? AND job_id IS NULL", (model_id,)).fetchone()
        return int(row[0])

    @staticmethod
    def _model_row(con: sqlite3.Connection, model_id: str) -> sqlite3.Row:
        row = con.execute(f"SELECT {MODEL_COLUMNS} FROM models m WHERE m.model_id = ?", (model_id,)).fetchone()
        if row is None:
            raise ModelNotFound(model_id)
        return row

    @staticmethod
    def _job_row(con: sqlite3.Connection, job_id: str) -> sqlite3.Row:
        row = con.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return row

    # -- models ---------------------------------------------------------------
    def create_model(self, model_id: str, blob: bytes, info: dict, owner: str | None = None,
                     source: dict | None = None) -> ModelRecord:
        now = time.time()
        with self._tx() as con:
            try:
                con.execute(
                    "INSERT INTO models (model_id, uid, version, info, blob, created_at, updated_at, owner) "
                    "VALUES (?, ?, 1, ?, ?, ?, ?, ?)",
                    (model_id, uuid.uuid4().hex, json.dumps(info), blob, now, now, owner),
                )
            except sqlite3.IntegrityError:
                raise ModelExists(model_id) from None
            con.execute("DELETE FROM samples WHERE model_id = ?", (model_id,))  # leftovers of a deleted namesake
            self._keep_version(con, model_id, source or source_of("create"))
            return _model(self._model_row(con, model_id))

    def get_model(self, model_id: str) -> ModelRecord:
        return _model(self._model_row(self._con(), model_id))

    def list_models(self, offset: int, limit: int, owner: str | None = None) -> tuple[list[ModelRecord], int]:
        con = self._con()
        where, args = ("WHERE m.owner = ?", (owner,)) if owner is not None else ("", ())
        rows = con.execute(f"SELECT {MODEL_COLUMNS} FROM models m {where} ORDER BY m.created_at, m.model_id LIMIT ? OFFSET ?",
                           (*args, limit, offset)).fetchall()
        total = con.execute(f"SELECT COUNT(*) FROM models m {where}", args).fetchone()[0]
        return [_model(r) for r in rows], total

    def model_stamp(self, model_id: str) -> tuple[str, int]:
        row = self._con().execute("SELECT uid, version FROM models WHERE model_id = ?", (model_id,)).fetchone()
        if row is None:
            raise ModelNotFound(model_id)
        return row[0], row[1]

    def load_model(self, model_id: str) -> tuple[bytes, ModelRecord]:
        con = self._con()
        con.execute("BEGIN")  # one snapshot for the record and its blob
        try:
            record = _model(self._model_row(con, model_id))
            blob = con.execute("SELECT blob FROM models WHERE model_id = ?", (model_id,)).fetchone()[0]
        finally:
            con.execute("COMMIT")
        return bytes(blob), record

    def replace_model(self, model_id: str, blob: bytes, info: dict, expected_version: int | None = None,
                      source: dict | None = None) -> ModelRecord:
        with self._tx() as con:
            current = _model(self._model_row(con, model_id))
            if expected_version is not None and expected_version != current.version:
                raise VersionConflict(f"model {model_id!r} is at version {current.version}, not {expected_version}; "
                                      f"GET its weights again and retry")
            busy = con.execute("SELECT job_id FROM jobs WHERE model_id = ? AND status IN ('running', 'cancelling') "
                               "AND stage IS NOT 'trials'", (model_id,)).fetchone()
            if busy is not None:
                raise ModelBusy(f"model {model_id!r} is being trained by job {busy[0]!r}; wait for it to finish "
                                f"or cancel it with POST /jobs/{busy[0]}/cancel")
            con.execute("UPDATE models SET blob = ?, info = ?, version = version + 1, updated_at = ? WHERE model_id = ?",
                        (blob, json.dumps(info), time.time(), model_id))
            self._keep_version(con, model_id, source or source_of("put"))
            return _model(self._model_row(con, model_id))

    def delete_model(self, model_id: str) -> list[str]:
        now = time.time()
        with self._tx() as con:
            self._model_row(con, model_id)
            rows = con.execute("SELECT job_id, status FROM jobs WHERE model_id = ? AND status IN "
                               "('buffering', 'queued', 'running', 'cancelling')", (model_id,)).fetchall()
            for job_id, status in rows:
                if status in ("buffering", "queued"):
                    con.execute("UPDATE jobs SET status = 'cancelled', error = 'model deleted', finished_at = ?, "
                                "checkpoint = NULL WHERE job_id = ?", (now, job_id))
                else:
                    con.execute("UPDATE jobs SET status = 'cancelling', error = 'model deleted' WHERE job_id = ?", (job_id,))
            con.execute("DELETE FROM samples WHERE model_id = ?", (model_id,))
            con.execute("DELETE FROM versions WHERE uid = (SELECT uid FROM models WHERE model_id = ?)", (model_id,))
            con.execute("DELETE FROM models WHERE model_id = ?", (model_id,))
            for job_id, _ in rows:
                self._settle(con, job_id)
            return [r[0] for r in rows]

    # -- versions -------------------------------------------------------------
    def _keep_version(self, con: sqlite3.Connection, model_id: str, source: dict) -> None:
        """Keeps the model's current weights as its version (in the transaction that made them) and
        prunes versions older than the newest NN_KEEP_VERSIONS + 1."""
        con.execute("INSERT OR REPLACE INTO versions (uid, version, model_id, blob, info, source, created_at) "
                    "SELECT uid, version, model_id, blob, info, ?, updated_at FROM models WHERE model_id = ?",
                    (json.dumps(source), model_id))
        con.execute("DELETE FROM versions WHERE (uid, version) IN (SELECT v.uid, v.version FROM versions v JOIN models m "
                    "ON m.uid = v.uid WHERE m.model_id = ? AND v.version < m.version - ?)", (model_id, self.keep_versions))

    _VERSIONS = ("SELECT v.model_id, v.uid, v.version, v.info, v.source, v.created_at FROM versions v JOIN models m "
                 "ON m.uid = v.uid AND v.version <= m.version WHERE m.model_id = ?")

    def list_versions(self, model_id: str) -> list[VersionRecord]:
        con = self._con()
        con.execute("BEGIN")
        try:
            self._model_row(con, model_id)
            rows = con.execute(self._VERSIONS + " ORDER BY v.version DESC", (model_id,)).fetchall()
        finally:
            con.execute("COMMIT")
        return [_version(r) for r in rows]

    def get_version(self, model_id: str, version: int) -> tuple[bytes, VersionRecord]:
        con = self._con()
        con.execute("BEGIN")
        try:
            self._model_row(con, model_id)
            row = con.execute(self._VERSIONS.replace("v.created_at", "v.created_at, v.blob") + " AND v.version = ?",
                              (model_id, version)).fetchone()
        finally:
            con.execute("COMMIT")
        if row is None:
            raise VersionNotFound(model_id, version)
        return bytes(row["blob"]), _version(row)

    # -- training buffer ------------------------------------------------------
    def _append(self, con: sqlite3.Connection, model_id: str, x: np.ndarray, y: np.ndarray, max_buffer: int) -> int:
        size = self._buffered(con, model_id)
        if max_buffer and size + len(x) > max_buffer:
            raise PayloadTooLarge(f"the buffer of model {model_id!r} would hold {size + len(x)} samples, more than "
                                  f"NN_MAX_BUFFER_SAMPLES={max_buffer}; train on it or clear it first")
        x = np.ascontiguousarray(x)
        y = np.ascontiguousarray(y, dtype=x.dtype)
        con.execute("INSERT INTO samples (model_id, n, n_in, n_out, dtype, x, y) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (model_id, len(x), x.shape[1], y.shape[1], x.dtype.str, x.tobytes(), y.tobytes()))
        return size + len(x)

    def append_samples(self, model_id: str, x: np.ndarray, y: np.ndarray, max_buffer: int) -> int:
        with self._tx() as con:
            self._model_row(con, model_id)
            return self._append(con, model_id, x, y, max_buffer)

    def count_samples(self, model_id: str) -> int:
        con = self._con()
        self._model_row(con, model_id)
        return self._buffered(con, model_id)

    def clear_samples(self, model_id: str) -> int:
        with self._tx() as con:
            self._model_row(con, model_id)
            return con.execute("DELETE FROM samples WHERE model_id = ? AND job_id IS NULL", (model_id,)).rowcount

    # -- jobs -----------------------------------------------------------------
    def create_job(self, job: JobRecord, x: np.ndarray | None = None, y: np.ndarray | None = None, max_buffer: int = 0) -> JobRecord:
        with self._tx() as con:
            self._insert_job(con, job, "training", None, x, y)
            return _job(self._job_row(con, job.job_id))

    def _insert_job(self, con: sqlite3.Connection, job: JobRecord, kind: str, stage: str | None,
                    x: np.ndarray | None, y: np.ndarray | None) -> None:
        """Inline samples are the job's own from this transaction on: it is queued at once, the buffer untouched."""
        model = self._model_row(con, job.model_id)
        inline = x is not None and len(x) > 0
        con.execute(
            "INSERT INTO jobs (job_id, model_id, model_uid, status, params, min_samples, consume_buffer, created_at, "
            "kind, stage, n_samples, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (job.job_id, job.model_id, model["uid"], "queued" if inline else "buffering", json.dumps(job.params),
             job.min_samples, int(job.consume_buffer), job.created_at, kind, stage, len(x) if inline else 0, job.owner),
        )
        if inline:
            x = np.ascontiguousarray(x)
            y = np.ascontiguousarray(y, dtype=x.dtype)
            con.execute("INSERT INTO samples (model_id, job_id, n, n_in, n_out, dtype, x, y) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (job.model_id, job.job_id, len(x), x.shape[1], y.shape[1], x.dtype.str, x.tobytes(), y.tobytes()))

    def get_job(self, job_id: str) -> JobRecord:
        con = self._con()
        return self._with_trials(con, _job(self._job_row(con, job_id)))

    @staticmethod
    def _with_trials(con: sqlite3.Connection, job: JobRecord) -> JobRecord:
        if job.kind != "search":
            return job
        rows = con.execute("SELECT * FROM trials WHERE job_id = ? ORDER BY idx", (job.job_id,)).fetchall()
        return with_trials(job, [_trial(r) for r in rows])

    def list_jobs(self, model_id: str, offset: int, limit: int, owner: str | None = None) -> tuple[list[JobRecord], int]:
        con = self._con()
        uid = self._model_row(con, model_id)["uid"]
        where, args = "model_id = ? AND model_uid = ?", (model_id, uid)
        if owner is not None:
            where, args = where + " AND owner = ?", (*args, owner)
        rows = con.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE {where} ORDER BY seq DESC LIMIT ? OFFSET ?",
                           (*args, limit, offset)).fetchall()
        total = con.execute(f"SELECT COUNT(*) FROM jobs WHERE {where}", args).fetchone()[0]
        return [self._with_trials(con, _job(r)) for r in rows], total

    def promote_ready_jobs(self) -> list[JobRecord]:
        con = self._con()
        if con.execute("SELECT 1 FROM jobs WHERE status = 'buffering' LIMIT 1").fetchone() is None:
            return []  # the common case takes no write lock
        promoted = []
        with self._tx() as con:
            waiting = con.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE status = 'buffering' ORDER BY seq").fetchall()
            blocked: set[str] = set()  # first come, first served within a model
            for row in waiting:
                job = _job(row)
                if job.model_id in blocked:
                    continue
                available = self._buffered(con, job.model_id)
                if available < job.min_samples:
                    blocked.add(job.model_id)
                    continue
                if job.consume_buffer:
                    con.execute("UPDATE samples SET job_id = ? WHERE model_id = ? AND job_id IS NULL", (job.job_id, job.model_id))
                else:
                    con.execute("INSERT INTO samples (model_id, job_id, n, n_in, n_out, dtype, x, y) "
                                "SELECT model_id, ?, n, n_in, n_out, dtype, x, y FROM samples "
                                "WHERE model_id = ? AND job_id IS NULL ORDER BY id", (job.job_id, job.model_id))
                con.execute("UPDATE jobs SET status = 'queued', n_samples = ? WHERE job_id = ?", (available, job.job_id))
                promoted.append(_job(self._job_row(con, job.job_id)))
        return promoted

    _NEXT_QUEUED = (f"SELECT {JOB_COLUMNS} FROM jobs j WHERE j.status = 'queued' AND j.stage IS NOT 'trials' AND NOT EXISTS "
                    "(SELECT 1 FROM jobs r WHERE r.model_id = j.model_id AND r.status IN ('running', 'cancelling') "
                    "AND r.stage IS NOT 'trials') ORDER BY j.seq LIMIT 1")

    def claim_job(self, worker_id: str) -> JobRecord | None:
        if self._con().execute(self._NEXT_QUEUED).fetchone() is None:
            return None
        with self._tx() as con:
            row = con.execute(self._NEXT_QUEUED).fetchone()
            if row is None:
                return None
            con.execute("UPDATE jobs SET status = 'running', worker_id = ?, started_at = COALESCE(started_at, ?) "
                        "WHERE job_id = ?", (worker_id, time.time(), row["job_id"]))
            return _job(self._job_row(con, row["job_id"]))

    def job_samples(self, job_id: str) -> tuple[np.ndarray, np.ndarray]:
        rows = self._con().execute("SELECT n, n_in, n_out, dtype, x, y FROM samples WHERE job_id = ? ORDER BY id",
                                   (job_id,)).fetchall()
        if not rows:
            return np.empty((0, 0)), np.empty((0, 0))
        xs = [np.frombuffer(r["x"], dtype=r["dtype"]).reshape(r["n"], r["n_in"]) for r in rows]
        ys = [np.frombuffer(r["y"], dtype=r["dtype"]).reshape(r["n"], r["n_out"]) for r in rows]
        return np.concatenate(xs), np.concatenate(ys)

    def set_progress(self, job_id: str, progress: dict) -> None:
        with self._tx() as con:
            con.execute("UPDATE jobs SET progress = ? WHERE job_id = ? AND status IN ('running', 'cancelling')",
                        (json.dumps(progress), job_id))

    def save_checkpoint(self, job_id: str, blob: bytes, info: dict, epochs_done: int, history: list[dict],
                        progress: dict) -> None:
        with self._tx() as con:
            con.execute("UPDATE jobs SET checkpoint = ?, checkpoint_info = ?, epochs_done = ?, history = ?, progress = ? "
                        "WHERE job_id = ? AND status IN ('running', 'cancelling')",
                        (blob, json.dumps(info), epochs_done, json.dumps(history), json.dumps(progress), job_id))

    def load_checkpoint(self, job_id: str) -> bytes | None:
        row = self._con().execute("SELECT checkpoint FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return None if row[0] is None else bytes(row[0])

    def cancel_job(self, job_id: str) -> JobRecord:
        with self._tx() as con:
            job = _job(self._job_row(con, job_id))
            if job.status in ("buffering", "queued"):
                return self._finish(con, job, "cancelled", use_checkpoint=True)
            if job.status == "running":
                con.execute("UPDATE jobs SET status = 'cancelling' WHERE job_id = ?", (job_id,))
                self._settle(con, job_id)  # a search with no running trial ends now
                return self._with_trials(con, _job(self._job_row(con, job_id)))
            if job.status == "cancelling":
                return self._with_trials(con, job)
            raise JobNotCancellable(f"job {job_id!r} already ended {job.status!r}; only waiting or running jobs can be cancelled")

    def cancel_requested(self, job_id: str) -> bool:
        row = self._con().execute("SELECT status FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return row is None or row[0] != "running"

    def _finish(self, con: sqlite3.Connection, job: JobRecord, status: str, *, blob: bytes | None = None,
                info: dict | None = None, use_checkpoint: bool = False, error: str | None = None) -> JobRecord:
        now = time.time()
        if blob is None and use_checkpoint:
            row = con.execute("SELECT checkpoint, checkpoint_info FROM jobs WHERE job_id = ?", (job.job_id,)).fetchone()
            if row["checkpoint"] is not None:
                blob, info = row["checkpoint"], json.loads(row["checkpoint_info"])
        version = None
        if blob is not None:
            updated = con.execute("UPDATE models SET blob = ?, info = ?, version = version + 1, updated_at = ? "
                                  "WHERE model_id = ? AND uid = ?", (blob, json.dumps(info), now, job.model_id, job.model_uid))
            if updated.rowcount:
                version = con.execute("SELECT version FROM models WHERE model_id = ?", (job.model_id,)).fetchone()[0]
                self._keep_version(con, job.model_id, source_of("job", job_id=job.job_id, job_status=status))
            con.execute("DELETE FROM samples WHERE job_id = ?", (job.job_id,))
        elif job.consume_buffer:
            con.execute("UPDATE samples SET job_id = NULL WHERE job_id = ?", (job.job_id,))  # unused: back to the buffer
        else:
            con.execute("DELETE FROM samples WHERE job_id = ?", (job.job_id,))  # a copy of the buffer
        con.execute("UPDATE jobs SET status = ?, error = COALESCE(?, error), finished_at = ?, model_version = ?, "
                    "checkpoint = NULL, checkpoint_info = NULL, worker_id = NULL WHERE job_id = ?",
                    (status, error, now, version, job.job_id))
        con.execute("UPDATE trials SET status = 'cancelled', finished_at = ? WHERE job_id = ? AND status IN "
                    "('pending', 'running')", (now, job.job_id))  # a search's remaining trials stop
        return self._with_trials(con, _job(self._job_row(con, job.job_id)))

    def finish_job(self, job_id: str, status: str, *, blob: bytes | None = None, info: dict | None = None,
                   use_checkpoint: bool = False, error: str | None = None) -> JobRecord:
        with self._tx() as con:
            job = _job(self._job_row(con, job_id))
            return self._finish(con, job, status, blob=blob, info=info, use_checkpoint=use_checkpoint, error=error)

    def list_all_jobs(self, offset: int, limit: int, *, status: str | None = None, model_id: str | None = None,
                      kind: str | None = None, owner: str | None = None) -> tuple[list[JobRecord], int]:
        where, args = [], []
        for column, value in (("status", status), ("model_id", model_id), ("kind", kind), ("owner", owner)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        con = self._con()
        con.execute("BEGIN")  # the page and its count from one snapshot
        try:
            rows = con.execute(f"SELECT {JOB_COLUMNS} FROM jobs{clause} ORDER BY seq DESC LIMIT ? OFFSET ?",
                               (*args, limit, offset)).fetchall()
            total = con.execute(f"SELECT COUNT(*) FROM jobs{clause}", args).fetchone()[0]
            jobs = [self._with_trials(con, _job(r)) for r in rows]
        finally:
            con.execute("COMMIT")
        return jobs, total

    def add_notification(self, note: Notification) -> None:
        with self._tx() as con:
            con.execute("INSERT OR REPLACE INTO notifications (job_id, url, secret, status, attempts, next_attempt_at) "
                        "VALUES (?, ?, ?, ?, ?, ?)", (note.job_id, note.url, note.secret, note.status, note.attempts,
                                                      note.next_attempt_at))

    def get_notifications(self, job_ids: list[str]) -> dict[str, Notification]:
        found: dict[str, Notification] = {}
        for i in range(0, len(job_ids), 500):
            chunk = job_ids[i:i + 500]
            rows = self._con().execute(f"SELECT * FROM notifications WHERE job_id IN ({', '.join('?' * len(chunk))})",
                                       chunk).fetchall()
            found.update((r["job_id"], _notification(r)) for r in rows)
        return found

    def due_notifications(self, now: float, limit: int) -> list[tuple[Notification, JobRecord]]:
        rows = self._con().execute(
            "SELECT n.job_id FROM notifications n JOIN jobs j ON j.job_id = n.job_id WHERE n.status = 'pending' AND "
            "n.next_attempt_at <= ? AND j.status IN ('succeeded', 'failed', 'cancelled') ORDER BY n.next_attempt_at "
            "LIMIT ?", (now, limit)).fetchall()  # one service owns the data directory: no claim needed
        notes = self.get_notifications([r[0] for r in rows])
        return [(notes[r[0]], self.get_job(r[0])) for r in rows if r[0] in notes]

    def record_attempt(self, job_id: str, *, status: str, error: str | None, next_attempt_at: float, now: float) -> None:
        with self._tx() as con:
            con.execute("UPDATE notifications SET status = ?, attempts = attempts + 1, last_error = ?, last_attempt_at = ?, "
                        "next_attempt_at = ?, delivered_at = CASE WHEN ? = 'delivered' THEN ? ELSE delivered_at END "
                        "WHERE job_id = ?", (status, error, now, next_attempt_at, status, now, job_id))

    def count_queued(self) -> int:
        return self._con().execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetchone()[0]

    def jobs_overview(self) -> tuple[dict[str, int], list[dict]]:
        con = self._con()
        counts = dict(con.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
        running = [json.loads(row[0]) for row in
                   con.execute("SELECT progress FROM jobs WHERE status = 'running' AND progress IS NOT NULL")]
        return counts, running

    def requeue_jobs(self, *, worker_ids: list[str] | None = None, job_ids: list[str] | None = None) -> list[JobRecord]:
        query = f"SELECT {JOB_COLUMNS} FROM jobs WHERE status IN ('running', 'cancelling')"
        args: list[str] = []
        for column, values in (("worker_id", worker_ids), ("job_id", job_ids)):
            if values is not None:
                query += f" AND {column} IN ({', '.join('?' * len(values))})"
                args += values
        changed = []
        with self._tx() as con:
            trial_query = "SELECT DISTINCT job_id FROM trials WHERE status = 'running'"
            if worker_ids is not None:
                trial_query += f" AND worker_id IN ({', '.join('?' * len(worker_ids))})"
            trial_args = worker_ids or []
            for (search_id,) in con.execute(trial_query, trial_args).fetchall():
                if job_ids is None or search_id in job_ids:
                    con.execute("UPDATE trials SET status = 'pending', worker_id = NULL WHERE job_id = ? AND status = "
                                "'running'" + (f" AND worker_id IN ({', '.join('?' * len(worker_ids))})" if worker_ids is not None else ""),
                                [search_id, *trial_args])
                    self._settle(con, search_id)
            for row in con.execute(query + " ORDER BY seq", args).fetchall():
                job = _job(row)
                if job.status == "cancelling":
                    changed.append(self._finish(con, job, "cancelled", use_checkpoint=True))
                else:
                    con.execute("UPDATE jobs SET status = 'queued', worker_id = NULL WHERE job_id = ?", (job.job_id,))
                    changed.append(_job(self._job_row(con, job.job_id)))
        return changed

    # -- search jobs ------------------------------------------------------------------
    def create_search_job(self, job: JobRecord, trials: list[dict], x: np.ndarray | None = None,
                          y: np.ndarray | None = None, max_buffer: int = 0) -> JobRecord:
        with self._tx() as con:
            self._insert_job(con, job, "search", "trials", x, y)
            con.executemany("INSERT INTO trials (job_id, idx, status, params, seed) VALUES (?, ?, 'pending', ?, ?)",
                            [(job.job_id, t["index"], json.dumps(t["params"]), t["seed"]) for t in trials])
            return self._with_trials(con, _job(self._job_row(con, job.job_id)))

    _NEXT_TRIAL = ("SELECT t.job_id, t.idx FROM trials t JOIN jobs j ON j.job_id = t.job_id WHERE t.status = 'pending' "
                   "AND j.status IN ('queued', 'running') AND j.stage = 'trials' {only} ORDER BY j.seq, t.idx LIMIT 1")

    def claim_trial(self, worker_id: str, job_id: str | None = None) -> tuple[JobRecord, dict] | None:
        query = self._NEXT_TRIAL.format(only="AND t.job_id = ?" if job_id else "")
        args = (job_id,) if job_id else ()
        if self._con().execute(query, args).fetchone() is None:
            return None  # the common case takes no write lock
        with self._tx() as con:
            row = con.execute(query, args).fetchone()
            if row is None:
                return None
            now = time.time()
            con.execute("UPDATE trials SET status = 'running', worker_id = ?, started_at = ? WHERE job_id = ? AND idx = ?",
                        (worker_id, now, row["job_id"], row["idx"]))
            con.execute("UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, ?) WHERE job_id = ?",
                        (now, row["job_id"]))
            job = self._with_trials(con, _job(self._job_row(con, row["job_id"])))
            return job, job.trials[[t["index"] for t in job.trials].index(row["idx"])]

    def _settle(self, con: sqlite3.Connection, job_id: str) -> str | None:
        """Ends a search job in its trials stage when nothing is left to run; returns its new status."""
        job = _job(self._job_row(con, job_id))
        if job.kind != "search" or job.stage != "trials" or job.status not in ("queued", "running", "cancelling"):
            return None
        counts = dict(con.execute("SELECT status, COUNT(*) FROM trials WHERE job_id = ? GROUP BY status", (job_id,)).fetchall())
        if counts.get("running"):
            return None
        if job.status == "cancelling":
            return self._finish(con, job, "cancelled").status
        if counts.get("pending"):
            return None
        if not counts.get("succeeded"):
            return self._finish(con, job, "failed", error="every trial failed; see each trial's error").status
        if job.params.get("apply_best"):
            con.execute("UPDATE jobs SET stage = 'apply', status = 'queued' WHERE job_id = ?", (job_id,))
            return "queued"
        return self._finish(con, job, "succeeded").status

    def finish_trial(self, job_id: str, index: int, status: str, *, score: float | None = None,
                     metrics: dict | None = None, error: str | None = None) -> JobRecord:
        with self._tx() as con:
            self._job_row(con, job_id)
            updated = con.execute("UPDATE trials SET status = ?, score = ?, metrics = ?, error = ?, finished_at = ? "
                                  "WHERE job_id = ? AND idx = ? AND status = 'running'",
                                  (status, score, None if metrics is None else json.dumps(metrics), error, time.time(),
                                   job_id, index))
            if updated.rowcount:
                self._settle(con, job_id)
            return self._with_trials(con, _job(self._job_row(con, job_id)))

    def release_trial(self, job_id: str, index: int) -> JobRecord:
        with self._tx() as con:
            self._job_row(con, job_id)
            con.execute("UPDATE trials SET status = 'pending', worker_id = NULL, started_at = NULL "
                        "WHERE job_id = ? AND idx = ? AND status = 'running'", (job_id, index))
            self._settle(con, job_id)
            return self._with_trials(con, _job(self._job_row(con, job_id)))
