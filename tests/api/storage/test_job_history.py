"""A job's history is appended epoch by epoch, never rewritten: what a checkpoint or a progress write sends to the
store does not grow with the epochs done (both stores), and the history still ends exactly at the checkpoint.

Before, every checkpoint saved the job's whole record, history included (and every progress write did too), so a job's
time and disk writes grew with the square of its epochs: a 3,000-epoch job of a tiny model took 44 s (Redis) and 74 s
(SQLite) for 1.2-1.6 s of training, and a 10,000-epoch one on SQLite wrote about 10 GB.
"""

import json
import sqlite3

import pytest

from tests.api.storage.test_store_contract import job, rows, store  # noqa: F401 - a real store on each backend


def bytes_sent(store, monkeypatch):
    """A function that runs a call and returns the bytes it sent to the store's database: SQLite, its statements with
    their parameters expanded (a trace callback); Redis, the commands it sent (every connection's packed commands)."""
    sent = [0]
    if hasattr(store, "redis"):
        import redis.connection

        send = redis.connection.AbstractConnection.send_packed_command

        def counting(connection, command, *args, **kwargs):
            sent[0] += len(command) if isinstance(command, (bytes, str)) else sum(len(c) for c in command)
            return send(connection, command, *args, **kwargs)

        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    else:
        store._con().set_trace_callback(lambda statement: sent.__setitem__(0, sent[0] + len(statement)))

    def measure(call) -> int:
        before = sent[0]
        call()
        return sent[0] - before

    return measure


def entry(epoch: int) -> dict:
    return {"epoch": epoch, "loss": 0.4321, "accuracy": 0.75, "learning_rate": 0.01, "time": 0.0004}


def test_a_checkpoint_and_a_progress_write_send_as_much_at_epoch_1000_as_at_epoch_10(store, monkeypatch):
    """Fails on the old store: at epoch 1,000 its checkpoint sent the 1,000 entries of the history (~80 KB) where
    epoch 10's sent 10 (and so did each progress write). Now each sends its own epoch's entry: the same bytes, but
    for the digits of the epoch number."""
    store.create_model("m", b"b", {})
    j = store.create_job(job("m"), *rows(2), max_buffer=0)
    assert store.claim_job("w").job_id == j.job_id
    measure = bytes_sent(store, monkeypatch)
    checkpoint, progress = {}, {}
    for epoch in range(1, 1001):
        p = {"epoch": epoch, "epochs": 1000, "percent": 50.0, "loss": 0.4321}
        checkpoint[epoch] = measure(lambda: store.save_checkpoint(j.job_id, b"weights" * 20, {"epochs_trained": epoch},
                                                                  epoch, [entry(epoch)], p))
        progress[epoch] = measure(lambda: store.set_progress(j.job_id, p))
    monkeypatch.undo()
    digits = 64  # the epoch number, epochs_done and epochs_trained are a few characters longer at 1000 than at 10
    assert checkpoint[1000] <= checkpoint[10] + digits, (checkpoint[10], checkpoint[1000])
    assert progress[1000] <= progress[10] + digits, (progress[10], progress[1000])
    assert store.get_job(j.job_id).history == [entry(e) for e in range(1, 1001)]


def test_the_history_ends_at_the_checkpoint_across_restarts_and_a_repeated_checkpoint(store):
    """A resumed job's history is its checkpoint's epochs, each once, with a restart entry where it resumed; a
    checkpoint step that runs again (Redis: its reply lost, the transaction retried) appends nothing twice."""
    store.create_model("m", b"b", {})
    j = store.create_job(job("m"), *rows(2), max_buffer=0)
    store.claim_job("w1")
    for epoch in (1, 2):
        store.save_checkpoint(j.job_id, b"ck", {}, epoch, [entry(epoch)], {})
    store.save_checkpoint(j.job_id, b"ck", {}, 2, [entry(2)], {})  # the same checkpoint again
    store.set_progress(j.job_id, {"epoch": 3})  # progress past the checkpoint adds no entry
    [requeued] = store.requeue_jobs(job_ids=[j.job_id])
    assert requeued.status == "queued" and [h["epoch"] for h in requeued.history] == [1, 2]
    again = store.claim_job("w2")
    assert again.job_id == j.job_id and again.epochs_done == 2
    store.save_checkpoint(j.job_id, b"ck", {}, 3, [entry(2), entry(3)], {})  # an entry it holds already is skipped
    done = store.finish_job(j.job_id, "succeeded", blob=b"v2", info={})
    assert done.history == [entry(1), entry(2), entry(3)]
    listed = store.list_jobs("m", 0, 5)[0] + store.list_all_jobs(0, 5)[0]
    assert [job.history for job in listed] == [done.history] * 2


