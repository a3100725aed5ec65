"""The training buffer: append, count, clear, limits."""

import pytest

from tests.api.conftest import X4, Y3, create


@pytest.fixture(scope="module")
def model(idle_client):
    return create(idle_client, model_id="buf")


def test_append_count_clear(idle_client, model):
    response = idle_client.post("/models/buf/samples", json={"inputs": X4, "targets": Y3})
    assert response.status_code == 200, response.text
    assert response.json() == {"model_id": "buf", "buffer_size": 6}
    one_hot = [[1, 0, 0], [0, 0, 1]]
    assert idle_client.post("/models/buf/samples", json={"inputs": X4[:2], "targets": one_hot}).json()["buffer_size"] == 8
    assert idle_client.get("/models/buf/samples").json()["buffer_size"] == 8
    assert idle_client.get("/models/buf").json()["buffer_size"] == 8
    assert idle_client.delete("/models/buf/samples").json()["buffer_size"] == 0
    assert idle_client.get("/models/buf/samples").json()["buffer_size"] == 0


@pytest.mark.parametrize("body, status, words", [
    ({"inputs": [[1, 2, 3]], "targets": [0]}, 422, "expects 4"),
    ({"inputs": [[1, 2, 3, 4]], "targets": [7]}, 422, "labels"),
    ({"inputs": [[1, 2, 3, 4]], "targets": [0, 1]}, 422, "one target per input"),
    ({"inputs": [[1, 2, 3, 4]]}, 422, "targets"),
    ({"inputs": [], "targets": []}, 422, "at least 1"),
    ({"inputs": [[0, 0, 0, 0]] * 10_001, "targets": [0] * 10_001}, 413, "NN_MAX_SAMPLES_PER_REQUEST"),
])
def test_bad_samples(idle_client, model, body, status, words):
    response = idle_client.post("/models/buf/samples", json=body)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]
    assert idle_client.get("/models/buf/samples").json()["buffer_size"] == 0


def test_request_bytes_limit(tmp_path):
    from tests.api.conftest import running_app

    with running_app(tmp_path, workers=0, max_request_bytes=2048) as small:
        create(small, model_id="m")
        big = {"inputs": [[0.123456789] * 4] * 100, "targets": [0] * 100}
        response = small.post("/models/m/samples", json=big)
        assert response.status_code == 413
        assert "NN_MAX_REQUEST_BYTES" in response.json()["detail"]
        # a body streamed without Content-Length is counted too
        chunks = iter([b'{"inputs": [', b"[0, 0, 0, 0], " * 200 + b"[0, 0, 0, 0]], ", b'"targets": [0]}'])
        response = small.post("/models/m/samples", content=chunks, headers={"content-type": "application/json"})
        assert response.status_code == 413


def test_buffer_limit(tmp_path):
    from tests.api.conftest import running_app

    with running_app(tmp_path, workers=0, max_buffer_samples=5) as small:
        create(small, model_id="m")
        response = small.post("/models/m/samples", json={"inputs": X4, "targets": Y3})
        assert response.status_code == 413 and "NN_MAX_BUFFER_SAMPLES" in response.json()["detail"]


def test_a_waiting_job_takes_every_row_of_the_request_that_fills_the_buffer(idle_client, monkeypatch):
    """A request's rows go to the buffer in several store steps; only the last one queues the waiting job (in
    that same step), so the job never trains on part of the request."""
    from api import services

    monkeypatch.setattr(services, "APPEND_BATCH_BYTES", 2 * 4 * 8)  # 2 or 4 rows of 4 inputs per step
    create(idle_client, model_id="batched")
    job = idle_client.post("/models/batched/training-jobs", json={"min_samples": 1, "epochs": 1}).json()
    assert job["status"] == "buffering"
    assert idle_client.post("/models/batched/samples", json={"inputs": X4, "targets": Y3}).json()["buffer_size"] == 6
    got = idle_client.get(f"/jobs/{job['job_id']}").json()
    assert (got["status"], got["n_samples"]) == ("queued", 6)
    assert idle_client.get("/models/batched/samples").json()["buffer_size"] == 0


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_a_start_queues_a_waiting_job_whose_buffer_is_already_full(tmp_path, backend):
    """A full buffer left waiting (stored by an older version, or a request cut off between its store steps) is
    promoted when the service starts; on Redis the job goes on RQ's queue in that step."""
    import uuid

    import numpy as np
    from fastapi.testclient import TestClient

    from api.app import create_app
    from tests.api.conftest import settings_for
    from tests.api.storage.test_store_contract import REDIS_URL, redis_available

    overrides = {"workers": 0}
    if backend == "redis":
        if not redis_available():
            pytest.skip(f"no Redis at {REDIS_URL}")
        prefix = f"test-{uuid.uuid4().hex[:8]}"
        overrides.update(backend="redis", redis_url=REDIS_URL, redis_prefix=prefix, redis_queue=f"{prefix}-training")
    settings = settings_for(tmp_path, **overrides)
    with TestClient(create_app(settings)) as client:
        create(client, model_id="m")
        job_id = client.post("/models/m/training-jobs", json={"min_samples": 2, "epochs": 1}).json()["job_id"]
        store = client.app.state.service.store
        x = np.zeros((2, 4), dtype=client.get("/models/m").json()["dtype"])
        store.append_samples("m", x, np.eye(3, dtype=x.dtype)[:2], 0, promote=False)
        assert client.get(f"/jobs/{job_id}").json()["status"] == "buffering"
    with TestClient(create_app(settings)) as client:
        got = client.get(f"/jobs/{job_id}").json()
        assert (got["status"], got["n_samples"]) == ("queued", 2)
        if backend == "redis":
            from rq import Queue

            from tests.api.test_rq_runner import carried

            store = client.app.state.service.store
            queue = Queue(settings.redis_queue, connection=store.redis)
            assert carried(queue) == [job_id]
            store.reset()
            queue.delete(delete_jobs=True)
