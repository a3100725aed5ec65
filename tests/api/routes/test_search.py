"""Search jobs: over HTTP with two worker processes (ranking, apply_best, reproducibility, cancel, SSE,
validation), and in-process at the store/worker level (a restart resumes unfinished trials only)."""

import json
import threading
import time
import uuid

import numpy as np
import pytest

from neural_net import Network
from neural_net.selection import run_trial
from api.schemas import ModelCreate
from api.search_schemas import SearchCreate
from api.search_trials import run_search_trial
from api.records import describe
from api.settings import Settings
from api.storage.base import JobRecord, new_trial
from api.storage.sqlite import SQLiteStore
from tests.api.conftest import create, running_app, wait_for, wait_job


def moons(n: int, seed: int) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, np.pi, n)
    label = rng.integers(0, 2, n)
    x = np.where(label[:, None] == 0, np.c_[np.cos(t), np.sin(t)], np.c_[1 - np.cos(t), 0.5 - np.sin(t)])
    x = x + rng.normal(0, 0.1, x.shape)
    return x.round(4).tolist(), label.tolist()


X, Y = moons(240, 0)
X_TEST, Y_TEST = moons(400, 1)
# trial 0 is the default: the model's own hidden layer and Adam's default learning rate
GRID = {"hidden_sizes": [[8], [32, 32]], "learning_rate": [0.001, 0.03]}
SEARCH = {"space": GRID, "validation_split": 0.25, "metric": "accuracy", "seed": 3, "epochs": 40, "batch_size": 16}


@pytest.fixture(scope="module")
def client2(tmp_path_factory):
    """One app with two worker processes: trials run in parallel."""
    with running_app(tmp_path_factory.mktemp("data"), workers=2) as c:
        yield c


def submit(client, model_id, **body):
    response = client.post(f"/models/{model_id}/search-jobs", json=body)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['job_id']}" and job["kind"] == "search"
    return job


def moons_model(client, model_id):
    create(client, model_id=model_id, layer_sizes=[2, 8, 1], activations=["relu", "sigmoid"], seed=0)


def test_a_grid_search_finds_a_configuration_at_least_as_good_as_the_default_and_applies_it(client2):
    moons_model(client2, "moons")
    job = submit(client2, "moons", inputs=X, targets=Y, apply_best=True, **SEARCH)
    assert job["status"] in ("queued", "running") and job["stage"] == "trials" and job["search"]["trials_total"] == 4
    done = wait_job(client2, job["job_id"], timeout=60)
    assert done["status"] == "succeeded", done["error"]
    search = done["search"]
    assert search["trials_done"] == 4 and all(t["status"] == "succeeded" for t in search["trials"])
    scores = [t["score"] for t in search["trials"]]
    assert scores == sorted(scores, reverse=True)  # ranked best first
    default = next(t for t in search["trials"] if t["index"] == 0)
    assert default["params"] == {"hidden_sizes": [8], "learning_rate": 0.001} and default["seed"] == 3
    best = search["best"]
    assert best["score"] >= default["score"] and best["score"] >= 0.9
    assert {"loss", "accuracy", "f1"} <= set(best["metrics"])
    # apply_best: the model became a new network of the best configuration, trained on all 240 samples
    assert done["stage"] == "apply" and done["model_version"] == 2 and done["n_samples"] == 240
    assert len(done["history"]) == 40
    model = client2.get("/models/moons").json()
    assert model["layer_sizes"] == [2, *best["params"]["hidden_sizes"], 1] and model["buffer_size"] == 0
    metrics = client2.post("/models/moons/evaluate", json={"inputs": X_TEST, "targets": Y_TEST}).json()["metrics"]
    assert metrics["accuracy"] >= 0.9


