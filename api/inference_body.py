"""The body of an Open Inference Protocol (V2) infer request, before any model looks at it: its
Content-Encoding, its JSON header and the binary tensor data after it, and the numbers of JSON ``data``.

- Content-Encoding ``gzip`` or ``deflate`` (zlib, as HTTP and Triton have it; Triton's client sends
  either with ``request_compression_algorithm``) is decompressed, to at most NN_MAX_REQUEST_BYTES (413
  past it, so a small body cannot expand to gigabytes); any other coding is a 415 naming the supported
  ones. ``Inference-Header-Content-Length`` counts bytes of the decompressed body, as in Triton.
- The JSON of SIMDJSON_FROM bytes or more is parsed by simdjson, which reads a tensor's ``data`` straight
  into doubles in C when it holds numbers only (no Python float per number: a 1024x784 request parses
  twice as fast as with orjson and ``np.asarray``); text, true/false or null there leave ``data`` as Python
  values. A smaller one is parsed by orjson. ``data_numbers`` checks Python values by their types, in C,
  and names the first that is not a number. Nesting is free, as in Triton: the numbers are read in row-major
  order and only their count must fit the shape.
"""

import zlib
from typing import Any

import numpy as np
import orjson
import simdjson

from api.errors import InvalidInput, PayloadTooLarge, UnsupportedEncoding
from api.json_body import position_hint

NUMBERS = {int, float}  # null is refused by name, as text and true/false are
UTF8_BOM = b"\xef\xbb\xbf"
SIMDJSON_FROM = 2048  # bytes: below, orjson and a type check are faster (1.4 against 5.9 us for 4 numbers)
CODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
SUPPORTED = "gzip, deflate"


def content_coding(header: str | None) -> str | None:
    """The body's compression from its Content-Encoding header: None (identity) or a key of CODINGS."""
    if header is None:
        return None
    codings = [c.strip().lower() for c in header.split(",") if c.strip() and c.strip().lower() != "identity"]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in CODINGS:
        return codings[0]
    raise UnsupportedEncoding(f"Content-Encoding {header[:40]!r} is not supported; send the body uncompressed or "
                              f"compressed once with one of: {SUPPORTED}", accept=SUPPORTED)


def decompress(body: bytes, coding: str, limit: int) -> bytes:
    """The body decompressed, refused (413) as soon as it passes ``limit`` bytes; gzip may hold several members."""
    parts, size, data = [], 0, body
    while True:
        stream = zlib.decompressobj(CODINGS[coding])
        try:
            part = stream.decompress(data, limit - size + 1)
        except zlib.error as exc:
            zlib_hint = " (deflate is the zlib format, as zlib.compress writes it)" if coding == "deflate" else ""
            raise InvalidInput(f"the body is not valid {coding} data{zlib_hint}: {exc}; compress it again, or send it "
                               "without Content-Encoding") from None
        size += len(part)
        if size > limit:
            raise PayloadTooLarge(f"the body decompresses to more than {limit} bytes (NN_MAX_REQUEST_BYTES); send "
                                  "fewer samples per request")
        parts.append(part)
        if not stream.eof:
            raise InvalidInput(f"the {coding} body ends early ({len(body)} bytes sent): send the whole compressed body")
        data = stream.unused_data
        if not data:
            return b"".join(parts)
        if coding == "deflate":
            raise InvalidInput(f"{len(data)} bytes follow the end of the deflate data; send one zlib stream")


def read_request(body: bytes, header_length: str | None) -> tuple[dict, memoryview]:
    """The request's JSON object and the binary data after it."""
    if header_length is None:
        size = len(body)
    else:
        text = header_length.strip()  # int() also reads '²' and '٣', and refuses 4301 digits: both were a 500
        if not (text.isascii() and text.isdigit()) or len(text) > 18 or int(text) > len(body):
            raise InvalidInput(f"Inference-Header-Content-Length is {header_length[:40]!r}; it must be the byte length "
                               f"of the JSON header at the start of the body (the body has {len(body)} bytes)")
        size = int(text)
    header = body if size == len(body) else body[:size]
    if header.startswith(UTF8_BOM):  # RFC 8259 lets a parser ignore it; simdjson does, orjson does not
        header = header[len(UTF8_BOM):]
    request = _parse_fast(header) if len(header) >= SIMDJSON_FROM else None
    if request is None:
        try:
            request = orjson.loads(header)
        except orjson.JSONDecodeError as exc:
            message = position_hint(header, exc, "the inference request")
            if header_length is None and ("UTF-8" in exc.msg or "after document" in exc.msg):  # bytes after the JSON
                message += "; binary tensors need the Inference-Header-Content-Length header"
            raise InvalidInput(message) from None
    if not isinstance(request, dict):
        raise InvalidInput("the inference request must be a JSON object with `inputs`, as in the V2 protocol")
    return request, memoryview(body)[size:]


