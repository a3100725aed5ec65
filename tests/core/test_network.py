"""Network behaviour: building, shapes and errors, training controls, saving and reproducibility."""
import ast
import io
import pathlib
import re

import numpy as np
import pytest

from neural_net import BatchNorm, Callback, Dense, EarlyStopping, Network, StopTraining
from neural_net.errors import ConfigError, NeuralNetError, NonFiniteError, ShapeError, UnknownNameError


def blobs(n=200, seed=0, classes=3, features=4):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3, size=(classes, features))
    labels = rng.integers(0, classes, n)
    return centers[labels] + rng.normal(size=(n, features)), labels


def small_net(**kwargs):
    options = dict(activations=["relu", "softmax"], seed=0)
    options.update(kwargs)
    return Network.from_layer_sizes([4, 16, 3], **options)


def test_two_ways_to_build_give_the_same_network():
    a = Network.from_layer_sizes([4, 8, 3], activations=["tanh", "softmax"], weight_init="he", seed=5)
    b = Network(input_size=4, seed=5)
    b.add(Dense(8, activation="tanh", weight_init="he")).add(Dense(3, activation="softmax", weight_init="he"))
    assert a.get_config() == b.get_config()
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa["weights"], wb["weights"])
    assert a.layer_sizes == [4, 8, 3] and a.n_params == 4 * 8 + 8 + 8 * 3 + 3


def test_loss_auto_and_task():
    assert small_net().loss_name == "cross_entropy" and small_net().task == "multiclass"
    binary = Network.from_layer_sizes([2, 4, 1], activations=["relu", "sigmoid"])
    assert binary.loss_name == "binary_cross_entropy" and binary.task == "binary"
    assert Network.from_layer_sizes([2, 1], activations="linear").loss_name == "mse"
    assert small_net(loss="mse").loss_name == "mse"


def test_predict_shapes_and_dtype():
    net = small_net()
    x, _ = blobs(10)
    assert net.predict(x).shape == (10, 3) and net.predict(x).dtype == np.float32
    assert net.predict(x[0]).shape == (1, 3)
    np.testing.assert_allclose(net.predict(x).sum(axis=1), 1, rtol=1e-6)
    assert net.predict_classes(x).shape == (10,)
    big = np.tile(x, (900, 1))  # more rows than one predict chunk
    np.testing.assert_allclose(net.predict(big)[-10:], net.predict(x), rtol=1e-6)


def test_float64_throughout():
    net = small_net(dtype="float64")
    x, y = blobs(20)
    net.fit(x, y, epochs=1)
    assert net.predict(x).dtype == np.float64 and net._flat.dtype == np.float64


@pytest.mark.parametrize("bad,error,message", [
    (np.ones((3, 5)), ShapeError, r"\(batch, 4\)"),
    (np.ones((0, 4)), ShapeError, "no samples"),
    ([[1, 2, 3, np.nan]], NonFiniteError, "NaN or Inf"),
    ([[1, 2, "x", 4]], ShapeError, "numbers"),
    ([[1, 2], [1, 2, 3, 4]], ShapeError, "rectangular"),
])
def test_bad_inputs_raise_clear_errors(bad, error, message):
    with pytest.raises(error, match=message):
        small_net().predict(bad)


def test_errors_form_one_hierarchy_of_value_errors():
    for error in (ShapeError, NonFiniteError, ConfigError, UnknownNameError):
        assert issubclass(error, NeuralNetError) and issubclass(error, ValueError)


def test_bad_configuration():
    with pytest.raises(UnknownNameError, match="relu"):
        Network.from_layer_sizes([2, 2], activations="rellu")
    with pytest.raises(ConfigError, match="one entry per layer"):
        Network.from_layer_sizes([2, 3, 2], activations=["relu"])
    with pytest.raises(ConfigError, match="units"):
        Dense(0)
    with pytest.raises(ConfigError, match="dropout"):
        Dense(3, dropout=1.0)
    with pytest.raises(ConfigError, match="input_size"):
        Network(0)
    with pytest.raises(ConfigError, match="dtype"):
        Network(2, dtype="int8")
    with pytest.raises(ConfigError, match="output layer cannot have dropout"):
        Network(2).add(Dense(2, dropout=0.5)).predict([1, 2])


