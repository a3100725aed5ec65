"""The saved-network format: one .npz (a zip of .npy arrays, never pickle).

Members: `header` (UTF-8 JSON: format, config (with `class_names` when the network has them), epochs_trained,
rng_state, optimizer config and step),
`params` (every parameter, flat, weights first), `buffers.{layer}.{name}` (e.g. BatchNorm running
statistics) and `optimizer.{name}` (optimizer state arrays, flat like `params`).
"""
import io
import json
import zipfile

import numpy as np

from . import optimizers as optimizer_registry
from .errors import ConfigError, LimitError, ShapeError

FORMAT = "neural_net/1"
MAX_HEADER_BYTES = 1 << 20  # the JSON header; a network of 1,000 layers needs about 150 KB
MAX_COUNTER = 2**53  # epochs_trained and the optimizer's step: whole numbers exact in float64 and JSON
_NPY_HEADER_ROOM = 65_536  # bytes an npy member may hold besides its data (magic and header dict)


def to_bytes(net):
    """The network as .npz bytes: a JSON header (config, training state, RNG state) and arrays."""
    net._ready()
    net.check_class_names()
    for name, value in (("epochs_trained", net.epochs_trained), ("the optimizer's step t", getattr(net.optimizer, "t", 0))):
        if not _whole(value):  # such a file would not load back: refused here, where the counter went past
            raise ConfigError(f"{name} is {value}, past {MAX_COUNTER}, the most a saved network records exactly; "
                              "start from a new network, or set_weights into one")
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


def from_bytes(cls, data, max_layers=None, max_layer_size=None, max_parameters=None):
    """A `cls` (Network) from `to_bytes()` output, checked before anything large is allocated or read.

    The header (at most MAX_HEADER_BYTES) is read first; its architecture is checked against the
    limits given (layers after the input, units per layer with the input, parameters; None: no
    limit) by arithmetic alone. Every zip member must be one the architecture needs, and its npy
    header (dtype, shape) and declared size must be what the architecture needs before its data is
    read, so a zip bomb or a header that claims a huge layer costs nothing. Arrays must be finite and
    counters (epochs_trained, the optimizer's step) whole numbers in [0, MAX_COUNTER].
    Raises ConfigError (ShapeError for arrays of the wrong shape) saying what is wrong.
    """
    archive = _Archive(data)
    try:
        header = json.loads(archive.array("header", np.dtype(np.uint8), None, MAX_HEADER_BYTES).tobytes(),
                            parse_constant=_no_constant)
    except (UnicodeDecodeError, RecursionError, json.JSONDecodeError) as exc:
        raise ConfigError(f"not a saved network: its header is not JSON ({str(exc)[:100]})") from None
    config = _check_header(header)
    n_params = _check_architecture(config, max_layers, max_layer_size, max_parameters)
    dtype = np.dtype(config.get("dtype", "float32"))
    archive.peek("params", dtype, (n_params,))  # the file really holds that many before anything is built
    try:
        net = cls.from_config(config)
        net._ready()
    except (TypeError, KeyError, AttributeError) as exc:  # keys the constructors do not take
        raise ConfigError(f"not a saved network: its config does not describe a network ({str(exc)[:100]})") from None
    net.check_class_names()  # optional (files from before class_names load without it), one per class when present
    net._flat[...] = archive.array("params", net.dtype, net._flat.shape)
    for index, layer in enumerate(net.layers):
        for name, buffer in layer.buffers.items():
            buffer[...] = archive.array(f"buffers.{index}.{name}", buffer.dtype, buffer.shape)
            if name == "running_var" and (buffer < 0).any():  # a variance: sqrt(var + eps) is NaN below 0
                raise ConfigError(f"buffers.{index}.running_var holds a negative variance ({buffer.min():g}); a saved "
                                  "network's BatchNorm variances are >= 0")
    if header["optimizer"] is not None:
        try:
            optimizer = optimizer_registry.get(header["optimizer"]["config"])
        except (TypeError, KeyError, AttributeError) as exc:
            raise ConfigError(f"not a saved network: its optimizer config is not valid ({str(exc)[:100]})") from None
        optimizer.bind(net._flat.size, net.dtype, decay_size=net._n_weights, owner=net)
        arrays = {name: archive.array(f"optimizer.{name}", state.dtype, state.shape)
                  for name, state in optimizer.state.items()}
        optimizer.load_state_dict({"t": header["optimizer"]["t"], "arrays": arrays})
        net.optimizer = optimizer
    unread = sorted(set(archive.members) - archive.read)
    if unread:
        raise ConfigError(f"not a saved network: unexpected members {', '.join(unread[:5])}; "
                          "the architecture needs header, params, buffers.* and optimizer.* only")
    net.epochs_trained = header["epochs_trained"]
    try:
        net.rng.bit_generator.state = header["rng_state"]
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise ConfigError(f"not a saved network: rng_state does not fit {type(net.rng.bit_generator).__name__} ({exc})") from None
    return net


