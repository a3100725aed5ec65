"""The Open Inference Protocol (KServe V2 / Triton), REST: the service side, with no HTTP in it.

A model has one input, ``input`` (FP32 or FP64 as the model's dtype, shape ``[-1, n_in]``), and the
outputs ``output`` (``[-1, n_out]``, the model's dtype) and, for classifiers, ``predictions``
(INT64 class indices, ``[-1]``). Requests carry tensors as JSON ``data`` (flat or nested, row major)
or, with the binary tensor data extension, as raw little-endian bytes after a JSON header of
``Inference-Header-Content-Length`` bytes (``parameters.binary_data_size`` per input); a body may be compressed
(``Content-Encoding`` gzip or deflate), and ``api/inference_body.py`` reads it. Outputs come
back as JSON, or as bytes when the request asks (``binary_data`` per output, or
``binary_data_output`` for all). With Triton's classification extension, ``output`` asked with
``parameters.classification: k`` comes back as the k highest elements of each row instead: BYTES, shape
``[batch, k]``, each ``"<value>:<index>"`` or ``"<value>:<index>:<label>"``. Bad requests raise the
service's domain errors; ``api/errors.py`` answers them on ``/v2`` as ``{"error": "..."}`` with the
protocol's statuses.
"""

import struct
from typing import Any

import numpy as np
import orjson
from fastapi.concurrency import run_in_threadpool

from api import __version__
from api.errors import InvalidInput, ModelVersionNotFound, PayloadTooLarge, StoreUnavailable, VersionNotFound
from api.inference_body import content_coding, data_numbers, decompress, read_request
from api.json_body import INLINE_BYTES
from api.model_cache import CachedModel
from api.predict import check_answer_size, check_finite, predict
from api.services import Service
from neural_net import Network, losses

EXTENSIONS = ["binary_tensor_data", "classification"]
INPUT = "input"
DATATYPES = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8")}
DATATYPE_OF = {"float32": "FP32", "float64": "FP64"}
CLASSIFIERS = ("multiclass", "binary")


def server_metadata() -> dict[str, Any]:
    return {"name": "nn-service", "version": __version__, "extensions": EXTENSIONS}


def server_ready(service: Service) -> dict[str, Any]:
    if not service.healthy():
        raise StoreUnavailable("the store does not answer, so no model can be served; retry in a few seconds")
    return {"ready": True}


def _version(service: Service, model_id: str, version: str | None) -> int | None:
    if version is None:
        return None
    shown = version if len(version) <= 24 else version[:21] + "..."
    if not (version.isascii() and version.isdigit()):  # int() also reads '²' and '٣'
        raise _not_kept(service, model_id, repr(shown), why="versions are whole numbers")
    if len(version) > 18:  # beyond 62 bits: more versions than any model makes
        raise _not_kept(service, model_id, shown)
    return int(version)


def _sent(tensor: dict, binary: memoryview, dtype: np.dtype, index: int) -> str:
    """Element ``index`` (row major) of the tensor as the client sent it (an error message's)."""
    if len(binary):
        return str(np.frombuffer(binary, dtype=dtype, count=1, offset=index * dtype.itemsize)[0])
    data = tensor["data"]
    return str(np.ravel(data if isinstance(data, np.ndarray) else np.asarray(data, dtype=object))[index])


def _not_kept(service: Service, model_id: str, version: int | str, kept: list | None = None,
              why: str = "never made, or pruned: NN_KEEP_VERSIONS") -> ModelVersionNotFound:
    """The 404 of a version the model does not keep, listing those it does (one read, on this error path only)."""
    kept = kept or service.store.list_versions(model_id) or [service.store.get_model(model_id)]
    return ModelVersionNotFound(f"model {model_id!r} has no version {version} ({why}); its versions: "
                                f"{', '.join(str(v.version) for v in kept)}")


def _model(service: Service, model_id: str, version: str | None) -> CachedModel:
    number = _version(service, model_id, version)
    try:
        return service.models.version(model_id, number)
    except VersionNotFound:
        raise _not_kept(service, model_id, number) from None


def _outputs_of(info: dict) -> list[dict[str, Any]]:
    datatype = DATATYPE_OF[info["dtype"]]
    outputs = [{"name": "output", "datatype": datatype, "shape": [-1, info["output_size"]]}]
    if info["task"] in CLASSIFIERS:
        outputs.append({"name": "predictions", "datatype": "INT64", "shape": [-1]})
    return outputs