def test_bad_targets():
    net = small_net()
    x, y = blobs(10)
    with pytest.raises(ShapeError, match="10 samples but targets hold 9"):
        net.fit(x, y[:9])
    with pytest.raises(ShapeError, match=r"\[0, 2\]"):
        net.fit(x, y + 5)
    with pytest.raises(ConfigError, match="epochs"):
        net.fit(x, y, epochs=0)
    with pytest.raises(ConfigError, match="batch_size"):
        net.fit(x, y, batch_size=-1)


def test_one_hot_and_integer_labels_train_identically():
    x, y = blobs(60)
    a, b = small_net(), small_net()
    a.fit(x, y, epochs=2, batch_size=16)
    b.fit(x, np.eye(3)[y], epochs=2, batch_size=16)
    np.testing.assert_array_equal(a._flat, b._flat)


def test_training_is_bitwise_reproducible_with_a_seed():
    x, y = blobs(100)
    runs = []
    for _ in range(2):
        net = Network.from_layer_sizes([4, 16, 3], activations=["relu", "softmax"], dropout=0.2, seed=42)
        net.fit(x, y, epochs=3, batch_size=16)
        runs.append(net._flat.copy())
    np.testing.assert_array_equal(*runs)


@pytest.mark.parametrize("optimizer", ["adam", "momentum", "rmsprop"])
def test_resume_from_a_saved_checkpoint_is_bitwise_identical(optimizer, tmp_path):
    """A run checkpointed at the end of epoch 2 (as the service does), then loaded and resumed,
    ends with the same bits as a run that was never interrupted."""
    x, y = blobs(100)
    options = dict(epochs=4, batch_size=16, optimizer=optimizer, schedule="cosine", l2=1e-4, validation_split=0.2)

    def make():
        return Network.from_layer_sizes([4, 16, 3], activations=["relu", "softmax"], dropout=0.2, seed=7)

    class CheckpointAndCrash(Callback):
        def on_epoch_end(self, progress):
            if progress.epoch == 2:
                interrupted.save(tmp_path / "checkpoint.npz")
                raise StopTraining

    straight = make()
    straight.fit(x, y, **options)
    interrupted = make()
    interrupted.fit(x, y, callbacks=[CheckpointAndCrash()], **options)
    resumed = Network.load(tmp_path / "checkpoint.npz")
    assert resumed.epochs_trained == 2
    resumed.fit(x, y, initial_epoch=2, **options)
    np.testing.assert_array_equal(straight._flat, resumed._flat)


def test_save_load_round_trip_without_pickle():
    net = Network(3, seed=1)
    net.add(Dense(5, activation="gelu", weight_init={"name": "gaussian", "std": 0.2}, bias_init="random"))
    net.add(BatchNorm(activation="leaky_relu"))
    net.add(Dense(2, activation="sigmoid"))
    x = np.random.default_rng(0).normal(size=(30, 3))
    y = (x[:, :2] > 0).astype(float)
    net.fit(x, y, epochs=2, batch_size=8, optimizer="adamw")
    data = net.to_bytes()
    archive = np.load(io.BytesIO(data), allow_pickle=False)
    assert "header" in archive.files and "params" in archive.files
    loaded = Network.from_bytes(data)
    assert loaded.get_config() == net.get_config()
    np.testing.assert_array_equal(loaded.predict(x), net.predict(x))
    assert loaded.optimizer.get_config() == net.optimizer.get_config()
    with pytest.raises(ConfigError, match="not a saved network"):
        Network.from_bytes(b"garbage")


