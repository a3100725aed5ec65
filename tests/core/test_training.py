"""The training loop's guards: what `fit` leaves behind when training diverges."""

import numpy as np
import pytest

from neural_net import BatchNorm, Callback, Dense, EarlyStopping, Network, NonFiniteError
from neural_net.errors import ConfigError
from neural_net.training import validation_size

rng = np.random.default_rng(0)
X = rng.normal(size=(20, 3))
Y = (X.sum(axis=1) > 0).astype(int)


class _EpochWeights(Callback):
    def __init__(self, net):
        self.net, self.finite = net, []

    def on_epoch_end(self, progress):
        self.finite.append(bool(np.isfinite(self.net._flat).all()))


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_a_step_that_overflows_the_weights_is_undone_even_when_its_loss_was_finite(optimizer):
    # batch = all samples: epoch 1's only step makes the weights Inf, yet the loss it reports (computed
    # before the step) is finite; the epoch must not end with those weights.
    net = Network.from_layer_sizes([3, 4, 2], activations=["relu", "softmax"], seed=0)
    before = net._flat.copy()
    seen = _EpochWeights(net)
    with pytest.raises(NonFiniteError, match="diverged at epoch 1.*restored to the end of epoch 0"):
        net.fit(X, Y, epochs=3, batch_size=20, optimizer=optimizer, learning_rate=1e300, callbacks=[seen])
    assert seen.finite == []  # no epoch ended (so no checkpoint was written) with non-finite weights
    np.testing.assert_array_equal(net._flat, before)
    assert net.epochs_trained == 0
    assert all(np.isfinite(state).all() for state in net.optimizer.state.values())


def _bn_net(seed=0):
    return Network(3, seed=seed).add(Dense(8, activation="relu")).add(BatchNorm()).add(Dense(2, activation="softmax"))


class _EpochState(Callback):
    """The weights, the BatchNorm running statistics and the predictions at the end of each epoch."""

    def __init__(self, net, x):
        self.net, self.x, self.saved = net, x, {}

    def on_epoch_end(self, progress):
        self.saved[progress.epoch] = (self.net._flat.copy(), _stats(self.net), self.net.predict(self.x))


def _stats(net):
    return [array.copy() for layer in net.layers for array in layer.buffers.values()]


@pytest.mark.parametrize("monitor", [None, "val_accuracy"])
def test_restore_best_puts_back_the_best_epochs_weights_and_batch_norm_statistics(monitor):
    x, y = np.random.default_rng(1).normal(size=(80, 3)) * 3 + 1, np.arange(80) % 2
    net = _bn_net()
    state = _EpochState(net, x[-20:])
    history = net.fit(x, y, epochs=30, batch_size=8, learning_rate=0.05, validation_split=0.25, callbacks=[state],
                      early_stopping=EarlyStopping(patience=2, monitor=monitor))
    best = history.best_epoch
    assert best is not None and len(history) > best  # it ran past the best epoch, so something had to be put back
    weights, stats, predictions = state.saved[best]
    np.testing.assert_array_equal(net._flat, weights)
    for now, then in zip(_stats(net), stats):
        np.testing.assert_array_equal(now, then)
    np.testing.assert_array_equal(net.predict(x[-20:]), predictions)


def test_early_stopping_on_accuracy_keeps_the_most_accurate_epoch():
    x = np.random.default_rng(0).normal(size=(200, 2))
    y = (x[:, 0] * x[:, 1] > 0).astype(int)
    net = Network.from_layer_sizes([2, 16, 2], activations=["relu", "softmax"], seed=0)
    history = net.fit(x, y, epochs=60, batch_size=16, learning_rate=0.01, validation_split=0.25,
                      early_stopping=EarlyStopping(monitor="val_accuracy", patience=3))
    accuracy = history.history["val_accuracy"]
    assert history.best_epoch == int(np.argmax(accuracy)) + 1  # the first epoch with the highest accuracy
    assert net.evaluate(x[-50:], y[-50:])["accuracy"] == max(accuracy)
    mode_min = Network.from_layer_sizes([2, 16, 2], activations=["relu", "softmax"], seed=0).fit(
        x, y, epochs=60, batch_size=16, learning_rate=0.01, validation_split=0.25,
        early_stopping=EarlyStopping(monitor="val_accuracy", patience=3, mode="min"))  # explicit: lowest is best
    assert mode_min.best_epoch == int(np.argmin(mode_min.history["val_accuracy"])) + 1


