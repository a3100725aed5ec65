"""Registries, activations' numerical stability, initialisers' formulas, schedules and metrics."""
import json
import re
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from neural_net import activations, initializers, losses, metrics, optimizers, schedules
from neural_net.errors import ConfigError, NeuralNetError, ShapeError, TargetValueError, UnknownNameError

REGISTRIES = [
    (activations.ACTIVATIONS, activations.get),
    (initializers.WEIGHT_INITIALIZERS, initializers.get_weight),
    (initializers.BIAS_INITIALIZERS, initializers.get_bias),
    (losses.LOSSES, losses.get),
    (schedules.SCHEDULES, schedules.get),
]


@pytest.mark.parametrize("registry,get", REGISTRIES, ids=lambda r: getattr(r, "kind", ""))
def test_every_entry_round_trips_through_get_config(registry, get):
    for name in registry.names():
        component = get(name)
        config = component.get_config()
        assert config["name"] == name
        assert get(config).get_config() == config


@pytest.mark.parametrize("registry,get", REGISTRIES, ids=lambda r: getattr(r, "kind", ""))
def test_unknown_names_list_the_valid_ones(registry, get):
    with pytest.raises(UnknownNameError) as info:
        get("no-such-thing")
    assert all(name in str(info.value) for name in registry.names())


def test_registry_names_match_the_issue():
    assert set(activations.names()) == {"sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "softmax", "linear"}
    assert set(initializers.weight_names()) == {"xavier", "xavier_uniform", "he", "he_uniform", "lecun", "gaussian"}
    assert set(initializers.bias_names()) == {"zeros", "random", "constant"}
    assert set(losses.names()) == {"mse", "mae", "binary_cross_entropy", "cross_entropy"}
    assert set(schedules.names()) == {"constant", "exponential", "step", "cosine", "reduce_on_plateau"}


@pytest.mark.parametrize("name", activations.names())
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activations_are_stable_at_extremes(name, dtype):
    z = np.array([[-1e4, -80.0, -1.0, 0.0, 1.0, 80.0, 1e4]], dtype=dtype)
    act = activations.get(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = act.forward(z.copy())
        grad = act.backward(z, a, np.ones_like(z))
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(grad))
    assert a.dtype == dtype


def test_activation_values():
    z = np.array([[-2.0, 0.0, 3.0]])
    np.testing.assert_allclose(activations.get("sigmoid").forward(z), 1 / (1 + np.exp(-z)), rtol=1e-12)
    np.testing.assert_allclose(activations.get("softmax").forward(z), np.exp(z) / np.exp(z).sum(), rtol=1e-12)
    np.testing.assert_allclose(activations.get("leaky_relu").forward(z), [[-0.02, 0.0, 3.0]])
    np.testing.assert_allclose(activations.get("elu").forward(z), [[np.expm1(-2.0), 0.0, 3.0]])
    np.testing.assert_allclose(activations.get("sigmoid").forward(np.array([[1e4, -1e4]])), [[1.0, 0.0]])


@pytest.mark.parametrize("name,std", [
    ("xavier", np.sqrt(2 / (400 + 600))), ("he", np.sqrt(2 / 400)), ("lecun", np.sqrt(1 / 400)), ("gaussian", 0.01),
    ("xavier_uniform", np.sqrt(6 / 1000) / np.sqrt(3)), ("he_uniform", np.sqrt(6 / 400) / np.sqrt(3)),
])
def test_weight_initialiser_spread_matches_its_formula(name, std):
    out = initializers.get_weight(name).fill(np.empty((400, 600)), np.random.default_rng(0))
    assert out.std() == pytest.approx(std, rel=0.02)
    assert abs(out.mean()) < std * 0.02


def test_bias_initialisers():
    rng = np.random.default_rng(0)
    assert np.all(initializers.get_bias("zeros").fill(np.ones(5), rng) == 0)
    assert np.all(initializers.get_bias({"name": "constant", "value": 0.1}).fill(np.ones(5), rng) == 0.1)
    assert initializers.get_bias({"name": "random", "std": 0.5}).fill(np.empty(10000), rng).std() == pytest.approx(0.5, rel=0.05)


def test_schedules():
    assert schedules.get("constant")(7, 0.1, 10) == 0.1
    assert schedules.get({"name": "exponential", "decay_rate": 0.5})(3, 0.8, 10) == pytest.approx(0.1)
    assert schedules.get({"name": "step", "step_size": 2, "gamma": 0.1})(5, 1.0, 10) == pytest.approx(0.01)
    cosine = schedules.get({"name": "cosine", "min_lr": 0.0})
    assert cosine(0, 1.0, 10) == 1.0 and cosine(5, 1.0, 10) == pytest.approx(0.5)
    warm = schedules.get({"name": "constant", "warmup_epochs": 3})
    assert [warm(e, 1.0, 10) for e in range(5)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])