def test_use_bias_and_activation_parameters_survive_save_and_load():
    net = Network(3, seed=2)
    net.add(Dense(6, activation={"name": "leaky_relu", "alpha": 0.2}, use_bias=False))
    net.add(BatchNorm())
    net.add(Dense(1, activation={"name": "sigmoid", "slope": 2.0}))
    assert net.n_params == 3 * 6 + 2 * 6 + 6 + 1
    x = np.random.default_rng(1).normal(size=(20, 3))
    y = (x[:, :1] > 0).astype(float)
    net.fit(x, y, epochs=2, batch_size=5)
    loaded = Network.from_bytes(net.to_bytes())
    assert loaded.get_config()["layers"][0] == {"type": "dense", "activation": {"name": "leaky_relu", "alpha": 0.2},
                                                "units": 6, "weight_init": "he", "bias_init": "zeros", "use_bias": False}
    assert loaded.get_config()["layers"][2]["activation"] == {"name": "sigmoid", "slope": 2.0}
    np.testing.assert_array_equal(loaded.predict(x), net.predict(x))
    assert [set(layer) for layer in loaded.get_weights()] == [{"weights"}, {"weights", "biases"}]
    with pytest.raises(ShapeError, match="use_bias=False"):
        loaded.set_weights([{"weights": np.zeros((3, 6)), "biases": np.zeros(6)}, loaded.get_weights()[1]])
    with pytest.raises(ConfigError, match="use_bias must be true or false"):
        Dense(3, use_bias="no")


def test_config_round_trip():
    net = small_net(loss={"name": "cross_entropy", "from_logits": False}, dropout=[0.1, 0.0])
    clone = Network.from_config(net.get_config())
    assert clone.get_config() == net.get_config()
    np.testing.assert_array_equal(clone._flat, net._flat)  # same seed, same initial weights


def test_class_names_round_trip_through_config_and_file_and_name_the_predictions():
    x, y = blobs()
    net = Network.from_layer_sizes([4, 8, 3], activations=["relu", "softmax"], seed=0,
                                   class_names=["setosa", "versicolor", "virginica"])
    net.fit(x, y, epochs=3, batch_size=16)
    assert net.get_config()["class_names"] == ["setosa", "versicolor", "virginica"]
    assert Network.from_config(net.get_config()).class_names == net.class_names
    loaded = Network.from_bytes(net.to_bytes())
    assert loaded.get_config() == net.get_config() and loaded.class_names == ["setosa", "versicolor", "virginica"]
    assert loaded.predict_labels(x[:5]) == [net.class_names[k] for k in net.predict_classes(x[:5])]
    binary = Network.from_layer_sizes([4, 1], activations="sigmoid", seed=0, class_names=["no", "yes"])
    assert set(binary.predict_labels(x)) <= {"no", "yes"}
    assert "class_names" not in small_net().get_config()  # unnamed: the config (and the file) as before


@pytest.mark.parametrize("sizes, activations, names, message", [  # "sigmoid+bce": two sigmoid outputs, multilabel
    ([4, 3], "softmax", ["a", "b"], "holds 2 names; this multiclass network needs one per output \\(3\\)"),
    ([4, 1], "sigmoid", ["a", "b", "c"], "needs 2 \\(for class 0 and class 1"),
    ([4, 2], "linear", ["a", "b"], "class_names are for classifiers"),
    ([4, 2], "sigmoid+bce", ["a", "b"], "task is multilabel"),
    ([4, 2], "softmax", ["a", "a"], "must be distinct; 'a'"),
    ([4, 2], "softmax", ["a", ""], "class_names\\[1\\] has 0 characters"),
    ([4, 2], "softmax", ["a", 2], "must be a list of strings"),
])
def test_class_names_must_name_each_class_of_a_classifier(sizes, activations, names, message):
    activation, _, loss = activations.partition("+")
    with pytest.raises(ConfigError, match=message):
        Network.from_layer_sizes(sizes, activations=activation, class_names=names,
                                 loss="binary_cross_entropy" if loss else "auto")


def test_set_weights_names_a_missing_or_extra_parameter():
    """A layer without its biases said "expected a dict with keys 'weights' and 'biases'", to a dict of them
    whose biases were null (left out by the service)."""
    net = small_net()
    weights = net.get_weights()
    with pytest.raises(ShapeError, match=r"^layer 0: 'biases' is missing; the layer has biases of shape \(16,\): send them$"):
        net.set_weights([{"weights": weights[0]["weights"]}, weights[1]])
    no_bias = Network(4, seed=0)
    no_bias.add(Dense(3, use_bias=False))
    with pytest.raises(ShapeError, match=r"'biases' is not a parameter of the layer \(the layer has use_bias=False\): "
                                         r"leave them out; it takes 'weights'$"):
        no_bias.set_weights([{"weights": np.zeros((4, 3)), "biases": np.zeros(3)}])
    with pytest.raises(ShapeError, match="layer 0: expected a dict with keys 'weights' only .*; received list"):
        no_bias.set_weights([[np.zeros((4, 3))]])