@pytest.mark.parametrize("stopping, validation, message", [
    ({"monitor": "val_acc"}, 0.25, "monitor 'val_acc' is not reported.*loss, accuracy, val_loss, val_accuracy"),
    ({"monitor": "val_loss"}, 0.0, "monitor 'val_loss' is not reported.*: loss, accuracy;.*validation"),
    ({"mode": "highest"}, 0.25, "mode must be one of: auto, min, max"),
    ({"patience": 2, "min_delta": None}, 0.0, "min_delta must be a finite number"),
    ({"patience": 2, "monitr": "loss"}, 0.0, "early_stopping does not take the option.*monitr.*patience"),
])
def test_a_bad_early_stopping_option_is_refused_before_any_epoch_runs(stopping, validation, message):
    net = Network.from_layer_sizes([3, 4, 2], activations=["relu", "softmax"], seed=0)
    before = net._flat.copy()
    with pytest.raises(ConfigError, match=message):
        net.fit(X, Y, epochs=2, validation_split=validation, early_stopping=stopping)
    np.testing.assert_array_equal(net._flat, before)
    assert net.epochs_trained == 0


def test_after_divergence_the_batch_norm_statistics_are_those_of_the_last_finished_epoch():
    x = np.random.default_rng(0).normal(size=(64, 3))
    net = _bn_net()
    net.fit(x, np.arange(64) % 2, epochs=2, batch_size=16, optimizer="sgd", learning_rate=1e-3)
    weights, stats, predictions = net._flat.copy(), _stats(net), net.predict(x)
    with pytest.raises(NonFiniteError, match="diverged at epoch 3"):
        net.fit(x * 1e18, np.arange(64) % 2, epochs=5, initial_epoch=2, batch_size=16, optimizer="sgd",
                learning_rate=1e10)
    np.testing.assert_array_equal(net._flat, weights)
    for now, then in zip(_stats(net), stats):
        np.testing.assert_array_equal(now, then)
    np.testing.assert_array_equal(net.predict(x), predictions)
    Network.from_bytes(net.to_bytes())  # a file of it loads back


@pytest.mark.parametrize("option, message", [
    ({"validation_split": "0.2"}, "validation_split must be a number in"),
    ({"validation_split": None}, "validation_split must be a number in"),
    ({"clip_norm": "1"}, "clip_norm must be a positive number or None"),
    ({"schedule_options": {"decay_rate": 0.5}}, "schedule 'constant' does not take the option decay_rate.*schedule="),
    ({"callbacks": object()}, "callbacks must be a list of Callback"),
    ({"shuffle": "no"}, "shuffle must be True or False; received shuffle='no'"),  # shuffled: "no" is true
])
def test_training_options_of_the_wrong_type_are_config_errors(option, message):
    with pytest.raises(ConfigError, match=message):
        Network.from_layer_sizes([3, 2], activations="softmax", seed=0).fit(X, Y, epochs=1, **option)


def test_numpy_scalars_are_numbers():
    net = Network.from_layer_sizes([3, 4, 2], activations=["relu", "softmax"], seed=0)
    history = net.fit(X, Y, epochs=np.int64(2), batch_size=np.int32(8), learning_rate=np.float32(0.01),
                      l2=np.float32(1e-4), validation_split=np.float64(0.25), clip_norm=np.float32(1.0),
                      early_stopping=EarlyStopping(patience=np.int64(3), min_delta=np.float32(0.0)))
    assert len(history) == 2 and net.optimizer.get_config()["learning_rate"] == pytest.approx(0.01)
    with pytest.raises(ConfigError, match="patience"):
        EarlyStopping(patience=True)  # a bool is not a count


