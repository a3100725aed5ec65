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
        store = client.app.state.service.store
        assert store.claim_job("a-worker-about-to-die", job_id).status == "running"  # its lease is never renewed
        if then == "cancel":
            assert client.post(f"/jobs/{job_id}/cancel").json()["status"] == "cancelling"
        elif then == "delete":
            assert client.delete("/models/m").status_code == 204
        expected = {"wait": "queued", "cancel": "cancelled", "delete": "cancelled"}[then]
        job = wait_for(lambda: client.get(f"/jobs/{job_id}").json(), lambda j: j["status"] == expected, timeout=20)
        if then == "wait":  # back in the queue with a note, as after a restart; now a cancel ends it at once
            assert [h["event"] for h in job["history"] if "event" in h] == ["restart"]
            assert client.post(f"/jobs/{job_id}/cancel").json()["status"] == "cancelled"
        elif then == "delete":
            assert job["error"] == "model deleted"