def test_predict_labels_needs_class_names():
    with pytest.raises(ConfigError, match="has no class_names; pass class_names"):
        small_net().predict_labels(np.zeros((1, 4)))


def test_set_weights_checks_every_shape_before_changing_anything():
    net = small_net()
    weights = net.get_weights()
    before = net._flat.copy()
    broken = [dict(weights[0]), {"weights": np.zeros((16, 2)), "biases": np.zeros(3)}]
    broken[0]["weights"] = broken[0]["weights"] + 1
    with pytest.raises(ShapeError, match=r"layer 1 weights: expected shape \(16, 3\)"):
        net.set_weights(broken)
    np.testing.assert_array_equal(net._flat, before)
    weights[1]["biases"] = np.arange(3)
    net.set_weights(weights)
    np.testing.assert_array_equal(net.get_weights()[1]["biases"], [0, 1, 2])


def test_forward_returns_every_layer():
    net = small_net()
    x, _ = blobs(5)
    out, layers = net.forward(x, return_activations=True)
    assert [l["z"].shape for l in layers] == [(5, 16), (5, 3)]
    np.testing.assert_array_equal(layers[-1]["a"], out)
    np.testing.assert_array_equal(layers[0]["a"], np.maximum(layers[0]["z"], 0))


def test_dropout_only_while_training():
    net = Network.from_layer_sizes([4, 64, 3], activations=["relu", "softmax"], dropout=0.5, seed=0)
    x, _ = blobs(8)
    np.testing.assert_array_equal(net.predict(x), net.predict(x))
    net._forward(net._inputs(x), training=True)
    kept = net.layers[0]._mask
    assert 0.3 < np.mean(kept > 0) < 0.7 and set(np.unique(kept)) == {0.0, 2.0}


def test_batch_norm_uses_batch_statistics_in_training_and_running_ones_after():
    net = Network(3, seed=0)
    net.add(BatchNorm())
    x = np.random.default_rng(0).normal(loc=5, scale=2, size=(500, 3)).astype(np.float32)
    out = net._forward(net._inputs(x), training=True)
    np.testing.assert_allclose(out.mean(axis=0), 0, atol=1e-4)
    for _ in range(100):
        net._forward(net._inputs(x), training=True)
    np.testing.assert_allclose(net.layers[0].buffers["running_mean"], x.mean(axis=0), rtol=1e-3)
    np.testing.assert_allclose(net.predict(x).std(axis=0), 1, rtol=0.01)


def test_inference_keeps_no_state_on_the_layers():
    """Threads share one network in the service (its cached models). Inference stored each call's inputs, z and a on
    the layers: a locked call (activations, evaluate's logits) could read another thread's, stored in between, and a
    cached network held its last request's arrays (a 10,000-row one: 60 MB) beyond NN_MODEL_CACHE_MB's count."""
    net = Network(3, seed=0).add(Dense(4)).add(BatchNorm(activation="relu")).add(Dense(2, "softmax"))
    x, y = np.random.default_rng(0).normal(size=(16, 3)), np.arange(16) % 2
    net.fit(x, y, epochs=1)
    kept = [dict(vars(layer)) for layer in net.layers]
    out, layers = net.forward(x, return_activations=True)
    net.predict(x), net.evaluate(x, y)
    for before, layer in zip(kept, net.layers):
        assert all(vars(layer)[name] is value for name, value in before.items()), layer
    np.testing.assert_array_equal(layers[-1]["a"], out)
    np.testing.assert_allclose(net.evaluate(x, y)["loss"], net.evaluate(x[:8], y[:8])["loss"] / 2
                               + net.evaluate(x[8:], y[8:])["loss"] / 2, rtol=1e-6)


