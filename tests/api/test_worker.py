"""The job runner in-process (no worker processes): progress, checkpoints, bitwise resume, cancel."""

import threading
import time
import uuid

import numpy as np
import pytest

from neural_net import Network
from api.records import describe
from api.settings import Settings
from api.storage.base import JobRecord
from api.storage.sqlite import SQLiteStore
from api.worker import run_job

rng = np.random.default_rng(1)
X = rng.normal(size=(40, 3)).astype(np.float32)
Y = np.eye(2, dtype=np.float32)[(X.sum(axis=1) > 0).astype(int)]
PARAMS = {"epochs": 6, "batch_size": 8, "optimizer": "adam", "learning_rate": 0.01, "schedule": None,
          "schedule_options": None, "l1": 0.0, "l2": 0.0, "dropout": [0.2, 0.0], "validation_split": 0.0,
          "early_stopping": None, "clip_norm": None, "shuffle": True, "seed": 7}


def setup_job(tmp_path, name="s", **params) -> tuple[SQLiteStore, JobRecord]:
    store = SQLiteStore(tmp_path / f"{name}.sqlite3")
    net = Network.from_layer_sizes([3, 6, 2], activations=["relu", "softmax"], seed=0)
    store.create_model("m", net.to_bytes(), describe(net))
    job = JobRecord(job_id=uuid.uuid4().hex, model_id="m", model_uid="", status="buffering", params={**PARAMS, **params},
                    min_samples=1, consume_buffer=True, created_at=time.time())
    store.create_job(job, X, Y)
    store.promote_ready_jobs()
    return store, store.claim_job("test-worker")


def settings(tmp_path):
    return Settings(data_dir=tmp_path, progress_interval=0.0001)


def final_params(store) -> np.ndarray:
    return Network.from_bytes(store.load_model("m")[0])._flat.copy()


def test_progress_moves_smoothly_and_every_epoch_is_checkpointed(tmp_path):
    store, job = setup_job(tmp_path)
    written, checkpoints = [], []
    set_progress, save_checkpoint = store.set_progress, store.save_checkpoint
    store.set_progress = lambda job_id, p: (written.append(p), set_progress(job_id, p))
    store.save_checkpoint = lambda job_id, blob, info, done, *a: (checkpoints.append(done), save_checkpoint(job_id, blob, info, done, *a))
    done = run_job(store, job, settings(tmp_path), threading.Event())
    assert done.status == "succeeded" and done.model_version == 2
    assert checkpoints == [1, 2, 3, 4, 5, 6]
    percents = [p["percent"] for p in written]
    assert percents == sorted(percents) and percents[-1] == 100.0
    assert any(not (p * 6 / 100).is_integer() for p in percents)  # values between epoch boundaries
    assert {p["batches"] for p in written} == {5}
    model = store.get_model("m")
    assert model.info["epochs_trained"] == 6 and store.count_samples("m") == 0
    # the job's dropout and seed applied to training only: the model keeps its own architecture
    assert model.info["config"]["layers"][0].get("dropout") is None


# min_delta 10: no epoch after the first counts as an improvement, so the rate halves after every epoch;
# a resumed job must go on from its plateau state, not start the schedule afresh
PLATEAU = {"schedule": "reduce_on_plateau", "schedule_options": {"factor": 0.5, "patience": 1, "min_delta": 10.0}}


