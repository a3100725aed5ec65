"""The training loop behind `Network.fit` (`Run`) and what it reports: per-batch `Progress`,
per-epoch `History`, callbacks and early stopping."""
import math
import time
from dataclasses import dataclass, field

import numpy as np

from . import metrics
from .errors import ConfigError, NonFiniteError, StopTraining
from .losses import classes as _classes
from .losses import task as _task
from .registry import check_options, is_number, is_whole


@dataclass
class Progress:
    """A snapshot of a running `fit`, passed to every callback.

    `epoch` is the 1-based absolute epoch in progress and `epochs` the run's last epoch; `batch` is
    1-based within the epoch; `loss` is the mean training loss of this epoch so far; `percent` moves
    smoothly from 0 to 100 over the run (counted from `initial_epoch`).
    """

    epoch: int
    epochs: int
    batch: int
    batches: int
    samples_seen: int
    loss: float
    learning_rate: float
    samples_per_second: float
    elapsed: float
    eta_seconds: float
    percent: float
    logs: dict = field(default_factory=dict)


class Callback:
    """Override any hook; return True from one (or raise `StopTraining`) to stop after the current batch."""

    def on_train_begin(self, progress):
        return None

    def on_batch_end(self, progress):
        return None

    def on_epoch_end(self, progress):
        return None

    def on_train_end(self, history):
        return None


class History:
    """Per-epoch records of a `fit` run.

    `history` maps each key ("loss", "val_loss", "accuracy", "val_accuracy", ..., "learning_rate",
    "samples_per_second", "time") to a list with one value per epoch; `epochs` holds the same as one
    dict per epoch. `stopped` is True when a callback stopped training, `stopped_early` when early
    stopping did, and `best_epoch` is the epoch whose weights were restored, if any.
    """

    def __init__(self):
        self.epochs = []
        self.stopped = False
        self.stopped_early = False
        self.best_epoch = None

    def append(self, record):
        self.epochs.append(record)

    @property
    def history(self):
        keys = dict.fromkeys(key for record in self.epochs for key in record if key != "epoch")
        return {key: [record.get(key) for record in self.epochs] for key in keys}

    def __len__(self):
        return len(self.epochs)

    def __repr__(self):
        last = self.epochs[-1] if self.epochs else {}
        return f"History(epochs={len(self.epochs)}, last={last})"


