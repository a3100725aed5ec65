"""The training loop behind `Network.fit` (`Run`) and what it reports: per-batch `Progress`,
per-epoch `History`, callbacks and early stopping."""
import math
import time
from dataclasses import dataclass, field

import numpy as np

from .errors import ConfigError, NonFiniteError, StopTraining
from .losses import classes as _classes
from .losses import task as _task


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
    """Stop when the monitored value (val_loss when there is validation data, else loss) has not
    improved by more than `min_delta` for `patience` epochs; with `restore_best`, put back the best
    epoch's weights at the end."""

    def __init__(self, patience=5, min_delta=0.0, restore_best=True, monitor=None):
        if not (isinstance(patience, int) and patience >= 1) or min_delta < 0:
            raise ConfigError(
                f"early stopping needs patience >= 1 and min_delta >= 0; received patience={patience!r}, min_delta={min_delta!r}"
            )
        self.patience, self.min_delta, self.restore_best, self.monitor = patience, float(min_delta), bool(restore_best), monitor

    @classmethod
    def coerce(cls, spec):
        if spec is None or isinstance(spec, cls):
            return spec
        if isinstance(spec, dict):
            return cls(**spec)
        raise ConfigError(f"early_stopping must be an EarlyStopping or a dict of its options; received {spec!r}")

    def start(self):
        self.best, self.best_epoch, self.best_params, self.waited = float("inf"), None, None, 0

    def update(self, epoch, logs, params):
        """Record an epoch; returns True when training should stop."""
        key = self.monitor or ("val_loss" if "val_loss" in logs else "loss")
        value = logs[key]
        if value < self.best - self.min_delta:
            self.best, self.best_epoch, self.waited = value, epoch, 0
            if self.restore_best:
                self.best_params = params.copy()
            return False
        self.waited += 1
        return self.waited >= self.patience


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
            self.stopper.start()
        stop = self._notify("on_train_begin", self._progress(self.initial_epoch + 1, 0, 0, 0.0, 0.0, started))
        for epoch in range(self.initial_epoch, self.epochs):
            if stop:
                break
            lr = self.schedule(epoch, self.optimizer.learning_rate, self.epochs)
            snapshot = (net._flat.copy(), {k: v.copy() for k, v in self.optimizer.state.items()}, self.optimizer.t)
            epoch_started = time.perf_counter()
            stop, loss_sum, correct, seen = self._epoch(epoch, lr, started, snapshot)
            if not self._state_is_finite():  # the last step overflowed: the loss it reported was still finite
                self._restore(snapshot, epoch)
                raise NonFiniteError(
                    f"training diverged at epoch {epoch + 1}: the weights or the optimizer state became NaN or Inf; "
                    f"the weights were restored to the end of epoch {epoch}. Lower the learning_rate (now {lr:g}), "
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
            if self.stopper and self.stopper.update(epoch + 1, logs, net._flat):
                history.stopped_early = True
                break
        if self.stopper and self.stopper.restore_best and self.stopper.best_params is not None:
            net._flat[...] = self.stopper.best_params
            history.best_epoch = self.stopper.best_epoch
        for layer in net.layers:
            layer.clear_workspaces()
        self._notify("on_train_end", history)
        return history

    def _state_is_finite(self):
        """Every weight and every optimizer state array is finite (one pass over each, once an epoch)."""
        arrays = [self.net._flat, *self.optimizer.state.values()]
        return all(np.isfinite(array).all() for array in arrays)

    def _restore(self, snapshot, epoch):
        """Back to the weights and optimizer state of the end of `epoch` (the start of the failed one)."""
        self.net._flat[...] = snapshot[0]
        self.optimizer.load_state_dict({"t": snapshot[2], "arrays": snapshot[1]})
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


def check_training_options(epochs, batch_size, validation_split, l1, l2, clip_norm, initial_epoch):
    def whole(value, minimum):
        return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= minimum
    if not whole(epochs, 1):
        raise ConfigError(f"epochs must be a positive integer; received epochs={epochs!r}")
    if not whole(initial_epoch, 0) or initial_epoch >= epochs:
        raise ConfigError(f"initial_epoch must be a whole number below epochs ({epochs}); received {initial_epoch!r}")
    if not whole(batch_size, 1):
        raise ConfigError(f"batch_size must be a positive integer; received batch_size={batch_size!r}")
    if not 0.0 <= validation_split < 1.0:
        raise ConfigError(f"validation_split must be in [0, 1); received {validation_split!r}")
    for name, value in (("l1", l1), ("l2", l2)):
        if not (isinstance(value, (int, float)) and 0.0 <= value < float("inf")):
            raise ConfigError(f"{name} must be a finite number >= 0; received {name}={value!r}")
    if clip_norm is not None and not clip_norm > 0:
        raise ConfigError(f"clip_norm must be positive or None; received clip_norm={clip_norm!r}")
