"""Models: create, read, list, delete, outputs with gradients, evaluation, weights, export/import."""

import io
import json
import shlex
import subprocess

import httpx
import numpy as np
import pytest

from neural_net import BatchNorm, Dense, Network
from tests.api.conftest import TERMINAL, X4, Y3, create, wait_for
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def iris(client):
    return create(client)


def load(client, model_id) -> Network:
    response = client.get(f"/models/{model_id}/export")
    assert response.status_code == 200
    return Network.from_bytes(response.content)


def test_create_returns_the_summary(iris):
    assert iris["model_id"] == "iris"
    assert iris["layer_sizes"] == [4, 8, 3]
    assert iris["activations"] == ["relu", "softmax"]
    assert (iris["loss"], iris["task"], iris["dtype"]) == ("cross_entropy", "multiclass", "float32")
    assert iris["n_params"] == 4 * 8 + 8 + 8 * 3 + 3
    assert (iris["version"], iris["epochs_trained"], iris["buffer_size"], iris["latest_job"]) == (1, 0, 0, None)


def test_create_generates_an_id_and_accepts_one_activation(client):
    model = create(client, model_id=None, activations=None, activation="tanh", layer_sizes=[2, 3, 1])
    assert len(model["model_id"]) == 16
    assert model["activations"] == ["tanh", "tanh"]
    assert model["task"] == "regression"


def test_existing_id_is_a_conflict(client, iris):
    response = client.post("/models", json={"model_id": "iris", "layer_sizes": [1, 1]})
    assert response.status_code == 409
    assert "already exists" in response.json()["detail"]


@pytest.mark.parametrize("body, status, words", [
    ({"layer_sizes": [4, 3], "activations": ["swish"]}, 422, "valid names: "),
    ({"layer_sizes": [4, 3], "weight_init": "magic"}, 422, "xavier"),
    ({"layer_sizes": [4, 3], "loss": "hinge"}, 422, "cross_entropy"),
    ({"layer_sizes": [4, 8, 3], "activations": ["relu"]}, 422, "one per layer"),
    ({"layer_sizes": [4, 3], "activations": ["relu"], "activation": "relu"}, 422, "not both"),
    ({"layer_sizes": [4, 0]}, 422, "greater than or equal to 1"),
    ({"layer_sizes": [4]}, 422, "at least 2"),
    ({"layer_sizes": [4, 3], "colour": "red"}, 422, "unknown field"),
    ({"layer_sizes": [4, 3], "model_id": "no spaces"}, 422, "model_id"),
    ({"layer_sizes": [4000, 4000]}, 422, "NN_MAX_PARAMETERS"),
    ({"layer_sizes": [5000, 1]}, 422, "NN_MAX_LAYER_SIZE"),
    ({"layer_sizes": [2] * 40}, 422, "NN_MAX_LAYERS"),
    ({"layer_sizes": [4, 8, 3], "dropout": [0.5, 0.5]}, 422, "output layer"),
    ({"layer_sizes": [4, 3], "dtype": "float16"}, 422, "float32"),
])
def test_invalid_models_are_rejected_with_a_reason(client, body, status, words):
    response = client.post("/models", json=body)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]


LAYERS = [{"type": "dense", "units": 16, "activation": "leaky_relu", "alpha": 0.1, "dropout": 0.1, "use_bias": False},
          {"type": "batch_norm", "momentum": 0.8},
          {"type": "dense", "units": 3, "activation": "softmax"}]


