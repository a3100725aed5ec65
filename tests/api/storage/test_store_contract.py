"""One contract, two stores: the same assertions run against SQLiteStore and RedisStore.

The Redis half uses NN_TEST_REDIS_URL (default database 15 of the Redis at 127.0.0.1:6379) under a key prefix of its own,
deleted afterwards; it is skipped when no Redis answers there.
"""

import os
import threading
import time
import uuid

import numpy as np
import pytest

from api.errors import (JobNotCancellable, JobNotFound, LeaseLost, ModelBusy, ModelExists, ModelNotFound, PayloadTooLarge,
                        StoreUnavailable, VersionConflict)
from api.storage.base import JobRecord
from api.storage.lifecycle import STALE_STAGING_SECONDS

REDIS_URL = os.environ.get("NN_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def redis_available() -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5, socket_timeout=0.5).ping())
    except Exception:
        return False


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        from api.storage.sqlite import SQLiteStore

        s = SQLiteStore(tmp_path / "nn.sqlite3")
        yield s
        s.close()
        return
    if not redis_available():
        pytest.skip(f"no Redis at {REDIS_URL}")
    from api.storage.redis_store import RedisStore

    s = RedisStore(REDIS_URL, prefix=f"test-{uuid.uuid4().hex[:8]}", lease_seconds=5)
    s.index_existing_jobs()  # as the API does at its start: a model's jobs are then read from its own index
    yield s
    s.reset()
    s.close()


def rows(n: int, start: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    x = (start + np.arange(n * 2, dtype=np.float32)).reshape(n, 2)
    return x, x[:, :1] * 2


def job(model_id: str, min_samples: int = 1, consume: bool = True) -> JobRecord:
    return JobRecord(job_id=uuid.uuid4().hex, model_id=model_id, model_uid="", status="buffering", params={"epochs": 2},
                     min_samples=min_samples, consume_buffer=consume, created_at=time.time())


def test_models_create_list_replace_delete(store):
    a = store.create_model("a", b"blob-a", {"n": 1})
    assert (a.model_id, a.version, a.info, a.buffer_size, a.latest_job) == ("a", 1, {"n": 1}, 0, None)
    with pytest.raises(ModelExists):
        store.create_model("a", b"x", {})
    store.create_model("b", b"blob-b", {"n": 2})
    page, total = store.list_models(0, 10)
    assert [m.model_id for m in page] == ["a", "b"] and total == 2
    assert [m.model_id for m in store.list_models(1, 1)[0]] == ["b"]
    blob, record = store.load_model("a")
    assert blob == b"blob-a" and record.version == 1
    with pytest.raises(VersionConflict):
        store.replace_model("a", b"new", {"n": 3}, expected_version=5)
    assert store.replace_model("a", b"new", {"n": 3}, expected_version=1).version == 2
    assert store.load_model("a")[0] == b"new"
    assert [store.version_kept(a.uid, v) for v in (1, 2, 3)] == [True, True, False]
    assert not store.version_kept(store.get_model("b").uid, 2)
    assert store.delete_model("a") == []
    assert not store.version_kept(a.uid, 1)
    for call in (lambda: store.get_model("a"), lambda: store.load_model("a"), lambda: store.delete_model("a"),
                 lambda: store.append_samples("a", *rows(1), 0), lambda: store.list_jobs("a", 0, 5)):
        with pytest.raises(ModelNotFound):
            call()
    assert store.list_models(0, 10)[1] == 1


def test_owners_are_kept_and_filter_the_lists(store):
    """Tenancy (api/auth.py): the owner is written at creation; lists by owner page and count that owner's only."""
    for i, owner in enumerate(["alice", "bob", "alice", None, "alice"]):
        store.create_model(f"m{i}", b"b", {}, owner=owner)
    assert [store.get_model(f"m{i}").owner for i in range(5)] == ["alice", "bob", "alice", None, "alice"]
    page, total = store.list_models(0, 2, owner="alice")
    assert [m.model_id for m in page] == ["m0", "m2"] and total == 3 and page[0].owner == "alice"
    assert [m.model_id for m in store.list_models(2, 2, owner="alice")[0]] == ["m4"]
    assert store.list_models(0, 10, owner="carol") == ([], 0)
    assert store.list_models(0, 10)[1] == 5  # no owner: every model
    assert store.load_model("m1")[1].owner == "bob"
    jobs = []
    for owner in ["alice", "bob", "alice"]:
        jobs.append(store.create_job(JobRecord(**{**vars(job("m0")), "owner": owner})))
    searched, trials = search("m0", 2)
    searched.owner = "alice"
    jobs.append(store.create_search_job(searched, trials))
    assert [j.owner for j in jobs] == ["alice", "bob", "alice", "alice"]
    assert store.get_job(jobs[1].job_id).owner == "bob" and store.get_job(jobs[3].job_id).owner == "alice"
    page, total = store.list_jobs("m0", 0, 2, owner="alice")
    assert [j.job_id for j in page] == [jobs[3].job_id, jobs[2].job_id] and total == 3  # newest first
    assert [j.job_id for j in store.list_jobs("m0", 2, 2, owner="alice")[0]] == [jobs[0].job_id]
    assert store.list_jobs("m0", 0, 10, owner="bob")[1] == 1 and store.list_jobs("m0", 0, 10)[1] == 4
    latest = {"job_id": jobs[3].job_id, "status": jobs[3].status, "owner": "alice"}  # whose it is: api/services.py
    assert store.get_model("m0").latest_job == latest == store.list_models(0, 1, owner="alice")[0][0].latest_job
    assert store.create_job(job("m1")).owner is None
    store.delete_model("m2")  # a deleted model leaves its owner's list; its namesake may belong to another
    store.create_model("m2", b"b", {}, owner="bob")
    assert [m.model_id for m in store.list_models(0, 10, owner="alice")[0]] == ["m0", "m4"]
    assert store.list_models(0, 10, owner="bob")[1] == 2


def test_buffer_append_limit_clear(store):
    store.create_model("m", b"b", {})
    assert store.append_samples("m", *rows(3), 10) == (3, [])
    assert store.append_samples("m", *rows(2), 10) == (5, [])
    with pytest.raises(PayloadTooLarge):
        store.append_samples("m", *rows(6), 10)
    assert store.count_samples("m") == 5 and store.get_model("m").buffer_size == 5
    store.clear_samples("m")
    assert store.count_samples("m") == 0


def test_buffer_sizes_count_each_non_empty_buffer_and_no_job_held_rows(store):
    """/metrics read every model's record to learn its buffer size: up to 1.7 MB of class names each."""
    for model_id in ("a", "b", "c", "d"):
        store.create_model(model_id, b"b", {})
    store.append_samples("a", *rows(3), 10)
    store.append_samples("c", *rows(5), 10)
    store.append_samples("d", *rows(2), 10)
    store.create_job(job("d", min_samples=2))  # takes d's rows: they are the job's, not the buffer's
    store.append_samples("b", *rows(1), 10)
    store.clear_samples("b")
    assert store.buffer_sizes() == {"a": 3, "c": 5}

def test_promote_claim_samples_in_order(store):
    store.create_model("m", b"b", {})
    store.append_samples("m", *rows(2, 0), 0)
    first = store.create_job(job("m", min_samples=5))
    second = store.create_job(job("m", min_samples=1))
    # 2 < 5, and the second waits behind the first (first come, first served)
    assert first.status == second.status == "buffering" and store.count_samples("m") == 2
    assert store.append_samples("m", *rows(2, 100), 0) == (4, [])  # 4 < 5
    size, promoted = store.append_samples("m", *rows(1, 200), 0)
    assert size == 0 and [j.job_id for j in promoted] == [first.job_id] and promoted[0].n_samples == 5  # it took all
    assert store.count_samples("m") == 0 and store.get_job(second.job_id).status == "buffering"
    x, y = store.job_samples(first.job_id)
    expected = np.concatenate([rows(2, 0)[0], rows(2, 100)[0], rows(1, 200)[0]])
    assert np.array_equal(x, expected) and np.array_equal(y, expected[:, :1] * 2) and x.dtype == np.float32
    assert [j.job_id for j in store.append_samples("m", *rows(1, 300), 0)[1]] == [second.job_id]
    claimed = store.claim_job("w1")
    assert claimed.job_id == first.job_id and claimed.status == "running" and claimed.worker_id == "w1"
    assert claimed.started_at is not None
    assert store.claim_job("w2") is None  # one job per model at a time
    assert store.get_model("m").latest_job == {"job_id": second.job_id, "status": "queued", "owner": None}
    jobs, total = store.list_jobs("m", 0, 10)
    assert [j.job_id for j in jobs] == [second.job_id, first.job_id] and total == 2


def test_inline_samples_belong_to_their_job_alone(store):
    """A job's inline samples are its own from the transaction that creates it: queued at once, the buffer untouched."""
    store.create_model("m", b"b", {})
    store.append_samples("m", *rows(3, 0), 0)
    waiting = store.create_job(job("m", min_samples=4))
    own = store.create_job(job("m"), *rows(2, 100), max_buffer=0)
    assert (own.status, own.n_samples) == ("queued", 2) and store.count_samples("m") == 3
    assert store.promote_ready_jobs() == [] and store.get_job(waiting.job_id).status == "buffering"  # 3 < 4
    assert np.array_equal(store.job_samples(own.job_id)[0], rows(2, 100)[0])
    assert store.claim_job("w").job_id == own.job_id


def test_concurrent_jobs_with_inline_samples_each_train_on_their_own(store):
    """Issue 10 item 4: 40 jobs of 10 inline samples at once on one model, each promoting as the service does."""
    store.create_model("m", b"b", {})
    created: dict[int, JobRecord] = {}
    errors = []
    start = threading.Barrier(8)

    def submit(worker: int) -> None:
        try:
            start.wait()
            for i in range(worker, 40, 8):
                created[i] = store.create_job(job("m"), *rows(10, 1000 * i), max_buffer=0)
                store.promote_ready_jobs()
        except Exception as exc:  # pragma: no cover - shown by the assertion
            errors.append(exc)

    threads = [threading.Thread(target=submit, args=(w,)) for w in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and len(created) == 40
    for i, record in created.items():
        got = store.get_job(record.job_id)
        assert (got.status, got.n_samples) == ("queued", 10), (i, got)
        x, y = store.job_samples(record.job_id)
        assert np.array_equal(x, rows(10, 1000 * i)[0]) and np.array_equal(y, rows(10, 1000 * i)[1])
    assert store.count_samples("m") == 0
    claimed = set()
    while (j := store.claim_job("w")) is not None:  # every job runs, one at a time
        claimed.add(j.job_id)
        store.finish_job(j.job_id, "succeeded", blob=b"v", info={})
    assert claimed == {r.job_id for r in created.values()} and store.get_model("m").version == 41


def test_copy_job_leaves_buffer(store):
    store.create_model("m", b"b", {})
    store.append_samples("m", *rows(3), 0)
    j = store.create_job(job("m", min_samples=3, consume=False))
    assert (j.status, j.n_samples) == ("queued", 3)  # the buffer held enough already
    assert store.count_samples("m") == 3 and len(store.job_samples(j.job_id)[0]) == 3
    store.claim_job("w")
    done = store.finish_job(j.job_id, "failed", error="boom")
    assert done.status == "failed" and done.error == "boom" and store.count_samples("m") == 3


def test_progress_checkpoint_finish(store):
    store.create_model("m", b"v1", {"epochs_trained": 0})
    j = store.create_job(job("m"), *rows(4), max_buffer=0)
    store.promote_ready_jobs()
    store.set_progress(j.job_id, {"epoch": 0})  # not running yet: ignored
    assert store.get_job(j.job_id).progress is None
    store.claim_job("w")
    store.set_progress(j.job_id, {"epoch": 1, "percent": 10.0})
    assert store.get_job(j.job_id).progress == {"epoch": 1, "percent": 10.0}
    assert store.load_checkpoint(j.job_id) is None
    store.save_checkpoint(j.job_id, b"ckpt", {"epochs_trained": 1}, 1, [{"epoch": 1, "loss": 0.5}], {"epoch": 1})
    got = store.get_job(j.job_id)
    assert (got.epochs_done, got.history, store.load_checkpoint(j.job_id)) == (1, [{"epoch": 1, "loss": 0.5}], b"ckpt")
    assert not store.cancel_requested(j.job_id)
    with pytest.raises(ModelBusy):
        store.replace_model("m", b"x", {})
    done = store.finish_job(j.job_id, "succeeded", blob=b"v2", info={"epochs_trained": 2})
    assert (done.status, done.model_version, done.worker_id) == ("succeeded", 2, None) and done.finished_at
    assert store.load_model("m") == (b"v2", store.get_model("m")) and store.get_model("m").info == {"epochs_trained": 2}
    assert len(store.job_samples(j.job_id)[0]) == 0 and store.count_samples("m") == 0
    with pytest.raises(JobNotCancellable):
        store.cancel_job(j.job_id)
    with pytest.raises(JobNotFound):
        store.get_job("nope")


def test_unused_samples_go_back_to_front_of_buffer(store):
    store.create_model("m", b"b", {})
    j = store.create_job(job("m"), *rows(2, 0), max_buffer=0)
    store.promote_ready_jobs()
    store.claim_job("w")
    store.append_samples("m", *rows(1, 50), 0)
    store.finish_job(j.job_id, "failed", use_checkpoint=True, error="no checkpoint")
    assert store.count_samples("m") == 3 and store.get_job(j.job_id).model_version is None
    k = store.create_job(job("m", min_samples=3))
    store.promote_ready_jobs()
    assert np.array_equal(store.job_samples(k.job_id)[0], np.concatenate([rows(2, 0)[0], rows(1, 50)[0]]))


def test_cancel_waiting_and_running(store):
    store.create_model("m", b"b", {})
    waiting = store.create_job(job("m", min_samples=100))
    assert store.cancel_job(waiting.job_id).status == "cancelled"
    j = store.create_job(job("m"), *rows(2), max_buffer=0)
    store.promote_ready_jobs()
    store.claim_job("w")
    store.save_checkpoint(j.job_id, b"ckpt", {"k": 1}, 1, [], {})
    assert store.cancel_job(j.job_id).status == "cancelling" and store.cancel_requested(j.job_id)
    assert store.cancel_job(j.job_id).status == "cancelling"
    done = store.finish_job(j.job_id, "cancelled", use_checkpoint=True)
    assert done.model_version == 2 and store.load_model("m")[0] == b"ckpt"


def test_requeue_and_delete(store):
    store.create_model("m", b"b", {})
    store.create_model("n", b"b", {})
    jm = store.create_job(job("m"), *rows(2), max_buffer=0)
    jn = store.create_job(job("n"), *rows(2), max_buffer=0)
    store.promote_ready_jobs()
    store.claim_job("w1"), store.claim_job("w2")
    store.save_checkpoint(jm.job_id, b"ckpt", {}, 1, [{"epoch": 1}], {})
    store.cancel_job(jn.job_id)
    changed = {j.job_id: j.status for j in store.requeue_jobs(worker_ids=["w1", "w2"])}
    assert changed == {jm.job_id: "queued", jn.job_id: "cancelled"}
    assert store.load_checkpoint(jm.job_id) == b"ckpt" and store.get_job(jm.job_id).epochs_done == 1
    again = store.claim_job("w3")
    assert again.job_id == jm.job_id and again.history == [{"epoch": 1}]
    assert store.delete_model("m") == [jm.job_id]
    assert store.get_job(jm.job_id).status == "cancelling" and store.cancel_requested(jm.job_id)
    store.create_model("m", b"fresh", {})
    assert store.list_jobs("m", 0, 5) == ([], 0) and store.count_samples("m") == 0
    done = store.finish_job(jm.job_id, "cancelled", blob=b"old")
    assert done.model_version is None and store.load_model("m")[0] == b"fresh"  # the new namesake is untouched


def test_a_job_whose_model_was_deleted_ends_cancelled_even_when_its_training_had_ended(store):
    """The model deleted after the last epoch, before the commit: the worker asks for "succeeded" (or "failed"), but
    nothing reached a model, so the job ends "cancelled" with "model deleted", as one deleted mid-run does."""
    for asked, kwargs in (("succeeded", {"blob": b"trained"}), ("failed", {"use_checkpoint": True, "error": "diverged"})):
        store.create_model("m", b"b", {})
        j = store.create_job(job("m"), *rows(2), max_buffer=0)
        assert store.claim_job("w").job_id == j.job_id
        store.save_checkpoint(j.job_id, b"ckpt", {}, 1, [], {})
        assert store.delete_model("m") == [j.job_id] and store.get_job(j.job_id).status == "cancelling"
        done = store.finish_job(j.job_id, asked, **kwargs)
        assert (done.status, done.error, done.model_version) == ("cancelled", "model deleted", None), asked
        assert store.load_checkpoint(j.job_id) is None
    store.create_model("m", b"b", {})  # deleted and made again: the namesake is another model
    j = store.create_job(job("m"), *rows(2), max_buffer=0)
    store.claim_job("w")
    store.delete_model("m")
    store.create_model("m", b"fresh", {})
    done = store.finish_job(j.job_id, "succeeded", blob=b"trained")
    assert (done.status, done.model_version) == ("cancelled", None) and store.load_model("m")[0] == b"fresh"
    store.create_model("n", b"b", {})  # a cancel (not a delete) after the last epoch: the commit happens, succeeded
    j = store.create_job(job("n"), *rows(2), max_buffer=0)
    store.claim_job("w")
    store.cancel_job(j.job_id)
    done = store.finish_job(j.job_id, "succeeded", blob=b"trained")
    assert (done.status, done.model_version) == ("succeeded", 2) and store.load_model("n")[0] == b"trained"


def test_concurrent_appends_lose_and_duplicate_nothing(store):
    store.create_model("m", b"b", {})
    errors = []

    def append(worker: int) -> None:
        try:
            for i in range(20):
                store.append_samples("m", *rows(1, worker * 1000 + i * 2), 0)
        except Exception as exc:  # pragma: no cover - shown by the assertion
            errors.append(exc)

    threads = [threading.Thread(target=append, args=(w,)) for w in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    j = store.create_job(job("m", min_samples=60))
    store.promote_ready_jobs()
    x = store.job_samples(j.job_id)[0]
    assert len(x) == 60 and len({float(v) for v in x[:, 0]}) == 60


# -- Redis only: leases and fencing --------------------------------------------------------------
@pytest.fixture
def redis_pair():
    if not redis_available():
        pytest.skip(f"no Redis at {REDIS_URL}")
    from api.storage.redis_store import RedisStore

    prefix = f"test-{uuid.uuid4().hex[:8]}"
    a, b = (RedisStore(REDIS_URL, prefix=prefix, lease_seconds=0.3) for _ in range(2))
    yield a, b
    a.reset()


def test_expired_lease_fences_the_old_worker(redis_pair):
    a, b = redis_pair
    a.create_model("m", b"b", {})
    j = a.create_job(job("m"), *rows(2), max_buffer=0)
    a.promote_ready_jobs()
    assert a.claim_job("wa").job_id == j.job_id
    a.save_checkpoint(j.job_id, b"ckpt1", {}, 1, [{"epoch": 1}], {})
    assert a.renew_lease(j.job_id)
    assert b.recover_expired() == []  # the lease is alive
    deadline = time.monotonic() + 5
    while not (recovered := b.recover_expired()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [r.status for r in recovered] == ["queued"]
    history = recovered[0].history
    assert history[0] == {"epoch": 1} and history[1]["event"] == "restart" and history[1]["restart"] == 1
    assert b.claim_job("wb").job_id == j.job_id
    assert a.cancel_requested(j.job_id) and not b.cancel_requested(j.job_id)
    for write in (lambda: a.save_checkpoint(j.job_id, b"stale", {}, 2, [], {}), lambda: a.set_progress(j.job_id, {}),
                  lambda: a.finish_job(j.job_id, "succeeded", blob=b"stale", info={})):
        with pytest.raises(LeaseLost):
            write()
    assert a.load_checkpoint(j.job_id) == b"ckpt1" and a.load_model("m")[0] == b"b"
    assert b.finish_job(j.job_id, "succeeded", blob=b"good", info={}).model_version == 2


def test_redis_unreachable_is_a_clear_503_error():
    from api.storage.redis_store import RedisStore

    store = RedisStore("redis://127.0.0.1:1/0", socket_timeout=0.5)  # nothing listens on port 1
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="unreachable"):
        store.get_model("m")
    assert time.monotonic() - started < 30  # not the minutes that retries with backoff would take


# -- search jobs: trials that any worker claims ----------------------------------------------------
def search(model_id: str, n: int, apply_best: bool = False) -> tuple[JobRecord, list[dict]]:
    from api.storage.base import new_trial

    record = JobRecord(job_id=uuid.uuid4().hex, model_id=model_id, model_uid="", status="buffering",
                       params={"metric": "loss", "apply_best": apply_best}, min_samples=1, consume_buffer=False,
                       created_at=time.time())
    return record, [new_trial(i, {"learning_rate": 0.1 * (i + 1)}, 7 + i) for i in range(n)]


def test_search_trials_run_in_parallel_without_blocking_the_model(store):
    store.create_model("m", b"b", {})
    j = store.create_search_job(*search("m", 3))
    assert (j.kind, j.stage, j.status) == ("search", "trials", "buffering")
    assert [t["status"] for t in j.trials] == ["pending"] * 3 and j.progress["trials_total"] == 3
    assert store.claim_trial("w1") is None  # not promoted yet
    store.append_samples("m", *rows(4), 0)  # promotes it
    assert store.count_samples("m") == 4 and len(store.job_samples(j.job_id)[0]) == 4  # a copy (consume_buffer false)
    assert store.claim_job("w") is None  # a search in its trials stage is no training job
    (_, t0), (running, t1) = store.claim_trial("w1"), store.claim_trial("w2", job_id=j.job_id)
    assert (t0["index"], t1["index"], t1["params"], t1["seed"]) == (0, 1, {"learning_rate": 0.2}, 8)
    assert running.status == "running" and running.progress["trials_running"] == 2 and running.started_at
    assert store.replace_model("m", b"b2", {}).version == 2  # trials never write the model: it is not busy
    train = store.create_job(job("m"), *rows(2), max_buffer=0)
    store.promote_ready_jobs()
    assert store.claim_job("w3").job_id == train.job_id
    store.finish_trial(j.job_id, 1, "succeeded", score=0.2, metrics={"loss": 0.2})
    mid = store.finish_trial(j.job_id, 0, "failed", error="diverged")
    assert mid.status == "running" and mid.progress["best"] == {"index": 1, "score": 0.2, "params": {"learning_rate": 0.2}}
    assert store.claim_trial("w1")[1]["index"] == 2 and store.claim_trial("w2") is None
    done = store.finish_trial(j.job_id, 2, "succeeded", score=0.1, metrics={"loss": 0.1})
    assert done.status == "succeeded" and done.model_version is None and store.load_model("m")[0] == b"b2"
    assert done.progress["trials_done"] == 3 and done.progress["best"]["index"] == 2
    t = {t["index"]: t for t in done.trials}
    assert (t[0]["status"], t[0]["error"], t[1]["metrics"], t[2]["worker_id"]) == ("failed", "diverged", {"loss": 0.2}, "w1")
    assert store.finish_trial(j.job_id, 2, "failed").status == "succeeded"  # a late write changes nothing
    assert [r.job_id for r in store.list_jobs("m", 0, 5)[0]][-1] == j.job_id


def test_search_cancel_stops_remaining_trials(store):
    store.create_model("m", b"b", {})
    j = store.create_search_job(*search("m", 3), *rows(4), max_buffer=0)
    store.promote_ready_jobs()
    store.claim_trial("w1")
    assert store.cancel_job(j.job_id).status == "cancelling" and store.cancel_requested(j.job_id)
    assert store.claim_trial("w2") is None  # the pending trials never start
    done = store.finish_trial(j.job_id, 0, "cancelled")
    assert done.status == "cancelled" and [t["status"] for t in done.trials] == ["cancelled"] * 3
    idle = store.create_search_job(*search("m", 2), *rows(4), max_buffer=0)
    store.promote_ready_jobs()
    store.claim_trial("w1")
    store.release_trial(idle.job_id, 0)
    assert store.cancel_job(idle.job_id).status == "cancelled"  # nothing running: it ends at once
    assert store.count_samples("m") == 0  # inline samples are the search's own; the buffer never saw them


def test_search_trials_resume_and_the_best_is_applied(store):
    store.create_model("m", b"b", {})
    j = store.create_search_job(*search("m", 2, apply_best=True), *rows(4), max_buffer=0)
    assert (j.status, j.n_samples) == ("queued", 4)  # inline samples: queued at once
    store.claim_trial("w1"), store.claim_trial("w2")
    assert store.release_trial(j.job_id, 0).trials[0]["status"] == "pending"  # its worker stops
    store.requeue_jobs(worker_ids=["w2"])  # w2 died
    assert [t["status"] for t in store.get_job(j.job_id).trials] == ["pending", "pending"]
    assert store.claim_trial("w3")[1]["index"] == 0 and store.claim_trial("w3")[1]["index"] == 1
    store.finish_trial(j.job_id, 0, "succeeded", score=0.3, metrics={"loss": 0.3})
    applying = store.finish_trial(j.job_id, 1, "succeeded", score=0.4, metrics={"loss": 0.4})
    assert (applying.status, applying.stage) == ("queued", "apply") and applying.progress["best"]["index"] == 0
    claimed = store.claim_job("w4")
    assert claimed.job_id == j.job_id and claimed.status == "running"
    with pytest.raises(ModelBusy):  # the apply stage writes the model: one writer at a time
        store.replace_model("m", b"x", {})
    assert len(store.job_samples(j.job_id)[0]) == 4
    done = store.finish_job(j.job_id, "succeeded", blob=b"best", info={})
    assert done.model_version == 2 and store.load_model("m")[0] == b"best" and len(done.trials) == 2


def test_a_trial_whose_worker_vanished_runs_again(redis_pair):
    a, b = redis_pair
    a.create_model("m", b"b", {})
    j = a.create_search_job(*search("m", 1), *rows(4), max_buffer=0)
    a.promote_ready_jobs()
    assert a.claim_trial("wa")[1]["index"] == 0
    assert b.recover_expired_trials() == []  # its lease is alive
    deadline = time.monotonic() + 5
    while not b.recover_expired_trials() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert b.get_job(j.job_id).trials[0]["status"] == "pending"
    assert b.claim_trial("wb")[1]["index"] == 0
    with pytest.raises(LeaseLost):
        a.finish_trial(j.job_id, 0, "succeeded", score=1.0, metrics={})
    assert b.finish_trial(j.job_id, 0, "succeeded", score=0.5, metrics={"loss": 0.5}).status == "succeeded"


def test_checkpoints_are_deleted_when_a_job_ends(store):
    """Every way a job ends drops its checkpoint blob: nothing grows with the number of finished jobs."""
    store.create_model("m", b"b", {})
    ended = []
    for status in ("succeeded", "failed", "cancelled"):
        j = store.create_job(job("m"), *rows(2), max_buffer=0)
        store.promote_ready_jobs()
        store.claim_job("w")
        store.save_checkpoint(j.job_id, b"best", {}, 1, [{"epoch": 1}], {}, best=True)  # early stopping's best epoch
        store.save_checkpoint(j.job_id, b"ckpt", {}, 2, [{"epoch": 1}, {"epoch": 2}], {})
        assert (store.load_checkpoint(j.job_id), store.load_checkpoint(j.job_id, best=True)) == (b"ckpt", b"best")
        store.finish_job(j.job_id, status, use_checkpoint=status != "succeeded", blob=b"v" if status == "succeeded" else None)
        ended.append(j.job_id)
    requeued = store.create_job(job("m"), *rows(2), max_buffer=0)  # interrupted, back in the queue, then cancelled
    store.promote_ready_jobs()
    store.claim_job("w")
    store.save_checkpoint(requeued.job_id, b"ckpt", {}, 1, [], {})
    store.requeue_jobs(worker_ids=["w"])
    # it would resume from its checkpoint and commit over new weights: PUT and restore were 200s, then lost
    with pytest.raises(ModelBusy, match=f"job {requeued.job_id!r} queued to resume from its checkpoint"):
        store.replace_model("m", b"x", {})
    assert store.cancel_job(requeued.job_id).status == "cancelled"
    store.replace_model("m", b"x", {})  # once it has ended
    ended.append(requeued.job_id)
    for job_id in ended:
        assert store.get_job(job_id).status in ("succeeded", "failed", "cancelled")
        assert store.load_checkpoint(job_id) is None and store.load_checkpoint(job_id, best=True) is None, job_id


def test_the_stamp_read_on_the_event_loop_sees_every_acknowledged_write(store):
    """POST /output reads the stamp on the event loop (model_stamp_on_loop); a write acknowledged before the read
    is asked for is always seen, also by reads asked together (Redis shares one round trip among them)."""
    import asyncio

    store.create_model("a", b"1", {})
    store.create_model("b", b"1", {})

    async def scenario():
        for version in range(1, 6):
            reads = [store.model_stamp_on_loop(m) for m in ("a", "b", "a", "b", "a")]
            stamps = await asyncio.gather(*reads)
            assert [s[1] for s in stamps] == [version] * 5
            assert stamps[0] == store.model_stamp("a") and stamps[1] == store.model_stamp("b")
            await asyncio.to_thread(store.replace_model, "a", b"x", {}, version)  # acknowledged, then read again
            await asyncio.to_thread(store.replace_model, "b", b"x", {}, version)
        with pytest.raises(ModelNotFound):
            await store.model_stamp_on_loop("nope")
        store.delete_model("a")
        with pytest.raises(ModelNotFound):  # the others of its batch are answered all the same
            await asyncio.gather(store.model_stamp_on_loop("a"), store.model_stamp_on_loop("b"))
        assert (await store.model_stamp_on_loop("b"))[1] == 6
        if hasattr(store, "aclose"):
            await store.aclose()

    asyncio.run(scenario())


def test_the_append_that_fills_the_buffer_queues_the_waiting_job_in_the_same_step(store):
    """No separate promotion after an append: once the append that reaches min_samples returns, the job is queued
    (an API process that dies right after it leaves no job waiting with a full buffer)."""
    store.create_model("m", b"b", {})
    waiting = store.create_job(job("m", min_samples=3))
    store.append_samples("m", *rows(2, 0), 0)
    assert store.get_job(waiting.job_id).status == "buffering"
    store.append_samples("m", *rows(1, 100), 0)
    got = store.get_job(waiting.job_id)
    assert (got.status, got.n_samples) == ("queued", 3) and store.count_samples("m") == 0
    assert np.array_equal(store.job_samples(waiting.job_id)[0], np.concatenate([rows(2, 0)[0], rows(1, 100)[0]]))
    assert store.claim_job("w").job_id == waiting.job_id
    copy = store.create_job(job("m", min_samples=2, consume=False))  # the buffer is empty: the append's rows are all
    store.append_samples("m", *rows(2, 300), 0)
    assert np.array_equal(store.job_samples(copy.job_id)[0], rows(2, 300)[0]) and store.count_samples("m") == 2


def test_staged_rows_are_outside_the_buffer_until_the_requests_last_step(store):
    """A request too large for one step stages its rows apart: they are not in the buffer's size and no job takes
    them (one waiting, one created meanwhile) until its last step moves them all in and queues the job in that step."""
    store.create_model("m", b"b", {})
    waiting = store.create_job(job("m", min_samples=2))
    assert store.stage_samples("m", "r", *rows(2, 0), 0) == 2
    created_meanwhile = store.create_job(job("m", min_samples=1))
    assert store.stage_samples("m", "r", *rows(2, 100), 0) == 4
    assert store.count_samples("m") == store.get_model("m").buffer_size == 0 and store.staging_models() == ["m"]
    assert store.promote_ready_jobs() == [] and store.claim_job("w") is None
    assert [store.get_job(j.job_id).status for j in (waiting, created_meanwhile)] == ["buffering", "buffering"]
    size, promoted = store.append_samples("m", *rows(1, 200), 0, staged=("r", 4))
    assert size == 0 and [(j.job_id, j.status, j.n_samples) for j in promoted] == [(waiting.job_id, "queued", 5)]
    expected = np.concatenate([rows(2, 0)[0], rows(2, 100)[0], rows(1, 200)[0]])
    assert np.array_equal(store.job_samples(waiting.job_id)[0], expected)
    assert store.staging_models() == [] and store.count_samples("m") == 0


def test_an_append_written_in_batches_is_all_or_none(store, monkeypatch):
    """One step writes a request in batches (SQLite: the whole request, in one transaction): a failure at its third
    batch leaves the buffer as it was; without one, the batches arrive in order."""
    store.create_model("m", b"b", {})
    atomic = store.atomic

    def failing_third_batch(step, *args, **kwargs):
        def wrapped(tx):
            add, batches = tx.add_samples, []

            def add_samples(*batch):
                batches.append(batch)
                if len(batches) == 3:
                    raise OSError("disk full")
                return add(*batch)

            tx.add_samples = add_samples
            return step(tx)

        return atomic(wrapped, *args, **kwargs)

    monkeypatch.setattr(store, "atomic", failing_third_batch)
    with pytest.raises(OSError, match="disk full"):
        store.append_samples("m", *rows(6), 0, batch_rows=2)
    monkeypatch.undo()
    assert store.count_samples("m") == 0
    assert store.append_samples("m", *rows(6), 0, batch_rows=2)[0] == 6
    assert np.array_equal(store.job_samples(store.create_job(job("m")).job_id)[0], rows(6)[0])


def test_staged_rows_join_a_buffer_that_holds_rows_after_them_in_order(store):
    """Into an empty buffer the staged rows arrive whole (Redis renames the list); into one that holds rows they
    go after those, in the order staged, then the last step's rows."""
    store.create_model("m", b"b", {})
    store.append_samples("m", *rows(1, 0), 0)
    store.stage_samples("m", "r", *rows(2, 100), 0)
    store.stage_samples("m", "r", *rows(2, 200), 0)
    assert store.append_samples("m", *rows(1, 300), 0, staged=("r", 4))[0] == 6
    expected = np.concatenate([rows(1, 0)[0], rows(2, 100)[0], rows(2, 200)[0], rows(1, 300)[0]])
    assert np.array_equal(store.job_samples(store.create_job(job("m")).job_id)[0], expected)


def test_a_request_that_fails_midway_leaves_the_buffer_as_it_was(store):
    """Staged rows count against the buffer limit with the buffer (so it bounds what can ever reach the buffer): a
    last step past it is refused whole, and the request's staged rows are then discarded; so are a request's whose
    staged rows were removed meanwhile (refused, not half added)."""
    store.create_model("m", b"b", {})
    store.append_samples("m", *rows(1, 0), 5)
    store.stage_samples("m", "r", *rows(2, 100), 5)
    store.stage_samples("m", "r", *rows(2, 200), 5)
    with pytest.raises(PayloadTooLarge, match="4 rows of other requests"):
        store.stage_samples("m", "other", *rows(1, 300), 5)  # 1 buffered + 4 staged + 1 > 5
    with pytest.raises(PayloadTooLarge, match="NN_MAX_BUFFER_SAMPLES=5"):
        store.append_samples("m", *rows(1, 400), 5, staged=("r", 4))
    assert store.count_samples("m") == 1 and store.staging_models() == ["m"]
    assert store.discard_staged("m", "r") == 4 and store.staging_models() == []
    store.stage_samples("m", "gone", *rows(2, 500), 5)
    store.discard_staged("m", "gone")
    with pytest.raises(StoreUnavailable, match="send the request again"):
        store.append_samples("m", *rows(1, 600), 5, staged=("gone", 2))
    assert store.count_samples("m") == 1
    assert np.array_equal(store.job_samples(store.create_job(job("m")).job_id)[0], rows(1, 0)[0])


def test_rows_staged_by_a_request_that_died_are_dropped(store):
    """A request cut off between its steps (its process died) leaves staged rows: they go when they are older than
    the age bound (a live request writes more often), at a start or in the next step on the model; and with it."""
    store.create_model("m", b"b", {})
    store.stage_samples("m", "dead", *rows(2), 0)
    assert store.drop_stale_staging(60) == 0 and store.staging_models() == ["m"]
    assert store.drop_stale_staging(60, now=time.time() + 61) == 2 and store.staging_models() == []
    long_ago = time.time() - STALE_STAGING_SECONDS - 1
    store.atomic(lambda tx: tx.stage_samples("m", "dead", *rows(3), long_ago))
    assert store.append_samples("m", *rows(2), 4) == (2, [])  # 3 stale rows neither count nor stay
    assert store.staging_models() == [] and store.count_samples("m") == 2
    store.stage_samples("m", "r", *rows(1), 0)
    store.delete_model("m")
    assert store.staging_models() == []
    store.create_model("m", b"b", {})
    with pytest.raises(StoreUnavailable):
        store.append_samples("m", *rows(1), 0, staged=("r", 1))
    assert store.count_samples("m") == 0


def test_a_job_that_leaves_lets_the_waiting_one_take_the_buffer_in_the_same_step(store):
    """Samples going back to the buffer, or a buffering job ahead in line being cancelled, promote the next job in
    that step (on Redis nothing polls: it would wait for the next append otherwise)."""
    store.create_model("m", b"b", {})
    store.append_samples("m", *rows(3, 0), 0)
    first = store.create_job(job("m", min_samples=3))
    waiting = store.create_job(job("m", min_samples=3))
    assert (store.get_job(first.job_id).status, waiting.status) == ("queued", "buffering")
    store.cancel_job(first.job_id)  # never trained: its samples go back to the buffer
    got = store.get_job(waiting.job_id)
    assert (got.status, got.n_samples) == ("queued", 3) and np.array_equal(store.job_samples(waiting.job_id)[0], rows(3, 0)[0])
    ahead = store.create_job(job("m", min_samples=10))
    behind = store.create_job(job("m", min_samples=1))
    store.append_samples("m", *rows(2, 100), 0)
    assert store.get_job(behind.job_id).status == "buffering"  # first come, first served: it waits behind `ahead`
    store.cancel_job(ahead.job_id)
    assert (store.get_job(behind.job_id).status, store.get_job(behind.job_id).n_samples) == ("queued", 2)
    assert store.claim_job("w").job_id == waiting.job_id
