"""Losses. Reductions match PyTorch's defaults:

- mse:  mean over every element of (p - y)^2
- mae:  mean over every element of |p - y|
- binary_cross_entropy: mean over every element of -(y log p + (1 - y) log(1 - p))
- cross_entropy: mean over the batch of -sum_k y_k log p_k; targets are integer labels (batch,) or
  (batch, 1), or one-hot / probability rows (batch, n_out)

`prepare(y, n_out, dtype)` turns targets into a (batch, n_out) array once per `fit`, so the
training loop only does array arithmetic. Softmax + cross_entropy and sigmoid +
binary_cross_entropy are fused: the loss is computed from the logits z (log-sum-exp, softplus) and
dL/dz = (p - y) / n, which never divides by a probability. With `from_logits=True` the network's
output is taken as logits and the softmax / sigmoid is applied inside the loss.
"""
from abc import ABC, abstractmethod

import numpy as np

from .errors import ConfigError, NonFiniteError, ShapeError, TargetValueError
from .registry import Registry

LOSSES = Registry("loss")
names = LOSSES.names
_LOG_FLOOR = -100.0  # PyTorch clamps log(p) at -100 in binary cross-entropy


class Loss(ABC):
    name = None
    fuses_with = None  # activation whose gradient combines with this loss into p - y
    from_logits = False

    def get_config(self):
        return {"name": self.name}

    def prepare(self, y, n_out, dtype):
        y = _as_float_array(y, dtype, "targets")
        if y.ndim == 1 and n_out == 1:
            y = y[:, None]
        if y.ndim != 2 or y.shape[1] != n_out:
            raise ShapeError(
                f"{self.name} targets must have shape (batch, {n_out}); received {y.shape}"
            )
        return y

    def _norm(self, p):
        return p.size

    @abstractmethod
    def value(self, p, y):
        """The loss (a float) for network outputs p and prepared targets y."""

    @abstractmethod
    def gradient(self, p, y):
        """dL/dp, same shape as p."""

    # Fused forms: value from logits z, gradient dL/dz = (p - y) / norm written into out.
    def fused_gradient(self, p, y, out):
        np.subtract(p, y, out=out)
        out *= 1.0 / self._norm(p)
        return out


_NOT_REAL = {"c": "complex numbers", "m": "dates or times", "M": "dates or times"}  # NumPy dtype kinds


