"""The training buffer: append, count, clear, limits."""

import pytest

from tests.api.conftest import X4, Y3, create, running_app


@pytest.fixture(scope="module")
def model(idle_client):
    return create(idle_client, model_id="buf")


def test_append_count_clear(idle_client, model):
    response = idle_client.post("/models/buf/samples", json={"inputs": X4, "targets": Y3})
    assert response.status_code == 200, response.text
    assert response.json() == {"model_id": "buf", "buffer_size": 6, "queued_jobs": []}
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
    answer = idle_client.post("/models/batched/samples", json={"inputs": X4, "targets": Y3}).json()
    assert answer["buffer_size"] == 0 and answer["queued_jobs"] == [job["job_id"]]  # the job took all 6
    got = idle_client.get(f"/jobs/{job['job_id']}").json()
    assert (got["status"], got["n_samples"]) == ("queued", 6)
    assert idle_client.get("/models/batched/samples").json()["buffer_size"] == 0


def settings_of(tmp_path, backend: str, **overrides):
    """Settings of an app without workers on ``backend`` (Redis: a key prefix and queue of its own)."""
    import uuid

    from tests.api.conftest import settings_for
    from tests.api.storage.test_store_contract import REDIS_URL, redis_available

    overrides["workers"] = 0
    if backend == "redis":
        if not redis_available():
            pytest.skip(f"no Redis at {REDIS_URL}")
        prefix = f"test-{uuid.uuid4().hex[:8]}"
        overrides.update(backend="redis", redis_url=REDIS_URL, redis_prefix=prefix, redis_queue=f"{prefix}-training")
    return settings_for(tmp_path, **overrides)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_a_start_queues_a_waiting_job_whose_buffer_is_already_full(tmp_path, backend):
    """A full buffer left waiting (stored by an older version, whose appends did not queue in the same step) is
    promoted when the service starts; on Redis the job goes on RQ's queue in that step."""
    import numpy as np
    from fastapi.testclient import TestClient

    from api.app import create_app

    settings = settings_of(tmp_path, backend)
    with TestClient(create_app(settings)) as client:
        create(client, model_id="m")
        job_id = client.post("/models/m/training-jobs", json={"min_samples": 2, "epochs": 1}).json()["job_id"]
        store = client.app.state.service.store
        x = np.zeros((2, 4), dtype=client.get("/models/m").json()["dtype"])
        store.atomic(lambda tx: tx.add_samples("m", None, x, np.eye(3, dtype=x.dtype)[:2]))  # the buffer, and no more
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


def appending(client, kind: str):
    """A call that appends X4 and Y3 (6 rows) to model m as ``kind``: inline JSON, a dataset, or a CSV file body."""
    csv = "a,b,c,d,label\n" + "".join(",".join(map(str, x + [y])) + "\n" for x, y in zip(X4, Y3))
    if kind == "dataset":
        dataset = client.post("/datasets", content=csv, headers={"content-type": "text/csv"}).json()["dataset_id"]
        return lambda: client.post("/models/m/samples", json={"dataset": dataset})
    if kind == "file":
        return lambda: client.post("/models/m/samples", content=csv, headers={"content-type": "text/csv"})
    return lambda: client.post("/models/m/samples", json={"inputs": X4, "targets": Y3})


def between_steps(monkeypatch, store, before_step: int, action) -> None:
    """Runs ``action`` (another client's request) just before the store's ``before_step``-th atomic step from now."""
    atomic, steps = store.atomic, []

    def step(*args, **kwargs):
        steps.append(1)
        if len(steps) == before_step:
            action()
        return atomic(*args, **kwargs)

    monkeypatch.setattr(store, "atomic", step)