@pytest.mark.parametrize("schedule", [{}, PLATEAU], ids=["constant", "reduce_on_plateau"])
def test_resume_after_an_interruption_is_bitwise_identical(tmp_path, schedule):
    store, job = setup_job(tmp_path, "straight", **schedule)
    straight = run_job(store, job, settings(tmp_path), threading.Event())
    expected = final_params(store)

    store, job = setup_job(tmp_path, "interrupted", **schedule)
    stop = threading.Event()
    save_checkpoint = store.save_checkpoint

    def stop_after_epoch_2(job_id, blob, info, done, *rest):
        save_checkpoint(job_id, blob, info, done, *rest)
        if done == 2:
            stop.set()  # as at shutdown: the worker stops within a batch and requeues the job

    store.save_checkpoint = stop_after_epoch_2
    requeued = run_job(store, job, settings(tmp_path), stop)
    assert requeued.status == "queued" and requeued.epochs_done == 2
    assert store.get_model("m").version == 1  # nothing committed yet
    store.save_checkpoint = save_checkpoint
    job = store.claim_job("another-worker")
    done = run_job(store, job, settings(tmp_path), threading.Event())
    assert done.status == "succeeded" and [h["epoch"] for h in done.history] == [1, 2, 3, 4, 5, 6]
    rates = [h["learning_rate"] for h in done.history]
    assert rates == [h["learning_rate"] for h in straight.history]
    if schedule:
        assert rates == [0.01, 0.01, 0.005, 0.0025, 0.00125, 0.000625]
    np.testing.assert_array_equal(final_params(store), expected)


def test_cancel_stops_within_a_batch(tmp_path):
    store, job = setup_job(tmp_path)
    calls = []
    cancel_requested = store.cancel_requested

    def cancel_in_epoch_3(job_id):
        calls.append(1)
        if store.get_job(job_id).epochs_done >= 2 and store.get_job(job_id).status == "running":
            store.cancel_job(job_id)
        return cancel_requested(job_id)

    store.cancel_requested = cancel_in_epoch_3
    done = run_job(store, job, settings(tmp_path), threading.Event())
    assert done.status == "cancelled" and done.epochs_done == 2
    assert store.get_model("m").info["epochs_trained"] == 2 and done.model_version == 2


@pytest.mark.parametrize("failure", ["missing samples", "bad option"])
def test_failures_are_recorded(tmp_path, failure):
    store, job = setup_job(tmp_path)
    if failure == "missing samples":
        store._con().execute("DELETE FROM samples")
        words = "no samples"
    else:
        store._con().execute("UPDATE jobs SET params = ? WHERE job_id = ?",
                             ('{"epochs": 2, "validation_split": 0.999}', job.job_id))
        job = store.get_job(job.job_id)
        words = "validation_split"
    done = run_job(store, job, settings(tmp_path), threading.Event())
    assert done.status == "failed" and words in done.error
    assert store.get_model("m").version == 1


# -- the worker pool, through the app's lifespan ---------------------------------------
from tests.api.conftest import create, running_app, wait_for, wait_job  # noqa: E402
from tests.api.routes.test_jobs import BLOBS_X, BLOBS_Y  # noqa: E402


def test_a_dead_worker_is_replaced_and_shutdown_still_completes(tmp_path):
    with running_app(tmp_path) as client:
        create(client, model_id="m", layer_sizes=[4, 8, 2], activations=["relu", "softmax"])
        job = client.post("/models/m/training-jobs", json={"inputs": BLOBS_X, "targets": BLOBS_Y, "epochs": 10_000,
                                                            "batch_size": 4}).json()
        wait_for(lambda: client.get(f"/jobs/{job['job_id']}").json(), lambda j: j["epochs_completed"] >= 1)
        pool = client.app.state.backend.pool
        (victim,) = pool.processes.values()
        victim.kill()  # SIGKILL: the job is left 'running' by a worker that no longer exists
        wait_for(lambda: pool.processes.values(), lambda ps: victim not in ps and all(p.is_alive() for p in ps))
        resumed = wait_for(lambda: client.get(f"/jobs/{job['job_id']}").json(),
                           lambda j: j["status"] == "running" and j["epochs_completed"] >= 2)
        assert resumed["history"][0]["epoch"] == 1
        assert client.get("/health").json()["workers_alive"] == 1
    # leaving the block stopped the replacement worker: the job waits in the queue with its checkpoint
    record = SQLiteStore(tmp_path / "nn.sqlite3").get_job(job["job_id"])
    assert record.status == "queued" and record.epochs_done >= 2
    # its history is its checkpoint's epochs, each once: SIGKILLed and resumed, then stopped, nothing lost or repeated
    assert [h["epoch"] for h in record.history] == list(range(1, record.epochs_done + 1))


