"""Optimisers over one flat parameter vector, updated in place.

The network keeps every parameter in one contiguous array (weights first, then biases and other
parameters), so an update is a handful of whole-array NumPy operations, not a loop over layers.
Each class keeps its state (moment arrays, step count); a module-level function does the math.
Formulas follow PyTorch's `torch.optim` with the defaults listed on each class.
"""
import math
import weakref

import numpy as np

from .errors import ConfigError
from .registry import Registry, is_number

OPTIMIZERS = Registry("optimizer")
CHUNK = 65536  # parameters updated together (see Optimizer.step)
names = OPTIMIZERS.names
get = OPTIMIZERS.get


def sgd_update(p, g, lr, scratch):
    """p <- p - lr g"""
    np.multiply(g, lr, out=scratch)
    p -= scratch


def momentum_update(p, g, velocity, lr, momentum, nesterov, scratch):
    """v <- mu v + g;  p <- p - lr v   (Nesterov: p <- p - lr (g + mu v))"""
    velocity *= momentum
    velocity += g
    if nesterov:
        np.multiply(velocity, momentum, out=scratch)
        scratch += g
        scratch *= lr
        p -= scratch
    else:
        np.multiply(velocity, lr, out=scratch)
        p -= scratch


def rmsprop_update(p, g, square_avg, lr, alpha, eps, scratch):
    """s <- alpha s + (1 - alpha) g^2;  p <- p - lr g / (sqrt(s) + eps)"""
    square_avg *= alpha
    np.multiply(g, g, out=scratch)
    scratch *= 1.0 - alpha
    square_avg += scratch
    _divide_step(p, g, square_avg, lr, eps, scratch)


def adagrad_update(p, g, sum_sq, lr, eps, scratch):
    """s <- s + g^2;  p <- p - lr g / (sqrt(s) + eps)"""
    np.multiply(g, g, out=scratch)
    sum_sq += scratch
    _divide_step(p, g, sum_sq, lr, eps, scratch)


def adam_update(p, g, m, v, t, lr, beta1, beta2, eps, scratch):
    """Adam (Kingma & Ba 2015), step t >= 1:
    m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
    p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    computed as p - lr' m / (sqrt(v) + eps') with lr' = lr sqrt(1 - b2^t) / (1 - b1^t) and
    eps' = eps sqrt(1 - b2^t): the same value, one whole-array pass fewer."""
    m *= beta1
    np.multiply(g, 1.0 - beta1, out=scratch)
    m += scratch
    v *= beta2
    np.multiply(g, g, out=scratch)
    scratch *= 1.0 - beta2
    v += scratch
    # Python floats, not NumPy float64 scalars: under NumPy 2's promotion rules those would make
    # float32 passes compute in float64 and cast back (3-4x slower)
    root_bias2 = math.sqrt(1.0 - beta2 ** t)
    _divide_step(p, m, v, lr * root_bias2 / (1.0 - beta1 ** t), eps * root_bias2, scratch)


def _divide_step(p, numerator, second_moment, lr, eps, scratch):
    """p <- p - lr * numerator / (sqrt(second_moment) + eps), with one scratch buffer."""
    np.sqrt(second_moment, out=scratch)
    scratch += eps
    np.divide(numerator, scratch, out=scratch)
    scratch *= lr
    p -= scratch