def test_a_run_resumed_with_its_early_stopping_state_ends_as_the_run_straight_through():
    """A run stopped after its best epoch and resumed (the service's worker after a crash) started early stopping
    afresh: it trained past the original stop and kept a later, worse epoch. `resume` replays the epochs so far
    and puts back the best epoch's state kept then."""
    from neural_net.training import model_state, put_back

    rng = np.random.default_rng(3)
    x = rng.normal(size=(120, 4))
    y = (x[:, 0] + 0.5 * rng.normal(size=120) > 0).astype(int)

    def net():
        n = Network(4, seed=5)
        n.add(Dense(16, activation="relu"))
        n.add(BatchNorm())
        n.add(Dense(2, activation="softmax"))
        return n

    options = {"epochs": 80, "batch_size": 16, "validation_split": 0.25, "learning_rate": 0.05}
    straight = net()
    expected = straight.fit(x, y, early_stopping={"patience": 4}, **options)
    assert expected.stopped_early and expected.best_epoch + 4 == len(expected) < 80
    stop_at = expected.best_epoch + 2

    class Interrupt(Callback):  # keeps the state of each best epoch and of the last one, as the worker's checkpoints do
        def __init__(self, stopper):
            self.stopper, self.best, self.last = stopper, None, None

        def on_epoch_end(self, progress):
            if self.stopper.improves(progress.logs):
                self.best = model_state(resumed)
            self.last = model_state(resumed)  # when fit returns, restore_best has put the best epoch back
            return progress.epoch == stop_at

    resumed, stopper = net(), EarlyStopping(patience=4)
    interrupt = Interrupt(stopper)
    first = resumed.fit(x, y, early_stopping=stopper, callbacks=[interrupt], **options)
    assert len(first) == stop_at and not first.stopped_early
    put_back(resumed, interrupt.last)  # resumed from the end of its last epoch, as from a checkpoint
    rest = resumed.fit(x, y, initial_epoch=stop_at, **options,
                       early_stopping=EarlyStopping(patience=4).resume(first.epochs, interrupt.best))
    assert rest.stopped_early and rest.best_epoch == expected.best_epoch and stop_at + len(rest) == len(expected)
    np.testing.assert_array_equal(resumed._flat, straight._flat)
    np.testing.assert_array_equal(resumed.layers[1].buffers["running_var"], straight.layers[1].buffers["running_var"])

    again = resumed.fit(x, y, initial_epoch=len(expected) - 1, **options,  # resumed after it had stopped: no epoch
                        early_stopping=EarlyStopping(patience=4).resume(expected.epochs, interrupt.best))
    assert len(again) == 0 and again.stopped_early and again.best_epoch == expected.best_epoch


@pytest.mark.parametrize("n, split, words", [
    (6, 0.99, "validation_split=0.99 holds out 6 of 6 samples (the rounded fraction), leaving none to train on; "
              "choose a split that holds out 1 to 5 of them"),
    (6, 0.0001, "holds out 0 of 6 samples (the rounded fraction), leaving none to validate on"),
    (1, 0.5, "leaving none to validate on; a split needs 2 or more samples"),
])
def test_a_validation_split_that_leaves_one_side_empty_says_which_and_what_fits(n, split, words):
    """It said 'leaves no training or no validation samples': not which, nor what split would do. The service
    asks the same function at submit, so such a job is a 422 rather than a failed job."""
    with pytest.raises(ConfigError) as caught:
        Network.from_layer_sizes([2, 1], activations=["sigmoid"], seed=0).fit(np.zeros((n, 2)), np.zeros(n),
                                                                                 validation_split=split, epochs=1)
    assert words in str(caught.value)
    assert validation_size(6, 0.5) == 3 and validation_size(2, 0.5) == 1