def test_shutdown_requeues_and_a_restart_resumes(tmp_path):
    with running_app(tmp_path) as client:
        create(client, model_id="m", layer_sizes=[4, 8, 2], activations=["relu", "softmax"])
        job = client.post("/models/m/training-jobs", json={"inputs": BLOBS_X, "targets": BLOBS_Y, "epochs": 10_000,
                                                            "batch_size": 4}).json()
        wait_for(lambda: client.get(f"/jobs/{job['job_id']}").json(), lambda j: j["epochs_completed"] >= 1)
    stopped = SQLiteStore(tmp_path / "nn.sqlite3").get_job(job["job_id"])
    assert stopped.status == "queued"
    with running_app(tmp_path) as client:
        wait_for(lambda: client.get(f"/jobs/{job['job_id']}").json(),
                 lambda j: j["status"] == "running" and j["epochs_completed"] > stopped.epochs_done)
        client.post(f"/jobs/{job['job_id']}/cancel")
        done = wait_job(client, job["job_id"])
        assert done["status"] == "cancelled"
        assert client.get("/models/m").json()["epochs_trained"] == done["epochs_completed"]


# -- guards: divergence, blow-ups and resuming at the last epoch, on both stores --------------------
import os  # noqa: E402

from api.errors import LeaseLost  # noqa: E402

REDIS_URL = os.environ.get("NN_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _redis_available() -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5, socket_timeout=0.5).ping())
    except Exception:
        return False


@pytest.fixture(params=["sqlite", "redis"])
def open_store(request, tmp_path):
    """Opens stores on one backend: on Redis every call is another client of the same keys (another worker)."""
    opened = []
    prefix = f"test-{uuid.uuid4().hex[:8]}"

    def make(lease_seconds: float = 5.0):
        if request.param == "sqlite":
            store = SQLiteStore(tmp_path / "guards.sqlite3")
        else:
            if not _redis_available():
                pytest.skip(f"no Redis at {REDIS_URL}")
            from api.storage.redis_store import RedisStore

            store = RedisStore(REDIS_URL, prefix=prefix, lease_seconds=lease_seconds)
        opened.append(store)
        return store

    yield make
    if request.param == "redis" and opened:
        opened[0].reset()
    for store in opened:
        store.close()


def start_job(store, net: Network, params: dict, x=X, y=Y, worker="w1") -> JobRecord:
    if "m" not in [m.model_id for m in store.list_models(0, 10)[0]]:
        store.create_model("m", net.to_bytes(), describe(net))
    job = JobRecord(job_id=uuid.uuid4().hex, model_id="m", model_uid="", status="buffering",
                    params={**PARAMS, "dropout": None, **params}, min_samples=1, consume_buffer=True, created_at=time.time())
    store.create_job(job, x, y)
    store.promote_ready_jobs()
    return store.claim_job(worker)


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_divergence_never_commits_non_finite_weights(open_store, tmp_path, optimizer):
    store = open_store()
    net = Network.from_layer_sizes([3, 6, 2], activations=["relu", "softmax"], seed=0)
    job = start_job(store, net, {"optimizer": optimizer, "learning_rate": 1e300, "batch_size": len(X), "epochs": 3})
    done = run_job(store, job, settings(tmp_path), threading.Event())
    assert done.status == "failed" and done.error.startswith("diverged at epoch 1")
    kept = Network.from_bytes(store.load_model("m")[0])
    assert np.isfinite(kept._flat).all()
    np.testing.assert_array_equal(kept._flat, net._flat)  # no finite epoch: the model keeps its weights


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])  # adam ends finite (loss ~4e5), sgd's epoch 2 is NaN
def test_a_blow_up_fails_and_the_model_keeps_its_weights(open_store, tmp_path, optimizer):
    store = open_store()
    net = Network.from_layer_sizes([3, 6, 2], activations=["relu", "softmax"], seed=0)
    net.fit(X, Y, epochs=200, batch_size=8, optimizer="adam", learning_rate=0.05)
    assert net.evaluate(X, Y)["accuracy"] == 1.0
    job = start_job(store, net, {"optimizer": optimizer, "learning_rate": 1e6, "epochs": 5})
    done = run_job(store, job, settings(tmp_path), threading.Event())
    assert done.status == "failed" and "max_loss_ratio=10" in done.error and "keeps its weights" in done.error
    model = store.get_model("m")
    assert model.version == 1
    np.testing.assert_array_equal(Network.from_bytes(store.load_model("m")[0])._flat, net._flat)
    if optimizer == "adam":  # the same job with the guard relaxed replaces the model, as asked
        job = start_job(store, net, {"optimizer": optimizer, "learning_rate": 1e6, "epochs": 5, "max_loss_ratio": 1e300})
        assert run_job(store, job, settings(tmp_path), threading.Event()).status == "succeeded"