def _open(data):
    if not bytes(data[:4]).startswith(b"PK"):
        raise ConfigError("not a saved network: a .npz written by Network.save starts with a zip signature")
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise ConfigError(f"not a saved network (a .npz written by Network.save): {exc}") from None


def _members(archive):
    """{name without .npy: ZipInfo}; refuses duplicates and names no saved network has."""
    infos = archive.infolist()
    members = {}
    for info in infos:
        name = info.filename.removesuffix(".npy")
        if name in members or not _known_member(name) or not info.filename.endswith(".npy"):
            what = "a duplicate member" if name in members else "an unknown member"
            raise ConfigError(f"not a saved network: {what} {info.filename[:80]!r}; a saved network holds "
                              "header.npy, params.npy, buffers.<layer>.<name>.npy and optimizer.<name>.npy only")
        members[name] = info
    for name in ("header", "params"):
        if name not in members:
            raise ConfigError(f"not a saved network: {name}.npy is missing")
    return members


def _known_member(name):
    """header, params, buffers.<layer>.<name> or optimizer.<name>."""
    parts = name.split(".")
    short = all(0 < len(part) <= 64 for part in parts)
    if parts[0] == "buffers":
        return short and len(parts) == 3 and parts[1].isdigit() and parts[2].isidentifier()
    if parts[0] == "optimizer":
        return short and len(parts) == 2 and parts[1].isidentifier()
    return name in ("header", "params")


def _no_constant(name):
    raise ConfigError(f"not a saved network: its header holds {name}, which is not a finite number")


def _whole(value, lowest=0, highest=MAX_COUNTER):
    return isinstance(value, int) and not isinstance(value, bool) and lowest <= value <= highest


def _check_header(header):
    """The header's structure and counters; returns its config."""
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise ConfigError(f"unsupported file format {found!r}; expected {FORMAT!r}")
    config = header.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        raise ConfigError("not a saved network: the header's config needs input_size and a list of layers")
    if not _whole(header.get("epochs_trained")):
        raise ConfigError(f"epochs_trained must be a whole number from 0 to {MAX_COUNTER}; "
                          f"received {str(header.get('epochs_trained'))[:40]}")
    optimizer = header.get("optimizer")
    if optimizer is not None:
        if not isinstance(optimizer, dict) or not isinstance(optimizer.get("config"), (dict, str)):
            raise ConfigError("not a saved network: the header's optimizer needs a config and a step t")
        if not _whole(optimizer.get("t")):
            raise ConfigError(f"the optimizer's step t must be a whole number from 0 to {MAX_COUNTER}; "
                              f"received {str(optimizer.get('t'))[:40]}")
    return config


def check_layer_count(layers, max_layers):
    """Raises LimitError when there are more than `max_layers` layers after the input (None: no limit). Every
    layer counts, batch_norm ones included, however the network is described (layer configs, or `type` dicts)."""
    if max_layers is None or len(layers) <= max_layers:
        return
    norms = sum(1 for layer in layers if isinstance(layer, dict) and layer.get("type", "dense") == "batch_norm")
    raise LimitError(f"{len(layers)} layers after the input ({len(layers) - norms} dense, {norms} batch_norm); "
                     f"at most {max_layers} layers, batch_norm ones included", "max_layers")