class EarlyStopping:
    """Stop when the monitored value (`monitor`: val_loss when there is validation data, else loss) has not
    improved by more than `min_delta` for `patience` epochs; with `restore_best`, put back the best
    epoch's weights and BatchNorm running statistics at the end. `mode` says which way is better: "min",
    "max", or "auto" (as Keras): lower for losses and errors (loss, mae, rmse), higher for the others
    (accuracy, f1, r2, pearson_r, ...). `monitor` must be a key the run reports (checked before it starts)."""

    MODES = ("auto", "min", "max")

    def __init__(self, patience=5, min_delta=0.0, restore_best=True, monitor=None, mode="auto"):
        if not (is_whole(patience) and patience >= 1):
            raise ConfigError(f"early stopping patience must be a whole number >= 1; received patience={patience!r}")
        if not (is_number(min_delta) and 0 <= min_delta < float("inf")):
            raise ConfigError(f"early stopping min_delta must be a number >= 0; received min_delta={min_delta!r}")
        if mode not in self.MODES:
            raise ConfigError(f"early stopping mode must be one of: {', '.join(self.MODES)}; received mode={mode!r}")
        if monitor is not None and not isinstance(monitor, str):
            raise ConfigError(f"early stopping monitor must be a metric name such as 'val_loss'; received {monitor!r}")
        self.patience, self.min_delta, self.restore_best = int(patience), float(min_delta), bool(restore_best)
        self.monitor, self.mode = monitor, mode

    def get_config(self):
        """The constructor's arguments: `EarlyStopping(**config)` is a new one, with no run's state."""
        return {"patience": self.patience, "min_delta": self.min_delta, "restore_best": self.restore_best,
                "monitor": self.monitor, "mode": self.mode}

    @classmethod
    def coerce(cls, spec):
        if spec is None or isinstance(spec, cls):
            return spec
        if isinstance(spec, dict):
            check_options("early_stopping", cls, spec)
            return cls(**spec)
        raise ConfigError(f"early_stopping must be an EarlyStopping or a dict of its options; received {spec!r}")

    def start(self, available):
        """Before the first epoch: `available` lists the keys the run's epochs report."""
        self.key = self.monitor or ("val_loss" if "val_loss" in available else "loss")
        if self.key not in available:
            hint = "" if any(key.startswith("val_") for key in available) else \
                "; val_ keys need validation_data or validation_split"
            raise ConfigError(f"early stopping monitor {self.key!r} is not reported by this run; send one of: "
                              f"{', '.join(available)}{hint}")
        higher = metrics.higher_is_better(self.key) if self.mode == "auto" else self.mode == "max"
        self.sign = -1.0 if higher else 1.0  # compare sign * value: lower is better
        self.best, self.best_epoch, self.best_state, self.waited, self.stopped = float("inf"), None, None, 0, False
        history, best_state = getattr(self, "_resumed", ((), None))
        for logs in history:  # a resumed run's epochs so far: patience and the best value carry on
            self.stopped = self.update(logs["epoch"], logs, lambda: None)
        self.best_state = best_state if self.best_epoch is not None else None

    def resume(self, history, best_state=None):
        """Go on from a run stopped after the epochs of `history` (History entries, oldest first; entries holding
        an "event", such as a restart note, are skipped): `start` replays them. `best_state` is what `model_state`
        gave at their best epoch (e.g. kept with a checkpoint then): what `restore_best` puts back. Returns self."""
        self._resumed = ([logs for logs in history if "event" not in logs], best_state)
        return self

    def improves(self, logs):
        """Whether an epoch with these logs would be the best so far (`update` then keeps its state)."""
        value = logs.get(self.key)
        return value is not None and self.sign * value < self.best - self.min_delta

    def update(self, epoch, logs, state):
        """Record an epoch; `state()` copies what `restore_best` puts back. Returns True when training should stop."""
        if self.improves(logs):
            self.best, self.best_epoch, self.waited = self.sign * logs[self.key], epoch, 0
            if self.restore_best:
                self.best_state = state()
            return False
        self.waited += 1
        return self.waited >= self.patience


def reported(task, validation):
    """The keys each epoch of a run reports (and `EarlyStopping` may monitor): loss, accuracy for classifiers,
    and with validation data val_ and each metric `Network.evaluate` gives for the task."""
    return ["loss"] + (["accuracy"] if task in ("multiclass", "binary") else []) + \
        ([f"val_{key}" for key in metrics.names(task)] if validation else [])


def model_state(net):
    """A copy of what inference uses: the weights and the BatchNorm running statistics."""
    return net._flat.copy(), [array.copy() for layer in net.layers for array in layer.buffers.values()]


def put_back(net, state):
    """Sets the network to a `model_state`."""
    net._flat[...] = state[0]
    for array, saved in zip((a for layer in net.layers for a in layer.buffers.values()), state[1]):
        array[...] = saved