def test_create_from_a_layers_spec(client):
    model = create(client, model_id="spec", layer_sizes=None, activations=None, input_size=4, layers=LAYERS)
    assert model["layer_sizes"] == [4, 16, 3] and model["activations"] == ["leaky_relu", "linear", "softmax"]
    assert model["n_params"] == 4 * 16 + 2 * 16 + 16 * 3 + 3  # no biases in the first layer
    layers = model["config"]["layers"]
    assert layers[0] == {"type": "dense", "units": 16, "activation": {"name": "leaky_relu", "alpha": 0.1}, "dropout": 0.1,
                         "use_bias": False, "weight_init": "he", "bias_init": "zeros"}
    assert layers[1]["type"] == "batch_norm" and layers[1]["momentum"] == 0.8
    net = load(client, "spec")
    assert [type(layer).__name__ for layer in net.layers] == ["Dense", "BatchNorm", "Dense"]
    weights = client.get("/models/spec/weights").json()["layers"]
    assert weights[0]["biases"] is None and len(weights[1]["biases"]) == 3
    assert client.put("/models/spec/weights", json={"layers": weights}).status_code == 200  # the same shape back
    biased = [{**weights[0], "biases": [0.0] * 16}, weights[1]]
    refused = client.put("/models/spec/weights", json={"layers": biased})
    assert refused.status_code == 422 and "use_bias=False" in refused.json()["detail"]
    gradients = client.post("/models/spec/output", json={"inputs": X4, "targets": Y3, "include_gradients": True}).json()
    assert gradients["gradients"][0]["biases"] is None and len(gradients["gradients"][1]["biases"]) == 3
    # a sloped sigmoid, and names in any case
    sloped = create(client, model_id="sloped", layer_sizes=None, activations=None, input_size=2,
                    layers=[{"type": "Dense", "units": 1, "activation": "Sigmoid", "slope": 2.0}])
    assert sloped["config"]["layers"][0]["activation"] == {"name": "sigmoid", "slope": 2.0}
    assert sloped["loss"] == "binary_cross_entropy"


def test_the_default_weight_init_is_auto(client):
    """he after relu-like activations, xavier otherwise, as in the core (it was xavier everywhere)."""
    model = create(client, model_id="auto-init", layer_sizes=[4, 8, 3], activations=["relu", "softmax"])
    assert [layer["weight_init"] for layer in model["config"]["layers"]] == ["he", "xavier"]


@pytest.mark.parametrize("layers, words", [
    ([{"type": "conv", "units": 3}], "unknown layer type 'conv' in layers[0].type; valid names: batch_norm, dense"),
    ([{"type": "dense", "units": 3, "activation": "swish"}], "valid names: elu, gelu, leaky_relu, linear, relu,"),
    ([{"type": "dense"}], "layers[0]: a dense layer needs `units`"),
    ([{"type": "dense", "units": 3, "activation": "relu", "alpha": 0.1}], "activation 'relu' takes no alpha"),
    ([{"type": "dense", "units": 3, "activation": "leaky_relu", "slope": 2}], "slope to sigmoid"),
    ([{"type": "dense", "units": 3, "activation": "leaky_relu", "alpha": 1.5}], "layers[0]: leaky_relu alpha must be a number in [0, 1)"),
    ([{"type": "dense", "units": 3, "weight_init": "magic"}], "layers[0].weight_init; valid names: auto,"),
    ([{"type": "dense", "units": 3}, {"type": "batch_norm", "units": 3}], "layers[1]: a batch_norm layer takes no units"),
    ([{"type": "dense", "units": 3, "momentum": 0.5}], "a dense layer takes no momentum"),
    ([{"type": "dense", "units": 3, "dropout": 0.5}], "output layer cannot have dropout"),
    ([{"type": "dense", "units": 3, "colour": "red"}], "layers[0].colour: unknown field"),
    ([{"type": "dense", "units": 4000}] * 3, "NN_MAX_PARAMETERS"),
    ([{"type": "dense", "units": 5000}], "NN_MAX_LAYER_SIZE"),
    ([{"type": "batch_norm"}] * 33, "NN_MAX_LAYERS"),
])
def test_invalid_layers_specs_say_what_to_send(client, layers, words):
    response = client.post("/models", json={"input_size": 4, "layers": layers})
    assert response.status_code == 422, response.text
    assert words in response.json()["detail"]


@pytest.mark.parametrize("body, words", [
    ({"layers": [{"type": "dense", "units": 3}]}, "`layers` needs `input_size`"),
    ({"input_size": 4}, "give `layer_sizes`"),
    ({"input_size": 4, "layers": [{"type": "dense", "units": 3}], "layer_sizes": [4, 3]}, "inside each layer"),
    ({"input_size": 4, "layers": [{"type": "dense", "units": 3}], "activation": "relu"}, "inside each layer"),
])
def test_layers_and_layer_sizes_do_not_mix(client, body, words):
    response = client.post("/models", json=body)
    assert response.status_code == 422, response.text
    assert words in response.json()["detail"]


