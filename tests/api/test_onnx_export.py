"""ONNX export gives the service's outputs to 1e-5 in onnxruntime."""
import numpy as np
import pytest

from neural_net import BatchNorm, Dense, Network, activations

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is a test-only dependency (pip install -r requirements.txt)")
from api.onnx_export import to_onnx  # noqa: E402


def run_onnx(net, x):
    session = ort.InferenceSession(to_onnx(net), providers=["CPUExecutionProvider"])
    return session.run(["output"], {"input": x.astype(net.dtype)})[0]


@pytest.mark.parametrize("activation", activations.names())
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_activation_matches(activation, dtype):
    net = Network(5, seed=1, dtype=dtype)
    net.add(Dense(7, activation=activation, bias_init="random")).add(Dense(3, activation="softmax"))
    x = np.random.default_rng(0).normal(scale=2, size=(11, 5))
    np.testing.assert_allclose(run_onnx(net, x), net.predict(x), atol=1e-5, rtol=1e-5)


def test_trained_network_with_batch_norm_matches():
    rng = np.random.default_rng(0)
    net = Network(4, seed=0)
    net.add(Dense(16, activation={"name": "leaky_relu", "alpha": 0.2})).add(BatchNorm(activation="elu"))
    net.add(Dense(1, activation="sigmoid"))
    x = rng.normal(size=(200, 4))
    net.fit(x, (x[:, 0] * x[:, 1] > 0).astype(float), epochs=5, batch_size=20)
    np.testing.assert_allclose(run_onnx(net, x), net.predict(x), atol=1e-5, rtol=1e-5)


def test_single_sample_and_large_batch():
    net = Network.from_layer_sizes([3, 8, 2], activations=["gelu", "linear"], seed=2)
    for batch in (1, 500):
        x = np.random.default_rng(batch).normal(size=(batch, 3))
        np.testing.assert_allclose(run_onnx(net, x), net.predict(x), atol=1e-5, rtol=1e-5)


def test_layers_without_bias_and_a_sloped_sigmoid_match():
    net = Network(4, seed=3)
    net.add(Dense(6, activation="tanh", use_bias=False)).add(BatchNorm())
    net.add(Dense(2, activation={"name": "sigmoid", "slope": 2.5}, use_bias=False))
    x = np.random.default_rng(3).normal(size=(9, 4))
    np.testing.assert_allclose(run_onnx(net, x), net.predict(x), atol=1e-5, rtol=1e-5)


def test_without_the_onnx_extra_an_onnx_export_is_a_501_that_says_what_to_install(tmp_path, monkeypatch):
    """`pip install .` leaves out the onnx extra: asking for format=onnx then was a 500 (ModuleNotFoundError)."""
    import sys

    from tests.api.conftest import IRIS, running_app

    monkeypatch.setitem(sys.modules, "api.onnx_export", None)  # as if onnx were not installed: the import fails
    with running_app(tmp_path, workers=0) as client:
        assert client.post("/models", json=IRIS).status_code == 201
        response = client.get("/models/iris/export", params={"format": "onnx"})
        assert response.status_code == 501 and "pip install 'nn-service[onnx]'" in response.json()["detail"]
        assert client.get("/models/iris/export").status_code == 200  # npz is still there