def _as_float_array(values, dtype, what):
    if values is None:
        raise ShapeError(f"{what} are missing (None); send an array of numbers")
    kind = getattr(getattr(values, "dtype", None), "kind", None)
    if kind in _NOT_REAL:  # a cast would drop the imaginary part, or count time units
        raise ShapeError(f"{what} hold {_NOT_REAL[kind]} ({values.dtype}); send real numbers")
    try:
        with np.errstate(over="ignore"):  # a finite value too large for dtype: named below
            array = np.asarray(values, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ShapeError(f"{what} must be a rectangular array of numbers: {exc}") from None
    if not np.all(np.isfinite(array)):
        index = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
        value = np.asarray(values, dtype=np.float64)[index] if array.dtype != np.float64 else np.nan
        if np.isfinite(value):
            where = ", ".join(f"{axis} {i}" for axis, i in zip(("row", "column"), index))
            raise NonFiniteError(f"{what}: value {value:g} at {where} does not fit {np.dtype(dtype).name}; "
                                 "scale the data or use dtype float64")
        raise NonFiniteError(f"{what} contain NaN or Inf; every value must be finite")
    return array


@LOSSES.register("mse")
class MeanSquaredError(Loss):
    def value(self, p, y):
        diff = p - y
        return float(np.vdot(diff, diff) / diff.size)

    def gradient(self, p, y):
        return (p - y) * (2.0 / p.size)


@LOSSES.register("mae")
class MeanAbsoluteError(Loss):
    def value(self, p, y):
        return float(np.abs(p - y).mean())

    def gradient(self, p, y):
        return np.sign(p - y) * (1.0 / p.size)


class _CrossEntropyBase(Loss):
    def __init__(self, from_logits=False):
        self.from_logits = bool(from_logits)

    def get_config(self):
        return {"name": self.name, "from_logits": self.from_logits}


def _check_unit_interval(y, raw, rule):
    """TargetValueError at the first prepared target outside [0, 1], named and shown as sent (``raw``: before
    Loss.prepare made one target per sample a column, so such a target is named by its row alone)."""
    if y.size and (y.min() < 0 or y.max() > 1):
        index = np.argwhere((y < 0) | (y > 1))[0][:raw.ndim]
        raise TargetValueError(rule, index, raw[tuple(index)])


@LOSSES.register("binary_cross_entropy")
class BinaryCrossEntropy(_CrossEntropyBase):
    fuses_with = "sigmoid"

    def prepare(self, y, n_out, dtype):
        raw = np.asarray(y)
        y = super().prepare(y, n_out, dtype)
        _check_unit_interval(y, raw, "binary_cross_entropy targets must lie in [0, 1] (0/1 labels or probabilities)")
        return y

    def value(self, p, y):
        if self.from_logits:
            return self.value_from_logits(p, y)
        with np.errstate(divide="ignore"):
            log_p = np.maximum(np.log(p), _LOG_FLOOR)
            log_q = np.maximum(np.log1p(-p), _LOG_FLOOR)
        return float(-(y * log_p + (1 - y) * log_q).mean())

    def value_from_logits(self, z, y):
        # softplus form: max(z, 0) - z y + log(1 + e^-|z|)
        return float((np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))).mean())

    def gradient(self, p, y):
        if self.from_logits:
            return self.fused_gradient(_sigmoid(p), y, np.empty_like(p))
        eps = np.finfo(p.dtype).eps
        q = np.clip(p, eps, 1 - eps)
        return (q - y) / (q * (1 - q)) / p.size


ROW_SUM_TOLERANCE = 1e-3  # of a row of class probabilities around 1: float32 sums of 1,000 classes stay well within


@LOSSES.register("cross_entropy")
class CrossEntropy(_CrossEntropyBase):
    fuses_with = "softmax"

    def prepare(self, y, n_out, dtype):
        raw = np.asarray(y)
        if raw.ndim == 2 and raw.shape[1] == 1 and n_out > 1:  # integer labels as a column (n, 1), as Keras takes them
            raw = raw[:, 0]
        if raw.ndim == 1 and n_out > 1:
            labels = _as_float_array(raw, np.float64, "targets")
            if labels.size and (np.any(labels != np.round(labels)) or labels.min() < 0 or labels.max() >= n_out):
                index = int(np.argmax((labels != np.round(labels)) | (labels < 0) | (labels >= n_out)))
                raise TargetValueError(f"cross_entropy integer labels must be whole numbers in [0, {n_out - 1}]",
                                       (index,), raw[index])
            one_hot = np.zeros((labels.shape[0], n_out), dtype=dtype)
            one_hot[np.arange(labels.shape[0]), labels.astype(np.intp)] = 1
            return one_hot
        y = super().prepare(y, n_out, dtype)  # rows of class probabilities (one-hot, or smoothed labels)
        _check_unit_interval(y, raw, "cross_entropy target rows are class probabilities, each in [0, 1]")
        sums = y.sum(axis=1, dtype=np.float64)
        off = np.abs(sums - 1) > ROW_SUM_TOLERANCE
        if off.any():
            row = int(np.argmax(off))
            raise ShapeError(f"cross_entropy target rows are class probabilities that sum to 1 (one-hot rows, or "
                             f"integer labels); targets[{row}] sums to {sums[row]:.6g}")
        return y

    def _norm(self, p):
        return p.shape[0]

    def fused_gradient(self, p, y, out):
        """dL/dz = (s p - y) / n, where s is the row's sum of y: 1 for one-hot rows (then p - y), within
        ROW_SUM_TOLERANCE of 1 for rows of probabilities, whose loss counts s (see value_from_logits)."""
        sums = np.add.reduce(y, axis=1, keepdims=True)
        if np.all(sums == 1):
            return super().fused_gradient(p, y, out)
        np.multiply(p, sums, out=out)
        out -= y
        out *= 1.0 / p.shape[0]
        return out

    def value(self, p, y):
        if self.from_logits:
            return self.value_from_logits(p, y)
        with np.errstate(divide="ignore"):
            log_p = np.maximum(np.log(p), _LOG_FLOOR)
        return float(-np.vdot(y, log_p) / p.shape[0])

    def value_from_logits(self, z, y):
        top = z.max(axis=1, keepdims=True)
        log_sum = np.log(np.exp(z - top).sum(axis=1, keepdims=True)) + top
        # -sum_k y_k (z_k - logsumexp z) = s logsumexp z - y.z, s = sum_k y_k (1 for one-hot rows)
        return float((np.vdot(y.sum(axis=1), log_sum[:, 0]) - np.vdot(y, z)) / z.shape[0])

    def gradient(self, p, y):
        if self.from_logits:
            return self.fused_gradient(_softmax(p), y, np.empty_like(p))
        tiny = np.finfo(p.dtype).tiny
        return -y / np.maximum(p, tiny) / p.shape[0]