def test_reduce_on_plateau_by_hand():
    plateau = schedules.get({"name": "reduce_on_plateau", "factor": 0.5, "patience": 2, "min_lr": 0.3})
    rates = []
    for loss in [1.0, 0.9, 0.95, 0.91, 0.8, 0.85, 0.9, 0.99, 0.99, 0.99]:
        rates.append(plateau(len(rates), 1.0, 10))
        plateau.on_epoch_end({"loss": loss})
    # epochs 2, 3 do not beat 0.9: cut; epochs 5, 6 do not beat 0.8: cut (0.25 is below min_lr); 7, 8: cut
    assert rates == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.3, 0.3, 0.3]
    assert plateau.reductions == 3
    # val_loss is monitored when present; a fresh instance replayed over the logs has the same state
    chosen = schedules.get({"name": "reduce_on_plateau", "patience": 1})
    chosen.on_epoch_end({"loss": 1.0, "val_loss": 2.0})
    chosen.on_epoch_end({"loss": 0.5, "val_loss": 2.5})
    assert chosen(2, 1.0, 10) == 0.5
    logs = [{"loss": v} for v in [1.0, 0.9, 0.95, 0.91, 0.8, 0.85, 0.9, 0.99, 0.99, 0.99]]
    replayed = schedules.get({"name": "reduce_on_plateau", "factor": 0.5, "patience": 2, "min_lr": 0.3}).replay(logs)
    assert (replayed.best, replayed.waited, replayed.reductions) == (plateau.best, plateau.waited, plateau.reductions)
    for bad in ({"factor": 1.0}, {"factor": 0}, {"patience": 0}, {"min_lr": -1}):
        with pytest.raises(ConfigError):
            schedules.get({"name": "reduce_on_plateau", **bad})


def test_classification_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    truth, pred = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    result = metrics.classification_metrics(truth, pred, 4)
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(truth, pred))
    assert result["precision"] == pytest.approx(skm.precision_score(truth, pred, average="macro"))
    assert result["recall"] == pytest.approx(skm.recall_score(truth, pred, average="macro"))
    assert result["f1"] == pytest.approx(skm.f1_score(truth, pred, average="macro"))
    assert result["confusion_matrix"] == skm.confusion_matrix(truth, pred).tolist()


def test_roc_auc_matches_scikit_learn_with_ties():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) + truth * 0.3, 1)
    assert metrics.roc_auc(truth, scores) == pytest.approx(skm.roc_auc_score(truth, scores))
    assert metrics.roc_auc(np.ones(3), np.ones(3)) is None


