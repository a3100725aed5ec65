"""The embedded store: one SQLite file in WAL mode, one connection per thread and process.

Every write is one rule of ``api.storage.lifecycle`` run inside a ``BEGIN IMMEDIATE`` transaction
(``atomic``), so the buffer rows a job claims change owner in the same transaction that queues the
job: no sample is used twice or lost. This file holds the tables and the reads; the primitives of
``lifecycle.Tx`` and the row decoders are in ``api.storage.sqlite_tx``.
"""

import functools
import json
import sqlite3
import threading
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import numpy as np

from api.errors import JobNotFound, ModelNotFound, StoreUnavailable, VersionNotFound
from api.storage.base import JobRecord, ModelRecord, Notification, Store, VersionRecord, with_trials
from api.storage.sqlite_tx import (JOB_COLUMNS, MODEL_COLUMNS, ReadOnlyTx, SQLiteTx, WouldWrite, _job, _model, _notification,
                                   _version, read_history)

T = TypeVar("T")

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
CREATE TABLE IF NOT EXISTS staged (  -- rows of an append request not yet in the buffer (one request: one stage_id)
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    stage_id  TEXT NOT NULL,
    model_id  TEXT NOT NULL,
    n         INTEGER NOT NULL,
    n_in      INTEGER NOT NULL,
    n_out     INTEGER NOT NULL,
    dtype     TEXT NOT NULL,
    x         BLOB NOT NULL,
    y         BLOB NOT NULL,
    staged_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS staged_by_model ON staged (model_id, stage_id);
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
    error           TEXT,
    worker_id       TEXT,
    checkpoint      BLOB,
    checkpoint_info TEXT,
    checkpoint_best BLOB,
    model_version   INTEGER,
    created_at      REAL NOT NULL,
    started_at      REAL,
    finished_at     REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_model ON jobs (model_id, seq);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
CREATE TABLE IF NOT EXISTS job_history (  -- a job's history, appended entry by entry (an epoch, a restart)
    job_id TEXT NOT NULL,
    pos    INTEGER NOT NULL,             -- 0, 1, ... in the job's order
    entry  TEXT NOT NULL,                -- JSON
    PRIMARY KEY (job_id, pos)
) WITHOUT ROWID;
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
                  "owner": "ALTER TABLE jobs ADD COLUMN owner TEXT",  # the API key name that submitted it
                  "checkpoint_best": "ALTER TABLE jobs ADD COLUMN checkpoint_best BLOB"}  # early stopping's best epoch
MODEL_MIGRATIONS = {"owner": "ALTER TABLE models ADD COLUMN owner TEXT"}  # the API key name that created it


def _columns(con: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in con.execute(f"PRAGMA table_info({table})")}


def _move_history(con: sqlite3.Connection) -> None:
    """Databases from before ``job_history`` kept a job's history as one JSON column, rewritten whole at every epoch
    (a 10,000-epoch job wrote 10 GB): its entries move to ``job_history`` and the column goes, in one transaction,
    once (the column is gone after; a concurrent opener finds it gone). A SQLite too old to drop a column (< 3.35)
    keeps it, emptied."""
    con.execute("BEGIN IMMEDIATE")
    try:
        if "history" in _columns(con, "jobs"):
            tx = SQLiteTx(con)
            for job_id, text in con.execute("SELECT job_id, history FROM jobs WHERE history NOT IN ('', '[]')"):
                tx.add_history(job_id, json.loads(text))
            try:
                con.execute("ALTER TABLE jobs DROP COLUMN history")
            except sqlite3.OperationalError:
                con.execute("UPDATE jobs SET history = '[]' WHERE history != '[]'")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


