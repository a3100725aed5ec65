"""The first mistakes a new user makes get one line each that says what to send (api/errors.py)."""

import pytest

from api.errors import NESTED_INPUT
from tests.api.conftest import IRIS

INTERNAL = ("list[", "float", "int]", "Input should", "body.")


@pytest.fixture(scope="module")
def iris(idle_client):
    assert idle_client.post("/models", json=IRIS).status_code == 201
    return idle_client


def detail(client, path, body):
    response = client.post(path, json=body)
    assert response.status_code == 422, response.text
    text = response.json()["detail"]
    assert not any(word in text for word in INTERNAL), text
    return text


def test_a_flat_vector_in_inputs(iris):
    text = detail(iris, "/models/iris/output", {"inputs": [5.1, 3.5, 1.4, 0.2]})
    assert text == "inputs is a list of rows, e.g. [[1, 2, 3, 4]]; for a single vector use input"


@pytest.mark.parametrize("path, body, expected", [
    ("/models/iris/output", {"inputs": [["5.1", "3.5", "1.4", "0.2"]]},
     "inputs[0][0]: expected a number; received the text '5.1'; send numbers without quotes (and 3 more like it in inputs)"),
    ("/models/iris/output", {"input": [5.1, "3.5", 1.4, 0.2]},
     "input[1]: expected a number; received the text '3.5'; send numbers without quotes"),
    ("/models/iris/evaluate", {"inputs": [[5.1, 3.5, 1.4, 0.2]], "targets": ["setosa"]},
     "targets[0] is the text 'setosa': class names need a model created with class_names; send class indices or "
     "values as numbers without quotes"),
    ("/models/iris/training-jobs", {"epochs": "10"},
     "epochs: expected a whole number; received the text '10'; send numbers without quotes"),
    ("/models", {"input_size": 4, "layers": [{"type": "dense", "units": "3"}]},
     "layers[0].units: expected a whole number; received the text '3'; send numbers without quotes"),
])
def test_strings_where_numbers_belong(iris, path, body, expected):
    assert detail(iris, path, body) == expected


@pytest.mark.parametrize("targets", [[True, False], [[True, False, False], [False, True, False]]])
def test_booleans_as_targets(iris, targets):
    text = detail(iris, "/models/iris/samples", {"inputs": [[5.1, 3.5, 1.4, 0.2]] * 2, "targets": targets})
    assert text == ("targets hold true/false; send numbers: class indices (e.g. [0, 1, 1]) or values, "
                    "with 1 for true and 0 for false")


@pytest.mark.parametrize("targets, words", [
    (["setosa", 1], "targets mixes class names (targets[0] is 'setosa') with targets[1], which is 1: send every "
                    "target as a class name, or every one as a class index"),
    ([0, "virginica"], "(targets[1] is 'virginica') with targets[0], which is 0"),
    (["setosa", None], "with targets[1], which is null"),
])
def test_targets_mixing_class_names_with_numbers_say_so(idle_client, targets, words):
    """It said "targets[0]: expected a number; received the text 'setosa'; send numbers without quotes" to a model
    whose class names were right."""
    if idle_client.get("/models/named").status_code == 404:
        assert idle_client.post("/models", json={**IRIS, "model_id": "named",
                                                 "class_names": ["setosa", "versicolor", "virginica"]}).status_code == 201
    text = detail(idle_client, "/models/named/samples", {"inputs": [[5.1, 3.5, 1.4, 0.2]] * 2, "targets": targets})
    assert text.startswith(words) if words.startswith("targets") else words in text

def test_names_are_case_insensitive(idle_client):
    response = idle_client.post("/models", json={"layer_sizes": [4, 8, 3], "activations": ["ReLU", "Softmax"],
                                                 "weight_init": "He", "loss": "Cross_Entropy"})
    assert response.status_code == 201, response.text
    assert response.json()["activations"] == ["relu", "softmax"] and response.json()["loss"] == "cross_entropy"
    job = idle_client.post(f"/models/{response.json()['model_id']}/training-jobs",
                           json={"optimizer": "Adam", "schedule": "Reduce_On_Plateau", "min_samples": 5})
    assert job.status_code == 202, job.text
    assert (job.json()["params"]["optimizer"], job.json()["params"]["schedule"]) == ("adam", "reduce_on_plateau")


@pytest.mark.parametrize("path", ["/models", "/models/iris/training-jobs", "/models/iris/training-jobs?epochs=5",
                                  "/models/iris/output", "/models/iris/search-jobs", "/models/iris/samples"])
@pytest.mark.parametrize("headers", [{}, {"content-type": "application/json"}])
def test_a_missing_or_empty_body_says_what_to_send(iris, path, headers):
    """It was pydantic's "body: Field required", the one bad body left without a hint."""
    response = iris.post(path, content=b"", headers=headers)
    assert response.status_code == 422
    assert response.json()["detail"].startswith("the request has no body; send a JSON object with Content-Type: "
                                                "application/json, as in the examples of /docs")  # /samples adds files


def test_rows_in_input_and_text_in_a_path_or_for_a_missing_job(iris):
    """Rows sent as `input` said "input[0]: expected a number; received a list", a version in the path was told to
    "send numbers without quotes", and a missing search job was called a "training job"."""
    assert detail(iris, "/models/iris/output", {"input": [[5.1, 3.5, 1.4, 0.2]]}) == NESTED_INPUT
    response = iris.get("/models/iris/versions/abc")
    assert response.status_code == 422
    assert response.json()["detail"] == "version: expected a whole number; received the text 'abc'"
    response = iris.get("/jobs/nope")
    assert response.status_code == 404 and response.json()["detail"].startswith("job 'nope' does not exist; list jobs")
