"""Layers: `Dense` (y = activation(x @ weights + biases)) and `BatchNorm`.

A layer declares its parameters in `build(n_in)`; the network then places every parameter in one
flat array and hands each layer views into it (`self.params`, `self.grads`, same keys). Training
forward/backward passes write into buffers preallocated per batch size, so a training step
allocates almost nothing.
"""
import numpy as np

from . import activations as activation_registry
from . import initializers
from .errors import ConfigError
from .registry import check_options, is_number, is_whole

WEIGHT, OTHER = "weight", "other"  # weights get l1/l2 and decoupled decay; biases, gammas do not
LAYER_TYPES = {}


def _register(cls):
    LAYER_TYPES[cls.type_name] = cls
    return cls


def _positive_int(value, what):
    if not is_whole(value) or value < 1:
        raise ConfigError(f"{what} must be a positive integer; received {what}={value!r}")
    return int(value)


def _compact(config):
    """{"name": "relu"} -> "relu"; configs with options stay dicts."""
    return config["name"] if len(config) == 1 else config


class Layer:
    type_name = None

    def __init__(self, activation="linear", dropout=0.0):
        self.activation = activation_registry.get(activation)
        if not (is_number(dropout) and 0.0 <= dropout < 1.0):
            raise ConfigError(f"dropout must be a number in [0, 1); received dropout={dropout!r}")
        self.dropout = float(dropout)
        self.n_in = None
        self.params, self.grads, self.buffers = {}, {}, {}
        self._workspaces = {}

    def param_specs(self):
        """[(name, shape, kind)] for the network's flat parameter array."""
        return []

    def _workspace(self, batch, dtype):
        ws = self._workspaces.get(batch)
        if ws is None:
            if len(self._workspaces) >= 4:  # full batches, the last partial batch, a few others
                self._workspaces.clear()
            ws = self._workspaces[batch] = self._allocate(batch, dtype)
        return ws

    def _allocate(self, batch, dtype):
        shape = (batch, self.units)
        ws = {"z": np.empty(shape, dtype), "dx": np.empty((batch, self.n_in), dtype)}
        ws["a"] = ws["z"] if self.activation.name == "linear" else np.empty(shape, dtype)
        if self.activation.name == "relu":
            ws["positive"] = np.empty(shape, bool)  # relu backward's z > 0
        if self.dropout:
            ws["mask"] = np.empty(shape, dtype)
            ws["out"] = np.empty(shape, dtype)
        return ws

    def output_grad_buffer(self, out):
        """A preallocated (batch, units) buffer for dL/dz of the output layer."""
        ws = self._workspace(out.shape[0], out.dtype)
        if "dout" not in ws:
            ws["dout"] = np.empty_like(out)
        return ws["dout"]

    def _activate(self, z, training, dropout, rng, ws, trace=None):
        """Apply the activation (and inverted dropout while training); remember what backward needs. Inference
        keeps nothing on the layer: threads share a network (the service's cached models), and what one call stored
        another could read, or hold on to (a 10,000-row request's arrays); `trace` (a list) gets its z and a."""
        if not training:
            a = self.activation.forward(z)
            if trace is not None:
                trace.append({"z": z, "a": a})
            return a
        a = self.activation.forward(z, out=ws["a"])
        self.z, self.a, self._mask, self._ws = z, a, None, ws
        if dropout and self.dropout:
            mask = ws["mask"]
            rng.random(dtype=mask.dtype, out=mask)
            np.less(mask, 1.0 - self.dropout, out=mask)
            mask *= 1.0 / (1.0 - self.dropout)
            self._mask = mask
            return np.multiply(a, mask, out=ws["out"])
        return a

    def _activation_backward(self, grad, grad_is_dz):
        if grad_is_dz:
            return grad
        if self._mask is not None:
            grad *= self._mask
        if self._ws is not None and "positive" in self._ws:
            return self.activation.backward(self.z, self.a, grad, work=self._ws["positive"])
        return self.activation.backward(self.z, self.a, grad)

    def clear_workspaces(self):
        self._workspaces.clear()
        self.z = self.a = self._x = self._mask = self._ws = None

    def get_config(self):
        config = {"type": self.type_name, "activation": _compact(self.activation.get_config())}
        if self.dropout:
            config["dropout"] = self.dropout
        return config


