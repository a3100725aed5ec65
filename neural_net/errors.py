"""The core's exceptions: one small hierarchy, each saying what was expected and what was received."""


class NeuralNetError(ValueError):
    """Base class of every error the core raises on purpose."""


class ShapeError(NeuralNetError):
    """An array has the wrong shape for the network or for another array."""


class TargetValueError(ShapeError):
    """A target value the loss cannot take: `rule` says which values it takes, `index` where the first other one
    is in the targets given (a tuple), `value` what it is. A caller that passed a block of a larger array names
    the row in the whole with `at(offset)`."""

    def __init__(self, rule, index, value):
        self.rule, self.index, self.value = rule, tuple(int(i) for i in index), float(value)
        where = ", ".join(map(str, self.index))
        # the shortest digits of its own type (2.0000001 is not 2; float32 1.2 is not 1.2000000476837158); -1, not -1.0
        shown = str(int(self.value)) if self.value.is_integer() and abs(self.value) < 2**53 else str(value)
        super().__init__(f"{rule}; targets[{where}] is {shown}")

    def at(self, offset):
        return TargetValueError(self.rule, (self.index[0] + offset, *self.index[1:]), self.value)


class UnknownNameError(NeuralNetError, KeyError):
    """A name (activation, loss, optimizer, ...) is not in its registry."""

    def __str__(self):  # KeyError would quote the message
        return str(self.args[0])


class ConfigError(NeuralNetError):
    """A hyper-parameter or configuration value is out of range."""


class LimitError(ConfigError):
    """An architecture beyond a limit the caller set; `limit` names it (max_layers, max_layer_size, max_parameters)."""

    def __init__(self, message, limit):
        super().__init__(message)
        self.limit = limit


class NonFiniteError(NeuralNetError):
    """NaN or Inf where finite numbers are required (inputs, targets or the loss)."""

    def __init__(self, message, epoch=None):
        super().__init__(message)
        self.epoch = epoch


class StopTraining(Exception):
    """Raised by a callback to end `fit` cleanly after the current batch."""
