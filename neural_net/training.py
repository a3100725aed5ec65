"""What `Network.fit` reports: per-batch `Progress`, per-epoch `History`, callbacks and early stopping."""
from dataclasses import dataclass, field

from .errors import ConfigError


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