def test_get_list_and_page(client, iris):
    assert client.get("/models/iris").json()["model_id"] == "iris"
    everything = client.get("/models").json()
    assert everything["count"] >= 1 and len(everything["data"]) == everything["count"]
    page = client.get("/models", params={"offset": 0, "limit": 1}).json()
    assert len(page["data"]) == 1 and page["count"] == everything["count"]
    assert client.get("/models", params={"limit": 0}).status_code == 422


def test_unknown_model_is_404_everywhere(client):
    for method, path in [("get", "/models/nope"), ("delete", "/models/nope"), ("get", "/models/nope/weights"),
                         ("get", "/models/nope/samples"), ("get", "/models/nope/export"), ("get", "/models/nope/jobs"),
                         ("get", "/models/nope/progress")]:
        response = getattr(client, method)(path)
        assert response.status_code == 404, (method, path)
        assert "does not exist" in response.json()["detail"]
    response = client.post("/models/nope/output", json={"input": [1, 2, 3, 4]})
    assert response.status_code == 404


def test_delete(client):
    create(client, model_id="doomed")
    assert client.delete("/models/doomed").status_code == 204
    assert client.get("/models/doomed").status_code == 404


# -- outputs ------------------------------------------------------------------
def test_output_matches_the_core(client, iris):
    net = load(client, "iris")
    body = client.post("/models/iris/output", json={"inputs": X4}).json()
    np.testing.assert_allclose(body["outputs"], net.predict(np.array(X4)), rtol=1e-6)
    assert body["predictions"] == net.predict_classes(np.array(X4)).tolist()
    assert body["model_version"] == 1
    assert body["cost"] is None and body["gradients"] is None and body["activations"] is None


def test_output_of_one_input(client, iris):
    body = client.post("/models/iris/output", json={"input": X4[0]}).json()
    assert len(body["outputs"]) == 1 and len(body["outputs"][0]) == 3


def test_gradients_equal_the_cores(client, iris):
    net = load(client, "iris")
    x, y = np.array(X4), np.array(Y3)
    body = client.post("/models/iris/output", json={"inputs": X4, "targets": Y3, "include_gradients": True}).json()
    cost, grads = net.gradients(x, y)
    assert body["cost"] == pytest.approx(cost, rel=1e-6)
    assert len(body["gradients"]) == len(grads) == 2
    for sent, expected in zip(body["gradients"], grads):
        np.testing.assert_allclose(sent["weights"], expected["weights"], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(sent["biases"], expected["biases"], rtol=1e-6, atol=1e-9)
    # one-hot rows give the same gradient as class indices
    one_hot = np.eye(3)[Y3].tolist()
    again = client.post("/models/iris/output", json={"inputs": X4, "targets": one_hot, "include_gradients": True}).json()
    assert again["gradients"] == body["gradients"]


def test_activations_per_layer(client, iris):
    body = client.post("/models/iris/output", json={"inputs": X4[:2], "include_activations": True}).json()
    assert [len(layer["a"][0]) for layer in body["activations"]] == [8, 3]
    np.testing.assert_allclose(body["activations"][-1]["a"], body["outputs"])


@pytest.mark.parametrize("body, status, words", [
    ({"inputs": [[1, 2, 3]]}, 422, "expects 4"),
    ({"inputs": [[1, 2, 3, 4], [1, 2]]}, 422, "inputs[1]"),
    ({"inputs": [[1, 2, 3, 4]], "input": [1, 2, 3, 4]}, 422, "either"),
    ({}, 422, "either"),
    ({"inputs": []}, 422, "no samples"),
    ({"inputs": [[1, 2, 3, 4]], "include_gradients": True}, 422, "needs `targets`"),
    ({"inputs": [[1, 2, 3, 4]], "targets": [3]}, 422, "labels"),
    ({"inputs": [[1, 2, 3, 4]], "targets": [[1, 0]]}, 422, "3 outputs"),
    ({"inputs": [[1, 2, 3, 4]], "targets": [0, 1]}, 422, "one target per input"),
    ({"inputs": [[1e39, 2, 3, 4]]}, 422, "too large for float32"),
    ({"inputs": [[1, 2, 3, 4]], "extra": 1}, 422, "unknown field"),
    ({"inputs": [["a", 2, 3, 4]]}, 422, "number"),
])
def test_bad_outputs_requests(client, iris, body, status, words):
    response = client.post("/models/iris/output", json=body)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]


