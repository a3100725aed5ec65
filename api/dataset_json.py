"""JSON datasets: ``{"inputs": [[...], ...], "targets": [...]}`` read into api/dataset_formats.py's stored form.

The text is checked before Python builds a value of it (its nesting, from its brackets: a deep one would overflow
json.loads' stack) and after (every key once, numbers only: NumPy would read "2" as 2.0, true as 1.0 and null as
NaN); what is wrong is named with its position.
"""

import json
from pathlib import Path

import numpy as np

from api.dataset_formats import check_arrays, write_arrays
from api.errors import InvalidInput
from api.json_body import nesting_depth

JSON_SHAPE = '{"inputs": [[numbers, ...], ...], "targets": [numbers, ...] or [[numbers, ...], ...]}'
JSON_DEPTH = 3  # the body, a list of rows, a row


def _not_json_constant(name: str):
    raise InvalidInput(f"the JSON holds {name}, which is not JSON: datasets must hold finite numbers; drop or fill "
                       "the missing values")


def _shown(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, (list, dict)):
        return "an array" if isinstance(value, list) else "an object"
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _not_numbers(name: str, value) -> str | None:
    """What first keeps ``value`` (inputs or targets as parsed) from being rows of numbers, and where it is."""
    if not isinstance(value, list):
        return f"{name} is {_shown(value)}; send {JSON_SHAPE}"
    rows = isinstance(value[0], list) if value else False
    for i, row in enumerate(value):
        if rows != isinstance(row, list):
            return (f"{name}[{i}] is {_shown(row)} where {name}[0] is {_shown(value[0])}: {name} is a list of numbers "
                    f"or a list of rows; send {JSON_SHAPE}")
        if rows and len(row) != len(value[0]):
            return f"{name}[{i}] has {len(row)} values where {name}[0] has {len(value[0])}; every row needs the same number"
        for j, cell in enumerate(row if rows else [row]):
            where = f"{name}[{i}, {j}]" if rows else f"{name}[{i}]"
            if cell is None:
                return f"{where} is null: datasets must hold numbers; drop or fill the missing values"
            if isinstance(cell, bool):
                return f"{where} is {_shown(cell)}, not a number; send 1 or 0"
            if not isinstance(cell, (int, float)):
                return f"{where} is {_shown(cell)}, not a number; send numbers as numbers, not strings"
            try:
                float(cell)
            except OverflowError:
                return f"{where} is a whole number of {len(str(abs(cell)))} digits, beyond float64; scale the values down"
    return None


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [key for key, _ in pairs]
    twice = next((key for key in keys if keys.count(key) > 1), None)
    if twice is not None:  # json.loads would keep the last one, silently
        raise InvalidInput(f"the JSON names {twice!r} more than once; give each key once: {JSON_SHAPE}")
    return dict(pairs)


def convert_json(source: Path, dest: Path, max_rows: int, dtype: str | None = None) -> str:
    """A JSON object of inputs and targets; returns the SHA-256 of the stored form written to ``dest``.
    Its nesting is checked from its brackets before it is parsed (a deep one would overflow the parser's stack);
    a value that is not a number is named with its position."""
    text = source.read_bytes()
    depth = nesting_depth(text, max_containers=len(text))  # no bound on their number: the file's size bounds it
    if depth > JSON_DEPTH:
        raise InvalidInput(f"the JSON nests arrays and objects {depth} deep; a JSON dataset nests {JSON_DEPTH} deep: "
                           f"{JSON_SHAPE}")
    try:
        body = json.loads(text, parse_constant=_not_json_constant, object_pairs_hook=_unique_keys)
    except UnicodeDecodeError:
        raise InvalidInput("the JSON body is not UTF-8 text") from None
    except ValueError as exc:
        if "integer string conversion" in str(exc):  # Python's own bound, 4,300 digits
            raise InvalidInput("the JSON holds a whole number of more than 4300 digits; datasets hold numbers that "
                               "fit float64 (at most 309 digits)") from None
        raise InvalidInput(f"the body is not valid JSON ({exc}); send {JSON_SHAPE}") from None
    if not isinstance(body, dict) or set(body) != {"inputs", "targets"}:
        raise InvalidInput(f'a JSON dataset is an object with exactly "inputs" (rows of numbers) and "targets": {JSON_SHAPE}')
    # NumPy reads "2" as 2.0 and true as 1.0: a string or boolean among the numbers is looked for (quotes beyond
    # the two keys', a true or false in the text), and null becomes NaN (NaN itself is refused while parsing)
    suspect = text.count(b'"') > 4 or b"true" in text or b"false" in text
    arrays = []
    for name in ("inputs", "targets"):
        problem = _not_numbers(name, body[name]) if suspect else None
        if problem is None:
            try:
                array = np.array(body[name], dtype=np.float64)
            except (ValueError, TypeError, OverflowError):
                array = None
            if array is None or np.isnan(array).any():
                problem = _not_numbers(name, body[name]) or f"{name} is not a rectangular array of numbers; send {JSON_SHAPE}"
        if problem is not None:
            raise InvalidInput(problem)
        arrays.append(array)
    inputs, targets = check_arrays(*arrays, max_rows)
    return write_arrays(dest, inputs, targets, dtype or "float32")