def test_a_job_whose_checkpoint_covers_every_epoch_succeeds_with_it(open_store, tmp_path):
    store = open_store()
    net = Network.from_layer_sizes([3, 6, 2], activations=["relu", "softmax"], seed=0)
    job = start_job(store, net, {"epochs": 3})
    stop = threading.Event()
    save_checkpoint = store.save_checkpoint

    def stop_at_the_last_epoch(job_id, blob, info, done, *rest):
        save_checkpoint(job_id, blob, info, done, *rest)
        if done == 3:
            stop.set()  # SIGTERM noticed at the end of the last epoch: the job goes back to the queue

    store.save_checkpoint = stop_at_the_last_epoch
    requeued = run_job(store, job, settings(tmp_path), stop)
    assert requeued.status == "queued" and requeued.epochs_done == 3
    other = open_store()
    done = run_job(other, other.claim_job("w2"), settings(tmp_path), threading.Event())
    assert done.status == "succeeded" and done.model_version == 2 and [h["epoch"] for h in done.history] == [1, 2, 3]
    assert other.get_model("m").version == 2 and other.get_model("m").info["epochs_trained"] == 3


def test_epochs_trained_counts_every_job_of_the_model_a_resumed_one_too(open_store, tmp_path):
    """The schema says "over all jobs": three jobs of 5, 3 and 4 epochs showed 5, 3, 4 (fit counts from the job's
    initial_epoch, 0 for a new job). A job resumed from its checkpoint, and the checkpoint itself, count the same."""
    store = open_store()
    net = Network.from_layer_sizes([3, 6, 2], activations=["relu", "softmax"], seed=0)
    shown = []
    for epochs in (5, 3):
        assert run_job(store, start_job(store, net, {"epochs": epochs}), settings(tmp_path), threading.Event()).status == "succeeded"
        shown.append(store.get_model("m").info["epochs_trained"])
    job, stop, save_checkpoint = start_job(store, net, {"epochs": 4}), threading.Event(), store.save_checkpoint
    checkpointed = []

    def stop_after_epoch_2(job_id, blob, info, done, *rest):
        save_checkpoint(job_id, blob, info, done, *rest)
        checkpointed.append(info["epochs_trained"])
        if done == 2:
            stop.set()

    store.save_checkpoint = stop_after_epoch_2
    assert run_job(store, job, settings(tmp_path), stop).status == "queued"
    store.save_checkpoint = save_checkpoint
    assert run_job(store, store.claim_job("w2"), settings(tmp_path), threading.Event()).status == "succeeded"
    shown.append(store.get_model("m").info["epochs_trained"])
    assert shown == [5, 8, 12] and checkpointed == [9, 10]
    assert [v.info["epochs_trained"] for v in store.list_versions("m")] == [12, 8, 5, 0]