def test_history_and_progress_callbacks():
    x, y = blobs(100)
    records = []

    class Recorder(Callback):
        def on_batch_end(self, progress):
            records.append(progress)

    history = small_net().fit(x, y, epochs=3, batch_size=30, validation_split=0.2, callbacks=[Recorder()])
    assert len(history) == 3 and [e["epoch"] for e in history.epochs] == [1, 2, 3]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "val_f1", "learning_rate", "samples_per_second", "time"):
        assert len(history.history[key]) == 3, key
    assert len(records) == 9 and [r.batch for r in records[:3]] == [1, 2, 3]
    percents = [r.percent for r in records]
    assert percents == sorted(percents) and percents[-1] == 100.0 and 0 < percents[0] < 20
    assert records[-1].eta_seconds == 0 and records[0].samples_per_second > 0


def test_a_callback_stops_training_within_one_batch():
    x, y = blobs(100)

    class StopAfterFive(Callback):
        def __init__(self):
            self.batches = 0

        def on_batch_end(self, progress):
            self.batches += 1
            if self.batches == 5:
                raise StopTraining

    stopper = StopAfterFive()
    net = small_net()
    history = net.fit(x, y, epochs=10, batch_size=10, callbacks=[stopper])
    assert stopper.batches == 5 and history.stopped and len(history) == 0 and net.epochs_trained == 0


def test_early_stopping_restores_the_best_weights():
    x, y = blobs(200)
    net = small_net()
    best = {}

    class Keep(Callback):
        def on_epoch_end(self, progress):
            best[progress.epoch] = net._flat.copy()

    history = net.fit(x, y, epochs=200, batch_size=16, learning_rate=0.05, validation_split=0.3,
                      early_stopping=EarlyStopping(patience=3), callbacks=[Keep()])
    assert history.stopped_early and len(history) < 200
    val = history.history["val_loss"]
    assert history.best_epoch == int(np.argmin(val)) + 1
    np.testing.assert_array_equal(net._flat, best[history.best_epoch])


def test_divergence_raises_and_keeps_the_last_finite_weights():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)) * 1e3
    y = rng.normal(size=(64, 1)) * 1e3
    net = Network.from_layer_sizes([4, 32, 1], activations=["relu", "linear"], seed=0)

    saved = {}

    class Keep(Callback):
        def on_epoch_end(self, progress):
            saved[progress.epoch] = net._flat.copy()

    with pytest.raises(NonFiniteError, match="diverged at epoch") as info:
        net.fit(x, y, epochs=50, batch_size=8, optimizer="sgd", learning_rate=10.0, callbacks=[Keep()])
    epoch = info.value.epoch
    assert np.all(np.isfinite(net._flat))
    if epoch > 1:
        np.testing.assert_array_equal(net._flat, saved[epoch - 1])


def test_gradient_clipping_bounds_the_update():
    x, y = blobs(32)
    a, b = small_net(), small_net()
    before = a._flat.copy()
    a.fit(x, y, epochs=1, batch_size=32, optimizer="sgd", learning_rate=1.0, clip_norm=1e-3, shuffle=False)
    b.fit(x, y, epochs=1, batch_size=32, optimizer="sgd", learning_rate=1.0, shuffle=False)
    assert np.linalg.norm(a._flat - before) == pytest.approx(1e-3, rel=1e-3)
    assert np.linalg.norm(b._flat - before) > 1e-2


def test_l1_l2_shrink_weights():
    x, y = blobs(100)
    plain, regular = small_net(), small_net()
    plain.fit(x, y, epochs=20, batch_size=20)
    regular.fit(x, y, epochs=20, batch_size=20, l2=0.05)
    assert np.linalg.norm(regular._flat[:regular._n_weights]) < np.linalg.norm(plain._flat[:plain._n_weights])


@pytest.mark.parametrize("sizes, activations, task", [
    ([2, 3], ["softmax"], "multiclass"), ([2, 1], ["sigmoid"], "binary"),
    ([2, 3], ["sigmoid"], "multilabel"), ([2, 2], ["linear"], "regression")])
