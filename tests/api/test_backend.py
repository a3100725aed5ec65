"""api/backend.py: what a Redis replica does beside serving requests (the embedded backend's start-up recovery is
tested in test_worker.py and test_server.py)."""

import pytest

from tests.api.conftest import IRIS, X4, Y3, backend_app, wait_for


@pytest.mark.parametrize("then", ["wait", "cancel", "delete"])
def test_a_job_whose_worker_died_with_no_worker_left_is_requeued_cancelled_or_ended(tmp_path, then):
    """Expired leases were requeued only by RQ's registry cleanup, which runs in a live worker: with every worker
    SIGKILLed a job said `running` for ever, and a cancel or a model delete left it `cancelling` until a worker came
    back (the embedded backend shows it `queued` after a restart). Each replica now sweeps expired leases."""
    with backend_app("redis", tmp_path, lease_seconds=0.4) as client:
        assert client.post("/models", json={**IRIS, "model_id": "m"}).status_code == 201
        job_id = client.post("/models/m/training-jobs", json={"inputs": X4, "targets": Y3, "epochs": 5}).json()["job_id"]
        store, backend = client.app.state.service.store, client.app.state.backend
        queued = backend._queue()["queue_length"]  # the job's RQ job, which a worker's death leaves abandoned
        assert store.claim_job("a-worker-about-to-die", job_id).status == "running"  # its lease is never renewed
        if then == "cancel":
            assert client.post(f"/jobs/{job_id}/cancel").json()["status"] == "cancelling"
        elif then == "delete":
            assert client.delete("/models/m").status_code == 204
        expected = {"wait": "queued", "cancel": "cancelled", "delete": "cancelled"}[then]
        job = wait_for(lambda: client.get(f"/jobs/{job_id}").json(), lambda j: j["status"] == expected, timeout=20)
        if then == "wait":  # back in the queue with a note, as after a restart; now a cancel ends it at once
            assert [h["event"] for h in job["history"] if "event" in h] == ["restart"]
            # and no second RQ job: the abandoned one carries it, so RQ's retries count every run (a new RQ job per
            # sweep let a job that kept killing its workers loop for ever)
            assert backend._queue()["queue_length"] == queued
            assert client.post(f"/jobs/{job_id}/cancel").json()["status"] == "cancelled"
        elif then == "delete":
            assert job["error"] == "model deleted"


def test_a_job_the_sweep_requeued_ends_failed_when_rq_gives_up_its_one_rq_job(tmp_path):
    """fail_abandoned ended only running or cancelling jobs: one the sweep had put back in the queue stayed queued
    with no RQ job left to run it."""
    with backend_app("redis", tmp_path, lease_seconds=0.3) as client:
        assert client.post("/models", json={**IRIS, "model_id": "m"}).status_code == 201
        job_id = client.post("/models/m/training-jobs", json={"inputs": X4, "targets": Y3, "epochs": 5}).json()["job_id"]
        store = client.app.state.service.store
        store.claim_job("a-worker-about-to-die", job_id)
        wait_for(lambda: client.get(f"/jobs/{job_id}").json()["status"], lambda status: status == "queued", timeout=20)
        store.fail_abandoned(job_id, "given up after 6 runs by RQ (its worker died)")
        job = client.get(f"/jobs/{job_id}").json()
        assert (job["status"], job["error"]) == ("failed", "given up after 6 runs by RQ (its worker died)")