def test_the_same_request_twice_gives_the_same_ranking_and_sse_reports_trials(client2):
    moons_model(client2, "again")
    body = {**SEARCH, "space": {"learning_rate": {"low": 0.003, "high": 0.1, "log": True}, "batch_size": [8, 32]},
            "trials": 4, "folds": 3, "epochs": 10, "inputs": X[:120], "targets": Y[:120]}
    first = submit(client2, "again", **body)
    events = []
    with client2.stream("GET", f"/jobs/{first['job_id']}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                events.append(line.removeprefix("event: "))
            elif line.startswith("data:") and events[-1] == "end":
                end = json.loads(line.removeprefix("data: "))
                break
    assert events[-1] == "end" and end["status"] == "succeeded" and len(end["search"]["trials"]) == 4
    assert "progress" in events
    second = wait_job(client2, submit(client2, "again", **body)["job_id"], timeout=60)
    ranking = lambda job: [(t["index"], t["params"], t["score"]) for t in job["search"]["trials"]]  # noqa: E731
    assert ranking(second) == ranking(end)
    assert client2.get("/models/again").json()["version"] == 1  # no apply_best: the model is untouched


def test_cancel_stops_the_remaining_trials(client2):
    moons_model(client2, "stop")
    job = submit(client2, "stop", **{**SEARCH, "epochs": 10_000, "batch_size": 4}, inputs=X, targets=Y)
    wait_for(lambda: client2.get(f"/jobs/{job['job_id']}").json(), lambda j: j["progress"]["trials_running"] == 2)
    assert client2.post(f"/jobs/{job['job_id']}/cancel").json()["status"] in ("cancelling", "cancelled")
    done = wait_job(client2, job["job_id"], timeout=120)
    assert done["status"] == "cancelled"
    assert [t["status"] for t in done["search"]["trials"]] == ["cancelled"] * 4
    # none ran to an end: it said trials_done 4 and 100% ("trials 4/4" on the dashboard)
    assert (done["search"]["trials_done"], done["search"]["trials_cancelled"]) == (0, 4)
    assert (done["progress"]["trials_done"], done["progress"]["trials_cancelled"], done["progress"]["percent"]) == (0, 4, 0)
    assert client2.get("/models/stop").json()["version"] == 1


@pytest.mark.parametrize("change, words", [
    ({"space": {"momentum": [0.9]}}, "cannot search 'momentum'"),
    ({"space": {"learning_rate": {"low": 0.001, "high": 0.1}}}, "needs `trials`"),
    ({"space": {"activation": ["relu", "swish"]}}, "unknown activation 'swish'"),
    ({"space": {"epochs": [10, 99_999]}}, "NN_MAX_EPOCHS"),
    ({"space": {"hidden_sizes": [[0]]}}, "hidden_sizes"),
    ({"space": {"hidden_sizes": [[4096] * 31]}}, "NN_MAX_PARAMETERS"),
    ({"metric": "rmse"}, "not reported for this binary model"),
    ({"space": {"batch_size": list(range(1, 40)), "epochs": list(range(1, 40))}}, "at most 1000"),
])
def test_invalid_searches_are_refused_before_anything_is_stored(client2, change, words):
    if client2.get("/models/checks").status_code == 404:
        moons_model(client2, "checks")
    response = client2.post("/models/checks/search-jobs", json={**SEARCH, **change})
    assert response.status_code == 422 and words in response.json()["detail"], response.text
    assert client2.get("/models/checks/jobs").json()["count"] == 0


def test_a_multilabel_search_takes_the_metrics_the_core_reports(client2):
    create(client2, model_id="labels", layer_sizes=[2, 4, 3], activations=["relu", "sigmoid"],
           loss="binary_cross_entropy", seed=0)
    targets = [[int(a > 0), int(b > 0), int(a + b > 0)] for a, b in X[:60]]
    body = {"inputs": X[:60], "targets": targets, "space": {"learning_rate": [0.01, 0.03]}, "validation_split": 0.25,
            "seed": 0, "epochs": 3, "batch_size": 16}
    refused = client2.post("/models/labels/search-jobs", json={**body, "metric": "mae"})
    assert refused.status_code == 422 and "multilabel" in refused.json()["detail"]
    assert "valid: loss, accuracy" in refused.json()["detail"]
    done = wait_job(client2, submit(client2, "labels", **body, metric="accuracy")["job_id"])
    assert done["status"] == "succeeded", done
    assert [t["status"] for t in done["search"]["trials"]] == ["succeeded", "succeeded"]


def test_the_docs_example_works_on_the_docs_model(client2):
    model = ModelCreate.model_config["json_schema_extra"]["examples"][0]
    client2.post("/models", json={**model, "model_id": "docs-iris"}).raise_for_status()
    done = wait_job(client2, submit(client2, "docs-iris", **SearchCreate.model_config["json_schema_extra"]["examples"][0])["job_id"])
    assert done["status"] == "succeeded" and done["model_version"] == 2 and done["search"]["trials_done"] == 4


# -- in-process: a restart resumes unfinished trials and never re-runs finished ones ------------------
def test_a_restart_resumes_unfinished_trials_only(tmp_path):
    store = SQLiteStore(tmp_path / "nn.sqlite3")
    net = Network.from_layer_sizes([2, 8, 1], activations=["relu", "sigmoid"], seed=0)
    store.create_model("m", net.to_bytes(), describe(net))
    params = {**SEARCH, "folds": None, "validation_split": 0.25, "trials": None, "apply_best": False,
              "defaults": {"epochs": 5, "batch_size": 16, "optimizer": "adam", "learning_rate": None, "l1": 0.0, "l2": 0.0}}
    job = JobRecord(job_id=uuid.uuid4().hex, model_id="m", model_uid="", status="buffering", params=params,
                    min_samples=2, consume_buffer=False, created_at=time.time(), kind="search", stage="trials")
    x, y = np.asarray(X, dtype=np.float32), np.asarray(Y, dtype=np.float32)[:, None]
    trials = [new_trial(i, {"learning_rate": lr}, 3 + i) for i, lr in enumerate([0.001, 0.01, 0.03])]
    store.create_search_job(job, trials, x, y)
    store.promote_ready_jobs()
    settings = Settings(data_dir=tmp_path)
    run_search_trial(store, *store.claim_trial("w1"), settings, threading.Event())  # trial 0 finishes
    finished = store.get_job(job.job_id).trials[0]
    stop = threading.Event()
    stop.set()  # trial 1's worker is told to stop (shutdown): the trial goes back to pending
    assert run_search_trial(store, *store.claim_trial("w1"), settings, stop).trials[1]["status"] == "pending"
    store.claim_trial("w2")  # trial 1 again, on a worker that then crashes: the service restarts
    assert [t["status"] for t in store.get_job(job.job_id).trials] == ["succeeded", "running", "pending"]
    store.requeue_jobs()  # what the service does at start-up
    assert [t["status"] for t in store.get_job(job.job_id).trials] == ["succeeded", "pending", "pending"]
    claimed = []
    while (next_trial := store.claim_trial("w3")) is not None:
        claimed.append(next_trial[1]["index"])
        done = run_search_trial(store, *next_trial, settings, threading.Event())
    assert claimed == [1, 2] and done.status == "succeeded"
    assert done.trials[0] == finished  # the finished trial was not run again
    # the same trials straight through, without interruptions, give the same scores
    reference = SQLiteStore(tmp_path / "ref.sqlite3")
    reference.create_model("m", net.to_bytes(), describe(net))
    reference.create_search_job(JobRecord(**{**job.__dict__, "job_id": "ref", "trials": None, "progress": None}),
                                trials, x, y)
    reference.promote_ready_jobs()
    while (next_trial := reference.claim_trial("r")) is not None:
        straight = run_search_trial(reference, *next_trial, settings, threading.Event())
    assert [t["score"] for t in straight.trials] == [t["score"] for t in done.trials]


# -- a model made with the layers spec keeps its architecture in trials and after apply_best ------------
BN_LAYERS = [{"type": "dense", "units": 8, "activation": "leaky_relu", "alpha": 0.1, "use_bias": False, "dropout": 0.05},
             {"type": "batch_norm", "momentum": 0.8},
             {"type": "dense", "units": 1, "activation": "sigmoid", "slope": 2.0}]


def layers_model(client, model_id: str, layers: list, **overrides) -> dict:
    response = client.post("/models", json={"model_id": model_id, "input_size": 2, "layers": layers, "seed": 0, **overrides})
    assert response.status_code == 201, response.text
    return response.json()


def test_trials_of_a_layers_model_keep_its_layers_and_apply_best_changes_only_the_units(client2):
    own = layers_model(client2, "bn", BN_LAYERS)["config"]
    assert [layer["type"] for layer in own["layers"]] == ["dense", "batch_norm", "dense"]
    body = {**SEARCH, "space": {"hidden_sizes": [[8], [24]], "learning_rate": [0.001, 0.03]}, "epochs": 15}
    done = wait_job(client2, submit(client2, "bn", inputs=X, targets=Y, apply_best=True, **body)["job_id"], timeout=60)
    assert done["status"] == "succeeded" and done["model_version"] == 2, done["error"]

    def expected(params: dict, seed: int) -> dict:  # the model's own config, the searched units, the trial's seed
        layers = json.loads(json.dumps(own["layers"]))
        layers[0]["units"] = params["hidden_sizes"][0]
        return {**own, "layers": layers, "seed": seed}

    # each trial's score is the core's run_trial with the same seed on the model's architecture
    xs, ys = np.asarray(X, dtype=np.float32), np.asarray(Y, dtype=np.float32)[:, None]
    for t in done["search"]["trials"]:
        ref = run_trial(lambda arch, seed: Network.from_config(expected(arch, seed)), xs, ys, t["params"], t["index"],
                        "accuracy", None, 0.25, 3, done["params"]["defaults"])
        assert t["score"] == ref.score, t
    # apply_best: the batch norm, the activation options, use_bias, dropout and momentum are all still there
    best = done["search"]["best"]
    model = client2.get("/models/bn").json()
    assert model["config"]["layers"] == expected(best["params"], best["seed"])["layers"]


def test_hidden_sizes_of_another_depth_repeat_the_models_block(client2):
    own = layers_model(client2, "deeper", BN_LAYERS)["config"]
    body = {**SEARCH, "space": {"hidden_sizes": [[4, 6]]}, "epochs": 2}
    done = wait_job(client2, submit(client2, "deeper", inputs=X, targets=Y, apply_best=True, **body)["job_id"], timeout=60)
    assert done["status"] == "succeeded", done["error"]
    dense, norm, output = own["layers"]
    layers = client2.get("/models/deeper").json()["config"]["layers"]
    assert layers == [{**dense, "units": 4}, norm, {**dense, "units": 6}, norm, output]


@pytest.mark.parametrize("space, words", [
    ({"hidden_sizes": [[8]]}, "give 2 sizes, one per hidden dense layer"),
])
def test_a_depth_change_of_mixed_hidden_layers_is_refused(client2, space, words):
    layers_model(client2, "mixed", [{"type": "dense", "units": 8, "activation": "relu"},
                                    {"type": "dense", "units": 8, "activation": "tanh"},
                                    {"type": "dense", "units": 1, "activation": "sigmoid"}])
    response = client2.post("/models/mixed/search-jobs", json={**SEARCH, "space": space})
    assert response.status_code == 422 and words in response.json()["detail"], response.text
    assert client2.get("/models/mixed/jobs").json()["count"] == 0


@pytest.mark.parametrize("hidden, words", [([[10], [11]], "56 parameters; at most 51"),
                                           ([[2, 2]], "5 layers after the input (3 dense, 2 batch_norm); at most 3 layers")])
def test_search_limits_count_batch_norm_layers_and_missing_biases_as_post_models_does(tmp_path, hidden, words):
    # dense 10 without biases, batch norm, dense 1: 20 + 20 + 11 = 51 parameters in 3 layers, both at the limit
    with running_app(tmp_path, workers=0, max_parameters=51, max_layers=3) as client:
        layers_model(client, "small", [{"type": "dense", "units": 10, "use_bias": False}, {"type": "batch_norm"},
                                       {"type": "dense", "units": 1, "activation": "sigmoid"}])
        response = client.post("/models/small/search-jobs", json={**SEARCH, "space": {"hidden_sizes": hidden}})
        assert response.status_code == 422 and words in response.json()["detail"], response.text


def test_checking_a_search_builds_each_architecture_small(tmp_path, monkeypatch):
    """Each distinct architecture was built whole to check its names and options: 1,000 of about 4M parameters took
    the API 84 CPU-seconds for one request. The check builds the same layers with one unit per hidden layer."""
    built = []
    from_config = Network.from_config

    def counted(config):
        net = from_config(config)
        built.append(net.n_params)
        return net

    monkeypatch.setattr(Network, "from_config", counted)
    with running_app(tmp_path, workers=0) as client:
        client.post("/models", json={"model_id": "wide", "layer_sizes": [4096, 1000, 4], "activations": ["relu", "softmax"]})
        body = {"space": {"hidden_sizes": [[1000], [900, 400]], "activation": ["relu", "tanh"]}, "folds": 2,
                "inputs": [[0.5] * 4096] * 4, "targets": [0, 1, 2, 3]}
        assert client.post("/models/wide/search-jobs", json=body).status_code == 202
        bad = client.post("/models/wide/search-jobs", json={**body, "space": {"hidden_sizes": [[1000]], "weight_init": ["he"],
                                                                              "dropout": [1.5]}})
        assert bad.status_code == 422 and "dropout" in bad.json()["detail"]
    assert len(built) == 4 and max(built) < 10_000, built  # four architectures; 4.1M parameters each, built whole