def model_metadata(service: Service, model_id: str, version: str | None = None) -> dict[str, Any]:
    """``versions``: the kept versions, newest (the current one) first: those /versions/{v} serves. One read of the
    store (the versions' records, no weights); no network is loaded for metadata."""
    number = _version(service, model_id, version)
    kept = service.store.list_versions(model_id)  # raises ModelNotFound
    if not kept:  # a store that keeps none: the current one
        kept = [service.store.get_model(model_id)]
    record = kept[0] if number is None else next((v for v in kept if v.version == number), None)
    if record is None:
        raise _not_kept(service, model_id, number, kept)
    info = record.info
    return {"name": model_id, "versions": [str(v.version) for v in kept], "platform": "numpy",
            "inputs": [{"name": INPUT, "datatype": DATATYPE_OF[info["dtype"]], "shape": [-1, info["input_size"]]}],
            "outputs": _outputs_of(info)}


def model_ready(service: Service, model_id: str, version: str | None = None) -> dict[str, Any]:
    """Raises ModelNotFound / ModelVersionNotFound (404) when it cannot serve; else it is ready."""
    if version is None:
        service.store.model_stamp(model_id)
    else:
        _model(service, model_id, version)
    return {"name": model_id, "ready": True}


# -- inference -------------------------------------------------------------------------------
def _parameters(obj: dict, where: str) -> dict:
    parameters = obj.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInput(f"{where}.parameters must be an object")
    return parameters


def _input_array(service: Service, model: CachedModel, request: dict, binary: memoryview) -> np.ndarray:
    info = model.record.info
    n_in, want = info["input_size"], DATATYPE_OF[info["dtype"]]
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidInput(f"`inputs` must hold one tensor named {INPUT!r} ({want}, shape [batch, {n_in}])")
    tensor = inputs[0]
    if "name" not in tensor or "datatype" not in tensor or "shape" not in tensor:
        _missing(tensor, n_in, want)
    if tensor["name"] != INPUT:
        raise InvalidInput(f"unknown input {_shown(tensor['name'])}; this model has one input named {INPUT!r}")
    datatype = tensor["datatype"]
    if not isinstance(datatype, str) or datatype not in DATATYPES:  # a list or an object is not hashable: it was a 500
        raise InvalidInput(f"input datatype {_shown(datatype)} is not supported: datatype must be one of FP32, FP64 "
                           f"(the model computes in {want})")
    shape = tensor["shape"]
    if (not isinstance(shape, list) or len(shape) != 2 or not all(type(d) is int for d in shape)
            or shape[0] < 1 or shape[1] != n_in):
        raise InvalidInput(f"input shape {_shown(shape)} does not fit the model; send [batch, {n_in}] with batch >= 1")
    rows = shape[0]
    if rows > service.settings.max_samples_per_request:
        raise PayloadTooLarge(f"{rows} samples in one request; at most {service.settings.max_samples_per_request} "
                              f"(NN_MAX_SAMPLES_PER_REQUEST), so send them in several requests")
    dtype = DATATYPES[datatype]
    parameters = _parameters(tensor, "inputs[0]")
    if "binary_data_size" in parameters:
        if "data" in tensor:
            raise InvalidInput("inputs[0] has both `data` and parameters.binary_data_size; send the tensor one way: "
                               "`data` in the JSON, or its bytes after the JSON header with binary_data_size")
        size = parameters["binary_data_size"]
        expected = rows * n_in * dtype.itemsize
        if type(size) is not int or size != expected or len(binary) != expected:
            raise InvalidInput(f"binary_data_size is {_shown(size)} and {len(binary)} bytes follow the JSON header; a "
                               f"{datatype} tensor of shape {shape} needs exactly {expected} bytes")
        # copied out of the body into an array of its own: the forward pass reading a view inside the body took 5.4
        # ms for 1024x784 in the server against 4.0 ms after this 0.1 ms copy (1 BLAS thread, measured side by side)
        x = np.frombuffer(binary, dtype=dtype).reshape(rows, n_in).astype(model.net.dtype)
    else:
        if len(binary):
            raise InvalidInput(f"{len(binary)} bytes follow the JSON header but no input has binary_data_size")
        data = tensor.get("data")
        if not isinstance(data, (list, np.ndarray)):
            raise InvalidInput("inputs[0] needs `data` (numbers, row major) or parameters.binary_data_size")
        x = data_numbers(data, dtype, shape).reshape(rows, n_in)
    with np.errstate(over="ignore", invalid="ignore"):
        x = x.astype(model.net.dtype, copy=False)
    if not np.isfinite(x).all():  # the first such value, as sent, by its row and column
        row, column = (int(i) for i in np.argwhere(~np.isfinite(x))[0])
        # a finite number overflows in the narrower of the datatype sent and the model's: FP32 if either is
        narrow = "FP32" if "FP32" in (datatype, want) else "FP64"
        held = "the datatype sent" if narrow == datatype else "the model's datatype"
        raise InvalidInput(f"inputs hold NaN, Infinity or values too large for {narrow} ({held}); send finite numbers: "
                           f"row {row}, column {column} is {_sent(tensor, binary, dtype, row * n_in + column)}")
    return x


