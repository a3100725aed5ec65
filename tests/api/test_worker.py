"""The job runner in-process (no worker processes): progress, checkpoints, bitwise resume, cancel."""

import threading
import time
import uuid

import numpy as np
import pytest

from neural_net import Network
from api.services import describe
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


def setup_job(tmp_path, name="s") -> tuple[SQLiteStore, JobRecord]:
    store = SQLiteStore(tmp_path / f"{name}.sqlite3")
    net = Network.from_layer_sizes([3, 6, 2], activations=["relu", "softmax"], seed=0)
    store.create_model("m", net.to_bytes(), describe(net))
    job = JobRecord(job_id=uuid.uuid4().hex, model_id="m", model_uid="", status="buffering", params=dict(PARAMS),
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


def test_resume_after_an_interruption_is_bitwise_identical(tmp_path):
    store, job = setup_job(tmp_path, "straight")
    run_job(store, job, settings(tmp_path), threading.Event())
    expected = final_params(store)

    store, job = setup_job(tmp_path, "interrupted")
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
        pool = client.app.state.pool
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