def test_metric_names_are_what_evaluate_reports_for_each_task(sizes, activations, task):
    from neural_net import metrics

    loss = "binary_cross_entropy" if task == "multilabel" else "auto"
    net = Network.from_layer_sizes(sizes, activations=activations, loss=loss, seed=0)
    x = np.random.default_rng(0).normal(size=(8, 2))
    y = {"multiclass": np.arange(8) % 3, "binary": np.arange(8) % 2, "multilabel": np.eye(3)[np.arange(8) % 3],
         "regression": x}[task]
    assert net.task == task
    assert set(net.evaluate(x, y)) - {"confusion_matrix"} == set(metrics.names(task))


def test_evaluate_returns_metrics():
    x, y = blobs(60)
    result = small_net().evaluate(x, y)
    assert {"loss", "accuracy", "precision", "recall", "f1", "confusion_matrix"} <= set(result)
    assert np.sum(result["confusion_matrix"]) == 60
    reg = Network.from_layer_sizes([4, 1], activations="linear").evaluate(x, x[:, :1])
    assert {"loss", "mae", "rmse", "r2", "pearson_r"} <= set(reg)
    binary = Network.from_layer_sizes([4, 1], activations="sigmoid").evaluate(x, (y > 0).astype(float))
    assert "roc_auc" in binary


def test_core_imports_only_numpy_and_the_standard_library():
    allowed = {"numpy", "io", "json", "math", "time", "zipfile", "warnings", "dataclasses", "abc", "itertools", "functools",
               "inspect", "numbers", "weakref"}
    for path in pathlib.Path(__file__).parents[2].joinpath("neural_net").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module.split(".")[0]]
            else:
                continue
            assert set(names) <= allowed, f"{path.name} imports {names}"


def test_set_dropout_and_reseed():
    net = Network.from_layer_sizes([4, 8, 8, 3], activations=["relu", "relu", "softmax"], dropout=0.1, seed=0)
    previous = net.set_dropout([0.5, 0.2, 0.0])
    assert previous == [0.1, 0.1, 0.0] and [l.dropout for l in net.layers] == [0.5, 0.2, 0.0]
    net.set_dropout(0.3)
    assert [l.dropout for l in net.layers] == [0.3, 0.3, 0.0]
    with pytest.raises(ConfigError, match="output layer"):
        net.set_dropout([0.1, 0.1, 0.1])
    with pytest.raises(ConfigError, match="one rate per layer"):
        net.set_dropout([0.1])
    x, y = blobs(40)
    runs = []
    for _ in range(2):
        net.reseed(9)
        clone = Network.from_bytes(net.to_bytes())
        clone.fit(x, y, epochs=1, batch_size=8)
        runs.append(clone._flat.copy())
    np.testing.assert_array_equal(*runs)


def test_from_bytes_refuses_what_is_not_a_saved_network():
    for data in (b"garbage", b"PK\x03\x04 broken zip"):
        with pytest.raises(ConfigError, match="not a saved network"):
            Network.from_bytes(data)


