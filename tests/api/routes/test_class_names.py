"""Class names on both backends: given at POST /models (both forms) for classifiers only, shown by GET /models,
answered as `labels` beside `predictions` by /output (on the event loop and in a thread), and kept by training,
versions, restore and export/import."""

import pytest

from neural_net import Network
from tests.api.conftest import IRIS, X4, Y3, backend_app, run_queued

NAMES = ["setosa", "versicolor", "virginica"]


@pytest.fixture(params=["sqlite", "redis"])
def client(request, tmp_path):
    with backend_app(request.param, tmp_path) as c:
        yield c


def create(client, **body):
    response = client.post("/models", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def output(client, model_id, **options):
    params = {"version": options.pop("version")} if "version" in options else {}
    response = client.post(f"/models/{model_id}/output", json={"inputs": X4, **options}, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def named(result, names=NAMES):
    return [names[k] for k in result["predictions"]]


def test_names_are_shown_and_label_every_prediction(client):
    model = create(client, **IRIS, class_names=NAMES)
    assert model["class_names"] == NAMES and model["config"]["class_names"] == NAMES
    assert client.get("/models/iris").json()["class_names"] == NAMES
    assert client.get("/models").json()["data"][0]["class_names"] == NAMES
    on_loop = output(client, "iris")  # a small prediction of a cached network: computed on the event loop
    assert on_loop["labels"] == named(on_loop) and len(on_loop["labels"]) == len(X4)
    in_thread = output(client, "iris", targets=Y3)  # with targets: computed in a worker thread
    assert in_thread["labels"] == on_loop["labels"] and in_thread["cost"] is not None
    one = client.post("/models/iris/output", json={"input": X4[0]}).json()
    assert one["labels"] == on_loop["labels"][:1]


def test_the_layers_form_and_a_binary_model_take_names_too(client):
    model = create(client, model_id="spam", input_size=4, seed=0, class_names=["ham", "spam"],
                   layers=[{"type": "dense", "units": 4, "activation": "relu"}, {"type": "batch_norm"},
                           {"type": "dense", "units": 1, "activation": "sigmoid"}])
    assert (model["task"], model["class_names"]) == ("binary", ["ham", "spam"])
    result = output(client, "spam")
    assert result["labels"] == named(result, ["ham", "spam"])


def test_a_model_without_names_answers_null_labels(client):
    assert create(client, **IRIS)["class_names"] is None
    assert output(client, "iris")["labels"] is None and output(client, "iris", targets=Y3)["labels"] is None
    assert create(client, model_id="reg", layer_sizes=[4, 1], activation="linear")["class_names"] is None
    assert output(client, "reg")["labels"] is None


@pytest.mark.parametrize("body, words", [
    ({**IRIS, "class_names": ["a", "b"]}, "class_names holds 2 names; this multiclass network needs one per output (3)"),
    ({"layer_sizes": [4, 1], "activations": ["sigmoid"], "class_names": ["a"]}, "needs 2 (for class 0 and class 1"),
    ({"layer_sizes": [4, 2], "activation": "linear", "class_names": ["a", "b"]}, "class_names are for classifiers"),
    ({"layer_sizes": [4, 2], "activations": ["softmax"], "class_names": ["a", "a"]}, "must be distinct; 'a'"),
    ({"layer_sizes": [4, 2], "activations": ["softmax"], "class_names": ["a", ""]}, "at least 1 character"),
    ({"layer_sizes": [4, 2], "activations": ["softmax"], "class_names": ["a", "b" * 201]}, "at most 200 characters"),
    ({"layer_sizes": [4, 2], "activations": ["softmax"], "class_names": ["a", 2]}, "valid string"),
    ({"layer_sizes": [4, 2], "activations": ["softmax"], "class_names": []}, "at least 1 item"),
    ({"input_size": 4, "layers": [{"type": "dense", "units": 3, "activation": "softmax"}], "class_names": ["a"]},
     "needs one per output (3)"),
])
def test_wrong_names_are_a_422_that_says_what_to_send(client, body, words):
    response = client.post("/models", json=body)
    assert response.status_code == 422, response.text
    assert words in response.text
    assert client.get("/models").json()["count"] == 0


def test_targets_may_be_class_names_wherever_targets_are_taken(client):
    """Appends, evaluation, /output with targets and a job's inline samples take names as they take indices."""
    create(client, **IRIS, class_names=NAMES)
    by_name = [NAMES[k] for k in Y3]
    evaluated = [client.post("/models/iris/evaluate", json={"inputs": X4, "targets": t}) for t in (Y3, by_name)]
    assert [r.status_code for r in evaluated] == [200, 200] and evaluated[0].json() == evaluated[1].json()
    costs = [client.post("/models/iris/output", json={"inputs": X4, "targets": t}).json()["cost"] for t in (Y3, by_name)]
    assert costs[0] == costs[1] > 0
    assert client.post("/models/iris/samples", json={"inputs": X4, "targets": by_name}).json()["buffer_size"] == 6
    job = client.post("/models/iris/training-jobs", json={"inputs": X4, "targets": by_name, "epochs": 1})
    assert job.status_code == 202, job.text


@pytest.mark.parametrize("names, targets, words", [
    (NAMES, ["setosa", "rose", "setosa", "setosa", "setosa", "setosa"], "'rose' is not one of the model's class_names"),
    (None, ["setosa"] * 6, "class names need a model created with class_names"),
    (NAMES, ["setosa", 1, "setosa", "setosa", "setosa", "setosa"], "targets"),
])
def test_a_target_name_the_model_does_not_have_is_a_422(client, names, targets, words):
    create(client, **IRIS, **({"class_names": names} if names else {}))
    response = client.post("/models/iris/samples", json={"inputs": X4, "targets": targets})
    assert response.status_code == 422 and words in response.text, response.text
    assert client.get("/models/iris/samples").json()["buffer_size"] == 0


def test_training_versions_restore_and_export_import_keep_the_names(client):
    create(client, **IRIS, class_names=NAMES)
    assert client.post("/models/iris/training-jobs", json={"inputs": X4, "targets": Y3, "epochs": 5}).status_code == 202
    (job,) = run_queued(client)
    assert job["status"] == "succeeded"
    assert client.get("/models/iris").json()["class_names"] == NAMES
    old = output(client, "iris", version=1)  # a kept version, computed in a thread
    assert old["model_version"] == 1 and old["labels"] == named(old)
    assert client.post("/models/iris/versions/1/restore").status_code == 200
    assert client.get("/models/iris").json()["class_names"] == NAMES

    exported = client.get("/models/iris/export").content
    assert Network.from_bytes(exported).class_names == NAMES
    imported = client.post("/models/import", params={"model_id": "copy"}, content=exported)
    assert imported.status_code == 201 and imported.json()["class_names"] == NAMES
    assert output(client, "copy")["labels"] == output(client, "iris")["labels"]


def test_a_search_keeps_the_names_in_every_trial_and_in_the_network_apply_best_makes():
    from api.search_trials import builder_for

    net = Network.from_layer_sizes([4, 8, 3], activations=["relu", "softmax"], class_names=NAMES)
    trial = builder_for({"config": net.get_config()})({"hidden_sizes": [5, 5], "activation": "tanh"}, seed=1)
    assert trial.layer_sizes == [4, 5, 5, 3] and trial.class_names == NAMES