@pytest.mark.parametrize("interrupt", ["after_the_best_epoch", "after_it_stopped_early", "checkpointed_before_best_was_kept"])
def test_a_resumed_job_keeps_its_early_stopping_and_ends_as_one_run_straight_through(open_store, tmp_path, interrupt):
    """A job with early stopping killed after its best epoch resumed with early stopping started afresh: it trained
    8 epochs past where it would have stopped and committed a later, worse epoch (both backends). The checkpoint of
    the best epoch is kept too, and the resumed job replays patience and the best value from its history."""
    params = {"epochs": 60, "validation_split": 0.3, "learning_rate": 0.05, "dropout": None,
              "early_stopping": {"patience": 3, "restore_best": True}}
    net = Network.from_layer_sizes([3, 6, 2], activations=["relu", "softmax"], seed=0)
    noisy = Y[np.random.default_rng(2).permutation(len(Y))]  # labels that do not fit: validation loss turns up
    store = open_store()
    straight = run_job(store, start_job(store, net, params, y=noisy), settings(tmp_path), threading.Event())
    expected, best_epoch = final_params(store), len(straight.history) - 3
    assert straight.status == "succeeded" and 3 < len(straight.history) < 60
    stop_at = best_epoch + 1 if interrupt == "after_the_best_epoch" else len(straight.history)

    store.delete_model("m")
    job, stop, save_checkpoint = start_job(store, net, params, y=noisy), threading.Event(), store.save_checkpoint

    def killed_after(job_id, blob, info, done, *rest, **kwargs):
        if done <= stop_at:
            save_checkpoint(job_id, blob, info, done, *rest, **kwargs)
        if done == stop_at:
            stop.set()  # as a SIGKILL would leave it: requeued from the checkpoint of `stop_at`

    store.save_checkpoint = killed_after
    run_job(store, job, settings(tmp_path), stop)
    store.requeue_jobs(job_ids=[job.job_id])
    store.save_checkpoint = save_checkpoint
    if interrupt == "checkpointed_before_best_was_kept":  # an upgrade mid-job: no best to put back, so start afresh
        if isinstance(store, SQLiteStore):
            store._con().execute("UPDATE jobs SET checkpoint_best = NULL")
        else:
            store.redis.hdel(store._key("ck", job.job_id), "best")
    other = open_store()
    done = run_job(other, other.claim_job("w2"), settings(tmp_path), threading.Event())
    assert done.status == "succeeded"
    if interrupt == "checkpointed_before_best_was_kept":  # patience counted again: replayed, it stopped at once
        assert len(done.history) >= stop_at + 3, len(done.history)
        return
    assert [h["epoch"] for h in done.history] == [h["epoch"] for h in straight.history]
    np.testing.assert_array_equal(final_params(other), expected)


def test_a_model_deleted_between_the_last_epoch_and_the_commit_ends_the_job_cancelled(open_store, tmp_path):
    """Training has ended (progress 100%, final metrics written) when DELETE /models arrives; the job ended
    "succeeded" with no model_version, which clients read as "the model has new weights"."""
    store = open_store()
    net = Network.from_layer_sizes([3, 6, 2], activations=["relu", "softmax"], seed=0)
    job = start_job(store, net, {"epochs": 2})
    finish_job = store.finish_job

    def delete_first(job_id, status, **kwargs):
        assert status == "succeeded" and store.get_job(job_id).progress["percent"] == 100.0
        store.delete_model("m")
        return finish_job(job_id, status, **kwargs)

    store.finish_job = delete_first
    done = run_job(store, job, settings(tmp_path), threading.Event())
    assert (done.status, done.error, done.model_version) == ("cancelled", "model deleted", None)
    assert store.get_job(job.job_id).status == "cancelled" and store.list_models(0, 10)[1] == 0