def _check_architecture(config, max_layers, max_layer_size, max_parameters):
    """The parameter count the config needs, by arithmetic (nothing allocated), checked against the limits."""
    layers, n_in = config["layers"], config.get("input_size")
    if not _whole(n_in, 1):
        raise ConfigError(f"input_size must be a positive whole number; received {str(n_in)[:40]}")
    check_layer_count(layers, max_layers)
    if max_layer_size is not None and n_in > max_layer_size:
        raise LimitError(f"the file declares an input of {n_in} values; at most {max_layer_size} units per layer",
                         "max_layer_size")
    total = 0
    for index, layer in enumerate(layers):
        if not isinstance(layer, dict):
            raise ConfigError(f"layer {index}: a layer config must be an object; received {str(layer)[:40]}")
        if layer.get("type", "dense") == "dense":
            units = layer.get("units")
            if not _whole(units, 1):
                raise ConfigError(f"layer {index}: units must be a positive whole number; received {str(units)[:40]}")
            if max_layer_size is not None and units > max_layer_size:
                raise LimitError(f"layer {index} declares {units} units; at most {max_layer_size} units per layer",
                                 "max_layer_size")
            total += n_in * units + (units if layer.get("use_bias", True) is not False else 0)
            n_in = units
        else:  # batch_norm: gamma and beta per unit (from_config refuses unknown types)
            total += 2 * n_in
        if max_parameters is not None and total > max_parameters:
            raise LimitError(f"the file declares more than {max_parameters} parameters (at layer {index}); "
                             f"at most {max_parameters} parameters", "max_parameters")
    return total


def _array_header(handle, info, name, dtype, shape, max_bytes=None):
    """Reads and checks one member's npy header; returns its shape and the number of data bytes to read."""
    room = (max_bytes if shape is None else int(np.prod(shape, dtype=np.int64)) * dtype.itemsize) + _NPY_HEADER_ROOM
    if info.file_size > room:  # the declared size, from the zip's directory: nothing inflated yet
        raise ConfigError(f"{name}.npy declares {info.file_size} bytes; the saved architecture needs at most {room}")
    try:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        found_shape, fortran, found_dtype = read_header(handle)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"not a saved network: {name}.npy is not a NumPy array ({str(exc)[:100]})") from None
    if found_dtype != dtype or found_dtype.hasobject:
        raise ConfigError(f"{name} holds {found_dtype} values; the saved architecture needs {dtype}")
    if shape is None:  # a 1-D array of at most max_bytes
        if len(found_shape) != 1 or found_shape[0] > max_bytes:
            raise ConfigError(f"{name} declares shape {found_shape}; at most ({max_bytes},)")
        shape = found_shape
    elif tuple(found_shape) != tuple(shape):
        raise ShapeError(f"{name} has shape {found_shape}; the saved architecture needs {tuple(shape)}")
    if fortran and len(shape) > 1:
        raise ConfigError(f"{name} is stored in Fortran order; a saved network stores C order")
    return shape, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


class _Archive:
    """The zip's members by name (without .npy), read one by one, each checked before its data is read."""

    def __init__(self, data):
        self.zip = _open(data)
        self.members = _members(self.zip)
        self.read = set()

    def peek(self, name, dtype, shape):
        """Checks a member's npy header and declared size against (dtype, shape) without reading its data."""
        try:
            with self.zip.open(self.members[name]) as handle:
                _array_header(handle, self.members[name], name, dtype, shape)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ConfigError(f"not a saved network: {name}.npy cannot be read ({str(exc)[:100]})") from None

    def array(self, name, dtype, shape, max_bytes=None):
        """One member's array; refuses NaN and Inf in float arrays."""
        if name not in self.members:
            raise ConfigError(f"not a saved network: {name}.npy is missing")
        self.read.add(name)
        try:
            with self.zip.open(self.members[name]) as handle:
                shape, nbytes = _array_header(handle, self.members[name], name, dtype, shape, max_bytes)
                raw = handle.read(nbytes)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ConfigError(f"not a saved network: {name}.npy cannot be read ({str(exc)[:100]})") from None
        if len(raw) != nbytes:
            raise ConfigError(f"not a saved network: {name}.npy holds {len(raw)} bytes of data; its shape needs {nbytes}")
        array = np.frombuffer(raw, dtype=dtype).reshape(shape)
        if dtype.kind == "f" and not np.isfinite(array).all():
            raise ConfigError(f"{name} holds NaN or Inf; a saved network holds finite numbers only")
        return array


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
