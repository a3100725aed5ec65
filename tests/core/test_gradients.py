"""Every analytic gradient against central finite differences in float64."""
import itertools

import numpy as np
import pytest

from neural_net import BatchNorm, Dense, Network, activations, losses

ACTIVATIONS = activations.names()
LOSSES = losses.names()


def numeric_gradient(net, x, y, loss, l1=0.0, l2=0.0, eps=1e-6):
    flat = net._flat
    grad = np.empty_like(flat)
    for i in range(flat.size):
        original = flat[i]
        flat[i] = original + eps
        plus = net.gradients(x, y, loss=loss, l1=l1, l2=l2)[0]
        flat[i] = original - eps
        minus = net.gradients(x, y, loss=loss, l1=l1, l2=l2)[0]
        flat[i] = original
        grad[i] = (plus - minus) / (2 * eps)
    return grad


def analytic_gradient(net, x, y, loss, l1=0.0, l2=0.0):
    net.gradients(x, y, loss=loss, l1=l1, l2=l2)
    return net._grad_flat.copy()


def relative_error(a, b):
    """Norm-wise relative error ||a - b|| / (||a|| + ||b||); each element must also agree to
    rtol 1e-5 with atol 1e-9 (the finite difference's own error is about 1e-10)."""
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)
    return np.linalg.norm(a - b) / (np.linalg.norm(a) + np.linalg.norm(b))


def make_case(output_activation, loss_name, seed):
    rng = np.random.default_rng(seed)
    n_out = 1 if loss_name == "binary_cross_entropy" and output_activation == "sigmoid" else 3
    if loss_name == "cross_entropy" and n_out < 2:
        n_out = 3
    net = Network(4, seed=seed, dtype="float64", loss=loss_name)
    net.add(Dense(5, activation="tanh", bias_init="random"))
    net.add(Dense(n_out, activation=output_activation, bias_init="random"))
    x = rng.normal(size=(6, 4))
    if loss_name == "cross_entropy":
        y = rng.integers(0, n_out, size=6)
    elif loss_name == "binary_cross_entropy":
        y = rng.integers(0, 2, size=(6, n_out)).astype(float)
    else:
        y = rng.normal(size=(6, n_out))
    return net, x, y


def _valid(activation, loss):
    # cross-entropy from probabilities needs outputs in (0, 1]
    if loss in ("cross_entropy", "binary_cross_entropy"):
        return activation in ("sigmoid", "softmax")
    return True


@pytest.mark.parametrize("activation,loss", [
    (a, l) for a, l in itertools.product(ACTIVATIONS, LOSSES) if _valid(a, l)
])
@pytest.mark.parametrize("l1,l2", [(0.0, 0.0), (0.01, 0.0), (0.0, 0.03)])
def test_output_activation_and_loss(activation, loss, l1, l2):
    net, x, y = make_case(activation, loss, seed=len(activation) + len(loss))
    if loss == "mae":
        # keep |p - y| away from 0, where mae has a kink
        y = net.predict(x) + np.where(np.random.default_rng(0).random(y.shape) > 0.5, 0.5, -0.5)
    if l1:
        # keep weights away from 0, where l1 has a kink
        net._ready()
        net._flat[:net._n_weights] += np.sign(net._flat[:net._n_weights]) * 0.05
    numeric = numeric_gradient(net, x, y, loss, l1, l2)
    analytic = analytic_gradient(net, x, y, loss, l1, l2)
    assert relative_error(numeric, analytic) < 1e-6


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_hidden_activation(activation):
    rng = np.random.default_rng(1)
    net = Network(3, seed=2, dtype="float64")
    net.add(Dense(4, activation=activation, bias_init="random"))
    net.add(Dense(2, activation="linear"))
    x = rng.normal(size=(5, 3))
    y = rng.normal(size=(5, 2))
    assert relative_error(numeric_gradient(net, x, y, "mse"), analytic_gradient(net, x, y, "mse")) < 1e-6


@pytest.mark.parametrize("loss", ["binary_cross_entropy", "cross_entropy"])
def test_from_logits(loss):
    rng = np.random.default_rng(3)
    n_out = 1 if loss == "binary_cross_entropy" else 3
    net = Network(3, seed=3, dtype="float64", loss={"name": loss, "from_logits": True})
    net.add(Dense(4, activation="elu")).add(Dense(n_out))
    x = rng.normal(size=(7, 3))
    y = rng.integers(0, 2, size=(7, 1)).astype(float) if n_out == 1 else rng.integers(0, 3, size=7)
    assert relative_error(numeric_gradient(net, x, y, None), analytic_gradient(net, x, y, None)) < 1e-6