@_register
class Dense(Layer):
    """Fully connected layer: z = x @ weights + biases, a = activation(z).

    x: (batch, n_in), weights: (n_in, units), biases: (units,). `weight_init="auto"` picks he for
    relu-like activations (relu, leaky_relu, elu, gelu) and xavier otherwise. `use_bias=False` drops
    the biases (z = x @ weights), e.g. before a BatchNorm whose beta does their work. `dropout` is the
    fraction of this layer's outputs zeroed while training (inverted dropout: survivors are scaled
    by 1 / (1 - dropout), so inference needs no change).
    """

    type_name = "dense"
    _RELU_LIKE = {"relu", "leaky_relu", "elu", "gelu"}

    def __init__(self, units, activation="linear", weight_init="auto", bias_init="zeros", dropout=0.0, use_bias=True):
        super().__init__(activation, dropout)
        self.units = _positive_int(units, "units")
        if not isinstance(use_bias, bool):
            raise ConfigError(f"use_bias must be true or false; received use_bias={use_bias!r}")
        self.use_bias = use_bias
        if weight_init == "auto":
            weight_init = "he" if self.activation.name in self._RELU_LIKE else "xavier"
        self.weight_init = initializers.get_weight(weight_init)
        self.bias_init = initializers.get_bias(bias_init)

    def param_specs(self):
        specs = [("weights", (self.n_in, self.units), WEIGHT)]
        return specs + [("biases", (self.units,), OTHER)] if self.use_bias else specs

    def initialize(self, rng):
        self.weight_init.fill(self.params["weights"], rng)
        if self.use_bias:
            self.bias_init.fill(self.params["biases"], rng)

    def forward(self, x, training=False, dropout=True, rng=None, update_stats=True, trace=None):
        weights = self.params["weights"]
        ws = self._workspace(x.shape[0], weights.dtype) if training else None
        z = np.matmul(x, weights, out=ws["z"] if training else None)
        if self.use_bias:
            z += self.params["biases"]
        if training:
            self._x = x
        return self._activate(z, training, dropout, rng, ws, trace)

    def backward(self, grad, need_input_grad=True, grad_is_dz=False):
        """grad: dL/d(output) (or dL/dz if grad_is_dz), (batch, units); may be overwritten.
        Writes dL/dweights = x^T dz and dL/dbiases = sum_batch dz; returns dL/dx = dz weights^T."""
        dz = self._activation_backward(grad, grad_is_dz)
        np.matmul(self._x.T, dz, out=self.grads["weights"])
        if self.use_bias:
            np.add.reduce(dz, axis=0, out=self.grads["biases"])  # np.sum without its Python wrapper
        if not need_input_grad:
            return None
        ws = self._workspace(dz.shape[0], dz.dtype)
        return np.matmul(dz, self.params["weights"].T, out=ws["dx"])

    def get_config(self):
        config = {
            **super().get_config(),
            "units": self.units,
            "weight_init": _compact(self.weight_init.get_config()),
            "bias_init": _compact(self.bias_init.get_config()),
        }
        if not self.use_bias:
            config["use_bias"] = False
        return config


@_register
class BatchNorm(Layer):
    """Batch normalisation (Ioffe & Szegedy 2015) over the batch axis, then an optional activation:
    z = gamma * (x - mean) / sqrt(var + eps) + beta.

    Training uses the batch's mean and (biased) variance and updates running statistics:
    running <- momentum * running + (1 - momentum) * batch (unbiased variance, as PyTorch).
    Unlike PyTorch, which refuses a training batch of one sample, such a batch trains (its normalised
    values are 0, so only beta learns from it) but leaves the running statistics as they are: its
    variance of 0 says nothing about the spread (a fit of 33 samples in batches of 32 would otherwise
    pull the running variance towards 0 every epoch). Inference uses the running statistics.
    """

    type_name = "batch_norm"

    def __init__(self, momentum=0.9, eps=1e-5, activation="linear", dropout=0.0):
        super().__init__(activation, dropout)
        for name, value in (("momentum", momentum), ("eps", eps)):
            if not is_number(value):
                raise ConfigError(f"batch_norm {name} must be a finite number; received {name}={value!r}")
        if not 0.0 <= momentum < 1.0 or eps <= 0:
            raise ConfigError(f"batch_norm needs 0 <= momentum < 1 and eps > 0; received momentum={momentum}, eps={eps}")
        self.momentum, self.eps = float(momentum), float(eps)
        self.units = None

    def build_units(self, n_in):
        self.units = n_in

    def param_specs(self):
        return [("gamma", (self.units,), OTHER), ("beta", (self.units,), OTHER)]

    def initialize(self, rng):
        self.params["gamma"][...] = 1
        self.params["beta"][...] = 0

    def init_buffers(self, dtype):
        self.buffers = {"running_mean": np.zeros(self.units, dtype), "running_var": np.ones(self.units, dtype)}

    def forward(self, x, training=False, dropout=True, rng=None, update_stats=True, trace=None):
        gamma, beta = self.params["gamma"], self.params["beta"]
        if training:
            ws = self._workspace(x.shape[0], x.dtype)
            mean = x.mean(axis=0)
            var = x.var(axis=0)
            n = x.shape[0]
            if update_stats and n > 1:  # one sample: variance 0, no information about the spread (see the docstring)
                unbiased = var * (n / (n - 1))
                for key, value in (("running_mean", mean), ("running_var", unbiased)):
                    self.buffers[key] *= self.momentum
                    self.buffers[key] += (1.0 - self.momentum) * value
        else:
            ws, mean, var = None, self.buffers["running_mean"], self.buffers["running_var"]
        # computed in locals, kept for backward only while training: threads predicting with one network (the
        # service's cached models) each read their own, not what another thread's call stored in between
        inv_std = 1.0 / np.sqrt(var + self.eps)
        xhat = (x - mean) * inv_std
        if training:
            self._inv_std, self._xhat = inv_std, xhat
        z = np.multiply(xhat, gamma, out=ws["z"] if training else None)
        z += beta
        return self._activate(z, training, dropout, rng, ws, trace)

    def backward(self, grad, need_input_grad=True, grad_is_dz=False):
        """dx = inv_std / N * (N dxhat - sum(dxhat) - xhat * sum(dxhat * xhat)), dxhat = dz * gamma."""
        dz = self._activation_backward(grad, grad_is_dz)
        xhat = self._xhat
        np.sum(dz * xhat, axis=0, out=self.grads["gamma"])
        np.sum(dz, axis=0, out=self.grads["beta"])
        if not need_input_grad:
            return None
        dxhat = dz * self.params["gamma"]
        n = dz.shape[0]
        dx = n * dxhat - dxhat.sum(axis=0) - xhat * (dxhat * xhat).sum(axis=0)
        dx *= self._inv_std / n
        return dx

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "eps": self.eps}


def from_config(config):
    config = dict(config)
    try:
        cls = LAYER_TYPES[config.pop("type")]
    except (KeyError, TypeError):
        raise ConfigError(f"layer config needs a type, one of: {', '.join(sorted(LAYER_TYPES))}; received {config!r}") from None
    check_options(f"{cls.type_name} layer", cls, config)
    return cls(**config)
