"""The saved-network format: one .npz (a zip of .npy arrays, never pickle).

Members: `header` (UTF-8 JSON: format, config, epochs_trained, rng_state, optimizer config and step),
`params` (every parameter, flat, weights first), `buffers.{layer}.{name}` (e.g. BatchNorm running
statistics) and `optimizer.{name}` (optimizer state arrays, flat like `params`).
"""
import io
import json
import zipfile

import numpy as np

from . import optimizers as optimizer_registry
from .errors import ConfigError, ShapeError

FORMAT = "neural_net/1"


def to_bytes(net):
    """The network as .npz bytes: a JSON header (config, training state, RNG state) and arrays."""
    net._ready()
    header = {
        "format": FORMAT,
        "config": net.get_config(),
        "epochs_trained": net.epochs_trained,
        "rng_state": net.rng.bit_generator.state,
        "optimizer": None if net.optimizer is None else {"config": net.optimizer.get_config(), "t": net.optimizer.t},
    }
    arrays = {"header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), "params": net._flat}
    for i, layer in enumerate(net.layers):
        for key, value in layer.buffers.items():
            arrays[f"buffers.{i}.{key}"] = value
    if net.optimizer is not None:
        for key, value in net.optimizer.state.items():
            arrays[f"optimizer.{key}"] = value
    stream = io.BytesIO()
    np.savez(stream, **arrays)
    return stream.getvalue()


def from_bytes(cls, data):
    """A `cls` (Network) from `to_bytes()` output."""
    if not bytes(data[:4]).startswith(b"PK"):
        raise ConfigError("not a saved network: a .npz written by Network.save starts with a zip signature")
    try:
        archive = np.load(io.BytesIO(data), allow_pickle=False)
        header = json.loads(archive["header"].tobytes().decode())
        arrays = {key: archive[key] for key in archive.files if key != "header"}
    except (ValueError, KeyError, OSError, EOFError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
        reason = "pickled data is refused" if "pickle" in str(exc) else str(exc)
        raise ConfigError(f"not a saved network (a .npz written by Network.save): {reason}") from None
    if header.get("format") != FORMAT:
        raise ConfigError(f"unsupported file format {header.get('format')!r}; expected {FORMAT!r}")
    net = cls.from_config(header["config"])
    net._ready()
    params = arrays.pop("params")
    if params.shape != net._flat.shape:
        raise ShapeError(f"saved parameters have shape {params.shape}; the saved architecture needs {net._flat.shape}")
    net._flat[...] = params
    for key, value in arrays.items():
        kind, rest = key.split(".", 1)
        if kind == "buffers":
            index, name = rest.split(".", 1)
            net.layers[int(index)].buffers[name][...] = value
    if header["optimizer"] is not None:
        optimizer = optimizer_registry.get(header["optimizer"]["config"])
        optimizer.bind(net._flat.size, net.dtype, decay_size=net._n_weights)
        optimizer.load_state_dict({"t": header["optimizer"]["t"],
                                   "arrays": {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("optimizer.")}})
        net.optimizer = optimizer
    net.epochs_trained = int(header["epochs_trained"])
    net.rng.bit_generator.state = header["rng_state"]
    return net


def save(net, path):
    """Write `to_bytes(net)` to a path or a binary file object (.npz, no pickle)."""
    data = to_bytes(net)
    if hasattr(path, "write"):
        path.write(data)
    else:
        with open(path, "wb") as handle:
            handle.write(data)


def load(cls, path):
    if hasattr(path, "read"):
        return from_bytes(cls, path.read())
    with open(path, "rb") as handle:
        return from_bytes(cls, handle.read())
