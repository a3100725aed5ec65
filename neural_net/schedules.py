"""Learning-rate schedules, evaluated once per epoch: `schedule(epoch, base_lr, epochs)` where `epoch`
counts from 0 and `epochs` is the total of the run.

- constant:     lr = base
- exponential:  lr = base * decay_rate ** e             (the FastAPI seed's per-epoch decay_rate)
- step:         lr = base * gamma ** (e // step_size)
- cosine:       lr = min_lr + (base - min_lr) * (1 + cos(pi * e / E)) / 2 over the E post-warm-up epochs
Every schedule takes `warmup_epochs` (default 0): for e < W, lr = base * (e + 1) / (W + 1), and the
schedule proper starts at e = W with e counted from there.
"""
import math

from .errors import ConfigError
from .registry import Registry

SCHEDULES = Registry("schedule")
names = SCHEDULES.names
get = SCHEDULES.get


class Schedule:
    name = None

    def __init__(self, warmup_epochs=0):
        if not (isinstance(warmup_epochs, int) and warmup_epochs >= 0):
            raise ConfigError(f"warmup_epochs must be a whole number >= 0; received {warmup_epochs!r}")
        self.warmup_epochs = warmup_epochs

    def get_config(self):
        return {"name": self.name, **vars(self)}

    def __call__(self, epoch, base_lr, epochs):
        if epoch < self.warmup_epochs:
            return base_lr * (epoch + 1) / (self.warmup_epochs + 1)
        return self.rate(epoch - self.warmup_epochs, base_lr, max(epochs - self.warmup_epochs, 1))

    def rate(self, epoch, base_lr, epochs):
        return base_lr


@SCHEDULES.register("constant")
class Constant(Schedule):
    pass


@SCHEDULES.register("exponential")
class Exponential(Schedule):
    def __init__(self, decay_rate=0.96, warmup_epochs=0):
        super().__init__(warmup_epochs)
        if not 0 < decay_rate <= 1:
            raise ConfigError(f"decay_rate must be in (0, 1]; received decay_rate={decay_rate}")
        self.decay_rate = float(decay_rate)

    def rate(self, epoch, base_lr, epochs):
        return base_lr * self.decay_rate ** epoch


@SCHEDULES.register("step")
class Step(Schedule):
    def __init__(self, step_size=10, gamma=0.5, warmup_epochs=0):
        super().__init__(warmup_epochs)
        if not (isinstance(step_size, int) and step_size >= 1) or not 0 < gamma <= 1:
            raise ConfigError(f"step needs step_size >= 1 and 0 < gamma <= 1; received step_size={step_size}, gamma={gamma}")
        self.step_size, self.gamma = step_size, float(gamma)

    def rate(self, epoch, base_lr, epochs):
        return base_lr * self.gamma ** (epoch // self.step_size)


@SCHEDULES.register("cosine")
class Cosine(Schedule):
    def __init__(self, min_lr=0.0, warmup_epochs=0):
        super().__init__(warmup_epochs)
        if min_lr < 0:
            raise ConfigError(f"min_lr must be >= 0; received min_lr={min_lr}")
        self.min_lr = float(min_lr)

    def rate(self, epoch, base_lr, epochs):
        return self.min_lr + (base_lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
