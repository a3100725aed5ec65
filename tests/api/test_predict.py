"""api/predict.py: a large prediction is split across the idle cores and gives the outputs of one
Network.predict; small ones and those finding no idle helper are computed whole on the caller's thread."""

import threading

import numpy as np
import pytest

from api import predict as predict_module
from api.predict import MIN_PART_ROWS, SPLIT_WORK, predict
from neural_net import BatchNorm, Dense, Network


def _network(dtype: str) -> Network:
    net = Network(784, seed=0, dtype=dtype).add(Dense(256, "relu")).add(BatchNorm(activation="relu"))
    return net.add(Dense(128, "relu")).add(Dense(10, "softmax"))


@pytest.fixture
def parts(monkeypatch) -> list[tuple[int, str]]:
    """(rows, thread name) of each part computed."""
    seen = []
    compute = predict_module._predict

    def recording(net, x):
        seen.append((len(x), threading.current_thread().name))
        return compute(net, x)

    monkeypatch.setattr(predict_module, "_predict", recording)
    monkeypatch.setattr(predict_module, "cores", lambda: 2)
    return seen


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_split_prediction_equals_one_predict(parts, dtype):
    net = _network(dtype)
    x = np.random.default_rng(1).random((1001, 784)).astype(dtype)
    np.testing.assert_allclose(predict(net, x), net.predict(x), rtol=1e-6, atol=1e-7)
    assert sorted(rows for rows, _ in parts) == [500, 501]
    assert {name.startswith("nn-predict") for _, name in parts} == {False, True}  # the caller computes one part


def test_small_predictions_are_not_split(parts):
    net = _network("float32")
    predict(net, np.zeros((2 * MIN_PART_ROWS - 1, 784), np.float32))  # too few rows for two parts
    rows = SPLIT_WORK // net.n_params - 1
    predict(net, np.zeros((rows, 784), np.float32))  # too little work
    assert [r for r, _ in parts] == [2 * MIN_PART_ROWS - 1, rows]


def test_with_no_idle_helper_the_caller_computes_it_whole(parts):
    net = _network("float32")
    helpers = predict_module._helpers()
    taken = helpers.take(64)  # every helper busy, as under concurrent large requests
    try:
        predict(net, np.zeros((1024, 784), np.float32))
    finally:
        for _ in range(taken):
            helpers.idle.release()
    assert [r for r, _ in parts] == [1024]
    predict(net, np.zeros((1024, 784), np.float32))  # the helpers are back
    assert sorted(r for r, _ in parts[1:]) == [512, 512]