def _parse_fast(header: bytes) -> dict | None:
    """The request as Python values, but each input's numeric ``data`` as a flat float64 array; None where
    simdjson cannot read it, or an object has keys it cannot look up (orjson then reads it, and says what is wrong)."""
    try:
        doc = simdjson.Parser().parse(header)
        if not isinstance(doc, simdjson.Object) or not _plain_keys(doc):
            return None
        request = {key: _python(doc[key]) for key in doc.keys() if key != "inputs"}
        if "inputs" in doc:
            inputs = doc["inputs"]
            if not isinstance(inputs, simdjson.Array) or not all(isinstance(t, simdjson.Object) for t in inputs):
                request["inputs"] = _python(inputs)  # refused with a message by the caller
            elif not all(_plain_keys(t) for t in inputs):
                return None
            else:
                request["inputs"] = [{key: _numbers_or_python(t[key]) if key == "data" else _python(t[key])
                                      for key in t.keys()} for t in inputs]
        return request
    except (ValueError, RuntimeError, KeyError):  # not JSON, a number beyond double or int64: orjson's message
        return None


def _plain_keys(obj: "simdjson.Object") -> bool:
    """Its keys are distinct and simdjson looks each up right (it reads "a\\u0000b" as "a")."""
    keys = list(obj.keys())
    return len(set(keys)) == len(keys) and not any("\x00" in key for key in keys)


def _python(value: Any) -> Any:
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value.as_dict() if isinstance(value, simdjson.Object) else value


def _numbers_or_python(value: Any) -> Any:
    if isinstance(value, simdjson.Array):
        try:
            return np.frombuffer(value.as_buffer(of_type="d"), np.float64)  # every element a number, at any depth
        except (TypeError, ValueError, RuntimeError):  # text, true/false, null or an object among them
            pass
    return _python(value)


def data_numbers(data: Any, dtype: np.dtype, shape: list[int]) -> np.ndarray:
    """``data`` (a flat array of doubles from _parse_fast, or a nested list of Python values) as the flat numbers of a
    tensor of ``shape``, in ``dtype``; text, true/false, null or objects are refused, each named."""
    count = shape[0] * shape[1]
    if isinstance(data, np.ndarray):
        numbers = data
    else:
        numbers, types = data, set(map(type, data))  # in C: 0.2 us for 4 numbers, 12 for 784
        if list in types:
            numbers = _leaves(data)
            types = set(map(type, numbers))
        if not types <= NUMBERS:
            wrong = next(v for v in numbers if type(v) not in NUMBERS)
            raise InvalidInput(f"inputs[0].data must hold numbers only; it holds {_describe(wrong)}: send {count} "
                               "numbers in row-major order, without quotes (1 and 0 for true and false)")
    if len(numbers) != count:
        raise InvalidInput(f"inputs[0].data holds {len(numbers)} numbers; shape {shape} needs {count}")
    with np.errstate(over="ignore", invalid="ignore"):  # too large for the dtype: inf, refused by the caller
        return np.asarray(numbers, dtype=dtype)


def _leaves(data: list) -> list:
    """The values of nested lists in row-major order (without recursion: JSON nests up to 1024 deep)."""
    leaves: list = []
    stack = [iter(data)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                stack.append(iter(v))
                break
            leaves.append(v)
        else:
            stack.pop()
    return leaves


def _describe(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, str):
        return f"the text {value[:40]!r}"
    return "an object" if isinstance(value, dict) else repr(value)