def test_nan_and_infinity_are_rejected(client, iris):
    for literal in ("NaN", "Infinity", "-Infinity"):
        response = client.post("/models/iris/output", content=f'{{"inputs": [[1, 2, 3, {literal}]]}}',
                               headers={"content-type": "application/json"})
        assert response.status_code == 422
        assert "finite" in response.json()["detail"]


def test_overflow_is_a_422_that_says_what_overflowed(client, iris):
    response = client.post("/models/iris/output", json={"inputs": [[3e38, 3e38, 3e38, 3e38]], "include_activations": True})
    assert response.status_code == 422, response.text
    assert "overflowed float32" in response.json()["detail"] and "scale the inputs" in response.json()["detail"]


def test_weights_that_overflow_give_a_422_on_output(client):
    create(client, model_id="huge", layer_sizes=[2, 2, 1], activations=["relu", "linear"])
    weights = client.get("/models/huge/weights").json()
    weights["layers"][0]["weights"] = [[3e38, 3e38], [3e38, 3e38]]
    assert client.put("/models/huge/weights", json=weights).status_code == 200
    for extra in ({}, {"include_activations": True}, {"targets": [1.0], "include_gradients": True}):
        response = client.post("/models/huge/output", json={"inputs": [[1.0, 1.0]], **extra})
        assert response.status_code == 422 and "overflowed" in response.json()["detail"], response.text
    response = client.post("/models/huge/evaluate", json={"inputs": [[1.0, 1.0]], "targets": [1.0]})
    assert response.status_code == 422 and "the loss overflowed" in response.json()["detail"], response.text
    assert client.get("/models/huge/weights").status_code == 200


