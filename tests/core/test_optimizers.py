"""Each optimiser's first steps against values computed by hand from its formula."""
import math
import re

import numpy as np
import pytest

from neural_net import optimizers
from neural_net.errors import ConfigError, UnknownNameError

G1, G2 = 0.5, -0.25  # gradients at steps 1 and 2, one scalar parameter starting at 1.0


def run(name, steps=(G1, G2), **options):
    opt = optimizers.get({"name": name, **options})
    p = np.array([1.0])
    opt.bind(1, np.float64, decay_size=1)
    out = []
    for g in steps:
        opt.step(p, np.array([g]))
        out.append(p[0])
    return out


def test_sgd():
    assert run("sgd", learning_rate=0.1) == pytest.approx([1 - 0.05, 1 - 0.05 + 0.025], abs=1e-15)


def test_momentum():
    # v1 = 0.5, p1 = 1 - 0.1*0.5 = 0.95; v2 = 0.9*0.5 - 0.25 = 0.2, p2 = 0.95 - 0.02 = 0.93
    assert run("momentum", learning_rate=0.1) == pytest.approx([0.95, 0.93], abs=1e-15)


def test_nesterov():
    # v1 = 0.5, p1 = 1 - 0.1*(0.5 + 0.9*0.5) = 0.905; v2 = 0.2, p2 = 0.905 - 0.1*(-0.25 + 0.18) = 0.912
    assert run("nesterov", learning_rate=0.1) == pytest.approx([0.905, 0.912], abs=1e-15)


def test_rmsprop():
    s1 = 0.01 * 0.25
    p1 = 1 - 0.01 * 0.5 / (math.sqrt(s1) + 1e-8)
    s2 = 0.99 * s1 + 0.01 * 0.0625
    p2 = p1 + 0.01 * 0.25 / (math.sqrt(s2) + 1e-8)
    assert run("rmsprop", learning_rate=0.01) == pytest.approx([p1, p2], abs=1e-12)


def test_adagrad():
    # s1 = 0.25 -> p1 = 1 - 0.1*0.5/0.5 = 0.9; s2 = 0.3125 -> p2 = 0.9 + 0.1*0.25/sqrt(0.3125)
    assert run("adagrad", learning_rate=0.1) == pytest.approx([0.9, 0.9 + 0.025 / math.sqrt(0.3125)], abs=1e-9)


def test_adam():
    # step 1: m_hat = g, v_hat = g^2 -> p1 = 1 - 0.1 * 0.5 / (0.5 + 1e-8)
    p1 = 1 - 0.1 * 0.5 / (0.5 + 1e-8)
    m2 = 0.9 * 0.05 + 0.1 * -0.25
    v2 = 0.999 * 0.001 * 0.25 + 0.001 * 0.0625
    p2 = p1 - 0.1 * (m2 / (1 - 0.81)) / (math.sqrt(v2 / (1 - 0.999 ** 2)) + 1e-8)
    assert run("adam", learning_rate=0.1) == pytest.approx([p1, p2], abs=1e-12)


def test_adamw_decays_weights_before_the_adam_step():
    p1 = 1 * (1 - 0.1 * 0.5) - 0.1 * 0.5 / (0.5 + 1e-8)
    assert run("adamw", steps=(G1,), learning_rate=0.1, weight_decay=0.5) == pytest.approx([p1], abs=1e-12)


def test_adamw_leaves_biases_undecayed():
    opt = optimizers.get({"name": "adamw", "weight_decay": 0.5})
    p = np.array([1.0, 1.0])
    opt.bind(2, np.float64, decay_size=1)
    opt.step(p, np.zeros(2))
    assert p[0] == pytest.approx(1 - 0.001 * 0.5) and p[1] == 1.0


@pytest.mark.parametrize("name", optimizers.names())
def test_defaults_documented_and_config_round_trip(name):
    opt = optimizers.get(name)
    config = opt.get_config()
    assert config["name"] == name and config["learning_rate"] > 0
    assert optimizers.get(config).get_config() == config


@pytest.mark.parametrize("name", optimizers.names())
def test_state_round_trip_resumes_exactly(name):
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(6, 4))
    a, b = optimizers.get(name), optimizers.get(name)
    pa, pb = np.ones(4), np.ones(4)
    a.bind(4, np.float64, 2)
    b.bind(4, np.float64, 2)
    for g in grads[:3]:
        a.step(pa, g)
        b.step(pb, g)
    c = optimizers.get(b.get_config())
    c.bind(4, np.float64, 2)
    c.load_state_dict({k: (v.copy() if k == "arrays" else v) for k, v in b.state_dict().items()})
    for g in grads[3:]:
        a.step(pa, g)
        c.step(pb, g)
    np.testing.assert_array_equal(pa, pb)


def test_errors_name_the_valid_choices_and_bad_values():
    with pytest.raises(UnknownNameError, match="adam, adamw, adagrad|adagrad, adam, adamw"):
        optimizers.get("adma")
    with pytest.raises(ConfigError, match="learning_rate"):
        optimizers.get({"name": "sgd", "learning_rate": -1})
    with pytest.raises(ConfigError, match="beta1"):
        optimizers.get({"name": "adam", "beta1": 1.5})


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("make, message", [
    (lambda: optimizers.AdamW(weight_decay=NAN), "weight_decay must be a finite number >= 0; received weight_decay=nan"),
    (lambda: optimizers.RMSprop(eps=NAN), "rmsprop needs numbers 0 <= alpha < 1 and eps > 0; received alpha=0.99, eps=nan"),
    (lambda: optimizers.Adagrad(eps=NAN), "eps must be a positive finite number; received eps=nan"),
    (lambda: optimizers.Adam(eps=INF), "adam needs numbers 0 <= beta1, beta2 < 1 and eps > 0"),
    (lambda: optimizers.Momentum(momentum="0.9"), "momentum must be a number in [0, 1); received momentum='0.9'"),
    (lambda: optimizers.get({"name": "adagrad", "eps": NAN}), "optimizer 'adagrad' option eps must be a finite number"),
])
def test_nan_inf_and_text_settings_are_config_errors(make, message):
    """Checks written `eps <= 0` or `weight_decay < 0` let NaN through (and text raised TypeError)."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        make()


@pytest.mark.parametrize("name", optimizers.names())
def test_chunked_updates_equal_one_whole_array_update(name, monkeypatch):
    """Optimizer.step walks the parameters in cache-sized chunks; the result must not depend on
    where the chunk boundaries (or the weights/biases boundary for decoupled decay) fall."""
    rng = np.random.default_rng(1)
    grads = rng.normal(size=(3, 50)).astype(np.float32)
    results = []
    for chunk in (7, 1 << 20):
        monkeypatch.setattr(optimizers, "CHUNK", chunk)
        opt = optimizers.get(name)
        p = np.linspace(-1, 1, 50, dtype=np.float32)
        opt.bind(50, np.float32, decay_size=31)
        for g in grads:
            opt.step(p, g)
        results.append(p)
    np.testing.assert_array_equal(*results)
