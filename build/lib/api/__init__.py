"""The HTTP training service around the `neural_net` core."""

__version__ = "0.1.0"