def test_regression_metrics_match_scikit_learn():
    rng = np.random.default_rng(2)
    truth = rng.normal(size=(100, 2))
    pred = truth + rng.normal(scale=0.3, size=(100, 2))
    result = metrics.regression_metrics(truth, pred)
    assert result["mae"] == pytest.approx(skm.mean_absolute_error(truth.ravel(), pred.ravel()))
    assert result["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(truth.ravel(), pred.ravel())))
    assert result["r2"] == pytest.approx(skm.r2_score(truth, pred))  # per output, then averaged
    assert result["pearson_r"] == pytest.approx(np.mean([np.corrcoef(truth[:, j], pred[:, j])[0, 1] for j in range(2)]))


def test_r2_and_pearson_r_score_each_output_then_average():
    """Pooled over outputs, predicting each column's mean of columns around 0 and 100 scored r2 0.9996."""
    rng = np.random.default_rng(0)
    truth = np.stack([rng.normal(0, 1, 100), rng.normal(100, 1, 100)], axis=1)
    result = metrics.regression_metrics(truth, np.broadcast_to(truth.mean(axis=0), truth.shape))
    assert result["r2"] == pytest.approx(skm.r2_score(truth, np.broadcast_to(truth.mean(axis=0), truth.shape)))
    assert abs(result["r2"]) < 1e-12 and result["pearson_r"] is None  # a constant prediction has no correlation
    one = metrics.regression_metrics(truth[:, 0], truth[:, 0] * 0.5)  # one output: as before
    assert one["r2"] == pytest.approx(skm.r2_score(truth[:, 0], truth[:, 0] * 0.5)) and one["pearson_r"] == pytest.approx(1)
    constant = metrics.regression_metrics(np.c_[truth[:, 0], np.ones(100)], np.c_[truth[:, 0], np.ones(100)])
    assert constant["r2"] == 1.0 and constant["pearson_r"] == pytest.approx(1)  # a constant column is left out
    tiny = metrics.regression_metrics([0, 1e-170], [0, 1])  # a spread whose square underflows: -inf and inf before
    assert tiny["r2"] is None and tiny["pearson_r"] is None


@pytest.mark.parametrize("loss, targets, n_out, message", [
    ("cross_entropy", [0, 2, 1.5, 7], 3, "cross_entropy integer labels must be whole numbers in [0, 2]; targets[2] is 1.5"),
    ("cross_entropy", [0, -1], 3, "targets[1] is -1"),
    ("binary_cross_entropy", [[0.5, 0.0], [1.0, 1.2]], 2, "must lie in [0, 1] (0/1 labels or probabilities); "
     "targets[1, 1] is 1.2"),
    ("binary_cross_entropy", [0.0, 1.0, 1.5], 1, "targets[2] is 1.5"),  # one per sample: was targets[2, 0]
    ("cross_entropy", [0, 1, 2.0000001], 3, "targets[2] is 2.0000001"),  # was "is 2"
    ("cross_entropy", np.array([0, 1.2], np.float32), 2, "targets[1] is 1.2"),  # not 1.2000000476837158
    # one-hot rows were never checked: [2, -1, 0] trained as if it were a distribution
    ("cross_entropy", [[0, 1, 0], [2, -1, 0]], 3, "cross_entropy target rows are class probabilities, each in "
     "[0, 1]; targets[1, 0] is 2"),
])
def test_a_target_the_loss_cannot_take_is_named_with_its_row(loss, targets, n_out, message):
    """The message gave only the range of all values ("received values from 0.0 to 7.0"): not which row to fix."""
    with pytest.raises(TargetValueError) as caught:
        losses.get(loss).prepare(np.array(targets), n_out, np.float32)
    assert str(caught.value).endswith(message) and isinstance(caught.value, ShapeError)
    shifted = caught.value.at(1000)  # a block that starts at row 1000 of the whole
    assert shifted.index[0] == caught.value.index[0] + 1000 and shifted.rule == caught.value.rule


def test_cross_entropy_rows_of_probabilities_must_sum_to_one():
    ce = losses.get("cross_entropy")
    smoothed = np.array([[0.9, 0.05, 0.05], [0.05, 0.05, 0.9]], np.float32)  # label smoothing sums to 1 too
    np.testing.assert_array_equal(ce.prepare(smoothed, 3, np.float32), smoothed)
    with pytest.raises(ShapeError, match=r"sum to 1 \(one-hot rows, or integer labels\); targets\[1\] sums to 0.5"):
        ce.prepare(np.array([[0, 1, 0], [0.5, 0, 0]]), 3, np.float32)


def test_loss_values_match_pytorch_reductions():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    y = np.array([0, 2])
    ce = losses.get("cross_entropy")
    assert ce.value(p, ce.prepare(y, 3, np.float64)) == pytest.approx(-(np.log(0.7) + np.log(0.8)) / 2)
    mse = losses.get("mse")
    assert mse.value(p, np.zeros_like(p)) == pytest.approx(np.mean(p ** 2))
    bce = losses.get("binary_cross_entropy")
    yb = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    expected = -np.mean(yb * np.log(p) + (1 - yb) * np.log(1 - p))
    assert bce.value(p, yb) == pytest.approx(expected)
    z = np.log(p / (1 - p))
    assert bce.value_from_logits(z, yb) == pytest.approx(expected)
    assert ce.value_from_logits(np.log(p), ce.prepare(y, 3, np.float64)) == pytest.approx(-(np.log(0.7) + np.log(0.8)) / 2)


@pytest.mark.parametrize("get, spec, message", [
    (optimizers.get, {"name": "adam", "momentum": 0.9}, "optimizer 'adam' does not take the option momentum; it takes: "
     "learning_rate, beta1, beta2, eps"),
    (optimizers.get, {"name": "adam", "beta1": "0.9"}, "optimizer 'adam' option beta1 must be a finite number; received '0.9'"),
    (schedules.get, {"name": "exponential", "gamma": 0.5}, "schedule 'exponential' does not take the option gamma"),
    (schedules.get, {"name": "step", "step_size": 2.5}, "schedule 'step' option step_size must be a whole number"),
    (schedules.get, {"name": "exponential", "decay_rate": "0.5"}, "option decay_rate must be a finite number"),
    (activations.get, {"name": "leaky_relu", "alpha": None}, "option alpha must be a finite number; received None"),
    # every negative input became -inf: a model imported with it answered every request "scale the inputs down"
    (activations.get, {"name": "elu", "alpha": float("inf")}, "activation 'elu' option alpha must be a finite number; received inf"),
    (initializers.get_bias, {"name": "constant", "value": [1]}, "option value must be a finite number"),
])
def test_registries_check_option_names_and_types(get, spec, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        get(spec)


@pytest.mark.parametrize("make, message", [
    (lambda: initializers.Constant(value=float("nan")), "constant value must be a finite number; received value=nan"),
    (lambda: initializers.Constant(value=float("inf")), "constant value must be a finite number; received value=inf"),
    (lambda: initializers.GaussianWeights(std=float("inf")), "std must be a positive finite number; received std=inf"),
    (lambda: schedules.ReduceOnPlateau(min_delta=float("nan")), "min_lr and min_delta must be finite numbers >= 0"),
    (lambda: schedules.Cosine(min_lr=float("nan")), "min_lr must be a finite number >= 0; received min_lr=nan"),
    (lambda: schedules.Exponential(decay_rate="0.9"), "decay_rate must be a number in (0, 1]; received decay_rate='0.9'"),
    (lambda: schedules.Step(gamma=float("nan")), "a number 0 < gamma <= 1"),
    (lambda: activations.get({"name": "leaky_relu", "alpha": float("nan")}), "option alpha must be a finite number"),
    (lambda: schedules.get({"name": "cosine", "min_lr": float("inf")}), "option min_lr must be a finite number"),
])
def test_nan_inf_and_text_settings_are_config_errors(make, message):
    """Checks written `min_lr < 0` let NaN through, Constant checked nothing, and text raised TypeError."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        make()


def test_registries_take_numpy_scalars_and_store_python_numbers():
    step = schedules.get({"name": "step", "step_size": np.int64(2), "gamma": np.float32(0.5), "warmup_epochs": np.int32(1)})
    assert step.get_config() == {"name": "step", "step_size": 2, "gamma": 0.5, "warmup_epochs": 1}
    assert json.dumps(step.get_config())  # Python numbers, not NumPy scalars
    assert optimizers.get({"name": "adam", "beta1": np.float32(0.5)}).get_config()["beta1"] == 0.5


@pytest.mark.parametrize("values, message", [
    (np.ones((4, 3)) + 1j, "complex"),
    (np.array(["2020-01-01"] * 12, dtype="datetime64[D]").reshape(4, 3), "dates or times"),
    (None, "inputs are missing \\(None\\)"),
    (np.full((4, 3), 1e39), "value 1e\\+39 at row 0, column 0 does not fit float32; scale the data or use dtype float64"),
])
def test_inputs_that_are_not_real_float_numbers_are_named(values, message):
    with pytest.raises(NeuralNetError, match=message):
        losses._as_float_array(values, np.float32, "inputs")


def test_cross_entropy_takes_integer_labels_as_a_column():
    ce = losses.get("cross_entropy")
    np.testing.assert_array_equal(ce.prepare(np.array([[0], [2], [1]]), 3, np.float32),
                                  ce.prepare(np.array([0, 2, 1]), 3, np.float32))
    with pytest.raises(TargetValueError, match=r"targets\[1\] is 3"):
        ce.prepare(np.array([[0], [3]]), 3, np.float32)
