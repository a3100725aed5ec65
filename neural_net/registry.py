"""Name -> class registries (activations, initialisers, losses, optimizers, schedules), and the check of the
options a config passes to a constructor (`check_options`), shared by registries, layers and early stopping."""
import inspect
import math
import numbers

import numpy as np

from .errors import ConfigError, UnknownNameError


def is_number(value):
    """A finite real number, NumPy scalars included; a bool, NaN and Inf are not one (no setting takes them: a
    check such as `eps <= 0` lets NaN through)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)


def is_whole(value):
    """A whole number (int or NumPy integer); a bool is not one."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_options(what, cls, options):
    """ConfigError unless every option is a parameter of `cls` and, where its default is a number, a finite number
    (a whole one where the default is an int). `what` names the thing in the message ("optimizer 'adam')."""
    parameters = {name: p.default for name, p in inspect.signature(cls).parameters.items()
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        takes = f"it takes: {', '.join(parameters)}" if parameters else "it takes no options"
        raise ConfigError(f"{what} does not take the option{'s' * (len(unknown) > 1)} {', '.join(unknown)}; {takes}")
    for name, value in options.items():
        default = parameters[name]
        if is_whole(default) and not is_whole(value):
            raise ConfigError(f"{what} option {name} must be a whole number; received {value!r}")
        if is_number(default) and not is_number(value):
            raise ConfigError(f"{what} option {name} must be a finite number; received {value!r}")


class Registry:
    """A dict of name -> class with a decorator to fill it and a lookup that lists valid names."""

    def __init__(self, kind):
        self.kind = kind
        self._classes = {}

    def register(self, name):
        def decorate(cls):
            if name in self._classes:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._classes[name] = cls
            cls.name = name
            return cls
        return decorate

    def names(self):
        return sorted(self._classes)

    def __contains__(self, name):
        return name in self._classes

    def get_class(self, name):
        try:
            return self._classes[name]
        except (KeyError, TypeError):
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; expected one of: {', '.join(self.names())}"
            ) from None

    def get(self, spec, **kwargs):
        """Build an instance from a name, a config dict {"name": ..., **options} or an instance; options are
        checked by name and type (`check_options`)."""
        if isinstance(spec, dict):
            options = dict(spec)
            name = options.pop("name", None)
            return self._build(name, {**options, **kwargs})
        if isinstance(spec, str):
            return self._build(spec, kwargs)
        if any(isinstance(spec, cls) for cls in self._classes.values()):
            return spec
        raise UnknownNameError(
            f"expected a {self.kind} name or config dict, received {spec!r}; "
            f"valid names: {', '.join(self.names())}"
        )

    def _build(self, name, options):
        cls = self.get_class(name)
        check_options(f"{self.kind} {name!r}", cls, options)
        return cls(**options)
