"""The SQLite half of ``lifecycle.Tx`` (each primitive one SQL statement or two, inside the open
``BEGIN IMMEDIATE`` transaction of ``SQLiteStore.atomic``) and the decoders of the store's rows."""

import json
import sqlite3

import numpy as np

from api.storage.records import JobRecord, ModelRecord, Notification, VersionRecord

JOB_COLUMNS = ("job_id, model_id, model_uid, status, params, min_samples, consume_buffer, n_samples, epochs_done, "
               "progress, error, worker_id, model_version, created_at, started_at, finished_at, kind, stage, owner")

MODEL_COLUMNS = """m.model_id, m.uid, m.version, m.info, m.created_at, m.updated_at, m.owner,
    (SELECT COALESCE(SUM(n), 0) FROM samples s WHERE s.model_id = m.model_id AND s.job_id IS NULL) AS buffer_size,
    (SELECT job_id FROM jobs j WHERE j.model_id = m.model_id AND j.model_uid = m.uid ORDER BY seq DESC LIMIT 1) AS latest_job_id,
    (SELECT status FROM jobs j WHERE j.model_id = m.model_id AND j.model_uid = m.uid ORDER BY seq DESC LIMIT 1) AS latest_job_status,
    (SELECT owner FROM jobs j WHERE j.model_id = m.model_id AND j.model_uid = m.uid ORDER BY seq DESC LIMIT 1) AS latest_job_owner"""


def _batch(x: np.ndarray, y: np.ndarray) -> tuple:
    """A batch's columns n, n_in, n_out, dtype, x, y (raw bytes, y in x's dtype)."""
    x = np.ascontiguousarray(x)
    y = np.ascontiguousarray(y, dtype=x.dtype)
    return len(x), x.shape[1], y.shape[1], x.dtype.str, x.tobytes(), y.tobytes()


def _job(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        job_id=row["job_id"], model_id=row["model_id"], model_uid=row["model_uid"], status=row["status"],
        params=json.loads(row["params"]), min_samples=row["min_samples"], consume_buffer=bool(row["consume_buffer"]),
        n_samples=row["n_samples"], epochs_done=row["epochs_done"],
        progress=json.loads(row["progress"]) if row["progress"] else None,  # history: see read_history
        error=row["error"], worker_id=row["worker_id"], model_version=row["model_version"],
        created_at=row["created_at"], started_at=row["started_at"], finished_at=row["finished_at"],
        kind=row["kind"], stage=row["stage"], owner=row["owner"],
    )


def read_history(con: sqlite3.Connection, jobs: list[JobRecord], start: int = 0) -> list[JobRecord]:
    """Attaches each job's history (its ``job_history`` rows in order, from entry ``start``), one query per 500
    jobs."""
    by_id = {job.job_id: job for job in jobs}
    ids, entries = list(by_id), {}
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        for job_id, entry in con.execute(f"SELECT job_id, entry FROM job_history WHERE pos >= ? AND job_id IN "
                                         f"({', '.join('?' * len(chunk))}) ORDER BY job_id, pos", [start, *chunk]):
            entries.setdefault(job_id, []).append(entry)
    for job_id, found in entries.items():
        by_id[job_id].history = json.loads("[" + ",".join(found) + "]")  # one parse, not one per entry
    return jobs


def _trial(row: sqlite3.Row) -> dict:
    return {"index": row["idx"], "status": row["status"], "params": json.loads(row["params"]), "seed": row["seed"],
            "score": row["score"], "metrics": json.loads(row["metrics"]) if row["metrics"] else None,
            "error": row["error"], "worker_id": row["worker_id"], "started_at": row["started_at"],
            "finished_at": row["finished_at"]}


def _model(row: sqlite3.Row) -> ModelRecord:
    latest = None
    if row["latest_job_id"] is not None:
        latest = {"job_id": row["latest_job_id"], "status": row["latest_job_status"], "owner": row["latest_job_owner"]}
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