def _sigmoid(z):
    return 0.5 * np.tanh(0.5 * z) + 0.5


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def get(spec):
    return LOSSES.get(spec)


PROBABILITIES = ("sigmoid", "softmax")  # output activations a cross-entropy without from_logits takes


def resolve(spec, last_activation, n_out, check=True):
    """The loss of an output layer of `n_out` units with activation `last_activation` (a name). "auto" picks
    cross_entropy after softmax, binary_cross_entropy after a 1-unit sigmoid, else mse. With `check`, a loss the
    output cannot take is a ConfigError saying what to use instead: a cross-entropy takes probabilities (a sigmoid
    or softmax output), or logits (any other output) with from_logits=True. Without it (what a network reports of
    itself: its task, its description), a network saved before these checks still loads and predicts."""
    if check and last_activation == "softmax" and n_out < 2:
        raise ConfigError("a softmax output of 1 unit is always 1; use 2 or more units (cross_entropy), or a 1-unit "
                          "sigmoid output (binary_cross_entropy)")
    if spec in (None, "auto"):
        if last_activation == "softmax":
            return CrossEntropy()
        if last_activation == "sigmoid" and n_out == 1:
            return BinaryCrossEntropy()
        return MeanSquaredError()
    loss = get(spec)
    if isinstance(loss, CrossEntropy) and n_out < 2:
        raise ConfigError("cross_entropy needs at least 2 output units; use binary_cross_entropy for 1 unit")
    if check and isinstance(loss, _CrossEntropyBase):
        if loss.from_logits and last_activation in PROBABILITIES:
            raise ConfigError(f"{loss.name} with from_logits=True applies a {loss.fuses_with} itself, and the output is "
                              f"{last_activation} already; use from_logits=False, or a linear output")
        if not loss.from_logits and last_activation not in PROBABILITIES:
            raise ConfigError(f"{loss.name} needs a {loss.fuses_with} output, or from_logits=True on a linear one; the "
                              f"output is {last_activation}")
    return loss


def task(loss, n_out):
    """"multiclass", "binary", "multilabel" or "regression": what a loss on n_out outputs learns."""
    if isinstance(loss, CrossEntropy):
        return "multiclass"
    if isinstance(loss, BinaryCrossEntropy):
        return "binary" if n_out == 1 else "multilabel"
    return "regression"


def classes(values, loss, targets=False):
    """Class indices from outputs (or from prepared targets when targets=True); None unless the
    task is multiclass or binary."""
    kind = task(loss, values.shape[1])
    if kind == "multiclass":
        return np.argmax(values, axis=1)
    threshold = 0.0 if loss.from_logits and not targets else 0.5
    if kind == "binary":
        return (values[:, 0] > threshold).astype(np.intp)
    return None
