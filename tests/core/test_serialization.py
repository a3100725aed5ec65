"""The saved-network format: crafted files are refused before anything large is allocated or read."""

import io
import json
import tracemalloc
import zipfile

import numpy as np
import pytest

from neural_net import BatchNorm, Dense, Network
from neural_net.errors import ConfigError, LimitError, NeuralNetError

LIMITS = {"max_layers": 32, "max_layer_size": 4096, "max_parameters": 5_000_000}


def saved(optimizer="adam"):
    net = Network.from_layer_sizes([2, 3, 1], activations=["relu", "sigmoid"], seed=0)
    x = np.random.default_rng(0).normal(size=(8, 2))
    net.fit(x, (x[:, 0] > 0).astype(float), epochs=1, batch_size=4, optimizer=optimizer)
    return net.to_bytes()


def members(data):
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def npy(array):
    stream = io.BytesIO()
    np.save(stream, array)
    return stream.getvalue()


def craft(data=None, header=None, replace=None, deflate=False):
    """A saved network with its header edited by `header(dict)` and members replaced ({name.npy: bytes})."""
    files = members(data or saved())
    if header is not None:
        parsed = json.loads(np.load(io.BytesIO(files["header.npy"])).tobytes())
        header(parsed)
        files["header.npy"] = npy(np.frombuffer(json.dumps(parsed).encode(), np.uint8))
    files.update(replace or {})
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as archive:
        for name, content in files.items():
            if content is not None:
                archive.writestr(name, content)
    return stream.getvalue()


def big_layers(h):
    h["config"]["input_size"] = 20_000
    h["config"]["layers"][0]["units"] = 20_000


def many_layers(h):
    h["config"]["layers"] = [{"type": "dense", "units": 10, "activation": "relu"}] * 5000


def zip_bomb():
    """A few hundred KB whose params.npy inflates to 200 MB of zeros (the hostile pass used 2 MB -> 2 GB)."""
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("header.npy", members(saved())["header.npy"])
        with archive.open("params.npy", "w", force_zip64=True) as handle:
            np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": (50_000_000,)})
            chunk = bytes(1 << 24)
            for _ in range(12):
                handle.write(chunk)
    return stream.getvalue()


def set_nested(path, value):
    def edit(h):
        target = h
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


CRAFTED = {
    "zip bomb": (zip_bomb, "declares"),
    "a 20000x20000 layer": (lambda: craft(header=big_layers), "20000"),
    "5000 layers": (lambda: craft(header=many_layers), "5000 layers after the input (5000 dense, 0 batch_norm)"),
    "NaN weights": (lambda: craft(replace={"params.npy": npy(np.full(13, np.nan, np.float32))}), "params holds NaN"),
    "Inf optimizer state": (lambda: craft(replace={"optimizer.v.npy": npy(np.full(13, np.inf, np.float32))}),
                            "optimizer.v holds NaN or Inf"),
    "optimizer step -1e30": (lambda: craft(header=set_nested(["optimizer", "t"], -1e30)), "step t must be a whole number"),
    "epochs_trained 1e30": (lambda: craft(header=set_nested(["epochs_trained"], 1e30)), "epochs_trained must be"),
    "NaN in the header": (lambda: craft(header=set_nested(["config", "seed"], float("nan"))), "NaN"),
    "an unknown member": (lambda: craft(replace={"extra.npy": npy(np.zeros(3))}), "unknown member 'extra.npy'"),
    "a missing member": (lambda: craft(replace={"optimizer.m.npy": None}), "optimizer.m.npy is missing"),
    "params of the wrong size": (lambda: craft(replace={"params.npy": npy(np.zeros(12, np.float32))}), "needs (13,)"),
    "params of the wrong dtype": (lambda: craft(replace={"params.npy": npy(np.zeros(13, np.float64))}), "needs float32"),
    "pickled params": (lambda: craft(replace={"params.npy": npy(np.array([None] * 13, dtype=object))}), "object"),
}


@pytest.mark.parametrize("name", list(CRAFTED))
def test_a_crafted_file_is_refused_before_anything_large_is_allocated(name):
    make, words = CRAFTED[name]
    data = make()
    assert len(data) < 3_000_000
    for limits in (LIMITS, {}):  # the limits refuse earlier; without them the file must still hold what it declares
        tracemalloc.start()
        try:
            with pytest.raises(NeuralNetError) as refused:
                Network.from_bytes(data, **limits)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 50 * 2**20, f"{name}: {peak / 2**20:.0f} MiB"
        if limits or name not in ("a 20000x20000 layer", "5000 layers"):
            assert words in str(refused.value), str(refused.value)


