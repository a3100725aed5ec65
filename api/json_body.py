"""JSON request bodies, read with bounds and parsed off the event loop; JSON responses by orjson.

`JsonBodyRoute` is the route class of every router whose routes take a JSON body. Before FastAPI
looks at the body, it:

1. refuses a body that is not JSON (`Content-Type` other than application/json) with a 422 that says
   to send a JSON object with `Content-Type: application/json`;
2. reads the body chunk by chunk and, as the chunks arrive, counts its arrays and objects (`[` and
   `{`, a byte scan at C speed); its nesting depth is checked from its brackets before parsing. A body over the route's limit is refused with
   413 before a single Python object is built (the rest of it is read and dropped, so the client sees
   the answer). The limit follows NN_MAX_SAMPLES_PER_REQUEST (two arrays per sample: an input row and
   a target row) or, for weights, NN_MAX_LAYERS x NN_MAX_LAYER_SIZE rows;
3. parses with orjson and validates against the route's schema in a worker thread, so a large body
   never blocks the event loop (and /health); a body of at most INLINE_BYTES (16 KiB) is parsed on the loop,
   where it takes less time than the hop to a thread; a malformed body gets a 422 with the line, column and a
   hint; a JSON value that is not an object gets the same message as in 1.

FastAPI then receives the validated model, so route signatures, schemas and the OpenAPI document are
FastAPI's own. The scan counts brackets inside strings too: it can only over-count, and a body whose
strings hold thousands of brackets is not one this service takes.
"""

import email.message
import functools
import json
from typing import Any, Callable, Coroutine

import numpy as np
import orjson
import simdjson
from anyio import to_thread
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.params import Form
from pydantic import BaseModel, ValidationError
from starlette.responses import JSONResponse

from api.errors import NO_BODY, InvalidInput, PayloadTooLarge
from api.schemas import LabelledSamples, OutputRequest, Weights
from api.settings import Settings

INT_ERRORS = {"int_type", "int_from_float"}
SLACK = 1024  # arrays and objects beyond the rows: the body itself, options, search spaces
SEND_JSON = "send a JSON object with Content-Type: application/json, as in the examples of /docs"
STEP = np.zeros(256, np.int8)  # +1 for each byte that opens an array or object, -1 for each that closes one
STEP[list(b"[{")], STEP[list(b"]}")] = 1, -1
INLINE_BYTES = 16 * 1024  # bodies up to this size (a sample of ~1,500 numbers) are parsed on the event loop
NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
NOT_MARKS = bytes(b for b in range(256) if b not in b"[]{}uf")  # brackets, and a letter of each true/false/null


def dumps(content: Any) -> bytes:
    """JSON by orjson: NumPy arrays and scalars serialised natively, NaN and Inf as null (as `jsonable` does)."""
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


class OrjsonResponse(JSONResponse):
    """A response rendered by `dumps`."""

    def render(self, content: Any) -> bytes:
        return dumps(content)


def container_limit(model: Any, settings: Settings) -> tuple[int, str]:
    """Most arrays and objects a body of this schema may hold, and the setting that says so."""
    if isinstance(model, type) and issubclass(model, Weights):
        return (settings.max_layers * (settings.max_layer_size + 2) + SLACK,
                f"{settings.max_layers} layers (NN_MAX_LAYERS) of at most {settings.max_layer_size} rows (NN_MAX_LAYER_SIZE)")
    return (2 * settings.max_samples_per_request + SLACK,
            f"{settings.max_samples_per_request} samples per request (NN_MAX_SAMPLES_PER_REQUEST)")


@functools.lru_cache(maxsize=256)  # a handful of distinct headers in practice; parsing one costs more than a request's JSON
def is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


class BodyScan:
    """Counts the arrays and objects that a body's chunks open, and its quotes, in C (bytes.count).
    Strings are bounded like containers (two per array or object: keys and names), so a body of
    millions of short strings is refused as cheaply as one of millions of rows."""

    def __init__(self, max_containers: int):
        self.max_containers = max_containers
        self.opened = self.quotes = 0

    def feed(self, chunk: bytes) -> bool:
        """False once the body is over the limit."""
        self.opened += chunk.count(b"[") + chunk.count(b"{")
        self.quotes += chunk.count(b'"')
        return self.opened <= self.max_containers and self.quotes <= 4 * self.max_containers

    def refusal(self, limit: int, what: str) -> PayloadTooLarge:
        if self.opened > self.max_containers:
            return PayloadTooLarge(f"the body holds more than {limit} JSON arrays and objects (rows); a request "
                                   f"takes at most {what}: send the rows in several requests")
        return PayloadTooLarge(f"the body holds more than {2 * limit} strings; a request takes at most {what} "
                               "and a few names: send numbers as numbers, and the rows in several requests")