class Optimizer:
    """Base class: `bind` allocates state for a flat parameter vector, `step` updates it in place."""

    name = None
    default_learning_rate = 0.01
    state_names = ()

    def __init__(self, learning_rate=None):
        if learning_rate is None:
            learning_rate = self.default_learning_rate
        if not (is_number(learning_rate) and 0 < learning_rate < float("inf")):
            raise ConfigError(f"learning_rate must be a positive number; received learning_rate={learning_rate!r}")
        self.learning_rate = float(learning_rate)
        self.t = 0
        self.state = {}
        self._scratch = None
        self._decay_size = 0
        self._owner = None  # a weak reference to the network whose state this holds (see bind)

    def get_config(self):
        return {"name": self.name, "learning_rate": self.learning_rate, **self._options()}

    def _options(self):
        return {}

    def bind(self, size, dtype, decay_size=0, owner=None):
        """Allocate zero state for `size` parameters; the first `decay_size` are weights (for decoupled decay).
        `owner` is the network they belong to: an optimizer holds the state of one network (as a layer is part
        of one), so binding it to another while that one exists is refused."""
        held = self._owner() if self._owner is not None else None
        if owner is not None and held is not None and held is not owner:
            kind = type(self).__name__
            raise ConfigError(f"this {kind} instance already holds another network's state (moments, step count); "
                              f"create one per network, e.g. {kind}(learning_rate={self.learning_rate:g}), or pass "
                              f"the optimizer by name")
        self._owner = None if owner is None else weakref.ref(owner)
        self.state = {key: np.zeros(size, dtype=dtype) for key in self.state_names}
        self._scratch = np.empty(size, dtype=dtype)
        self._decay_size = decay_size
        self.t = 0

    def is_bound_to(self, size, dtype):
        return self._scratch is not None and self._scratch.size == size and self._scratch.dtype == dtype

    def step(self, params, grads, lr=None):
        """One update of `params` in place with gradient `grads` at learning rate `lr`.

        The update runs over chunks of CHUNK parameters, each through all of its passes before the
        next, so the arrays of a chunk stay in the CPU cache between passes (the passes are
        memory-bound: about 10% faster than whole-array passes for a 235k-parameter network)."""
        self.t += 1
        lr = self.learning_rate if lr is None else lr
        for start in range(0, params.size, CHUNK):
            chunk = slice(start, start + CHUNK)
            state = {key: array[chunk] for key, array in self.state.items()}
            decay = min(max(self._decay_size - start, 0), CHUNK)
            self._update(params[chunk], grads[chunk], state, self._scratch[chunk], lr, decay)

    def state_dict(self):
        return {"t": self.t, "arrays": dict(self.state)}

    def load_state_dict(self, state):
        self.t = int(state["t"])
        for key, array in state["arrays"].items():
            if key not in self.state or self.state[key].shape != array.shape:
                raise ConfigError(f"optimizer state {key!r} does not fit this network")
            self.state[key][...] = array


@OPTIMIZERS.register("sgd")
class SGD(Optimizer):
    """Plain gradient descent. Default learning_rate 0.01."""

    def _update(self, p, g, state, scratch, lr, n_decay):
        sgd_update(p, g, lr, scratch)


@OPTIMIZERS.register("momentum")
class Momentum(Optimizer):
    """Heavy-ball momentum (PyTorch SGD form). Defaults: learning_rate 0.01, momentum 0.9."""

    state_names = ("velocity",)
    nesterov = False

    def __init__(self, learning_rate=None, momentum=0.9):
        super().__init__(learning_rate)
        if not (is_number(momentum) and 0.0 <= momentum < 1.0):
            raise ConfigError(f"momentum must be a number in [0, 1); received momentum={momentum!r}")
        self.momentum = float(momentum)

    def _options(self):
        return {"momentum": self.momentum}

    def _update(self, p, g, state, scratch, lr, n_decay):
        momentum_update(p, g, state["velocity"], lr, self.momentum, self.nesterov, scratch)


@OPTIMIZERS.register("nesterov")
class Nesterov(Momentum):
    """Nesterov momentum (Sutskever et al. 2013, PyTorch form). Defaults: learning_rate 0.01, momentum 0.9."""

    nesterov = True


