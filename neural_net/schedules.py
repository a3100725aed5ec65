"""Learning-rate schedules, evaluated once per epoch: `schedule(epoch, base_lr, epochs)` where `epoch`
counts from 0 and `epochs` is the total of the run.

- constant:     lr = base
- exponential:  lr = base * decay_rate ** e             (the FastAPI seed's per-epoch decay_rate)
- step:         lr = base * gamma ** (e // step_size)
- cosine:       lr = min_lr + (base - min_lr) * (1 + cos(pi * e / E)) / 2 over the E post-warm-up epochs
- reduce_on_plateau: lr = max(base * factor ** k, min_lr), where k counts the times the monitored loss
                (val_loss when there is validation data, else loss) went `patience` epochs without
                improving by more than min_delta (Keras ReduceLROnPlateau without cooldown)
Every schedule takes `warmup_epochs` (default 0): for e < W, lr = base * (e + 1) / (W + 1), and the
schedule proper starts at e = W with e counted from there.
"""
import math

from .errors import ConfigError
from .registry import Registry, is_number, is_whole

SCHEDULES = Registry("schedule")
names = SCHEDULES.names
get = SCHEDULES.get


class Schedule:
    name = None

    def __init__(self, warmup_epochs=0):
        if not (is_whole(warmup_epochs) and warmup_epochs >= 0):
            raise ConfigError(f"warmup_epochs must be a whole number >= 0; received {warmup_epochs!r}")
        self.warmup_epochs = int(warmup_epochs)

    def get_config(self):
        return {"name": self.name, **vars(self)}

    def __call__(self, epoch, base_lr, epochs):
        if epoch < self.warmup_epochs:
            return base_lr * (epoch + 1) / (self.warmup_epochs + 1)
        return self.rate(epoch - self.warmup_epochs, base_lr, max(epochs - self.warmup_epochs, 1))

    def rate(self, epoch, base_lr, epochs):
        return base_lr

    def on_epoch_end(self, logs):
        """Called by `fit` after every epoch with its logs (loss, val_loss, ...); stateless schedules ignore it."""

    def replay(self, records):
        """Rebuild the state from earlier epochs' logs (e.g. a resumed run's history); returns self."""
        for logs in records:
            self.on_epoch_end(logs)
        return self


@SCHEDULES.register("constant")
class Constant(Schedule):
    pass


@SCHEDULES.register("exponential")
class Exponential(Schedule):
    def __init__(self, decay_rate=0.96, warmup_epochs=0):
        super().__init__(warmup_epochs)
        if not (is_number(decay_rate) and 0 < decay_rate <= 1):
            raise ConfigError(f"decay_rate must be a number in (0, 1]; received decay_rate={decay_rate!r}")
        self.decay_rate = float(decay_rate)

    def rate(self, epoch, base_lr, epochs):
        return base_lr * self.decay_rate ** epoch


@SCHEDULES.register("step")
class Step(Schedule):
    def __init__(self, step_size=10, gamma=0.5, warmup_epochs=0):
        super().__init__(warmup_epochs)
        if not (is_whole(step_size) and step_size >= 1) or not (is_number(gamma) and 0 < gamma <= 1):
            raise ConfigError(f"step needs a whole step_size >= 1 and a number 0 < gamma <= 1; received "
                              f"step_size={step_size!r}, gamma={gamma!r}")
        self.step_size, self.gamma = int(step_size), float(gamma)

    def rate(self, epoch, base_lr, epochs):
        return base_lr * self.gamma ** (epoch // self.step_size)


@SCHEDULES.register("cosine")
class Cosine(Schedule):
    def __init__(self, min_lr=0.0, warmup_epochs=0):
        super().__init__(warmup_epochs)
        if not (is_number(min_lr) and min_lr >= 0):
            raise ConfigError(f"min_lr must be a finite number >= 0; received min_lr={min_lr!r}")
        self.min_lr = float(min_lr)

    def rate(self, epoch, base_lr, epochs):
        return self.min_lr + (base_lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * epoch / epochs))


@SCHEDULES.register("reduce_on_plateau")
class ReduceOnPlateau(Schedule):
    """Multiply the rate by `factor` each time the monitored loss has not improved for `patience` epochs.

    State (the best loss, epochs waited, reductions made) lives in the instance: pass the same instance
    to a later `fit` to continue, or rebuild it from a run's per-epoch logs with `replay`.
    """

    def __init__(self, factor=0.5, patience=5, min_lr=0.0, min_delta=0.0, warmup_epochs=0):
        super().__init__(warmup_epochs)
        if not (is_number(factor) and 0 < factor < 1):
            raise ConfigError(f"reduce_on_plateau factor must be in (0, 1); received factor={factor!r}")
        if not (is_whole(patience) and patience >= 1):
            raise ConfigError(f"reduce_on_plateau patience must be a whole number >= 1; received patience={patience!r}")
        if not (is_number(min_lr) and min_lr >= 0 and is_number(min_delta) and min_delta >= 0):
            raise ConfigError(f"min_lr and min_delta must be finite numbers >= 0; received min_lr={min_lr!r}, "
                              f"min_delta={min_delta!r}")
        self.factor, self.patience, self.min_lr, self.min_delta = float(factor), int(patience), float(min_lr), float(min_delta)
        self.best, self.waited, self.reductions = math.inf, 0, 0

    def get_config(self):
        return {"name": self.name, "factor": self.factor, "patience": self.patience, "min_lr": self.min_lr,
                "min_delta": self.min_delta, "warmup_epochs": self.warmup_epochs}

    def rate(self, epoch, base_lr, epochs):
        return max(base_lr * self.factor ** self.reductions, self.min_lr)

    def on_epoch_end(self, logs):
        value = logs.get("val_loss", logs.get("loss"))
        if value is None or not math.isfinite(value):
            return
        if value < self.best - self.min_delta:
            self.best, self.waited = value, 0
            return
        self.waited += 1
        if self.waited >= self.patience:
            self.reductions += 1
            self.waited = 0


def resolve(schedule, options):
    """The schedule of `fit(schedule=..., schedule_options=...)`: a name (None: "constant") with its options, or an
    instance, which takes no options beside it (they would be ignored)."""
    if options is not None and not isinstance(options, dict):
        raise ConfigError(f"schedule_options must be a dict of the schedule's options or None; received {options!r}")
    if isinstance(schedule, Schedule):
        if options:
            raise ConfigError(f"schedule_options {sorted(options)} would be ignored by a schedule instance; create the "
                              "instance with them, or pass the schedule by name")
        return schedule
    try:
        return get(schedule or "constant", **(options or {}))
    except ConfigError as exc:
        if schedule is None:  # the options were meant for a schedule that was not named
            raise ConfigError(f"{exc} (no schedule was given, so 'constant'; name the schedule these options are "
                              "for, e.g. schedule='exponential')") from None
        raise