def test_fit_reduces_the_learning_rate_on_a_validation_plateau():
    """The validation loss stops improving (the validation targets are noise), so the rate halves
    every `patience` epochs down to min_lr, while the training loss keeps falling."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 3))
    y = x @ np.array([[1.0], [-2.0], [0.5]])
    y[100:] = rng.normal(size=(20, 1)) * 10
    net = Network.from_layer_sizes([3, 8, 1], activations=["tanh", "linear"], seed=0)
    history = net.fit(x, y, epochs=40, batch_size=10, learning_rate=0.01, validation_split=1 / 6,
                      schedule="reduce_on_plateau", schedule_options={"factor": 0.5, "patience": 2, "min_lr": 0.001})
    rates = history.history["learning_rate"]
    assert rates[0] == 0.01 and min(rates) == 0.001 and rates == sorted(rates, reverse=True)
    val = history.history["val_loss"]
    for epoch in range(1, len(rates)):  # each cut follows `patience` epochs without a new best val_loss
        if rates[epoch] < rates[epoch - 1]:
            assert min(val[epoch - 2:epoch]) >= min(val[:epoch - 2])


def test_a_layer_belongs_to_one_network_once():
    shared = Dense(4, activation="tanh")
    net = Network(4, seed=0).add(shared)
    with pytest.raises(ConfigError, match="this layer already belongs to a network; create a new layer"):
        net.add(shared)
    with pytest.raises(ConfigError, match="already belongs to a network"):
        Network(5, seed=0).add(shared)
    assert net.layer_sizes == [4, 4] and net.predict(np.ones((1, 4))).shape == (1, 4)  # the first one is intact


@pytest.mark.parametrize("activations, units, loss, message", [
    ("linear", 1, "binary_cross_entropy", "binary_cross_entropy needs a sigmoid output, or from_logits=True on a linear "
                                          "one; the output is linear"),
    ("tanh", 3, "cross_entropy", "cross_entropy needs a softmax output, or from_logits=True on a linear one; the output "
                                 "is tanh"),
    ("sigmoid", 1, {"name": "binary_cross_entropy", "from_logits": True},
     "binary_cross_entropy with from_logits=True applies a sigmoid itself, and the output is sigmoid already"),
    ("softmax", 3, {"name": "cross_entropy", "from_logits": True}, "applies a softmax itself"),
    ("softmax", 1, "auto", "a softmax output of 1 unit is always 1; use 2 or more units"),
])
def test_a_loss_the_output_activation_cannot_take_is_refused(activations, units, loss, message):
    """Cross-entropy on a linear or tanh output gave NaN, from_logits on a softmax applied it twice, and "auto"
    took a 1-unit softmax: each was accepted."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        Network.from_layer_sizes([2, units], activations=[activations], loss=loss)
    net = Network(2, loss=loss).add(Dense(units, activation=activations))  # layer by layer: at the first use
    with pytest.raises(ConfigError, match=re.escape(message)):
        net.evaluate(np.ones((4, 2)), np.zeros(4))
    if (activations, units) != ("softmax", 1):  # a loss given to evaluate is checked as well
        net = Network.from_layer_sizes([2, units], activations=[activations], loss="mse")
        with pytest.raises(ConfigError, match=re.escape(message)):
            net.evaluate(np.ones((4, 2)), np.zeros(4), loss=loss)


def test_a_cross_entropy_takes_probabilities_or_logits():
    x, y = np.ones((4, 2)), np.array([0, 1, 0, 1])
    for activation, loss in (("sigmoid", "binary_cross_entropy"), ("softmax", "binary_cross_entropy"),
                             ("linear", {"name": "binary_cross_entropy", "from_logits": True}),
                             ("tanh", {"name": "binary_cross_entropy", "from_logits": True})):
        net = Network.from_layer_sizes([2, 1 if activation != "softmax" else 2], activations=[activation], loss=loss)
        assert np.isfinite(net.evaluate(x, y if activation != "softmax" else np.eye(2)[y])["loss"])
    assert Network.from_layer_sizes([2, 3], activations=["sigmoid"], loss="cross_entropy").loss_name == "cross_entropy"


def test_an_optimizer_instance_holds_the_state_of_one_network():
    """Binding b to a's Adam reset its step count and overwrote a's moments: a's resumed run went astray."""
    from neural_net.optimizers import Adam
    x, y = blobs(40)
    a, b = small_net(), small_net(seed=1)
    shared = Adam()
    a.fit(x, y, epochs=2, optimizer=shared)
    with pytest.raises(ConfigError, match="this Adam instance already holds another network's state .*create one per "
                                          "network, e.g. Adam\\(learning_rate=0.001\\), or pass the optimizer by name"):
        b.fit(3 * x, y, epochs=2, optimizer=shared)
    a.fit(x, y, epochs=4, initial_epoch=2, optimizer=shared)
    by_name = small_net()
    by_name.fit(x, y, epochs=2, optimizer="adam")
    by_name.fit(x, y, epochs=4, initial_epoch=2, optimizer="adam")
    np.testing.assert_array_equal(a._flat, by_name._flat)


def test_a_new_optimizer_instance_replaces_the_one_a_network_has():
    """A second instance with equal settings was ignored: the first one's state went on, the new one never stepped."""
    from neural_net.optimizers import Adam
    x, y = blobs(40)
    first, second = Adam(), Adam()
    net = small_net()
    net.fit(x, y, epochs=2, batch_size=10, optimizer=first)
    net.fit(x, y, epochs=3, initial_epoch=2, batch_size=10, optimizer=second)
    assert net.optimizer is second and (first.t, second.t) == (8, 4)
    net.fit(x, y, epochs=4, initial_epoch=3, batch_size=10, optimizer="adam")  # by name, same settings: goes on
    assert net.optimizer is second and second.t == 8