def _shown(value: Any) -> str:
    """A value of a request, for an error message: text as its repr, others as their JSON; cut at 60 characters."""
    text = repr(value) if isinstance(value, str) else orjson.dumps(value, default=repr).decode()
    return text if len(text) <= 60 else text[:57] + "..."


def _missing(tensor: dict, n_in: int, want: str) -> None:
    for field, what in [("name", f": {INPUT!r}"), ("datatype", f": FP32 or FP64 (the model computes in {want})"),
                        ("shape", f", e.g. [2, {n_in}] for 2 samples of {n_in} numbers")]:
        if field not in tensor:
            raise InvalidInput(f"inputs[0] needs `{field}`{what}")


def _requested(request: dict, available: list[str], n_out: int) -> list[tuple[str, bool, int | None]]:
    """(name, binary, classification count or None) of each output to return, in the order asked."""
    binary_all = _flag(_parameters(request, "request"), "binary_data_output", False, "parameters")
    if "outputs" not in request:  # null is refused below, as Triton's parser refuses it
        return [(name, binary_all, None) for name in available]
    outputs = request["outputs"]
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise InvalidInput("`outputs` must be a list of objects such as {\"name\": \"output\"}")
    chosen = []
    for i, output in enumerate(outputs):
        if "name" not in output:
            raise InvalidInput(f"outputs[{i}] needs `name`: {' or '.join(available)}")
        name = output["name"]
        if not isinstance(name, str) or name not in available:
            raise InvalidInput(f"unknown output {_shown(name)}; this model's outputs: {', '.join(available)}")
        parameters = _parameters(output, f"outputs[{i}]")
        count = parameters.get("classification")
        if "classification" in parameters:
            _check_count(i, name, count, n_out)
        chosen.append((name, _flag(parameters, "binary_data", binary_all, f"outputs[{i}].parameters"), count))
    return chosen


def _flag(parameters: dict, key: str, default: bool, where: str) -> bool:
    """A boolean parameter: bool("false") is True, so text or a number is refused, not read as yes."""
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"{where}.{key} is {_shown(value)}; send true or false")
    return value


def _check_count(i: int, name: str, count: Any, n_out: int) -> None:
    if name != "output":
        raise InvalidInput(f"outputs[{i}] asks for a classification of {name!r}, which holds one class index per row "
                           f"already; send {{\"name\": \"output\", \"parameters\": {{\"classification\": k}}}} for the top k")
    if type(count) is not int or not 1 <= count <= n_out:
        raise InvalidInput(f"outputs[{i}].parameters.classification is {_shown(count)}; send a whole number of classes from 1 to "
                           f"{n_out} (the elements per row of 'output')")


def _classes(net: Network, out: np.ndarray, count: int) -> list[str]:
    """The top ``count`` elements of each row of ``out``, highest first (ties: the lower index first), as
    ``"<value>:<index>[:<label>]"`` strings, row major. A value is written in the output's dtype, shortest
    first (``float()`` reads it back exactly); labels are the model's class_names: one per element after
    softmax, and for one sigmoid output, whose element is the score of class 1, class_names[1]."""
    index = np.argsort(-out, axis=1, kind="stable")[:, :count]
    values = np.take_along_axis(out, index, axis=1).astype(str)  # ~1 us per value (NumPy's shortest repr)
    names = net.class_names
    labels = (names[1:] if net.task == "binary" else names) if names is not None else None
    suffix = [f":{i}" if labels is None else f":{i}:{labels[i]}" for i in range(out.shape[1])]
    return [value + suffix[i] for value, i in zip(values.ravel().tolist(), index.ravel().tolist())]