@pytest.mark.parametrize("open_store", ["redis"], indirect=True)  # leases exist on the redis backend only
def test_a_lease_lost_after_the_last_checkpoint_finishes_once(open_store, tmp_path):
    store = open_store(lease_seconds=0.5)
    sweeper = open_store(lease_seconds=0.5)
    net = Network.from_layer_sizes([3, 6, 2], activations=["relu", "softmax"], seed=0)
    job = start_job(store, net, {"epochs": 3})
    save_checkpoint = store.save_checkpoint

    def lose_the_lease_after_the_last_epoch(job_id, blob, info, done, *rest):
        save_checkpoint(job_id, blob, info, done, *rest)
        if done == 3:  # the worker stalls until its lease expires and the sweeper requeues the job
            wait_for(lambda: sweeper.recover_expired(), lambda jobs: [j for j in jobs if j.job_id == job_id], timeout=10)

    store.save_checkpoint = lose_the_lease_after_the_last_epoch
    with pytest.raises(LeaseLost):
        run_job(store, job, settings(tmp_path), threading.Event())
    assert sweeper.get_job(job.job_id).status == "queued" and sweeper.get_model("m").version == 1
    done = run_job(sweeper, sweeper.claim_job("w2"), settings(tmp_path), threading.Event())
    assert done.status == "succeeded" and done.model_version == 2 and sweeper.get_model("m").version == 2


def test_the_blow_up_guard_also_refuses_a_network_whose_loss_cannot_be_computed():
    from api.worker import _blown_up

    fine = {"loss": 4.9, "samples": 40, "on": "training"}
    assert _blown_up(0.5, fine, 10) is None and _blown_up(None, None, 10) is None
    assert "max_loss_ratio=10" in _blown_up(0.5, {**fine, "loss": 5.1}, 10)
    assert "cannot be computed" in _blown_up(0.5, None, 10) and "cannot be computed" in _blown_up(0.5, {**fine, "loss": None}, 10)



def test_what_a_job_sends_to_its_store_each_epoch_does_not_grow_with_its_epochs(open_store, tmp_path, monkeypatch):
    """Every epoch the worker sent its store the job's whole history (the checkpoint's record held it, and every
    progress write re-saved that record), so a 3,000-epoch job of a tiny model took 44 s (Redis) to 74 s (SQLite) for
    1.2-1.6 s of training, and a 10,000-epoch job wrote about 10 GB. Counted in bytes sent to the database (no
    timing): epoch 1,000's checkpoint and progress writes are no larger than epoch 10's, but for their numbers' digits
    (the old code's were ~120 KB larger)."""
    from tests.api.storage.test_job_history import bytes_sent

    store = open_store(lease_seconds=120)  # nothing renews the lease here (the RQ runner's heartbeat does)
    net = Network.from_layer_sizes([3, 6, 2], activations=["relu", "softmax"], seed=0)
    job = start_job(store, net, {"epochs": 1000, "batch_size": len(X), "dropout": None})
    measure = bytes_sent(store, monkeypatch)
    checkpoint, progress = {}, {}
    save_checkpoint, set_progress = store.save_checkpoint, store.set_progress

    def counted_checkpoint(job_id, blob, info, done, *rest):
        checkpoint[done] = measure(lambda: save_checkpoint(job_id, blob, info, done, *rest))

    def counted_progress(job_id, p):
        progress[p["epoch"]] = measure(lambda: set_progress(job_id, p))

    store.save_checkpoint, store.set_progress = counted_checkpoint, counted_progress
    done = run_job(store, job, settings(tmp_path), threading.Event())
    monkeypatch.undo()
    assert done.status == "succeeded" and [h["epoch"] for h in done.history] == list(range(1, 1001))
    assert sorted(checkpoint) == list(range(1, 1001))
    early, late = range(10, 21), range(990, 1001)  # the most of a few epochs: float lengths vary
    for sent in (checkpoint, progress):
        assert max(sent[e] for e in late if e in sent) <= max(sent[e] for e in early if e in sent) + 256, sent