def test_an_option_an_instance_would_ignore_is_refused():
    from neural_net.optimizers import SGD
    from neural_net.schedules import Exponential
    x, y = blobs(20)
    with pytest.raises(ConfigError, match="learning_rate=1.0 .*optimizer instance.*SGD\\(learning_rate=1.0\\)"):
        small_net().fit(x, y, epochs=1, optimizer=SGD(), learning_rate=1.0)
    with pytest.raises(ConfigError, match="schedule_options .*schedule instance"):
        small_net().fit(x, y, epochs=1, schedule=Exponential(), schedule_options={"decay_rate": 0.5})
    history = small_net().fit(x, y, epochs=1, optimizer=SGD(learning_rate=0.5), schedule=Exponential(0.5))
    assert history.history["learning_rate"] == [0.5]


def test_predict_classes_per_task():
    x = np.ones((3, 2))
    with pytest.raises(ConfigError, match=r"predict_classes is for classifiers; this network.s task is regression \(loss "
                                          r"mse\): use predict$"):
        Network.from_layer_sizes([2, 3], activations="linear", seed=0).predict_classes(x)
    with pytest.raises(ConfigError, match="for a 0/1 per sigmoid output, give loss='binary_cross_entropy'"):
        Network.from_layer_sizes([2, 3], activations="sigmoid", seed=0).predict_classes(x)  # mse: regression
    multilabel = Network.from_layer_sizes([2, 3], activations="sigmoid", loss="binary_cross_entropy", seed=0)
    classes = multilabel.predict_classes(x)
    np.testing.assert_array_equal(classes, (multilabel.predict(x) > 0.5).astype(int))
    assert classes.shape == (3, 3)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, "8", True])
def test_predict_batch_size_must_be_a_positive_whole_number(batch_size):
    with pytest.raises(ConfigError, match="batch_size must be a positive whole number or None"):
        small_net().predict(np.ones((10, 4)), batch_size=batch_size)


def test_predict_in_batches_or_in_one():
    net, x = small_net(), np.random.default_rng(0).normal(size=(10, 4))
    expected = net.predict(x)
    for batch_size in (None, 3, np.int64(4), 10**30):
        np.testing.assert_allclose(net.predict(x, batch_size=batch_size), expected, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.dtype("float32"), "float64"])
def test_dtype_may_be_a_numpy_type(dtype):
    assert Network(2, dtype=dtype).dtype == np.dtype(dtype)


def test_numpy_scalar_hyper_parameters_are_accepted():
    assert Dense(3, dropout=np.float32(0.25)).dropout == 0.25
    net = small_net()
    net.fit(*blobs(20), epochs=1, learning_rate=np.float32(0.5), l1=np.float64(1e-4), l2=np.float32(1e-4))
    assert net.optimizer.learning_rate == 0.5 and type(net.optimizer.learning_rate) is float
    with pytest.raises(ConfigError, match="dtype"):
        Network(2, dtype=None)  # not NumPy's float64 default
    with pytest.raises(ConfigError, match="dropout"):
        Dense(3, dropout=True)


def test_a_network_saved_before_the_loss_checks_still_loads_and_predicts():
    """The loss/output check ran wherever the loss was read, so a model stored before it (a tanh output with
    binary_cross_entropy) no longer predicted; it is checked where the loss is used: fit and evaluate."""
    net = Network(2, seed=0, loss="binary_cross_entropy")
    net.add(Dense(4, activation="relu"))
    net.add(Dense(1, activation="tanh"))
    loaded = Network.from_bytes(net.to_bytes())
    assert loaded.predict(np.ones((1, 2))).shape == (1, 1) and loaded.task == "binary"
    with pytest.raises(ConfigError, match="binary_cross_entropy needs a sigmoid output"):
        loaded.evaluate(np.ones((2, 2)), np.zeros(2))
    with pytest.raises(ConfigError, match="binary_cross_entropy needs a sigmoid output"):
        loaded.fit(np.ones((2, 2)), np.zeros(2), epochs=1)