class SQLiteStore(Store):
    appends_in_one_step = True

    def __init__(self, path: Path | str, busy_timeout: float = 30.0, keep_versions: int = 10):
        self.keep_versions = keep_versions
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        try:
            con = self._con()
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(SCHEMA)
            for table, migrations in (("jobs", JOB_MIGRATIONS), ("models", MODEL_MIGRATIONS)):
                columns = _columns(con, table)
                for column, statement in migrations.items():
                    if column not in columns:
                        con.execute(statement)
            if "history" in _columns(con, "jobs"):
                _move_history(con)
            con.execute("CREATE INDEX IF NOT EXISTS models_by_owner ON models (owner, created_at)")
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(unusable(self.path, exc)) from None

    def check_integrity(self) -> None:
        """``PRAGMA quick_check`` (every page and index readable, in O(size)); StoreUnavailable if it fails."""
        problems = [row[0] for row in self._con().execute("PRAGMA quick_check(5)").fetchall()]
        if problems != ["ok"]:
            found = " ".join(" ".join(problems).split())  # one line
            raise StoreUnavailable(unusable(self.path, f"PRAGMA quick_check: {found[:200]}"))

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

    def atomic(self, step: Callable[["SQLiteTx"], T], fence: str | None = None, read_first: bool = False) -> T:
        """One ``BEGIN IMMEDIATE`` transaction (one machine, no leases: ``fence`` is unused). With
        ``read_first``, the step first runs in a read-only snapshot and takes the write lock only when it
        has something to write (idle workers polling for work never block appends)."""
        if read_first:
            con = self._con()
            con.execute("BEGIN")
            try:
                return step(ReadOnlyTx(SQLiteTx(con)))
            except WouldWrite:
                pass
            finally:
                con.execute("COMMIT")
        with self._tx() as con:
            return step(SQLiteTx(con, self.keep_versions))

    def close(self) -> None:
        for name in ("con", "quick"):
            con = getattr(self._local, name, None)
            if con is not None:
                con.close()
                setattr(self._local, name, None)

    @staticmethod
    def _model_row(con: sqlite3.Connection, model_id: str) -> sqlite3.Row:
        row = con.execute(f"SELECT {MODEL_COLUMNS} FROM models m WHERE m.model_id = ?", (model_id,)).fetchone()
        if row is None:
            raise ModelNotFound(model_id)
        return row

    # -- reads ----------------------------------------------------------------
    def has_jobs(self, statuses: tuple[str, ...]) -> bool:
        query = f"SELECT 1 FROM jobs WHERE status IN ({', '.join('?' * len(statuses))}) LIMIT 1"
        return self._con().execute(query, statuses).fetchone() is not None

    def job_status(self, job_id: str) -> str | None:
        row = self._con().execute("SELECT status FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else row[0]

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
        return self._stamp(self._con(), model_id)

    @staticmethod
    def _stamp(con: sqlite3.Connection, model_id: str) -> tuple[str, int]:
        row = con.execute("SELECT uid, version FROM models WHERE model_id = ?", (model_id,)).fetchone()
        if row is None:
            raise ModelNotFound(model_id)
        return row[0], row[1]

    async def model_stamp_on_loop(self, model_id: str) -> tuple[str, int] | None:
        """The same indexed read on a connection that never waits for a lock (WAL readers do not, but for
        recovery or a checkpoint): a database that is busy or unwell is left to ``model_stamp`` in a thread."""
        con = getattr(self._local, "quick", None)
        try:
            if con is None:
                con = self._local.quick = sqlite3.connect(self.path, timeout=0, isolation_level=None)
            return self._stamp(con, model_id)
        except sqlite3.Error:
            return None

    def load_model(self, model_id: str) -> tuple[bytes, ModelRecord]:
        con = self._con()
        con.execute("BEGIN")  # one snapshot for the record and its blob
        try:
            record = _model(self._model_row(con, model_id))
            blob = con.execute("SELECT blob FROM models WHERE model_id = ?", (model_id,)).fetchone()[0]
        finally:
            con.execute("COMMIT")
        return bytes(blob), record

    def count_samples(self, model_id: str) -> int:
        con = self._con()
        self._model_row(con, model_id)
        return SQLiteTx(con).buffered(model_id)

    def buffer_sizes(self) -> dict[str, int]:
        return dict(self._con().execute("SELECT model_id, SUM(n) FROM samples WHERE job_id IS NULL GROUP BY model_id "
                                        "HAVING SUM(n) > 0").fetchall())

    def get_job(self, job_id: str, history_from: int | None = 0) -> JobRecord:
        con = self._con()
        con.execute("BEGIN")  # one snapshot for the record and its history
        try:
            row = con.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(job_id)
            job = _job(row)
            return self._with_trials(con, job if history_from is None else read_history(con, [job], history_from)[0])
        finally:
            con.execute("COMMIT")

    @staticmethod
    def _with_trials(con: sqlite3.Connection, job: JobRecord) -> JobRecord:
        return with_trials(job, SQLiteTx(con).trials(job.job_id)) if job.kind == "search" else job

    def list_jobs(self, model_id: str, offset: int, limit: int, owner: str | None = None) -> tuple[list[JobRecord], int]:
        con = self._con()
        con.execute("BEGIN")  # the page, its histories and its count from one snapshot
        try:
            uid = self._model_row(con, model_id)["uid"]
            where, args = "model_id = ? AND model_uid = ?", (model_id, uid)
            if owner is not None:
                where, args = where + " AND owner = ?", (*args, owner)
            rows = con.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE {where} ORDER BY seq DESC LIMIT ? OFFSET ?",
                               (*args, limit, offset)).fetchall()
            total = con.execute(f"SELECT COUNT(*) FROM jobs WHERE {where}", args).fetchone()[0]
            return [self._with_trials(con, j) for j in read_history(con, [_job(r) for r in rows])], total
        finally:
            con.execute("COMMIT")

    def job_samples(self, job_id: str) -> tuple[np.ndarray, np.ndarray]:
        rows = self._con().execute("SELECT n, n_in, n_out, dtype, x, y FROM samples WHERE job_id = ? ORDER BY id",
                                   (job_id,)).fetchall()
        if not rows:
            return np.empty((0, 0)), np.empty((0, 0))
        xs = [np.frombuffer(r["x"], dtype=r["dtype"]).reshape(r["n"], r["n_in"]) for r in rows]
        ys = [np.frombuffer(r["y"], dtype=r["dtype"]).reshape(r["n"], r["n_out"]) for r in rows]
        return np.concatenate(xs), np.concatenate(ys)

    def load_checkpoint(self, job_id: str, best: bool = False) -> bytes | None:
        column = "checkpoint_best" if best else "checkpoint"
        row = self._con().execute(f"SELECT {column} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return None if row[0] is None else bytes(row[0])

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

    def version_kept(self, uid: str, version: int) -> bool:
        row = self._con().execute("SELECT 1 FROM versions WHERE uid = ? AND version = ?", (uid, version)).fetchone()
        return row is not None

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
            jobs = [self._with_trials(con, j) for j in read_history(con, [_job(r) for r in rows])]
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


def unusable(path: Path, problem) -> str:
    """What a client or an operator reads when the database cannot be used, with how to recover."""
    if isinstance(problem, sqlite3.OperationalError) and "locked" in str(problem):  # busy, not damaged
        return (f"the database {path} stayed locked by another writer past its busy timeout ({problem}); "
                "retry the request; if it persists, look for a process holding a long transaction on that file")
    return (f"the database {path} cannot be used ({problem}); if it is damaged: stop the service, keep a copy of "
            f"{path.name}*, then restore a backup or run `sqlite3 {path} .recover | sqlite3 recovered.sqlite3` "
            f"and move recovered.sqlite3 to {path} (deleting {path.name}-wal and {path.name}-shm)")


def _unavailable_when_unusable(method):
    """sqlite3's errors for a damaged or unreadable database become StoreUnavailable (503), once for every
    method; a constraint or a programming error stays what it is."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError):
            raise
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(unusable(self.path, exc)) from exc
    return wrapper


for _name, _member in list(vars(SQLiteStore).items()):
    if isinstance(_member, types.FunctionType) and not _name.startswith("_"):
        setattr(SQLiteStore, _name, _unavailable_when_unusable(_member))