def test_malformed_json_is_422(client, iris):
    response = client.post("/models/iris/output", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422


def test_evaluate(client, iris):
    body = client.post("/models/iris/evaluate", json={"inputs": X4, "targets": Y3}).json()
    metrics = body["metrics"]
    assert body["n_samples"] == 6
    assert {"loss", "accuracy", "f1", "confusion_matrix"} <= set(metrics)
    assert sum(map(sum, metrics["confusion_matrix"])) == 6
    expected = load(client, "iris").evaluate(np.array(X4), np.array(Y3))
    assert metrics["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    assert (metrics["accuracy"], metrics["confusion_matrix"]) == (expected["accuracy"], expected["confusion_matrix"])


def test_regression_metrics(client):
    create(client, model_id="reg", layer_sizes=[2, 4, 1], activations=["tanh", "linear"])
    body = client.post("/models/reg/evaluate", json={"inputs": [[0, 1], [1, 0], [1, 1]], "targets": [0.5, 1.0, 2.0]})
    assert body.status_code == 200, body.text
    assert {"loss", "mae", "rmse", "r2"} <= set(body.json()["metrics"])
    assert client.post("/models/reg/output", json={"input": [0, 1]}).json()["predictions"] is None


# -- weights ---------------------------------------------------------------------
def test_weights_round_trip_and_version(client):
    create(client, model_id="w", layer_sizes=[2, 3, 1], activations=["relu", "sigmoid"])
    weights = client.get("/models/w/weights").json()
    assert weights["version"] == 1
    assert [np.shape(layer["weights"]) for layer in weights["layers"]] == [(2, 3), (3, 1)]
    weights["layers"][0]["weights"] = [[0.5, -0.5, 1.0], [0.25, 0.0, -1.0]]
    response = client.put("/models/w/weights", json=weights)
    assert response.status_code == 200, response.text
    assert response.json()["version"] == 2
    assert client.get("/models/w/weights").json()["layers"][0]["weights"] == [[0.5, -0.5, 1.0], [0.25, 0.0, -1.0]]
    stale = client.put("/models/w/weights", json=weights)  # still says version 1
    assert stale.status_code == 409 and "version 2" in stale.json()["detail"]


def test_weights_with_a_wrong_shape_are_rejected(client):
    create(client, model_id="w2", layer_sizes=[2, 3, 1], activations=["relu", "sigmoid"])  # 1 softmax unit is refused
    weights = client.get("/models/w2/weights").json()
    weights["layers"][1]["biases"] = [0.0, 0.0]
    response = client.put("/models/w2/weights", json={"layers": weights["layers"]})
    assert response.status_code == 422 and "expected shape (1,)" in response.json()["detail"]
    response = client.put("/models/w2/weights", json={"layers": weights["layers"][:1]})
    assert response.status_code == 422 and "2 dense layers" in response.json()["detail"]
    assert client.get("/models/w2").json()["version"] == 1


# -- export / import ----------------------------------------------------------------
def test_export_import_round_trip(client, iris):
    exported = client.get("/models/iris/export")
    assert exported.headers["content-type"] == "application/octet-stream"
    assert 'filename="iris.npz"' in exported.headers["content-disposition"]
    raw = client.post("/models/import", params={"model_id": "iris-raw"}, content=exported.content,
                      headers={"content-type": "application/octet-stream"})
    assert raw.status_code == 201, raw.text
    upload = client.post("/models/import", params={"model_id": "iris-upload"},
                         files={"file": ("iris.npz", io.BytesIO(exported.content), "application/octet-stream")})
    assert upload.status_code == 201, upload.text
    for model_id in ("iris-raw", "iris-upload"):
        assert client.get(f"/models/{model_id}/weights").json()["layers"] == client.get("/models/iris/weights").json()["layers"]
        assert client.get(f"/models/{model_id}").json()["layer_sizes"] == [4, 8, 3]
    assert client.post("/models/import", params={"model_id": "iris-raw"}, content=exported.content).status_code == 409


def test_an_import_stores_the_models_own_file_not_the_bytes_sent(client, iris):
    """zipfile finds an archive at the end of any prefix: an export behind 8 MiB of zeros passed every check and was
    stored, exported and copied into each version as sent (a 13-parameter model took 120 MiB a copy)."""
    exported = client.get("/models/iris/export").content
    padded = b"PK\x03\x04" + bytes(8 << 20) + exported
    response = client.post("/models/import", params={"model_id": "iris-padded"}, content=padded,
                           headers={"content-type": "application/octet-stream"})
    assert response.status_code == 201, response.text
    stored = client.get("/models/iris-padded/export").content
    assert len(stored) < 2 * len(exported)
    assert client.get("/models/iris-padded/weights").json()["layers"] == client.get("/models/iris/weights").json()["layers"]


def test_a_model_stored_before_the_loss_checks_still_serves_outputs(client):
    """Models whose loss their output cannot take (a tanh output with binary_cross_entropy) were accepted before the
    core checked them; after the upgrade /output answered 422 for them, and their loss cannot be changed."""
    from neural_net import Dense, Network
    from api.records import describe

    net = Network(2, seed=0, loss="binary_cross_entropy")
    net.add(Dense(4, activation="relu"))
    net.add(Dense(1, activation="tanh"))
    client.app.state.service.store.create_model("legacy", net.to_bytes(), describe(net))
    response = client.post("/models/legacy/output", json={"inputs": [[1.0, 2.0]]})
    assert response.status_code == 200, response.text
    response = client.post("/models/legacy/evaluate", json={"inputs": [[1.0, 2.0]], "targets": [1]})
    assert response.status_code == 422 and "binary_cross_entropy needs a sigmoid output" in response.json()["detail"]

def test_a_malformed_multipart_import_says_what_the_parser_found(client):
    """It said "send UTF-8 JSON (Content-Type: application/json)" to a route that takes a file."""
    response = client.post("/models/import", params={"model_id": "x"}, content=b"PK",
                           headers={"content-type": "multipart/form-data"})
    assert response.status_code == 422
    assert response.json()["detail"] == ("the multipart/form-data body could not be parsed: Missing boundary in "
                                         "multipart; send a multipart body whose boundary is in its Content-Type, "
                                         "or the file itself as the raw body")


def test_any_model_the_service_exports_imports_back(tmp_path):
    """Imports fell under NN_MAX_REQUEST_BYTES, meant for JSON: a float64 model under NN_MAX_PARAMETERS exported 39 MB
    and its import was a 413 saying "send fewer samples". Here the limit is 1 MiB, the export 2.1 MB; a file larger
    than any model of at most NN_MAX_PARAMETERS is still refused, before it is read, naming that setting."""
    from tests.api.conftest import running_app

    with running_app(tmp_path, workers=0, max_request_bytes=1 << 20, max_parameters=300_000) as client:
        assert client.post("/models", json={"model_id": "wide", "layer_sizes": [256, 1024], "dtype": "float64"}).status_code == 201
        exported = client.get("/models/wide/export").content
        assert len(exported) > 2 << 20
        back = client.post("/models/import", params={"model_id": "back"}, content=exported)
        assert back.status_code == 201, back.text
        assert client.get("/models/back/weights").json() == client.get("/models/wide/weights").json()
        huge = client.post("/models/import", content=b"0" * (24 * 300_000 + (8 << 20) + 1))
        assert huge.status_code == 413 and "NN_MAX_PARAMETERS" in huge.json()["detail"], huge.text
        assert client.post("/models/wide/output", content=b"0" * ((1 << 20) + 1)).status_code == 413  # JSON as before


@pytest.mark.parametrize("dense, norms, status", [(16, 16, 201), (17, 16, 422), (33, 0, 422), (1, 32, 422)])
def test_max_layers_counts_a_created_and_an_imported_model_alike(client, dense, norms, status):
    """NN_MAX_LAYERS (32 here) counts every layer after the input, batch_norm ones included, whether the model
    comes as a `layers` list or as a file (an import allowed as many batch_norm layers again)."""
    kinds = ["dense", "batch_norm"] * min(dense, norms) + ["dense"] * (dense - norms) + ["batch_norm"] * (norms - dense)
    net = Network(2, seed=0)
    for kind in kinds:
        net.add(Dense(2) if kind == "dense" else BatchNorm())
    name = f"layers-{dense}-{norms}"
    created = client.post("/models", json={"input_size": 2, "model_id": f"{name}-created",
                                           "layers": [{"type": "dense", "units": 2} if kind == "dense" else {"type": kind}
                                                      for kind in kinds]})
    imported = client.post("/models/import", params={"model_id": f"{name}-imported"}, content=net.to_bytes(),
                           headers={"content-type": "application/octet-stream"})
    assert (created.status_code, imported.status_code) == (status, status), (created.text, imported.text)
    for response in (created, imported):
        if status == 422:
            detail = response.json()["detail"]
            assert f"{dense + norms} layers after the input ({dense} dense, {norms} batch_norm)" in detail, detail
            assert "at most 32" in detail and "NN_MAX_LAYERS" in detail, detail


def test_import_rejects_what_is_not_a_model(client):
    for data in (b"", b"hello", b"PK\x03\x04broken zip"):
        response = client.post("/models/import", content=data, headers={"content-type": "application/octet-stream"})
        assert response.status_code == 422, data
        assert "model file" in response.json()["detail"] or "no file" in response.json()["detail"]


def test_the_readme_layers_spec_examples_work_as_written(server):
    """Each curl command of the README's layers spec section, against a real server, answers 2xx,
    and its job trains with a reduced learning rate."""
    section = (ROOT / "README.md").read_text().split("### Layers spec", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [" ".join(part.rstrip("\\").strip() for part in chunk.splitlines())
                for chunk in ("\n" + section).split("\ncurl ")[1:]]
    commands = ["curl " + c.split("\n#")[0] for c in commands]
    assert len(commands) == 3
    answers = []
    for command in commands:
        argv = [arg.replace("localhost:8000", server) for arg in shlex.split(command.split(" #")[0])]
        done = subprocess.run(argv + ["-w", "\n%{http_code}"], capture_output=True, text=True, timeout=30)
        body, status = done.stdout.rsplit("\n", 1)
        assert status.startswith("2"), f"{command}\n{status} {body}"
        answers.append(json.loads(body))
    assert answers[0]["n_params"] == 147 and answers[0]["activations"] == ["leaky_relu", "linear", "softmax"]
    job = wait_for(lambda: httpx.get(f"{server}/jobs/{answers[1]['job_id']}").json(), lambda j: j["status"] in TERMINAL, 60)
    assert job["status"] == "succeeded", job
    assert answers[2]["config"]["layers"][1]["activation"] == {"name": "sigmoid", "slope": 2.0}


@pytest.mark.parametrize("model_id", [".", ".."])
def test_dot_ids_are_refused_with_the_reason(client, iris, model_id):
    created = client.post("/models", json={"layer_sizes": [4, 3], "model_id": model_id})
    assert created.status_code == 422 and "'.' and '..' name directories" in created.json()["detail"]
    data = client.get("/models/iris/export").content
    imported = client.post("/models/import", params={"model_id": model_id}, content=data)
    assert imported.status_code == 422 and "'.' and '..' name directories" in imported.json()["detail"]
    assert client.post("/models", json={"layer_sizes": [4, 3], "model_id": f"v1{model_id}2"}).status_code == 201


@pytest.mark.parametrize("name", ["zip bomb", "a 20000x20000 layer", "5000 layers", "NaN weights", "Inf optimizer state",
                                  "optimizer step -1e30", "epochs_trained 1e30", "an unknown member"])
def test_import_refuses_a_crafted_file_naming_the_problem(client, name):
    from tests.core.test_serialization import CRAFTED

    make, words = CRAFTED[name]
    words = {"a 20000x20000 layer": "20000 values; at most 4096 units per layer (NN_MAX_LAYER_SIZE)",
             "5000 layers": "at most 32 layers, batch_norm ones included (NN_MAX_LAYERS)"}.get(name, words)
    response = client.post("/models/import", params={"model_id": "crafted"}, content=make(),
                           headers={"content-type": "application/octet-stream"})
    assert response.status_code == 422 and words in response.json()["detail"], response.text
    assert client.get("/models/crafted").status_code == 404


def test_an_answer_larger_than_max_response_values_is_a_413_before_it_is_computed(tmp_path):
    """10,000 one-number rows (a 70 KB body) through a [1, 1024] linear model answered 219 MB and took the process
    from 80 MB to 1.2 GB: rows were bounded, the answer was not."""
    from tests.api.conftest import running_app

    with running_app(tmp_path, workers=0, max_response_values=1000) as client:
        client.post("/models", json={"model_id": "wide", "layer_sizes": [1, 100], "activations": ["linear"]})
        assert client.post("/models/wide/output", json={"inputs": [[1.0]] * 9}).status_code == 200  # 9 x 101
        too_many = client.post("/models/wide/output", json={"inputs": [[1.0]] * 10})
        assert too_many.status_code == 413 and too_many.json()["detail"] == (
            "the answer would hold 1,010 numbers (10 rows x 101 outputs and predictions per row); at most 1,000 "
            "(NN_MAX_RESPONSE_VALUES): send fewer rows per request")
        activations = client.post("/models/wide/output", json={"inputs": [[1.0]] * 4, "include_activations": True})
        assert activations.status_code == 413 and "4 rows x 301 outputs, predictions and activations" in activations.text
        client.post("/models", json={"model_id": "deep", "layer_sizes": [10, 100], "activations": ["linear"]})
        gradients = client.post("/models/deep/output", json={"inputs": [[1.0] * 10], "targets": [[0.0] * 100],
                                                             "include_gradients": True})
        assert gradients.status_code == 413 and "(1 rows x 101 outputs and predictions per row + 1,100 gradients)" in gradients.text
        v2 = client.post("/v2/models/wide/infer", json={"inputs": [{"name": "input", "datatype": "FP32", "shape": [10, 1],
                                                                    "data": [1.0] * 10}]})
        assert v2.status_code == 413 and "NN_MAX_RESPONSE_VALUES" in v2.json()["error"]


def test_a_large_answer_is_rendered_off_the_event_loop(tmp_path, monkeypatch):
    """Its JSON was built on the event loop: a 219 MB answer held /health for a second."""
    import asyncio

    import api.routes.models
    from tests.api.conftest import running_app

    rendered = []
    dumps = api.routes.models.dumps

    def recorded(content):
        try:
            asyncio.get_running_loop()
            rendered.append("loop")
        except RuntimeError:
            rendered.append("thread")
        return dumps(content)

    monkeypatch.setattr(api.routes.models, "dumps", recorded)
    with running_app(tmp_path, workers=0) as client:
        client.post("/models", json={"model_id": "m", "layer_sizes": [4, 8, 3], "activations": ["relu", "softmax"]})
        answer = client.post("/models/m/output", json={"inputs": [[1.0, 2.0, 3.0, 4.0]] * 2000})
        assert answer.status_code == 200 and len(answer.json()["outputs"]) == 2000
    assert rendered == ["thread"]