class SQLiteTx:
    """The primitives of ``lifecycle.Tx`` inside one open transaction: each one SQL statement or two."""

    def __init__(self, con: sqlite3.Connection, keep_versions: int = 10):
        self.con, self.keep_versions = con, keep_versions

    # -- reads --
    def model(self, model_id: str) -> ModelRecord | None:
        row = self.con.execute(f"SELECT {MODEL_COLUMNS} FROM models m WHERE m.model_id = ?", (model_id,)).fetchone()
        return None if row is None else _model(row)

    def job(self, job_id: str) -> JobRecord | None:
        row = self.con.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def jobs(self, statuses: tuple[str, ...], model_id: str | None = None) -> list[JobRecord]:
        query = f"SELECT {JOB_COLUMNS} FROM jobs WHERE status IN ({', '.join('?' * len(statuses))})"
        args = [*statuses]
        if model_id is not None:
            query += " AND model_id = ?"
            args.append(model_id)
        return [_job(r) for r in self.con.execute(query + " ORDER BY seq", args).fetchall()]

    def buffered(self, model_id: str) -> int:
        return int(self.con.execute("SELECT COALESCE(SUM(n), 0) FROM samples WHERE model_id = ? AND job_id IS NULL",
                                    (model_id,)).fetchone()[0])

    def staged(self, model_id: str) -> dict[str, tuple[int, float]]:
        rows = self.con.execute("SELECT stage_id, SUM(n), MAX(staged_at) FROM staged WHERE model_id = ? GROUP BY stage_id",
                                (model_id,)).fetchall()
        return {r[0]: (int(r[1]), float(r[2])) for r in rows}

    def staging_models(self) -> list[str]:
        return [r[0] for r in self.con.execute("SELECT DISTINCT model_id FROM staged")]

    def trials(self, job_id: str) -> list[dict]:
        return [_trial(r) for r in self.con.execute("SELECT * FROM trials WHERE job_id = ? ORDER BY idx", (job_id,))]

    def checkpoint(self, job_id: str) -> tuple[bytes, dict] | None:
        row = self.con.execute("SELECT checkpoint, checkpoint_info FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None or row[0] is None else (bytes(row[0]), json.loads(row[1]))

    def history(self, job_id: str) -> list[dict]:
        return [json.loads(r[0]) for r in self.con.execute("SELECT entry FROM job_history WHERE job_id = ? ORDER BY pos",
                                                           (job_id,))]

    # -- writes --
    def insert_model(self, model_id: str, uid: str, blob: bytes, info: dict, owner: str | None, source: dict,
                     now: float) -> None:
        self.con.execute("INSERT INTO models (model_id, uid, version, info, blob, created_at, updated_at, owner) "
                         "VALUES (?, ?, 1, ?, ?, ?, ?, ?)", (model_id, uid, json.dumps(info), blob, now, now, owner))
        self.con.execute("DELETE FROM samples WHERE model_id = ?", (model_id,))  # leftovers of a deleted namesake
        self._keep_version(model_id, source)

    def save_model(self, model_id: str, blob: bytes, info: dict, version: int, source: dict, now: float) -> None:
        self.con.execute("UPDATE models SET blob = ?, info = ?, version = ?, updated_at = ? WHERE model_id = ?",
                         (blob, json.dumps(info), version, now, model_id))
        self._keep_version(model_id, source)

    def _keep_version(self, model_id: str, source: dict) -> None:
        """The model's current weights become its kept version; those older than the newest keep + 1 go."""
        self.con.execute("INSERT OR REPLACE INTO versions (uid, version, model_id, blob, info, source, created_at) "
                         "SELECT uid, version, model_id, blob, info, ?, updated_at FROM models WHERE model_id = ?",
                         (json.dumps(source), model_id))
        self.con.execute("DELETE FROM versions WHERE (uid, version) IN (SELECT v.uid, v.version FROM versions v JOIN "
                         "models m ON m.uid = v.uid WHERE m.model_id = ? AND v.version < m.version - ?)",
                         (model_id, self.keep_versions))

    def drop_model(self, model_id: str) -> None:
        self.con.execute("DELETE FROM samples WHERE model_id = ? AND job_id IS NULL", (model_id,))
        self.con.execute("DELETE FROM staged WHERE model_id = ?", (model_id,))
        self.con.execute("DELETE FROM versions WHERE uid = (SELECT uid FROM models WHERE model_id = ?)", (model_id,))
        self.con.execute("DELETE FROM models WHERE model_id = ?", (model_id,))

    def insert_job(self, job: JobRecord) -> None:
        self.con.execute("INSERT INTO jobs (job_id, model_id, model_uid, status, params, min_samples, consume_buffer, "
                         "created_at, kind, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (job.job_id, job.model_id, job.model_uid, job.status, json.dumps(job.params), job.min_samples,
                          int(job.consume_buffer), job.created_at, job.kind, job.owner))
        self.save_job(job)
        self.add_history(job.job_id, job.history)

    def save_job(self, job: JobRecord) -> None:
        self.con.execute(
            "UPDATE jobs SET status = ?, n_samples = ?, epochs_done = ?, progress = ?, error = ?, "
            "worker_id = ?, model_version = ?, started_at = ?, finished_at = ?, stage = ? WHERE job_id = ?",
            (job.status, job.n_samples, job.epochs_done, None if job.progress is None else json.dumps(job.progress),
             job.error, job.worker_id, job.model_version, job.started_at, job.finished_at, job.stage, job.job_id))

    def add_history(self, job_id: str, entries: list[dict]) -> None:
        """Each entry one row, after the job's last (the primary key's index finds it: O(log n), not O(n))."""
        self.con.executemany("INSERT INTO job_history (job_id, pos, entry) VALUES (?, (SELECT COALESCE(MAX(pos) + 1, 0) "
                             "FROM job_history WHERE job_id = ?), ?)", [(job_id, job_id, json.dumps(e)) for e in entries])

    def put_checkpoint(self, job_id: str, blob: bytes, info: dict, best: bool = False) -> None:
        self.con.execute("UPDATE jobs SET checkpoint = ?, checkpoint_info = ?, checkpoint_best = CASE WHEN ? THEN ? "
                         "ELSE checkpoint_best END WHERE job_id = ?", (blob, json.dumps(info), best, blob, job_id))

    def drop_checkpoint(self, job_id: str) -> None:
        self.con.execute("UPDATE jobs SET checkpoint = NULL, checkpoint_info = NULL, checkpoint_best = NULL "
                         "WHERE job_id = ?", (job_id,))

    def insert_trials(self, job_id: str, trials: list[dict]) -> None:
        self.con.executemany("INSERT INTO trials (job_id, idx, status, params, seed) VALUES (?, ?, ?, ?, ?)",
                             [(job_id, t["index"], t["status"], json.dumps(t["params"]), t["seed"]) for t in trials])

    def save_trial(self, job_id: str, trial: dict) -> None:
        self.con.execute("UPDATE trials SET status = ?, score = ?, metrics = ?, error = ?, worker_id = ?, started_at = ?, "
                         "finished_at = ? WHERE job_id = ? AND idx = ?",
                         (trial["status"], trial["score"], None if trial["metrics"] is None else json.dumps(trial["metrics"]),
                          trial["error"], trial["worker_id"], trial["started_at"], trial["finished_at"], job_id,
                          trial["index"]))

    def add_samples(self, model_id: str, job_id: str | None, x: np.ndarray, y: np.ndarray) -> None:
        self.con.execute("INSERT INTO samples (model_id, job_id, n, n_in, n_out, dtype, x, y) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (model_id, job_id, *_batch(x, y)))

    def claim_buffer(self, model_id: str, job_id: str, copy: bool) -> None:
        if copy:
            self.con.execute("INSERT INTO samples (model_id, job_id, n, n_in, n_out, dtype, x, y) "
                             "SELECT model_id, ?, n, n_in, n_out, dtype, x, y FROM samples "
                             "WHERE model_id = ? AND job_id IS NULL ORDER BY id", (job_id, model_id))
        else:
            self.con.execute("UPDATE samples SET job_id = ? WHERE model_id = ? AND job_id IS NULL", (job_id, model_id))

    def return_samples(self, job_id: str, model_id: str, n: int) -> None:
        self.con.execute("UPDATE samples SET job_id = NULL WHERE job_id = ?", (job_id,))  # rows keep their place (id)

    def drop_samples(self, job_id: str) -> None:
        self.con.execute("DELETE FROM samples WHERE job_id = ?", (job_id,))

    def clear_buffer(self, model_id: str) -> None:
        self.con.execute("DELETE FROM samples WHERE model_id = ? AND job_id IS NULL", (model_id,))

    def stage_samples(self, model_id: str, stage_id: str, x: np.ndarray, y: np.ndarray, now: float) -> None:
        self.con.execute("INSERT INTO staged (stage_id, model_id, staged_at, n, n_in, n_out, dtype, x, y) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (stage_id, model_id, now, *_batch(x, y)))

    def unstage(self, model_id: str, stage_id: str) -> None:
        """Copied behind the buffer (so they come after every row appended before this step, as on Redis)."""
        self.con.execute("INSERT INTO samples (model_id, job_id, n, n_in, n_out, dtype, x, y) SELECT model_id, NULL, n, "
                         "n_in, n_out, dtype, x, y FROM staged WHERE model_id = ? AND stage_id = ? ORDER BY id",
                         (model_id, stage_id))
        self.drop_staged(model_id, stage_id)

    def drop_staged(self, model_id: str, stage_id: str) -> None:
        self.con.execute("DELETE FROM staged WHERE model_id = ? AND stage_id = ?", (model_id, stage_id))

    def ready(self, job_id: str) -> None:
        """Nothing to do: the embedded workers poll the jobs table."""


class WouldWrite(Exception):
    """Raised by ``ReadOnlyTx`` at a step's first write."""


class ReadOnlyTx:
    """A ``SQLiteTx`` whose reads work and whose first write raises ``WouldWrite`` (see ``SQLiteStore.atomic``)."""

    READS = ("model", "job", "jobs", "buffered", "staged", "staging_models", "trials", "checkpoint", "history")

    def __init__(self, tx: SQLiteTx):
        self.tx = tx

    def __getattr__(self, name: str):
        if name in self.READS:
            return getattr(self.tx, name)

        def write(*args, **kwargs):
            raise WouldWrite(name)

        return write
