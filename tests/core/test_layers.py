"""Layers: BatchNorm's running statistics and the checks of layer options."""
import numpy as np
import pytest

from neural_net import BatchNorm, Dense, Network
from neural_net.errors import ConfigError
from neural_net.layers import from_config


def test_a_one_sample_training_batch_leaves_the_running_statistics_alone():
    net = Network(2, seed=0).add(BatchNorm())
    stats = net.layers[0].buffers
    before = {key: value.copy() for key, value in stats.items()}
    net._forward(net._inputs([[3.0, -4.0]]), training=True)  # its variance is 0: it says nothing about the spread
    for key, value in stats.items():
        np.testing.assert_array_equal(value, before[key])


def test_a_fit_whose_last_batch_holds_one_sample_keeps_the_running_variance_of_the_data():
    x = np.random.default_rng(0).normal(size=(33, 2)) * 5
    net = Network(2, seed=0).add(BatchNorm()).add(Dense(1))
    net.fit(x, np.zeros(33), epochs=30, batch_size=32)  # 2 batches an epoch: 32 samples, then 1
    np.testing.assert_allclose(net.layers[0].buffers["running_var"], x.var(axis=0, ddof=1), rtol=0.2)


@pytest.mark.parametrize("make, message", [
    (lambda: BatchNorm(momentum="0.9"), "momentum must be a finite number"),
    (lambda: BatchNorm(eps=None), "eps must be a finite number"),
    (lambda: BatchNorm(eps=float("nan")), "eps must be a finite number; received eps=nan"),  # predicted NaN
    (lambda: BatchNorm(momentum=float("inf")), "momentum must be a finite number"),
    (lambda: Dense(3, activation={"name": "leaky_relu", "alpha": None}), "activation 'leaky_relu' option alpha must be a finite number"),
    (lambda: Dense(3, activation={"name": "relu", "alpha": 0.1}), "activation 'relu' does not take the option alpha; it takes no options"),
    (lambda: Dense(3, weight_init={"name": "he", "std": 0.1}), "weight initialiser 'he' does not take the option std"),
    (lambda: from_config({"type": "batch_norm", "momentum": 0.5, "units": 3}), "batch_norm layer does not take the option units; it takes: momentum, eps, activation, dropout"),
])
def test_a_layer_option_of_the_wrong_name_or_type_is_a_config_error(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_numpy_scalars_configure_a_layer():
    layer = BatchNorm(momentum=np.float32(0.5), eps=np.float64(1e-3), dropout=np.float32(0.25))
    assert layer.get_config()["momentum"] == 0.5 and type(layer.momentum) is float and layer.dropout == 0.25
