"""A NumPy neural-network library: dense layers, batched float32/float64 training, no other dependency.

    from neural_net import Network, Dense
    net = Network.from_layer_sizes([2, 16, 1], activations=["relu", "sigmoid"], seed=0)
    history = net.fit(x, y, epochs=50, batch_size=32, optimizer="adam", validation_split=0.2)
    net.evaluate(x_test, y_test)   # {"loss": ..., "accuracy": ..., ...}
"""
from . import activations, errors, initializers, losses, metrics, optimizers, schedules, selection
from .errors import ConfigError, LimitError, NeuralNetError, NonFiniteError, ShapeError, StopTraining, UnknownNameError
from .layers import BatchNorm, Dense
from .network import Network
from .selection import cross_validate, search
from .training import Callback, EarlyStopping, History, Progress

__all__ = [
    "Network", "Dense", "BatchNorm", "History", "Callback", "Progress", "EarlyStopping",
    "NeuralNetError", "ShapeError", "UnknownNameError", "ConfigError", "LimitError", "NonFiniteError", "StopTraining",
    "cross_validate", "search",
    "activations", "errors", "initializers", "losses", "metrics", "optimizers", "schedules", "selection",
]
__version__ = "0.1.0"