def test_limits_are_checked_by_arithmetic_and_a_file_within_them_loads():
    data = saved()
    assert Network.from_bytes(data, **LIMITS).n_params == 13
    with pytest.raises(ConfigError, match="at most 12 parameters"):
        Network.from_bytes(data, max_layers=32, max_layer_size=4096, max_parameters=12)
    with pytest.raises(ConfigError, match="at most 1 "):
        Network.from_bytes(data, max_layers=1)
    with pytest.raises(ConfigError, match="at most 2 units"):
        Network.from_bytes(data, max_layer_size=2)


def test_every_layer_counts_toward_max_layers_batch_norm_included():
    net = Network(2, seed=0)
    for layer in (Dense(3), BatchNorm(), Dense(1)):
        net.add(layer)
    assert Network.from_bytes(net.to_bytes(), max_layers=3).layer_sizes == [2, 3, 1]
    with pytest.raises(LimitError, match=r"^3 layers after the input \(2 dense, 1 batch_norm\); at most 2 ") as refused:
        Network.from_bytes(net.to_bytes(), max_layers=2)
    assert refused.value.limit == "max_layers"


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adagrad"])
def test_a_deflated_file_round_trips(optimizer):
    data = craft(saved(optimizer), deflate=True)
    assert Network.from_bytes(data, **LIMITS).optimizer.get_config()["name"] == optimizer


def test_a_file_without_class_names_loads_and_one_with_the_wrong_count_is_refused():
    net = Network.from_layer_sizes([2, 3, 1], activations=["relu", "sigmoid"], seed=0, class_names=["off", "on"])
    data = net.to_bytes()
    assert Network.from_bytes(data, **LIMITS).class_names == ["off", "on"]
    old = craft(data, header=lambda h: h["config"].pop("class_names"))  # a file from before class_names
    assert Network.from_bytes(old, **LIMITS).class_names is None
    with pytest.raises(ConfigError, match="class_names holds 3 names; this binary network needs 2"):
        Network.from_bytes(craft(data, header=lambda h: h["config"].update(class_names=["a", "b", "c"])), **LIMITS)


def test_a_negative_batch_norm_variance_is_refused():
    """A file whose running_var was negative loaded: sqrt(var + eps) made every output NaN, and the service then
    answered each request "the outputs overflowed ... scale the inputs down", nor did training fix it."""
    net = Network(2, seed=0)
    net.add(Dense(3, activation="relu"))
    net.add(BatchNorm())
    net.add(Dense(1, activation="sigmoid"))
    data = members(net.to_bytes())
    data["buffers.1.running_var.npy"] = npy(np.array([1.0, -1.0, 1.0], dtype=np.float32))
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as archive:
        for name, content in data.items():
            archive.writestr(name, content)
    with pytest.raises(ConfigError, match=r"buffers.1.running_var holds a negative variance \(-1\)"):
        Network.from_bytes(stream.getvalue())


def test_a_counter_past_what_a_file_records_is_refused_when_saving_not_when_loading():
    """A network imported at epochs_trained 2**53 trained one more epoch and was saved: every later load refused
    the file ("must be a whole number from 0 to 2**53"), blaming a reader for what the writer did."""
    from neural_net.serialization import MAX_COUNTER

    net = Network.from_layer_sizes([2, 1], activations=["sigmoid"], seed=0)
    net.epochs_trained = MAX_COUNTER
    assert Network.from_bytes(net.to_bytes()).epochs_trained == MAX_COUNTER  # the most a file records
    net.epochs_trained = MAX_COUNTER + 1
    with pytest.raises(ConfigError, match=r"^epochs_trained is 9007199254740993, past 9007199254740992"):
        net.to_bytes()
    net.epochs_trained = 0
    net.fit(np.zeros((2, 2)), np.zeros(2), epochs=1, optimizer="adam")
    net.optimizer.t = MAX_COUNTER + 1
    with pytest.raises(ConfigError, match=r"^the optimizer's step t is 9007199254740993, past"):
        net.to_bytes()