def nesting_depth(body: bytes, max_containers: int, brackets: bytes | None = None) -> int:
    """Deepest nesting of arrays and objects (0 when the brackets cannot balance: orjson then says where);
    ``brackets``: the body's brackets alone, when the caller has them."""
    brackets = body.translate(None, NOT_BRACKETS) if brackets is None else brackets
    if len(brackets) > 2 * max_containers:  # more closers than the openers allowed: not JSON
        return 0
    if not brackets:
        return 0
    return int(np.cumsum(STEP[np.frombuffer(brackets, np.uint8)], dtype=np.int32).max())


async def read_bounded(request: Request, scan: BodyScan) -> bytes | None:
    """The whole body, or None when the scan refused it (the rest is read and dropped)."""
    chunks, within = [], True
    async for chunk in request.stream():
        if within:
            within = scan.feed(chunk)
            chunks.append(chunk)
            if not within:
                chunks.clear()
    return b"".join(chunks) if within else None


def position_hint(body: bytes, exc: orjson.JSONDecodeError, what: str = "the body") -> str:
    around = body[max(exc.pos - 20, 0):exc.pos + 20].decode("utf-8", "replace")
    if "infinity" in exc.msg or body[exc.pos:exc.pos + 3] in (b"NaN", b"Inf") or body[exc.pos:exc.pos + 4] == b"-Inf":
        hint = "NaN and Infinity are not JSON and every number must be finite: send finite numbers"
    elif "UTF-8" in exc.msg:
        hint = "send the body as UTF-8 text"
    elif exc.pos >= len(body.rstrip()):
        hint = "the body ends early: close every bracket and quote"
    else:
        hint = "check the quotes, commas and brackets there, or build the body with a JSON library"
    return (f"{what} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno} (byte {exc.pos}), "
            f"near {around!r}; {hint}")


def parse_and_validate(body: bytes, body_field: Any, wants_object: bool, max_depth: int, max_containers: int,
                       containers: int | None = None) -> Any:
    """Runs in a worker thread (a small body: on the loop): numeric rows straight into arrays; else the bounds
    on literals and depth, orjson, then the route's schema (errors as FastAPI reports them). ``containers``: the
    arrays and objects of the body, when BodyScan has counted them."""
    schema = body_field if isinstance(body_field, type) else getattr(getattr(body_field, "field_info", None), "annotation", None)
    if wants_object and array_fields(schema):
        containers = body.count(b"[") + body.count(b"{") if containers is None else containers
        fast = numeric_body(body, schema, containers)
        if fast is not None:
            rest, arrays = fast
            try:
                validated = schema.model_validate({**rest, **{name: PLACEHOLDERS[a.ndim] for name, a in arrays.items()}})
            except ValidationError:
                pass  # the bounds, orjson and the route's own validation below say what is wrong
            else:
                for name, array in arrays.items():
                    setattr(validated, name, array)
                return validated
    marks = body.translate(None, NOT_MARKS)  # one pass over the body: its brackets, and a u or f per true/false/null
    literals = _letters(marks)  # at least one per true, false or null: the exact count only when this is over
    if literals > 2 * max_containers:
        literals = body.count(b"true") + body.count(b"false") + body.count(b"null")
    if literals > 2 * max_containers:  # each could be one validation error: a million cost 15 s and 1 GB
        raise PayloadTooLarge(f"the body holds {literals} true/false/null values; rows hold numbers (1 for true, "
                              "0 for false), and a request has only a few options")
    depth = nesting_depth(body, max_containers, marks.translate(None, b"uf"))
    if depth > max_depth:
        raise InvalidInput(f"the body nests arrays and objects {depth} deep; at most {max_depth} (NN_MAX_JSON_DEPTH): "
                           f"{SEND_JSON}")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(position_hint(body, exc)) from None
    if wants_object and not isinstance(value, dict):
        raise InvalidInput(f"the body is a JSON {type(value).__name__.replace('NoneType', 'null')}, not an object; {SEND_JSON}")
    if body_field is None:
        return value
    if isinstance(body_field, type) and issubclass(body_field, BaseModel):  # a schema, not a FastAPI field
        try:
            return body_field.model_validate(value)
        except ValidationError as exc:
            errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
            raise RequestValidationError(errors, body=value) from None
    validated, errors = body_field.validate(value, {}, loc=("body",))
    if errors and any(error.get("type") in INT_ERRORS for error in errors):
        # orjson reads an integer beyond 64 bits as a float; the stdlib keeps it exact, so its error names the limit
        value = json.loads(body)
        validated, errors = body_field.validate(value, {}, loc=("body",))
    if errors:
        raise RequestValidationError(errors, body=value)
    return validated


def _letters(text: bytes) -> int:
    """An upper bound of the true, false and null in ``text``: each holds a u or an f, and numbers hold neither."""
    return text.count(b"u") + text.count(b"f")


def array_fields(schema: Any) -> tuple[str, ...]:
    """The numeric fields of a body that numeric_body reads into arrays (services take lists or arrays there)."""
    if not isinstance(schema, type):
        return ()
    if issubclass(schema, OutputRequest):
        return ("inputs", "input", "targets")
    return ("inputs", "targets") if issubclass(schema, LabelledSamples) else ()