def last_step(store) -> int:
    """Which store step of a 6-row request in steps of 2 rows is its last: the third on Redis (two stage the rows),
    the only one on SQLite (one transaction holds the whole request)."""
    return 1 if store.appends_in_one_step else 3


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
@pytest.mark.parametrize("kind", ["inline", "dataset", "file"])
def test_a_request_refused_at_its_last_step_leaves_the_buffer_as_it_was(tmp_path, monkeypatch, kind, backend):
    """All or none: 6 rows go in steps of 2 (in one transaction on SQLite); another client appends 3 rows before
    the last, which would then pass NN_MAX_BUFFER_SAMPLES=8. The request is a 413 and the buffer holds the other
    client's rows only (its first 4 rows were never in the buffer), so a client that retries duplicates nothing."""
    import numpy as np
    from fastapi.testclient import TestClient

    from api import services
    from api.app import create_app

    monkeypatch.setattr(services, "APPEND_BATCH_BYTES", 2 * 4 * 4)  # 2 rows of 4 float32 inputs per step
    with TestClient(create_app(settings_of(tmp_path, backend, max_buffer_samples=8))) as client:
        create(client, model_id="m")
        request, store = appending(client, kind), client.app.state.service.store
        other = np.asarray(X4[:3], np.float32), np.eye(3, dtype=np.float32)[Y3[:3]]
        between_steps(monkeypatch, store, last_step(store), lambda: store.append_samples("m", *other, 8))
        response = request()
        assert response.status_code == 413 and "NN_MAX_BUFFER_SAMPLES=8" in response.json()["detail"], response.text
        assert client.get("/models/m/samples").json()["buffer_size"] == 3
        assert store.staging_models() == []
        assert request().status_code == 413  # 3 + 6 > 8, refused before any step
        client.delete("/models/m/samples")
        assert request().json()["buffer_size"] == 6
        if backend == "redis":
            store.reset()


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_a_job_created_between_a_requests_steps_takes_all_of_its_rows(tmp_path, monkeypatch, backend):
    """A job submitted while a request is between its store steps waits: the request's staged rows are not in the
    buffer, so it cannot be queued on part of them; the request's last step queues it with all 6."""
    from fastapi.testclient import TestClient

    from api import services
    from api.app import create_app
    from api.schemas import JobCreate

    monkeypatch.setattr(services, "APPEND_BATCH_BYTES", 2 * 4 * 4)
    with TestClient(create_app(settings_of(tmp_path, backend))) as client:
        create(client, model_id="m")
        service, jobs = client.app.state.service, []
        between_steps(monkeypatch, service.store, last_step(service.store),
                      lambda: jobs.append(service.submit_job("m", JobCreate(min_samples=1, epochs=1))))
        assert client.post("/models/m/samples", json={"inputs": X4, "targets": Y3}).json()["buffer_size"] == 0
        assert jobs[0].status == "buffering"  # at its creation: the buffer was empty
        got = client.get(f"/jobs/{jobs[0].job_id}").json()
        assert (got["status"], got["n_samples"]) == ("queued", 6)
        if backend == "redis":
            service.store.reset()


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_a_start_drops_the_rows_of_an_append_that_died(tmp_path, backend):
    """Rows staged by a request whose process died between its steps go when the service starts: every one on SQLite
    (one service owns the data), on Redis those not written to for STALE_STAGING_SECONDS (another replica's live
    request writes more often)."""
    import time

    import numpy as np
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.storage.lifecycle import STALE_STAGING_SECONDS

    settings = settings_of(tmp_path, backend)
    x, y = np.zeros((2, 4), np.float32), np.eye(3, dtype=np.float32)[:2]
    with TestClient(create_app(settings)) as client:
        create(client, model_id="m")
        store = client.app.state.service.store
        store.atomic(lambda tx: tx.stage_samples("m", "died", x, y, time.time() - STALE_STAGING_SECONDS - 1))
        store.stage_samples("m", "just-now", x, y, 0)
    with TestClient(create_app(settings)) as client:
        store = client.app.state.service.store
        staged = store.atomic(lambda tx: tx.staged("m"))
        assert list(staged) == ([] if backend == "sqlite" else ["just-now"])
        assert client.get("/models/m/samples").json()["buffer_size"] == 0
        if backend == "redis":
            store.reset()
