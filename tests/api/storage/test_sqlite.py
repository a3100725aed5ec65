"""What is particular to the SQLite store: file layout, blobs, one running job per model."""

import sqlite3
import time
import uuid
from pathlib import Path

import numpy as np

from neural_net import Network
from api.records import describe
import pytest

from api.errors import StoreUnavailable
from api.storage.base import JobRecord
from api.storage.sqlite import SCHEMA, SQLiteStore


def new_job(model_id: str) -> JobRecord:
    return JobRecord(job_id=uuid.uuid4().hex, model_id=model_id, model_uid="", status="buffering", params={},
                     min_samples=1, consume_buffer=True, created_at=time.time())


def test_wal_mode_and_binary_storage(tmp_path):
    store = SQLiteStore(tmp_path / "nn.sqlite3")
    assert store._con().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    net = Network.from_layer_sizes([3, 2], seed=0, dtype="float64")
    blob = net.to_bytes()
    store.create_model("m", blob, describe(net))
    kind, stored = store._con().execute("SELECT typeof(blob), blob FROM models").fetchone()
    assert kind == "blob" and stored == blob  # the core's .npz, byte for byte
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    store.append_samples("m", x, np.ones((2, 2)), max_buffer=10)
    row = store._con().execute("SELECT typeof(x), typeof(y), n, n_in, n_out, dtype FROM samples").fetchone()
    assert tuple(row) == ("blob", "blob", 2, 3, 2, "<f8")


def test_one_running_job_per_model(tmp_path):
    store = SQLiteStore(tmp_path / "nn.sqlite3")
    for model_id in ("a", "b"):
        store.create_model(model_id, b"npz", {})
        store.append_samples(model_id, np.zeros((1, 1)), np.zeros((1, 1)), max_buffer=10)
    first = store.create_job(new_job("a"))
    store.append_samples("a", np.zeros((1, 1)), np.zeros((1, 1)), max_buffer=10)
    second = store.create_job(new_job("a"))
    other = store.create_job(new_job("b"))
    assert first.status == second.status == other.status == "queued"  # each buffer held min_samples already
    assert store.claim_job("w1").job_id == first.job_id
    assert store.claim_job("w2").job_id == other.job_id  # model a is busy, b is not
    assert store.claim_job("w3") is None
    store.finish_job(first.job_id, "succeeded", blob=b"npz2", info={})
    assert store.claim_job("w3").job_id == second.job_id


def test_two_connections_see_each_others_commits(tmp_path):
    path = tmp_path / "nn.sqlite3"
    writer, reader = SQLiteStore(path), SQLiteStore(path)
    writer.create_model("m", b"npz", {"k": 1})
    assert reader.get_model("m").info == {"k": 1}


def test_a_database_from_before_owners_gains_the_columns(tmp_path):
    path = tmp_path / "old.sqlite3"
    con = sqlite3.connect(path)
    con.executescript(SCHEMA)  # the first release's tables: no owner (nor kind, stage) columns
    con.execute("INSERT INTO models (model_id, uid, version, info, blob, created_at, updated_at) "
                "VALUES ('old', 'u', 1, '{}', x'00', 0, 0)")
    con.commit()
    con.close()
    store = SQLiteStore(path)
    assert store.get_model("old").owner is None  # visible to admins only under NN_TENANCY
    assert store.create_model("new", b"b", {}, owner="alice").owner == "alice"
    assert store.create_job(new_job("new")).owner is None
    store.close()


