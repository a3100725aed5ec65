"""GET /jobs on both backends: every model's jobs newest first, filtered by status, model and kind (and
combinations), paged, each with duration_seconds; jobs of deleted models stay listed."""

import pytest

from tests.api.conftest import IRIS, X4, Y3, backend_app, run_queued


@pytest.fixture(params=["sqlite", "redis"])
def client(request, tmp_path):
    with backend_app(request.param, tmp_path) as c:
        yield c


def ids(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [j["job_id"] for j in response.json()["data"]]


def test_jobs_of_every_model_newest_first_with_filters(client):
    for model_id in ("a", "b"):
        assert client.post("/models", json={**IRIS, "model_id": model_id}).status_code == 201
    trained = client.post("/models/a/training-jobs", json={"inputs": X4, "targets": Y3, "epochs": 2}).json()["job_id"]
    run_queued(client)
    waiting = client.post("/models/a/training-jobs", json={"min_samples": 100, "epochs": 2}).json()["job_id"]
    search = client.post("/models/b/search-jobs", json={"inputs": X4, "targets": Y3, "space": {"learning_rate": [0.1]},
                                                         "folds": 2}).json()["job_id"]
    assert client.post(f"/jobs/{search}/cancel").json()["status"] == "cancelled"
    other = client.post("/models/b/training-jobs", json={"min_samples": 100}).json()["job_id"]

    everything = client.get("/jobs").json()
    assert [j["job_id"] for j in everything["data"]] == [other, search, waiting, trained] and everything["count"] == 4
    by_id = {j["job_id"]: j for j in everything["data"]}
    assert by_id[trained]["status"] == "succeeded" and by_id[trained]["duration_seconds"] >= 0
    assert by_id[waiting]["duration_seconds"] is None  # never started

    assert ids(client.get("/jobs?status=succeeded")) == [trained]
    assert ids(client.get("/jobs?status=buffering")) == [other, waiting]
    assert ids(client.get("/jobs?model_id=a")) == [waiting, trained]
    assert ids(client.get("/jobs?kind=search")) == [search]
    assert ids(client.get("/jobs?kind=training&model_id=b")) == [other]
    assert ids(client.get("/jobs?status=cancelled&kind=search&model_id=b")) == [search]
    assert ids(client.get("/jobs?status=buffering&model_id=a")) == [waiting]
    assert ids(client.get("/jobs?status=failed")) == []
    page = client.get("/jobs?limit=2&offset=1").json()
    assert [j["job_id"] for j in page["data"]] == [search, waiting] and page["count"] == 4
    page = client.get("/jobs?status=buffering&limit=1&offset=1").json()
    assert [j["job_id"] for j in page["data"]] == [waiting] and page["count"] == 2

    assert client.delete("/models/b").status_code == 204  # its waiting job ends cancelled, and stays listed
    assert ids(client.get("/jobs?model_id=b")) == [other, search]
    assert ids(client.get("/jobs?status=cancelled")) == [other, search]
    assert ids(client.get("/jobs?status=buffering")) == [waiting]


@pytest.mark.parametrize("query", ["status=done", "kind=inference", "limit=0", "limit=501", "offset=-1", "model_id="])
def test_bad_filters_are_422(client, query):
    response = client.get(f"/jobs?{query}")
    assert response.status_code == 422 and response.json()["detail"]


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_under_tenancy_a_key_lists_only_its_names_jobs(backend, tmp_path):
    from tests.api.test_auth import API_KEYS, h

    with backend_app(backend, tmp_path, api_keys=API_KEYS, tenancy=True) as client:
        for model_id, key in (("a1", "alice-train-key"), ("b1", "bob-train-key")):
            assert client.post("/models", json={**IRIS, "model_id": model_id}, headers=h(key)).status_code == 201
        jobs = {}
        for name, model_id in (("alice", "a1"), ("bob", "b1"), ("alice2", "a1")):
            key = f"{name.rstrip('2')}-train-key"
            made = client.post(f"/models/{model_id}/training-jobs", json={"min_samples": 100}, headers=h(key))
            jobs[name] = made.json()["job_id"]
        assert ids(client.get("/jobs", headers=h("alice-read-key"))) == [jobs["alice2"], jobs["alice"]]
        assert ids(client.get("/jobs?status=buffering&limit=1&offset=1", headers=h("alice-read-key"))) == [jobs["alice"]]
        assert client.get("/jobs?model_id=a1", headers=h("bob-read-key")).json() == {"data": [], "count": 0, "next_offset": None}
        assert ids(client.get("/jobs", headers=h("root-admin-key"))) == [jobs["alice2"], jobs["bob"], jobs["alice"]]