@OPTIMIZERS.register("rmsprop")
class RMSprop(Optimizer):
    """RMSprop (Hinton 2012). Defaults: learning_rate 0.001, alpha 0.99, eps 1e-8."""

    default_learning_rate = 0.001
    state_names = ("square_avg",)

    def __init__(self, learning_rate=None, alpha=0.99, eps=1e-8):
        super().__init__(learning_rate)
        if not (is_number(alpha) and 0.0 <= alpha < 1.0 and is_number(eps) and eps > 0):
            raise ConfigError(f"rmsprop needs numbers 0 <= alpha < 1 and eps > 0; received alpha={alpha!r}, eps={eps!r}")
        self.alpha, self.eps = float(alpha), float(eps)

    def _options(self):
        return {"alpha": self.alpha, "eps": self.eps}

    def _update(self, p, g, state, scratch, lr, n_decay):
        rmsprop_update(p, g, state["square_avg"], lr, self.alpha, self.eps, scratch)


@OPTIMIZERS.register("adagrad")
class Adagrad(Optimizer):
    """Adagrad (Duchi et al. 2011). Defaults: learning_rate 0.01, eps 1e-10."""

    state_names = ("sum_sq",)

    def __init__(self, learning_rate=None, eps=1e-10):
        super().__init__(learning_rate)
        if not (is_number(eps) and eps > 0):
            raise ConfigError(f"eps must be a positive finite number; received eps={eps!r}")
        self.eps = float(eps)

    def _options(self):
        return {"eps": self.eps}

    def _update(self, p, g, state, scratch, lr, n_decay):
        adagrad_update(p, g, state["sum_sq"], lr, self.eps, scratch)


@OPTIMIZERS.register("adam")
class Adam(Optimizer):
    """Adam (Kingma & Ba 2015). Defaults: learning_rate 0.001, beta1 0.9, beta2 0.999, eps 1e-8."""

    default_learning_rate = 0.001
    state_names = ("m", "v")

    def __init__(self, learning_rate=None, beta1=0.9, beta2=0.999, eps=1e-8):
        super().__init__(learning_rate)
        if not (all(map(is_number, (beta1, beta2, eps))) and 0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0 and eps > 0):
            raise ConfigError(
                f"adam needs numbers 0 <= beta1, beta2 < 1 and eps > 0; received beta1={beta1!r}, beta2={beta2!r}, eps={eps!r}"
            )
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)

    def _options(self):
        return {"beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}

    def _update(self, p, g, state, scratch, lr, n_decay):
        adam_update(p, g, state["m"], state["v"], self.t, lr, self.beta1, self.beta2, self.eps, scratch)


@OPTIMIZERS.register("adamw")
class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019): w <- w (1 - lr wd) before the Adam
    step, applied to weights only (not biases). Defaults: learning_rate 0.001, weight_decay 0.01."""

    def __init__(self, learning_rate=None, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01):
        super().__init__(learning_rate, beta1, beta2, eps)
        if not (is_number(weight_decay) and weight_decay >= 0):
            raise ConfigError(f"weight_decay must be a finite number >= 0; received weight_decay={weight_decay!r}")
        self.weight_decay = float(weight_decay)

    def _options(self):
        return {**super()._options(), "weight_decay": self.weight_decay}

    def _update(self, p, g, state, scratch, lr, n_decay):
        p[:n_decay] *= 1.0 - lr * self.weight_decay  # weights only: they come first in the flat array
        super()._update(p, g, state, scratch, lr, n_decay)


def resolve(optimizer, learning_rate=None):
    """The optimizer of `fit(optimizer=..., learning_rate=...)`: a name or config dict, with `learning_rate` (when
    not None) replacing its rate, or an instance, which keeps its own rate (so a learning_rate beside it is refused)."""
    if isinstance(optimizer, Optimizer):
        if learning_rate is not None:
            raise ConfigError(
                f"learning_rate={learning_rate!r} would be ignored: the optimizer instance has its own "
                f"({optimizer.learning_rate:g}); create it with the rate, e.g. {type(optimizer).__name__}"
                f"(learning_rate={learning_rate!r}), or pass the optimizer by name")
        return optimizer
    spec = {"name": optimizer} if isinstance(optimizer, str) else dict(optimizer) if isinstance(optimizer, dict) else optimizer
    if learning_rate is not None and isinstance(spec, dict):
        spec["learning_rate"] = learning_rate
    return get(spec)
