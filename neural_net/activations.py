"""Activation functions, element-wise except softmax (over the last axis).

Each class has `forward(z, out)` -> a and `backward(z, a, grad)` -> dL/dz, where `grad` is dL/da
of shape (batch, units); `backward` may overwrite `grad` in place and return it. All are stable for
|z| up to 1e4 in float32 without overflow warnings.
"""
import numpy as np

from .errors import ConfigError
from .registry import Registry, is_number

ACTIVATIONS = Registry("activation")
get = ACTIVATIONS.get
names = ACTIVATIONS.names


class Activation:
    name = None

    def get_config(self):
        return {"name": self.name}

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __repr__(self):
        return f"{type(self).__name__}({self.get_config()})"


@ACTIVATIONS.register("linear")
class Linear(Activation):
    """a = z. `forward` returns z itself (no copy)."""

    def forward(self, z, out=None):
        return z

    def backward(self, z, a, grad):
        return grad


@ACTIVATIONS.register("sigmoid")
class Sigmoid(Activation):
    """a = 1 / (1 + e^(-slope z)), computed as (1 + tanh(slope z / 2)) / 2: no exp overflow, no
    clipping; da/dz = slope a (1 - a). `slope` (default 1) must be positive."""

    def __init__(self, slope=1.0):
        if not is_number(slope) or not 0 < slope < float("inf"):
            raise ConfigError(f"sigmoid slope must be a positive number; received slope={slope!r}")
        self.slope = float(slope)

    def get_config(self):
        return {"name": self.name} if self.slope == 1.0 else {"name": self.name, "slope": self.slope}

    def forward(self, z, out=None):
        out = np.multiply(z, 0.5 * self.slope, out=out)
        np.tanh(out, out=out)
        out *= 0.5
        out += 0.5
        return out

    def backward(self, z, a, grad):
        grad *= a
        grad *= 1.0 - a
        if self.slope != 1.0:
            grad *= self.slope
        return grad


@ACTIVATIONS.register("tanh")
class Tanh(Activation):
    """a = tanh(z); da/dz = 1 - a^2."""

    def forward(self, z, out=None):
        return np.tanh(z, out=out)

    def backward(self, z, a, grad):
        grad *= 1.0 - a * a
        return grad


@ACTIVATIONS.register("relu")
class ReLU(Activation):
    """a = max(z, 0); da/dz = 1 where z > 0, else 0."""

    def forward(self, z, out=None):
        return np.maximum(z, 0, out=out)

    def backward(self, z, a, grad, work=None):
        """`work`: an optional preallocated boolean array shaped like z, so no temporary is made."""
        return np.multiply(grad, np.greater(z, 0, out=work), out=grad)


@ACTIVATIONS.register("leaky_relu")
class LeakyReLU(Activation):
    """a = z where z > 0, alpha * z elsewhere (0 <= alpha < 1, default 0.01)."""

    def __init__(self, alpha=0.01):
        if not (is_number(alpha) and 0.0 <= alpha < 1.0):
            raise ConfigError(f"leaky_relu alpha must be a number in [0, 1); received alpha={alpha!r}")
        self.alpha = float(alpha)

    def get_config(self):
        return {"name": self.name, "alpha": self.alpha}

    def forward(self, z, out=None):
        out = np.multiply(z, self.alpha, out=out)
        return np.maximum(z, out, out=out)

    def backward(self, z, a, grad):
        grad *= np.where(z > 0, 1.0, self.alpha).astype(grad.dtype, copy=False)
        return grad


@ACTIVATIONS.register("elu")
class ELU(Activation):
    """a = z where z > 0, alpha * (e^z - 1) elsewhere; da/dz = a + alpha for z <= 0."""

    def __init__(self, alpha=1.0):
        if not is_number(alpha) or not 0 < alpha < float("inf"):  # inf passed: every negative input became -inf
            raise ConfigError(f"elu alpha must be a positive number; received alpha={alpha!r}")
        self.alpha = float(alpha)

    def get_config(self):
        return {"name": self.name, "alpha": self.alpha}

    def forward(self, z, out=None):
        out = np.minimum(z, 0, out=out)
        np.expm1(out, out=out)
        out *= self.alpha
        return np.copyto(out, z, where=z > 0) or out

    def backward(self, z, a, grad):
        grad *= np.where(z > 0, 1.0, a + self.alpha).astype(grad.dtype, copy=False)
        return grad


_SQRT_2_OVER_PI = float(np.sqrt(2.0 / np.pi))


@ACTIVATIONS.register("gelu")
class GELU(Activation):
    """Gaussian error linear unit, tanh form (Hendrycks & Gimpel 2016; PyTorch approximate="tanh"):
    a = z/2 * (1 + tanh(u)), u = sqrt(2/pi) * (z + 0.044715 z^3)."""

    def forward(self, z, out=None):
        t = np.tanh(_SQRT_2_OVER_PI * (z + 0.044715 * z * z * z))
        t += 1.0
        t *= 0.5
        return np.multiply(z, t, out=out)

    def backward(self, z, a, grad):
        z2 = z * z
        t = np.tanh(_SQRT_2_OVER_PI * (z + 0.044715 * z2 * z))
        du = _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * z2)
        grad *= 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * du
        return grad


@ACTIVATIONS.register("softmax")
class Softmax(Activation):
    """a_i = e^(z_i - max z) / sum_j e^(z_j - max z) over the last axis."""

    def forward(self, z, out=None):
        out = np.subtract(z, z.max(axis=-1, keepdims=True), out=out)
        np.exp(out, out=out)
        out /= out.sum(axis=-1, keepdims=True)
        return out

    def backward(self, z, a, grad):
        # dL/dz = a * (g - sum(g * a)); used only when softmax is not fused with cross-entropy.
        dot = np.einsum("ij,ij->i", grad, a)[:, None]
        grad -= dot
        grad *= a
        return grad