def damaged_database(tmp_path) -> Path:
    """A database holding a model with 34 jobs, then random bytes over every page but the first (as the
    hostile pass's page overwrites did): it still opens."""
    path = tmp_path / "nn.sqlite3"
    store = SQLiteStore(path)
    store.create_model("m", bytes(200_000), {})
    for _ in range(34):
        store.create_job(new_job("m"))
    store._con().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    page = 4096
    rng = np.random.default_rng(0)
    with open(path, "r+b") as handle:
        pages = path.stat().st_size // page
        for index in rng.choice(np.arange(1, pages), size=pages // 3, replace=False):
            handle.seek(int(index) * page)
            handle.write(rng.bytes(page))
    return path


def test_a_damaged_database_fails_the_quick_check_naming_the_file_and_the_recovery(tmp_path):
    path = damaged_database(tmp_path)
    with pytest.raises(StoreUnavailable) as refused:
        SQLiteStore(path).check_integrity()
    assert str(path) in str(refused.value) and ".recover" in str(refused.value)
    SQLiteStore(tmp_path / "fresh.sqlite3").check_integrity()  # a sound database passes


def test_an_unreadable_database_raises_store_unavailable_from_every_method(tmp_path):
    store = SQLiteStore(tmp_path / "nn.sqlite3")
    store.create_model("m", b"npz", {})
    for name in ("nn.sqlite3", "nn.sqlite3-wal", "nn.sqlite3-shm"):  # overwritten while the store is open
        target = tmp_path / name
        target.write_bytes(np.random.default_rng(1).bytes(max(target.stat().st_size, 4096)))
    for call in (lambda: store.list_models(0, 10), lambda: store.get_model("m"), lambda: store.count_queued()):
        with pytest.raises(StoreUnavailable, match="cannot be used"):
            call()


def test_a_database_locked_past_the_busy_timeout_is_a_503_that_says_retry_not_damage(tmp_path):
    store = SQLiteStore(tmp_path / "nn.sqlite3", busy_timeout=0.2)
    writer = sqlite3.connect(tmp_path / "nn.sqlite3", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with pytest.raises(StoreUnavailable, match="locked by another writer") as refused:
            store.create_model("m", b"npz", {})
        assert ".recover" not in str(refused.value)
    finally:
        writer.execute("ROLLBACK")
    store.create_model("m", b"npz", {})


def test_polling_for_work_takes_no_write_lock(tmp_path):
    """Idle workers poll claim_job/claim_trial: when nothing can be claimed (here: the model's job runs and
    another waits behind it) they read without BEGIN IMMEDIATE, so they never block appends or a commit."""
    store = SQLiteStore(tmp_path / "nn.sqlite3", busy_timeout=0.2)
    store.create_model("m", b"b", {})
    x, y = np.zeros((2, 2), np.float32), np.zeros((2, 1), np.float32)
    first, second = new_job("m"), new_job("m")
    store.create_job(first, x, y)
    store.create_job(second, x, y)
    assert store.claim_job("w1").job_id == first.job_id
    writer = sqlite3.connect(tmp_path / "nn.sqlite3", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        assert store.claim_job("w2") is None and store.claim_trial("w2") is None
    finally:
        writer.execute("ROLLBACK")
    store.finish_job(first.job_id, "succeeded", blob=b"v", info={})
    assert store.claim_job("w2").job_id == second.job_id


def test_the_stamp_read_on_the_event_loop_never_waits_for_a_lock(tmp_path):
    """A connection holding the database exclusively (a recovery, a checkpoint, a tool) makes the event loop's read
    give up at once (None: the caller asks in a worker thread, which waits its busy timeout) instead of blocking."""
    import asyncio

    store = SQLiteStore(tmp_path / "nn.sqlite3")
    store.create_model("a", b"1", {})
    assert asyncio.run(store.model_stamp_on_loop("a"))[1] == 1
    store.close()  # its connections reopen on use; the other one takes the file for itself meanwhile
    other = sqlite3.connect(tmp_path / "nn.sqlite3", isolation_level=None)
    other.execute("PRAGMA locking_mode=EXCLUSIVE")
    other.execute("BEGIN EXCLUSIVE")
    started = time.monotonic()
    assert asyncio.run(store.model_stamp_on_loop("a")) is None
    assert time.monotonic() - started < 1.0
    other.execute("COMMIT")
    other.close()
    assert asyncio.run(store.model_stamp_on_loop("a"))[1] == 1
    store.close()