class Run:
    """One `fit` call: the epoch and batch loops, progress reporting and stopping."""

    def __init__(self, net, x, y, x_val, y_val, loss, optimizer, schedule, stopper, callbacks,
                 epochs, batch_size, shuffle, l1, l2, clip_norm, initial_epoch):
        self.net, self.x, self.y, self.x_val, self.y_val = net, x, y, x_val, y_val
        self.loss, self.optimizer, self.schedule, self.stopper = loss, optimizer, schedule, stopper
        self.callbacks, self.epochs, self.batch_size, self.shuffle = callbacks, epochs, batch_size, shuffle
        self.l1, self.l2, self.clip_norm, self.initial_epoch = l1, l2, clip_norm, initial_epoch
        self.n = x.shape[0]
        self.batches = -(-self.n // batch_size)
        self.task = _task(loss, net.output_size)
        self.labels = _classes(y, loss, targets=True) if self.task in ("multiclass", "binary") else None
        self.history = History()

    def _notify(self, hook, argument):
        stop = False
        for callback in self.callbacks:
            try:
                stop = bool(getattr(callback, hook)(argument)) or stop
            except StopTraining:
                stop = True
        return stop

    def _progress(self, epoch, batch, seen, loss_sum, lr, started, logs=None):
        elapsed = time.perf_counter() - started
        total = (self.epochs - self.initial_epoch) * self.n
        done = (epoch - 1 - self.initial_epoch) * self.n + seen
        return Progress(epoch=epoch, epochs=self.epochs, batch=batch, batches=self.batches,
                        samples_seen=seen, loss=loss_sum / seen if seen else float("nan"), learning_rate=lr,
                        samples_per_second=done / elapsed if elapsed > 0 else 0.0, elapsed=elapsed,
                        eta_seconds=elapsed / done * (total - done) if done else None,
                        percent=100.0 * done / total, logs=logs or {})

    def train(self):
        net, history = self.net, self.history
        started = time.perf_counter()
        if self.stopper:
            self.stopper.start(reported(self.task, self.x_val is not None))
        stop = self._notify("on_train_begin", self._progress(self.initial_epoch + 1, 0, 0, 0.0, 0.0, started))
        if self.stopper and self.stopper.stopped:  # resumed after it had stopped: no epoch more, the best goes back
            stop = history.stopped_early = True
        for epoch in range(self.initial_epoch, self.epochs):
            if stop:
                break
            lr = self.schedule(epoch, self.optimizer.learning_rate, self.epochs)
            snapshot = (self._model_state(), {k: v.copy() for k, v in self.optimizer.state.items()}, self.optimizer.t,
                        net.rng.bit_generator.state)
            epoch_started = time.perf_counter()
            stop, loss_sum, correct, seen = self._epoch(epoch, lr, started, snapshot)
            if not self._state_is_finite():  # the last step overflowed: the loss it reported was still finite
                self._restore(snapshot, epoch)
                raise NonFiniteError(
                    f"training diverged at epoch {epoch + 1}: the weights, running statistics or optimizer state became "
                    f"NaN or Inf; the weights were restored to the end of epoch {epoch}. Lower the learning_rate (now {lr:g}), "
                    "add clip_norm, or scale the inputs.", epoch=epoch + 1)
            if seen < self.n:  # stopped by a callback inside the epoch
                history.stopped = True
                break
            logs = {"epoch": epoch + 1, "loss": loss_sum / seen}
            if self.labels is not None:
                logs["accuracy"] = correct / seen
            if self.x_val is not None:
                val = net.evaluate(self.x_val, self.y_val, loss=self.loss)
                logs.update({f"val_{key}": value for key, value in val.items() if key != "confusion_matrix"})
            elapsed = time.perf_counter() - epoch_started
            logs.update(learning_rate=lr, samples_per_second=seen / elapsed if elapsed > 0 else 0.0, time=elapsed)
            net.epochs_trained = epoch + 1
            history.append(logs)
            self.schedule.on_epoch_end(logs)
            stop = self._notify("on_epoch_end", self._progress(epoch + 1, self.batches, seen, loss_sum, lr, started, logs)) or stop
            history.stopped = stop
            if self.stopper and self.stopper.update(epoch + 1, logs, self._model_state):
                history.stopped_early = True
                break
        if self.stopper and self.stopper.restore_best and self.stopper.best_state is not None:
            self._put_back(self.stopper.best_state)
            history.best_epoch = self.stopper.best_epoch
        for layer in net.layers:
            layer.clear_workspaces()
        self._notify("on_train_end", history)
        return history

    def _buffers(self):
        """The layers' non-trained state: BatchNorm running statistics."""
        return [array for layer in self.net.layers for array in layer.buffers.values()]

    def _model_state(self):
        return model_state(self.net)

    def _put_back(self, state):
        put_back(self.net, state)

    def _state_is_finite(self):
        """Every weight, running statistic and optimizer state array is finite (one pass over each, once an epoch)."""
        arrays = [self.net._flat, *self._buffers(), *self.optimizer.state.values()]
        return all(np.isfinite(array).all() for array in arrays)

    def _restore(self, snapshot, epoch):
        """Back to the end of `epoch` (the start of the failed one): weights, running statistics, optimizer state
        and the generator used for shuffling and dropout."""
        self._put_back(snapshot[0])
        self.optimizer.load_state_dict({"t": snapshot[2], "arrays": snapshot[1]})
        self.net.rng.bit_generator.state = snapshot[3]
        self.net.epochs_trained = epoch

    def _epoch(self, epoch, lr, started, snapshot):
        # Overflow is reported as NonFiniteError with advice below, not as NumPy warnings.
        with np.errstate(over="ignore", invalid="ignore"):
            return self._batches(epoch, lr, started, snapshot)

    def _batches(self, epoch, lr, started, snapshot):
        net, x, y, n, size = self.net, self.x, self.y, self.n, self.batch_size
        order = net.rng.permutation(n) if self.shuffle else None
        loss_sum, correct, seen, stop = 0.0, 0, 0, False
        xb_full = np.empty((min(size, n), x.shape[1]), net.dtype) if self.shuffle else None
        yb_full = np.empty((min(size, n), y.shape[1]), net.dtype) if self.shuffle else None
        for batch in range(self.batches):
            start, stop_index = batch * size, min((batch + 1) * size, n)
            m = stop_index - start
            if order is None:
                xb, yb, index = x[start:stop_index], y[start:stop_index], slice(start, stop_index)
            else:
                index = order[start:stop_index]
                # mode="clip": the indices are a permutation, always valid; the default mode="raise"
                # gathers into a temporary and copies it into out= (2-3x slower)
                xb = np.take(x, index, axis=0, out=xb_full[:m], mode="clip")
                yb = np.take(y, index, axis=0, out=yb_full[:m], mode="clip")
            value, out = net._train_step(xb, yb, self.loss, self.optimizer, lr, self.l1, self.l2, self.clip_norm)
            if not math.isfinite(value):
                self._restore(snapshot, epoch)
                raise NonFiniteError(
                    f"training diverged at epoch {epoch + 1}: the loss became {value}; the weights were restored "
                    f"to the end of epoch {epoch}. Lower the learning_rate (now {lr:g}), add clip_norm, or scale the inputs.",
                    epoch=epoch + 1)
            loss_sum += value * m
            seen += m
            if self.labels is not None:
                correct += int(np.count_nonzero(_classes(out, self.loss) == self.labels[index]))
            if self.callbacks:
                progress = self._progress(epoch + 1, batch + 1, seen, loss_sum, lr, started)
                if self._notify("on_batch_end", progress):
                    return True, loss_sum, correct, seen
        return stop, loss_sum, correct, seen


def validation_size(n_samples: int, validation_split: float) -> int:
    """How many of ``n_samples`` fit holds out for validation (the last ones): round(n × validation_split), which
    must leave at least one sample on each side."""
    n_val = int(round(n_samples * validation_split))
    if not 0 < n_val < n_samples:
        keep = (f"choose a split that holds out 1 to {n_samples - 1} of them" if n_samples > 1
                else "a split needs 2 or more samples")
        raise ConfigError(f"validation_split={validation_split} holds out {n_val} of {n_samples} samples (the rounded "
                          f"fraction), leaving none to {'validate on' if n_val == 0 else 'train on'}; {keep}")
    return n_val


def check_training_options(epochs, batch_size, validation_split, l1, l2, clip_norm, initial_epoch, callbacks, shuffle):
    def whole(value, minimum):
        return is_whole(value) and value >= minimum
    if not whole(epochs, 1):
        raise ConfigError(f"epochs must be a positive integer; received epochs={epochs!r}")
    if not whole(initial_epoch, 0) or initial_epoch >= epochs:
        raise ConfigError(f"initial_epoch must be a whole number below epochs ({epochs}); received {initial_epoch!r}")
    if not whole(batch_size, 1):
        raise ConfigError(f"batch_size must be a positive integer; received batch_size={batch_size!r}")
    if not (is_number(validation_split) and 0.0 <= validation_split < 1.0):
        raise ConfigError(f"validation_split must be a number in [0, 1); received validation_split={validation_split!r}")
    for name, value in (("l1", l1), ("l2", l2)):
        if not (is_number(value) and 0.0 <= value < float("inf")):
            raise ConfigError(f"{name} must be a finite number >= 0; received {name}={value!r}")
    if clip_norm is not None and not (is_number(clip_norm) and 0 < clip_norm < float("inf")):
        raise ConfigError(f"clip_norm must be a positive number or None; received clip_norm={clip_norm!r}")
    if not isinstance(shuffle, (bool, np.bool_)):  # "no" is true
        raise ConfigError(f"shuffle must be True or False; received shuffle={shuffle!r}")
    if callbacks is not None and not (isinstance(callbacks, (list, tuple)) and all(isinstance(c, Callback) for c in callbacks)):
        raise ConfigError(f"callbacks must be a list of Callback instances or None; received {callbacks!r}")
