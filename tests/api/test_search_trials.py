"""A trial's network: the model's own config with only what the search varies replaced (api/search_trials.py),
and a trial run by the worker code scores what the core's run_trial scores on that architecture."""

import threading
import time
import uuid

import numpy as np
import pytest

from neural_net import Network
from neural_net.layers import BatchNorm, Dense
from neural_net.selection import run_trial
from api.errors import InvalidInput
from api.records import describe
from api.search_trials import builder_for, run_search_trial, trial_config
from api.settings import Settings
from api.storage.base import JobRecord, new_trial
from api.storage.sqlite import SQLiteStore


def bn_after_linear() -> Network:
    """dense (linear, no biases) -> batch_norm (leaky_relu alpha 0.2, dropout) -> dense sigmoid (slope 2)."""
    net = Network(2, seed=0)
    net.add(Dense(6, activation="linear", use_bias=False, weight_init="he_uniform"))
    net.add(BatchNorm(activation={"name": "leaky_relu", "alpha": 0.2}, dropout=0.1, momentum=0.7))
    net.add(Dense(1, activation={"name": "sigmoid", "slope": 2.0}))
    return net


def test_activation_and_dropout_go_where_the_model_has_its_non_linearity():
    config = bn_after_linear().get_config()
    dense, norm, output = config["layers"]
    same = trial_config(config, {"activation": "leaky_relu", "dropout": 0.3})["layers"]
    assert same == [dense, {**norm, "dropout": 0.3}, output]  # its own activation keeps alpha 0.2
    other = trial_config(config, {"activation": "tanh"})["layers"]
    assert other == [dense, {**norm, "activation": "tanh"}, output]
    inits = trial_config(config, {"weight_init": "xavier", "bias_init": "ones"})["layers"]
    assert inits == [{**dense, "weight_init": "xavier", "bias_init": "ones"}, norm,
                     {**output, "weight_init": "xavier", "bias_init": "ones"}]
    assert trial_config(config, {}) == config


def test_hidden_sizes_repeat_a_block_or_keep_the_number_of_mixed_layers():
    plain = Network.from_layer_sizes([2, 8, 1], activations=["relu", "sigmoid"], seed=0).get_config()
    assert [layer["units"] for layer in trial_config(plain, {"hidden_sizes": [3, 4, 5]})["layers"]] == [3, 4, 5, 1]
    bare = Network.from_layer_sizes([2, 1], activations=["sigmoid"], seed=0).get_config()
    grown = trial_config(bare, {"hidden_sizes": [4]})["layers"]
    assert grown[0] == {"type": "dense", "activation": "relu", "units": 4, "weight_init": "xavier", "bias_init": "zeros"}
    mixed = Network.from_layer_sizes([2, 8, 8, 1], activations=["relu", "tanh", "sigmoid"], seed=0).get_config()
    assert [layer["activation"] for layer in trial_config(mixed, {"hidden_sizes": [3, 4]})["layers"]] == ["relu", "tanh", "sigmoid"]
    with pytest.raises(InvalidInput, match=r"give 2 sizes, one per hidden dense layer \(now \[8, 8\]\)"):
        trial_config(mixed, {"hidden_sizes": [3]})


def test_a_trial_run_by_the_worker_scores_what_run_trial_scores_on_the_models_architecture(tmp_path):
    store = SQLiteStore(tmp_path / "nn.sqlite3")
    net = bn_after_linear()
    store.create_model("m", net.to_bytes(), describe(net))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 2)).astype(np.float32)
    y = (x[:, :1] * x[:, 1:] > 0).astype(np.float32)
    defaults = {"epochs": 4, "batch_size": 16, "optimizer": "adam", "learning_rate": 0.01, "l1": 0.0, "l2": 0.0}
    params = {"space": {}, "folds": 2, "validation_split": None, "metric": "loss", "seed": 7, "trials": None,
              "apply_best": False, "defaults": defaults}
    job = JobRecord(job_id=uuid.uuid4().hex, model_id="m", model_uid="", status="buffering", params=params,
                    min_samples=2, consume_buffer=False, created_at=time.time(), kind="search", stage="trials")
    space = [{"hidden_sizes": [12], "dropout": 0.2}, {"activation": "elu", "learning_rate": 0.03}]
    store.create_search_job(job, [new_trial(i, p, 7 + i) for i, p in enumerate(space)], x, y)
    store.promote_ready_jobs()
    while (claimed := store.claim_trial("w")) is not None:
        done = run_search_trial(store, *claimed, Settings(data_dir=tmp_path), threading.Event())
    own = net.get_config()
    by_hand = [  # the architectures written out: the model's layers, the searched value in its place
        [{**own["layers"][0], "units": 12}, {**own["layers"][1], "dropout": 0.2}, own["layers"][2]],
        [own["layers"][0], {**own["layers"][1], "activation": "elu"}, own["layers"][2]],
    ]
    for trial, layers in zip(done.trials, by_hand):
        build = lambda arch, seed, layers=layers: Network.from_config({**own, "layers": layers, "seed": seed})  # noqa: E731
        expected = run_trial(build, x, y, trial["params"], trial["index"], "loss", 2, 0.2, 7, defaults)
        assert trial["status"] == "succeeded" and trial["score"] == expected.score
        assert builder_for(describe(net))(trial["params"], 1).get_config() == build({}, 1).get_config()
