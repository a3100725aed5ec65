"""Health, the root redirect, offline docs, and request examples that work when tried in /docs."""

import numpy as np
import pytest

from api import schemas
from tests.api.conftest import IRIS, X4, Y3, backend_app, create, running_app, wait_job


def test_health(client):
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["backend"] == "sqlite"
    assert body["workers"] == 1 and body["workers_alive"] == 1 and body["version"]


def test_root_redirects_to_docs(client):
    response = client.get("/", follow_redirects=False)
    assert response.status_code in (302, 307) and response.headers["location"] == "/docs"


def test_docs_are_served_without_internet(client):
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assert "cdn.jsdelivr" not in html and "unpkg" not in html
    html = client.get("/docs").text
    script = html.split('src="', 1)[1].split('"', 1)[0]
    bundle = client.get(script)
    assert bundle.status_code == 200 and "SwaggerUIBundle" in bundle.text
    assert "isOAS31" in bundle.text  # Swagger UI 5: renders OpenAPI 3.1
    assert client.get("/openapi.json").json()["openapi"].startswith("3.1")


@pytest.mark.parametrize("schema", [schemas.ModelCreate, schemas.OutputRequest, schemas.EvaluateRequest,
                                    schemas.SamplesCreate, schemas.JobCreate, schemas.Weights])
def test_every_request_has_a_valid_example_and_described_fields(schema):
    examples = schema.model_config["json_schema_extra"]["examples"]
    for example in examples:
        schema.model_validate(example)
    undocumented = [name for name, field in schema.model_fields.items() if not field.description]
    assert undocumented == []


def test_the_examples_work_together(client):
    """What a user gets by pressing "Try it out" in /docs, route after route."""
    example = lambda schema: schema.model_config["json_schema_extra"]["examples"][0]  # noqa: E731
    model = client.post("/models", json=example(schemas.ModelCreate))
    assert model.status_code == 201, model.text
    model_id = model.json()["model_id"]
    for route, schema in (("output", schemas.OutputRequest), ("evaluate", schemas.EvaluateRequest),
                          ("samples", schemas.SamplesCreate)):
        response = client.post(f"/models/{model_id}/{route}", json=example(schema))
        assert response.status_code == 200, (route, response.text)
    job = client.post(f"/models/{model_id}/training-jobs", json=example(schemas.JobCreate))
    assert job.status_code == 202, job.text
    assert wait_job(client, job.json()["job_id"])["status"] == "succeeded"
    # the weights example fits the example model (it was one 2x2 layer, which fit no example)
    assert client.put(f"/models/{model_id}/weights", json=example(schemas.Weights)).status_code == 200


def test_an_unreadable_database_gives_503_and_degraded_health(tmp_path):
    with running_app(tmp_path, workers=0) as client:
        create(client, model_id="m")
        for name in ("nn.sqlite3", "nn.sqlite3-wal", "nn.sqlite3-shm"):  # damaged while the service runs
            target = tmp_path / name
            target.write_bytes(np.random.default_rng(0).bytes(max(target.stat().st_size, 4096)))
        for path in ("/models", "/models/m", "/models/m/jobs"):
            response = client.get(path)
            assert response.status_code == 503, response.text
            assert "nn.sqlite3 cannot be used" in response.json()["detail"] and ".recover" in response.json()["detail"]
        assert client.get("/health").json()["status"] == "degraded"


TENANTS = "alice:alice-key:train,bob:bob-key:train,ops:ops-key:admin"


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_under_tenancy_only_an_admin_key_sees_every_tenant_s_queue(backend, tmp_path):
    """/health is open; under tenancy it showed bob the jobs alice queued while his GET /jobs said none."""
    with backend_app(backend, tmp_path, api_keys=TENANTS, tenancy=True) as client:
        alice, bob, ops = ({"X-API-Key": f"{name}-key"} for name in ("alice", "bob", "ops"))
        assert client.post("/models", json=IRIS, headers=alice).status_code == 201
        job = client.post("/models/iris/training-jobs", json={"inputs": X4, "targets": Y3, "epochs": 1}, headers=alice)
        assert job.status_code == 202, job.text  # no workers: it stays queued
        assert client.get("/jobs", params={"status": "queued"}, headers=bob).json()["count"] == 0
        for headers in ({}, bob, alice, {"X-API-Key": "wrong"}, {"Authorization": "Bearer bob-key"}):
            body = client.get("/health", headers=headers).json()  # never refused: probes send no key
            assert body["queued_jobs"] is None and body["queue_length"] is None, (headers, body)
            assert body["status"] == "ok" and body["backend"] == backend and body["workers_alive"] == 0
        for headers in (ops, {"Authorization": "Bearer ops-key"}):
            body = client.get("/health", headers=headers).json()
            assert body["queued_jobs"] == 1 and body["queue_length"] == 1, body


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_without_tenancy_every_caller_sees_the_queue(backend, tmp_path):
    with backend_app(backend, tmp_path, api_keys="alice:alice-key:train") as client:
        assert client.post("/models", json=IRIS, headers={"X-API-Key": "alice-key"}).status_code == 201
        assert client.post("/models/iris/training-jobs", json={"inputs": X4, "targets": Y3, "epochs": 1},
                           headers={"X-API-Key": "alice-key"}).status_code == 202
        body = client.get("/health").json()
        assert body["queued_jobs"] == 1 and body["queue_length"] == 1