def test_a_restart_entry_counts_the_restarts_before_it(store):
    from api.storage import lifecycle

    store.create_model("m", b"b", {})
    j = store.create_job(job("m"), *rows(2), max_buffer=0)
    for n in (1, 2):
        store.claim_job(f"w{n}")
        store.save_checkpoint(j.job_id, b"ck", {}, n, [entry(n)], {})
        store.atomic(lambda tx: lifecycle.requeue(tx, tx.job(j.job_id), 1.0, "lease expired"))
    history = store.get_job(j.job_id).history
    assert [(h.get("event"), h["epoch"], h.get("restart")) for h in history] == [
        (None, 1, None), ("restart", 1, 1), (None, 2, None), ("restart", 2, 2)]


def test_a_database_of_before_keeps_its_jobs_histories(tmp_path):
    """The history was a JSON column of jobs: opening such a database moves it into job_history (the column goes),
    and a job that was running then goes on appending after its old entries."""
    from api.storage.sqlite import SQLiteStore

    path = tmp_path / "nn.sqlite3"
    old = SQLiteStore(path)
    old.create_model("m", b"b", {})
    j = old.create_job(job("m"), *rows(2), max_buffer=0)
    done = old.create_job(job("m"), *rows(2), max_buffer=0)
    con = old._con()
    con.execute("ALTER TABLE jobs ADD COLUMN history TEXT NOT NULL DEFAULT '[]'")  # as an older version made it
    con.execute("UPDATE jobs SET history = ?, status = 'running', epochs_done = 2 WHERE job_id = ?",
                (json.dumps([entry(1), entry(2)]), j.job_id))
    con.execute("UPDATE jobs SET history = ?, status = 'succeeded' WHERE job_id = ?", (json.dumps([entry(1)]), done.job_id))
    old.close()
    store = SQLiteStore(path)
    columns = {row[1] for row in store._con().execute("PRAGMA table_info(jobs)")}
    assert "history" not in columns
    assert store.get_job(done.job_id).history == [entry(1)]
    store.save_checkpoint(j.job_id, b"ck", {}, 3, [entry(3)], {})
    assert store.get_job(j.job_id).history == [entry(1), entry(2), entry(3)]
    store.close()
    assert SQLiteStore(path).get_job(j.job_id).history == [entry(1), entry(2), entry(3)]  # opened again: unchanged
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone() == ("ok",)


@pytest.mark.parametrize("store", ["redis"], indirect=True)
def test_a_redis_job_of_before_keeps_its_history(store):
    """Older versions kept the history as a JSON field of the job's hash: it stays (never written again) and comes
    first; the job's later entries follow it."""
    store.create_model("m", b"b", {})
    j = store.create_job(job("m"), *rows(2), max_buffer=0)
    store.claim_job("w")
    store.redis.hset(store._key("j", j.job_id), mapping={"history": json.dumps([entry(1), entry(2)]), "epochs_done": 2})
    store.set_progress(j.job_id, {"epoch": 3})  # a write of the record leaves the old field alone
    store.save_checkpoint(j.job_id, b"ck", {}, 3, [entry(3)], {})
    assert store.get_job(j.job_id).history == [entry(1), entry(2), entry(3)]
    [requeued] = store.requeue_jobs(job_ids=[j.job_id])
    assert [h["epoch"] for h in requeued.history] == [1, 2, 3]


def test_history_from_counts_the_entries_an_older_redis_job_keeps_in_its_hash():
    """A job of an older version keeps its first entries in its hash: history_from=2 gave those two, whatever N
    was, and the event stream's polls (no history) still parsed them."""
    from tests.api.conftest import REDIS_URL, redis_available

    if not redis_available():
        pytest.skip(f"no Redis at {REDIS_URL}")
    import uuid

    from api.storage.redis_store import RedisStore

    store = RedisStore(REDIS_URL, prefix=f"t-{uuid.uuid4().hex[:8]}")
    try:
        store.create_model("m", b"blob", {"n": 1})
        created = store.create_job(job("m"))
        store.redis.hset(store._key("j", created.job_id), "history", json.dumps([{"epoch": 1}, {"epoch": 2}]))
        store.redis.rpush(store._key("hist", created.job_id), json.dumps({"epoch": 3}), json.dumps({"epoch": 4}))
        epochs = lambda start: [h["epoch"] for h in store.get_job(created.job_id, start).history]  # noqa: E731
        assert [epochs(n) for n in (0, 1, 2, 3, 4, 9)] == [[1, 2, 3, 4], [2, 3, 4], [3, 4], [4], [], []]
        assert store.get_job(created.job_id, None).history == []
    finally:
        store.reset()
