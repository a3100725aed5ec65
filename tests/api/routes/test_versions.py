"""Model versions on both backends: every weight change is kept (create, job, PUT, restore), old versions
compute, export and restore exactly, NN_KEEP_VERSIONS prunes the oldest, and restore waits for training."""

import pytest

from tests.api.conftest import IRIS, X4, Y3, backend_app, run_queued


@pytest.fixture(params=["sqlite", "redis"])
def client(request, tmp_path):
    with backend_app(request.param, tmp_path, keep_versions=3) as c:
        yield c


def outputs(client, model_id="iris", version=None):
    params = {} if version is None else {"version": version}
    response = client.post(f"/models/{model_id}/output", json={"inputs": X4}, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def train(client, epochs=20):
    response = client.post("/models/iris/training-jobs", json={"inputs": X4, "targets": Y3, "epochs": epochs,
                                                                "batch_size": 2, "learning_rate": 0.05, "seed": 1})
    assert response.status_code == 202, response.text
    (job,) = run_queued(client)
    assert job["status"] == "succeeded", job
    return job


def test_restore_round_trip_gives_the_old_outputs(client):
    client.post("/models", json=IRIS)
    v1 = outputs(client)
    v1_weights = client.get("/models/iris/weights").json()["layers"]
    job = train(client)
    v2 = outputs(client)
    assert v2["model_version"] == 2 and v2["outputs"] != v1["outputs"]

    listed = client.get("/models/iris/versions").json()
    assert listed["current_version"] == 2 and listed["keep"] == 3
    assert [(v["version"], v["source"], v["current"]) for v in listed["data"]] == [(2, "job", True), (1, "create", False)]
    assert listed["data"][0]["job_id"] == job["job_id"] and listed["data"][0]["job_status"] == "succeeded"
    assert listed["data"][0]["metrics"] == job["metrics"] and listed["data"][0]["metrics"]["accuracy"] is not None

    old = outputs(client, version=1)  # compare old against new without restoring
    assert old["outputs"] == v1["outputs"] and old["model_version"] == 1
    assert client.get("/models/iris/versions/1/weights").json() == {"layers": v1_weights, "version": 1}
    evaluated = client.post("/models/iris/evaluate", params={"version": 1}, json={"inputs": X4, "targets": Y3}).json()
    assert evaluated["model_version"] == 1

    restored = client.post("/models/iris/versions/1/restore")
    assert restored.status_code == 200, restored.text
    assert restored.json()["version"] == 3
    assert outputs(client)["outputs"] == v1["outputs"]  # the new current version equals version 1
    assert outputs(client, version=2)["outputs"] == v2["outputs"]
    v3 = client.get("/models/iris/versions/3").json()
    assert (v3["source"], v3["restored_from"], v3["current"]) == ("restore", 1, True)

    exported = client.get("/models/iris/versions/2/export")
    assert exported.status_code == 200
    assert client.post("/models/import?model_id=copy", content=exported.content).status_code == 201
    assert outputs(client, "copy")["outputs"] == v2["outputs"]
    assert client.get("/models/copy/versions").json()["data"][0]["source"] == "import"
    assert client.get("/models/iris/versions/2/export?format=onnx").status_code == 200


def test_weights_and_export_take_version_as_output_does(client):
    """?version= on /weights and /export was ignored: the current version came back under the old number's name."""
    client.post("/models", json=IRIS)
    v1 = client.get("/models/iris/weights").json()
    train(client)
    assert client.get("/models/iris/weights").json()["version"] == 2
    old = client.get("/models/iris/weights", params={"version": 1})
    assert old.status_code == 200 and old.json() == v1 and old.headers["etag"].endswith('.1.w"')
    exported = client.get("/models/iris/export", params={"version": 1})
    assert exported.content == client.get("/models/iris/versions/1/export").content
    assert exported.content != client.get("/models/iris/export").content
    assert 'filename="iris.v1.npz"' in exported.headers["content-disposition"]
    assert client.get("/models/iris/weights", params={"version": 9}).status_code == 404


def test_unknown_versions_are_404_with_the_way_out(client):
    client.post("/models", json=IRIS)
    for method, path in (("get", "/models/iris/versions/7"), ("get", "/models/iris/versions/7/weights"),
                         ("get", "/models/iris/versions/7/export"), ("post", "/models/iris/versions/7/restore")):
        response = getattr(client, method)(path)
        assert response.status_code == 404 and "GET /models/iris/versions" in response.json()["detail"], path
    assert client.post("/models/iris/output?version=7", json={"inputs": X4}).status_code == 404
    assert client.get("/models/iris/versions/0").status_code == 422
    assert client.get("/models/nope/versions").status_code == 404


def test_oldest_versions_are_pruned_beyond_keep_versions(client):
    client.post("/models", json=IRIS)
    weights = client.get("/models/iris/weights").json()
    for i in range(5):
        weights["layers"][0]["biases"] = [float(i)] * 8
        weights.pop("version", None)
        assert client.put("/models/iris/weights", json=weights).status_code == 200
    listed = client.get("/models/iris/versions").json()
    assert [v["version"] for v in listed["data"]] == [6, 5, 4, 3]  # the current one and NN_KEEP_VERSIONS=3 before it
    assert {v["source"] for v in listed["data"]} == {"put"}
    assert client.get("/models/iris/versions/2").status_code == 404
    assert client.get("/models/iris/versions/3/weights").json()["layers"][0]["biases"] == [1.0] * 8


def test_restore_is_refused_while_a_job_trains_the_model(client):
    client.post("/models", json=IRIS)
    client.post("/models/iris/training-jobs", json={"inputs": X4, "targets": Y3, "epochs": 5})
    store = client.app.state.service.store
    job = store.claim_job("test-worker")  # running now, as a worker would have it
    response = client.post("/models/iris/versions/1/restore")
    assert response.status_code == 409 and job.job_id in response.json()["detail"]
    store.finish_job(job.job_id, "cancelled")


def test_a_recreated_model_starts_a_new_history(client):
    client.post("/models", json=IRIS)
    train(client, epochs=2)
    assert client.delete("/models/iris").status_code == 204
    client.post("/models", json=IRIS)
    listed = client.get("/models/iris/versions").json()
    assert [(v["version"], v["source"]) for v in listed["data"]] == [(1, "create")]


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_a_pruned_version_is_404_at_once_though_its_network_was_cached(tmp_path, backend):
    """Version 1, once served (cached as (uid, 1)), kept being served after NN_KEEP_VERSIONS pruned it, while its
    export was 404; after a restart all were 404."""
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": X4[0]}]}
    with backend_app(backend, tmp_path, keep_versions=1) as c:
        c.post("/models", json=IRIS)
        assert c.post("/v2/models/iris/versions/1/infer", json=body).status_code == 200  # cached as the current one
        weights = c.get("/models/iris/weights").json()
        assert c.put("/models/iris/weights", json={"layers": weights["layers"]}).status_code == 200
        assert c.post("/v2/models/iris/versions/1/infer", json=body).status_code == 200  # kept: cached as an old one
        train(c, epochs=2)
        assert [v["version"] for v in c.get("/models/iris/versions").json()["data"]] == [3, 2]
        for method, path in (("post", "/v2/models/iris/versions/1/infer"), ("get", "/v2/models/iris/versions/1/ready"),
                             ("post", "/models/iris/output?version=1"), ("get", "/models/iris/versions/1/export"),
                             ("post", "/models/iris/evaluate?version=1")):
            response = getattr(c, method)(path, **({"json": body} if "infer" in path else
                                                   {"json": {"inputs": X4, "targets": Y3}} if method == "post" else {}))
            assert response.status_code == 404, (path, response.text)
            assert "has no version 1 (never made, or pruned" in response.text, path
        assert c.post("/v2/models/iris/versions/2/infer", json=body).json()["model_version"] == "2"
        assert c.post("/v2/models/iris/versions/4/infer", json=body).status_code == 404


def test_a_version_pruned_on_another_redis_replica_is_404_on_this_one(tmp_path):
    """Each replica kept serving its cached copy of a version that another one had pruned."""
    import uuid

    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": X4[0]}]}
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    with backend_app("redis", tmp_path / "a", keep_versions=1, redis_prefix=prefix, keep_data=True) as a, \
            backend_app("redis", tmp_path / "b", keep_versions=1, redis_prefix=prefix) as b:
        a.post("/models", json=IRIS)
        layers = a.get("/models/iris/weights").json()["layers"]
        assert b.put("/models/iris/weights", json={"layers": layers}).status_code == 200
        assert a.post("/v2/models/iris/versions/1/infer", json=body).status_code == 200  # a caches version 1
        assert b.put("/models/iris/weights", json={"layers": layers}).status_code == 200  # b prunes it
        response = a.post("/v2/models/iris/versions/1/infer", json=body)
        assert response.status_code == 404 and "has no version 1" in response.text, response.text


@pytest.mark.parametrize("change", ["put", "put-if-match", "restore"])
def test_a_change_read_from_a_model_deleted_and_created_again_meanwhile_is_refused(client, change):
    """A PUT or a restore reads the model, then writes: another request (a replica) that deleted and re-created the
    id in between got the old model's weights and layers written onto the new one, whose versions are the same, as
    version 2 (a Redis race run 200 times: 20-35 such 200s). The write now names the model it read, by its uid."""
    from api.schemas import ModelCreate

    client.post("/models", json=IRIS)
    service = client.app.state.service
    weights, tag = client.get("/models/iris/weights"), None
    tag = weights.headers["etag"]
    write = service.store.replace_model

    def recreated_first(*args, **kwargs):  # the other request's delete and create land between the read and the write
        service.store.replace_model = write
        service.delete_model("iris")
        service.create_model(ModelCreate(**{**IRIS, "layer_sizes": [4, 5, 3]}))
        return write(*args, **kwargs)

    service.store.replace_model = recreated_first
    if change == "restore":
        response = client.post("/models/iris/versions/1/restore")
    else:
        response = client.put("/models/iris/weights", json={"layers": weights.json()["layers"]},
                              headers={"If-Match": tag} if change == "put-if-match" else {})
    assert response.status_code == (412 if change == "put-if-match" else 409), response.text
    assert "deleted and created again" in response.json()["detail"]
    now = client.get("/models/iris").json()
    assert (now["version"], now["layer_sizes"]) == (1, [4, 5, 3])
