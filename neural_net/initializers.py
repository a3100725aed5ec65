"""Weight and bias initialisers. Each fills `out` (shape (n_in, n_out) or (n_out,)) from `rng`.

Weights (fan_in = n_in, fan_out = n_out):
- xavier:          N(0, std^2),   std = sqrt(2 / (fan_in + fan_out))   (Glorot & Bengio 2010, normal)
- xavier_uniform:  U(-l, l),      l = sqrt(6 / (fan_in + fan_out))
- he:              N(0, std^2),   std = sqrt(2 / fan_in)                (He et al. 2015, normal)
- he_uniform:      U(-l, l),      l = sqrt(6 / fan_in)
- lecun:           N(0, std^2),   std = sqrt(1 / fan_in)                (LeCun 1998)
- gaussian:        N(0, std^2),   std configurable, default 0.01
Biases:
- zeros:    0
- random:   N(0, std^2), std configurable, default 0.01
- constant: value, default 0.01 (a small positive value keeps ReLU units alive)
"""
import numpy as np

from .errors import ConfigError
from .registry import Registry, is_number

WEIGHT_INITIALIZERS = Registry("weight initialiser")
BIAS_INITIALIZERS = Registry("bias initialiser")


class Initializer:
    name = None

    def get_config(self):
        return {"name": self.name, **vars(self)}

    def fill(self, out, rng):
        out[...] = self.sample(out.shape, rng)
        return out


class _Normal(Initializer):
    def sample(self, shape, rng):
        return rng.normal(0.0, self.std_for(shape), size=shape)


class _Uniform(Initializer):
    def sample(self, shape, rng):
        limit = self.limit_for(shape)
        return rng.uniform(-limit, limit, size=shape)


def _fans(shape):
    return (shape[0], shape[1]) if len(shape) == 2 else (shape[0], shape[0])


@WEIGHT_INITIALIZERS.register("xavier")
class XavierNormal(_Normal):
    def std_for(self, shape):
        fan_in, fan_out = _fans(shape)
        return np.sqrt(2.0 / (fan_in + fan_out))


@WEIGHT_INITIALIZERS.register("xavier_uniform")
class XavierUniform(_Uniform):
    def limit_for(self, shape):
        fan_in, fan_out = _fans(shape)
        return np.sqrt(6.0 / (fan_in + fan_out))


@WEIGHT_INITIALIZERS.register("he")
class HeNormal(_Normal):
    def std_for(self, shape):
        return np.sqrt(2.0 / _fans(shape)[0])


@WEIGHT_INITIALIZERS.register("he_uniform")
class HeUniform(_Uniform):
    def limit_for(self, shape):
        return np.sqrt(6.0 / _fans(shape)[0])


@WEIGHT_INITIALIZERS.register("lecun")
class LecunNormal(_Normal):
    def std_for(self, shape):
        return np.sqrt(1.0 / _fans(shape)[0])


def _positive_std(std):
    if not (is_number(std) and std > 0):
        raise ConfigError(f"std must be a positive finite number; received std={std!r}")
    return float(std)


class _FixedStd(_Normal):
    """N(0, std^2) with a configured std, whatever the shape."""

    def __init__(self, std=0.01):
        self.std = _positive_std(std)

    def std_for(self, shape):
        return self.std


@WEIGHT_INITIALIZERS.register("gaussian")
class GaussianWeights(_FixedStd):
    pass


@BIAS_INITIALIZERS.register("zeros")
class Zeros(Initializer):
    def fill(self, out, rng):
        out[...] = 0
        return out


@BIAS_INITIALIZERS.register("random")
class RandomBias(_FixedStd):
    pass


@BIAS_INITIALIZERS.register("constant")
class Constant(Initializer):
    def __init__(self, value=0.01):
        if not is_number(value):
            raise ConfigError(f"constant value must be a finite number; received value={value!r}")
        self.value = float(value)

    def fill(self, out, rng):
        out[...] = self.value
        return out


def get_weight(spec):
    return WEIGHT_INITIALIZERS.get(spec)


def get_bias(spec):
    return BIAS_INITIALIZERS.get(spec)


weight_names = WEIGHT_INITIALIZERS.names
bias_names = BIAS_INITIALIZERS.names