def _classification(net: Network, out: np.ndarray, name: str, count: int, binary: bool) -> tuple[dict[str, Any], bytes]:
    """The classification extension's output entry: BYTES, shape [batch, count]; its bytes when ``binary``
    (per element: its length, 4 bytes little endian, then its UTF-8, as the binary tensor data extension has it)."""
    strings = _classes(net, out, count)
    entry: dict[str, Any] = {"name": name, "datatype": "BYTES", "shape": [len(out), count]}
    if not binary:
        entry["data"] = strings
        return entry, b""
    encoded = [s.encode() for s in strings]
    return entry, b"".join([part for b in encoded for part in (struct.pack("<I", len(b)), b)])


async def infer_on_loop(service: Service, model_id: str, version: str | None, body: bytes, header_length: str | None,
                        content_encoding: str | None = None) -> tuple[bytes, int | None]:
    """``infer``: on the event loop for a small uncompressed body whose few rows a cached network computes in
    microseconds (``ServedModels.on_loop``, as POST /output), else in a worker thread (a compressed body too: it
    may expand to NN_MAX_REQUEST_BYTES)."""
    coding = content_coding(content_encoding)  # 415 for a coding it cannot read, before any work
    if version is None and coding is None and len(body) <= INLINE_BYTES:
        request, binary = read_request(body, header_length)
        tensors = request.get("inputs")
        shape = tensors[0].get("shape") if isinstance(tensors, list) and tensors and isinstance(tensors[0], dict) else None
        rows = shape[0] if isinstance(shape, list) and shape and type(shape[0]) is int else 1  # bad shapes: refused below
        model = await service.models.on_loop(model_id, rows)
        if model is not None:
            return _infer(service, model_id, model, request, binary)
        # its header is parsed already: the thread loads the network and computes
        return await run_in_threadpool(lambda: _infer(service, model_id, _model(service, model_id, None), request, binary))
    return await run_in_threadpool(infer, service, model_id, version, body, header_length, coding)


def infer(service: Service, model_id: str, version: str | None, body: bytes, header_length: str | None,
          coding: str | None = None) -> tuple[bytes, int | None]:
    """The response body and, when it holds binary outputs, the length of its JSON header. ``coding``: the body's
    compression (``content_coding``); Inference-Header-Content-Length counts bytes of the decompressed body."""
    if coding is not None:
        body = decompress(body, coding, service.settings.max_request_bytes)
    request, binary = read_request(body, header_length)
    return _infer(service, model_id, _model(service, model_id, version), request, binary)


def _infer(service: Service, model_id: str, model: CachedModel, request: dict,
           binary: memoryview) -> tuple[bytes, int | None]:
    if not isinstance(request.get("id", ""), str):  # echoed back: the protocol's id is text, as Triton's parser has it
        raise InvalidInput(f"`id` is {_shown(request['id'])}; the request id must be a string")
    x = _input_array(service, model, request, binary)
    info = model.record.info
    check_answer_size(len(x), info["output_size"] + 1, 0, service.settings.max_response_values, "outputs and predictions")
    available = [o["name"] for o in _outputs_of(info)]
    requested = _requested(request, available, info["output_size"])
    out = predict(model.net, x)  # split across the cores when large; overflow gives Inf or NaN, refused below
    check_finite("the outputs", (out,), info["dtype"])
    tensors = {"output": out}
    if "predictions" in available:
        tensors["predictions"] = losses.classes(out, model.net.loss).astype("<i8", copy=False)
    response: dict[str, Any] = {"model_name": model_id, "model_version": str(model.record.version), "outputs": []}
    if "id" in request:
        response["id"] = request["id"]
    chunks = []
    for name, binary_out, count in requested:
        if count is None:
            array = tensors[name]
            entry: dict[str, Any] = {"name": name, "shape": list(array.shape),
                                     "datatype": "INT64" if name == "predictions" else DATATYPE_OF[array.dtype.name]}
            if binary_out:
                raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            else:
                entry["data"] = array.ravel()  # orjson writes NumPy arrays natively (NaN and Inf as null)
        else:
            entry, raw = _classification(model.net, out, name, count, binary_out)
        if binary_out:
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        response["outputs"].append(entry)
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)