def numeric_body(body: bytes, schema: Any, containers: int) -> tuple[dict, dict[str, np.ndarray]] | None:
    """The body of a schema with array_fields (input rows, targets) parsed by simdjson: those fields straight into
    NumPy arrays (C from text to doubles, no Python float per number), the other fields as Python values.
    None whenever the body may be anything but an object of regular rows of numbers and scalar options (a ragged
    row, a flat vector for rows, text or a boolean in a row, a nested field, a duplicate key, malformed JSON):
    then orjson and pydantic read it and say what is wrong, as they always did. simdjson bounds its own depth
    and reads true/false/null in C, so no bound needs checking before it. ``containers``: the body's [ and {."""
    fields = array_fields(schema)
    if not fields:
        return None
    try:
        doc = simdjson.Parser().parse(body)
        if not isinstance(doc, simdjson.Object):
            return None
        keys = list(doc.keys())
        twice = next((key for key in keys if keys.count(key) > 1), None)
        if twice is not None:  # orjson and pydantic would keep the last one, silently
            raise InvalidInput(f"the body names {twice!r} more than once; give each key once: {SEND_JSON}")
        if any("[" in key or "{" in key for key in keys):
            return None
        rest, arrays, brackets = {}, {}, 0
        for key in keys:
            item = doc[key]
            if key in fields and isinstance(item, simdjson.Array) and len(item):
                rows = isinstance(item[0], simdjson.Array)
                if rows != (key == "inputs") and key != "targets":  # one row in `input`, rows in `inputs`: else pydantic says so
                    return None
                width = len(item[0]) if rows else 1
                if rows and (width == 0 or not all(isinstance(row, simdjson.Array) and len(row) == width for row in item)):
                    return None
                array = np.frombuffer(item.as_buffer(of_type="d"), np.float64)
                if array.size != len(item) * width:
                    return None
                arrays[key] = array.reshape(len(item), width) if rows else array
                brackets += 1 + (len(item) if rows else 0)
            elif isinstance(item, (simdjson.Array, simdjson.Object)) or (isinstance(item, str) and ("[" in item or "{" in item)):
                return None
            else:
                rest[key] = item
    except (ValueError, TypeError, RuntimeError):  # not JSON, or not numbers where numbers belong
        return None
    # every row is an array of `width` elements and the rows hold `width` numbers each: a bracket more in the body
    # (beside the { of the body itself) would be an array inside a row (no key or string holds one)
    if not arrays or containers != brackets + 1:
        return None
    return rest, arrays


PLACEHOLDERS = {1: [0.0], 2: [[0.0]]}  # what pydantic checks in place of a field read by numeric_body


async def read_json(request: Request, model: type[BaseModel]) -> BaseModel:
    """For a route that reads its body itself (one that also takes files): the same bounds, parser and
    thread as JsonBodyRoute, validated against ``model``."""
    settings: Settings = request.app.state.settings
    limit, what = container_limit(model, settings)
    scan = BodyScan(limit)
    body = await read_bounded(request, scan)
    if body is None:
        raise scan.refusal(limit, what)
    if not body.strip():  # as the other JSON routes say it, not orjson's "zero-length, empty document"
        raise InvalidInput(NO_BODY)
    return await to_thread.run_sync(parse_and_validate, body, model, True, settings.max_json_depth, limit, scan.opened)


class JsonBodyRoute(APIRoute):
    """An APIRoute whose JSON body is bounded, parsed by orjson and validated off the event loop."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        field = self.body_field
        if field is None or isinstance(field.field_info, Form):
            return handle
        model = field.field_info.annotation
        wants_object = isinstance(model, type) and issubclass(model, BaseModel)
        # one body model, not several fields embedded in one object: FastAPI takes the validated model as is
        prevalidate = field if wants_object and not self._embed_body_fields else None

        async def route_handler(request: Request) -> Response:
            settings: Settings = request.app.state.settings
            limit, what = container_limit(model, settings)
            scan = BodyScan(limit)
            if not is_json(request.headers.get("content-type")):
                if await request.body():
                    content_type = request.headers.get("content-type") or "none"
                    raise InvalidInput(f"the body is not JSON (Content-Type: {content_type}); {SEND_JSON}")
                return await handle(request)  # no body: FastAPI says which field is required
            body = await read_bounded(request, scan)
            if body is None:
                raise scan.refusal(limit, what)
            if len(body) > INLINE_BYTES:
                request._json = await to_thread.run_sync(parse_and_validate, body, prevalidate, wants_object,
                                                         settings.max_json_depth, limit, scan.opened)
            elif body:  # a small body (one sample): parsed here in microseconds, cheaper than a hop to a thread
                request._json = parse_and_validate(body, prevalidate, wants_object, settings.max_json_depth, limit,
                                                   scan.opened)
            request._body = body
            return await handle(request)

        return route_handler