def test_batch_norm():
    rng = np.random.default_rng(4)
    net = Network(3, seed=4, dtype="float64")
    net.add(Dense(5, activation="linear", bias_init="random"))
    net.add(BatchNorm(activation="relu"))
    net.add(Dense(3, activation="softmax"))
    net.layers[1].params["gamma"][...] = rng.uniform(0.5, 1.5, size=5)
    net.layers[1].params["beta"][...] = rng.normal(size=5)
    x = rng.normal(size=(8, 3))
    y = rng.integers(0, 3, size=8)
    assert relative_error(numeric_gradient(net, x, y, None), analytic_gradient(net, x, y, None)) < 1e-6


def test_gradients_returns_per_layer_dicts_equal_to_flat():
    net, x, y = make_case("softmax", "cross_entropy", 0)
    value, grads = net.gradients(x, y)
    assert isinstance(value, float)
    assert [set(g) for g in grads] == [{"weights", "biases"}] * 2
    assert grads[0]["weights"].shape == (4, 5) and grads[1]["biases"].shape == (3,)
    np.testing.assert_array_equal(grads[1]["weights"], net.layers[1].grads["weights"])


def test_gradients_ignore_dropout():
    net = Network.from_layer_sizes([3, 8, 2], activations=["relu", "softmax"], dropout=0.5, seed=0, dtype="float64")
    x = np.random.default_rng(0).normal(size=(4, 3))
    y = np.array([0, 1, 1, 0])
    first = net.gradients(x, y)
    second = net.gradients(x, y)
    assert first[0] == second[0]
    np.testing.assert_array_equal(first[1][0]["weights"], second[1][0]["weights"])


@pytest.mark.parametrize("output", ["linear", "softmax"])
def test_dense_without_bias(output):
    rng = np.random.default_rng(5)
    net = Network(3, seed=5, dtype="float64")
    net.add(Dense(4, activation="tanh", use_bias=False))
    net.add(BatchNorm(activation="leaky_relu"))
    net.add(Dense(3, activation=output, use_bias=False))
    x = rng.normal(size=(6, 3))
    y = rng.integers(0, 3, size=6) if output == "softmax" else rng.normal(size=(6, 3))
    assert [name for name in net.named_parameters()] == ["layers.0.weights", "layers.1.gamma", "layers.1.beta", "layers.2.weights"]
    assert relative_error(numeric_gradient(net, x, y, None), analytic_gradient(net, x, y, None)) < 1e-6
    assert [set(g) for g in net.gradients(x, y)[1]] == [{"weights"}] * 2


@pytest.mark.parametrize("spec", [{"name": "sigmoid", "slope": 2.5}, {"name": "sigmoid", "slope": 0.3},
                                  {"name": "leaky_relu", "alpha": 0.2}, {"name": "elu", "alpha": 0.5}])
def test_activation_parameters(spec):
    rng = np.random.default_rng(6)
    net = Network(3, seed=6, dtype="float64")
    net.add(Dense(4, activation=spec, bias_init="random"))
    net.add(Dense(2, activation="linear"))
    x = rng.normal(size=(5, 3))
    y = rng.normal(size=(5, 2))
    assert relative_error(numeric_gradient(net, x, y, "mse"), analytic_gradient(net, x, y, "mse")) < 1e-6


def test_sigmoid_slope_output_with_binary_cross_entropy():
    """A sloped sigmoid is not fused with the cross-entropy (whose fused step assumes slope 1)."""
    rng = np.random.default_rng(7)
    net = Network(3, seed=7, dtype="float64")
    net.add(Dense(4, activation="tanh")).add(Dense(1, activation={"name": "sigmoid", "slope": 3.0}))
    assert net.loss_name == "binary_cross_entropy"
    x = rng.normal(size=(6, 3))
    y = rng.integers(0, 2, size=(6, 1)).astype(float)
    assert relative_error(numeric_gradient(net, x, y, None), analytic_gradient(net, x, y, None)) < 1e-6


@pytest.mark.parametrize("from_logits", [False, True])
def test_cross_entropy_rows_that_sum_to_one_within_the_tolerance(from_logits):
    """The fused gradient took every row to sum to exactly 1 (p - y) while the loss counts the row's sum s:
    with a row [0.3, 0.7009] it was off from finite differences by 4.7e-4; it is s p - y."""
    rng = np.random.default_rng(5)
    net = Network(3, seed=5, dtype="float64", loss={"name": "cross_entropy", "from_logits": from_logits})
    net.add(Dense(4, activation="tanh", bias_init="random"))
    net.add(Dense(2, activation="linear" if from_logits else "softmax", bias_init="random"))
    x = rng.normal(size=(3, 3))
    y = np.array([[0.3, 0.7009], [0.9995, 0.0], [0.0, 1.0]])
    assert relative_error(numeric_gradient(net, x, y, None), analytic_gradient(net, x, y, None)) < 1e-6
