"""Reading uploaded datasets (NPZ, CSV, JSON) into the one form the service keeps: an uncompressed NPZ
with ``inputs`` (n, features), float32 or float64, and ``targets`` (n,) or (n, k), int64, float32 or float64.

Every reader works from a file on disk and in chunks, so memory stays near one copy of the data (or
less); bad content raises ``InvalidInput`` naming the array, row and column. An NPZ that already has
that form is kept as uploaded (no second copy is written); its uncompressed members are memory-mapped.
"""

import csv
import io
import json
import os
import struct
import zipfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np

from api.errors import InvalidInput, PayloadTooLarge
from api.npz_writer import CHUNK_BYTES, NpzWriter, rows_per_chunk

FORMATS = ("npz", "csv", "json")
CSV_BLOCK = 2 * 1024 * 1024  # bytes of CSV text parsed at a time
PARSE_THREADS = min(4, os.cpu_count() or 1)  # blocks parsed at once
INPUT_DTYPES = ("<f4", "<f8")
TARGET_DTYPES = ("<i8", "<f4", "<f8")
MAX_CLASSES = 1000  # integer targets with at most this many distinct values are summarised as classes
_POW10 = np.array([10.0 ** i for i in range(40)])


# -- the stored form ---------------------------------------------------------------------------------
def _member_array(path: Path, archive: zipfile.ZipFile, name: str) -> np.ndarray:
    """One array of an NPZ: memory-mapped when stored uncompressed, else read (decompressed) into memory."""
    info = archive.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        with archive.open(info) as handle:
            return np.lib.format.read_array(handle, allow_pickle=False)
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        local = handle.read(30)
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            raise InvalidInput(f"{name}: damaged zip entry; the NPZ file is truncated or corrupt")
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        start = info.header_offset + 30 + name_length + extra_length
        handle.seek(start)
        version = np.lib.format.read_magic(handle)
        if version not in ((1, 0), (2, 0)):  # 3.0 (unicode field names): read it whole
            with archive.open(info) as member:
                return np.lib.format.read_array(member, allow_pickle=False)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(handle)
        offset = handle.tell()
    if dtype.hasobject:
        raise ValueError("holds Python objects")
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if offset - start + size > info.file_size:
        raise InvalidInput(f"{name}: its header promises {size} bytes of data that are not there; the NPZ file is "
                           "truncated or corrupt")
    if size == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def open_npz(path: Path) -> tuple[dict[str, np.ndarray], zipfile.ZipFile]:
    """Every array of an NPZ file by name (``x.npy`` -> ``x``), memory-mapped where possible."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidInput(f"not a readable NPZ (zip) file: {exc}; the file may be truncated. Save it with "
                           "numpy.savez(path, inputs=..., targets=...)") from None
    arrays = {}
    for name in archive.namelist():
        if not name.endswith(".npy"):
            continue
        try:
            arrays[name[:-4]] = _member_array(path, archive, name)
        except InvalidInput:
            raise
        except Exception as exc:  # a bad header, a truncated member, pickled objects, ...
            raise InvalidInput(f"array {name[:-4]!r} of the NPZ file cannot be read: {exc}") from None
    return arrays, archive


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The (memory-mapped) inputs and targets of a stored dataset."""
    arrays, archive = open_npz(path)
    archive.close()
    return arrays["inputs"], arrays["targets"]


# -- checks and summaries ----------------------------------------------------------------------------
def _check_finite(array: np.ndarray, name: str, columns: list[str] | None = None) -> None:
    step = rows_per_chunk(array)
    for start in range(0, len(array), step):
        chunk = array[start:start + step]
        if not np.isfinite(chunk).all():
            index = np.argwhere(~np.isfinite(chunk))[0]
            row = start + int(index[0])
            where = f"{name}[{row}]" if chunk.ndim == 1 else f"{name}[{row}, {int(index[1])}]"
            if columns is not None:
                where = f"row {row + 1}, column {columns[int(index[1])]!r}" if chunk.ndim > 1 else f"row {row + 1}"
            raise InvalidInput(f"{where} is {chunk[tuple(index)]}: datasets must hold finite numbers; "
                               "drop or fill the missing values")


def check_arrays(inputs, targets, max_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Shapes, kinds and values of an upload's arrays; returns them as NumPy arrays (not copied)."""
    for name, array in (("inputs", inputs), ("targets", targets)):
        if array.dtype.kind not in "biuf":
            raise InvalidInput(f"{name} has dtype {array.dtype}; datasets hold numbers (float, int or bool)")
    if inputs.ndim != 2:
        raise InvalidInput(f"inputs has shape {inputs.shape}; it must be 2-D (n_samples, n_features)")
    if targets.ndim not in (1, 2):
        raise InvalidInput(f"targets has shape {targets.shape}; it must be (n_samples,) or (n_samples, n_outputs)")
    n, width = inputs.shape
    if n == 0 or width == 0 or (targets.ndim == 2 and targets.shape[1] == 0):
        raise InvalidInput(f"inputs {inputs.shape} and targets {targets.shape}: a dataset needs at least one "
                           "sample, one feature and one target")
    if len(targets) != n:
        raise InvalidInput(f"inputs has {n} rows but targets has {len(targets)}; give one target (row) per sample")
    if n > max_rows:
        raise PayloadTooLarge(f"{n} samples; a dataset holds at most {max_rows} (NN_MAX_DATASET_ROWS)")
    if inputs.dtype.kind == "f":
        _check_finite(inputs, "inputs")
    if targets.dtype.kind == "f":
        _check_finite(targets, "targets")
    return inputs, targets


def _input_dtype(source: np.dtype, wanted: str | None) -> np.dtype:
    if wanted is not None:
        return np.dtype(wanted)
    return np.dtype("<f8") if source == np.float64 else np.dtype("<f4")


def _target_dtype(targets: np.ndarray, input_dtype: np.dtype) -> np.dtype:
    if targets.dtype.kind in "biu":
        return np.dtype("<i8")
    if targets.ndim == 1 and len(targets) and np.array_equal(targets, np.round(targets)) and np.abs(targets).max() < 2**53:
        return np.dtype("<i8")  # whole numbers: class indices or counts
    return input_dtype


def summary(targets: np.ndarray) -> dict:
    """Classes and their counts for integer targets (or one-hot rows), and min / max / mean."""
    values = np.asarray(targets)
    result = {"shape": list(values.shape), "min": float(values.min()), "max": float(values.max()),
              "mean": float(values.mean(dtype=np.float64)), "classes": None, "counts": None}
    if values.ndim == 1 and values.dtype.kind in "iub":
        classes, counts = np.unique(values, return_counts=True)
        if len(classes) <= MAX_CLASSES:
            result.update(classes=classes.tolist(), counts=counts.tolist())
    elif values.ndim == 2 and values.shape[1] > 1 and np.isin(values, (0, 1)).all() and (values.sum(1) == 1).all():
        result.update(classes=list(range(values.shape[1])), counts=values.sum(0).astype(np.int64).tolist())
    return result


def describe(path: Path) -> dict:
    """What a stored dataset's record says about its arrays."""
    inputs, targets = load(path)
    return {"n_samples": int(inputs.shape[0]), "n_features": int(inputs.shape[1]), "dtype": inputs.dtype.name,
            "targets": summary(targets)}


# -- NPZ --------------------------------------------------------------------------------------------
def _pick(arrays: dict[str, np.ndarray], names: tuple[str, str]) -> np.ndarray:
    for name in names:
        if name in arrays:
            return arrays[name]
    found = ", ".join(sorted(arrays)) or "none"
    raise InvalidInput(f"the NPZ file has no array {names[0]!r} (or {names[1]!r}); it holds: {found}. Save it with "
                       "numpy.savez(path, inputs=..., targets=...)")


def is_stored_form(arrays: dict[str, np.ndarray], archive: zipfile.ZipFile) -> bool:
    infos = {i.filename: i for i in archive.infolist()}
    if set(infos) != {"inputs.npy", "targets.npy"} or any(i.compress_type != zipfile.ZIP_STORED for i in infos.values()):
        return False
    inputs, targets = arrays["inputs"], arrays["targets"]
    return (inputs.dtype.str in INPUT_DTYPES and targets.dtype.str in TARGET_DTYPES and inputs.flags.c_contiguous
            and targets.flags.c_contiguous and (targets.dtype.kind != "f" or targets.dtype == inputs.dtype))


def convert_npz(source: Path, dest: Path, max_rows: int, dtype: str | None = None) -> str | None:
    """Checks an uploaded NPZ; writes the stored form to ``dest`` unless the upload already is in it
    (and no other dtype is asked for). Returns the SHA-256 of ``dest`` when it was written, else None."""
    arrays, archive = open_npz(source)
    with archive:
        inputs, targets = check_arrays(_pick(arrays, ("inputs", "x")), _pick(arrays, ("targets", "y")), max_rows)
        if is_stored_form(arrays, archive) and (dtype is None or np.dtype(dtype) == inputs.dtype):
            return None
        return write_arrays(dest, inputs, targets, dtype)


def write_arrays(dest: Path, inputs: np.ndarray, targets: np.ndarray, dtype: str | None = None) -> str:
    """The stored form of two arrays in ``dest``; returns its SHA-256."""
    input_dtype = _input_dtype(inputs.dtype, dtype)
    target_dtype = _target_dtype(targets, input_dtype)
    writer = NpzWriter(dest)
    try:
        writer.member("inputs", input_dtype, inputs.shape, _fitted(inputs, input_dtype, "inputs"))
        writer.member("targets", target_dtype, targets.shape, _fitted(targets, target_dtype, "targets"))
    finally:
        writer.close()
    return writer.sha256


def _fitted(array: np.ndarray, dtype: np.dtype, name: str) -> Iterator[np.ndarray]:
    """``array`` in chunks of ``dtype``, refusing a finite value beyond its range (float64 to float32 would store
    Inf: 3.5e38 is finite in JSON)."""
    step = rows_per_chunk(array)
    for start in range(0, len(array), step):
        with np.errstate(over="ignore"):
            chunk = np.asarray(array[start:start + step], dtype=dtype)
        if chunk.dtype.kind == "f" and not np.isfinite(chunk).all():
            index = np.argwhere(~np.isfinite(chunk))[0]
            where = f"{name}[{start + int(index[0])}" + ("]" if chunk.ndim == 1 else f", {int(index[1])}]")
            raise InvalidInput(f"{where} is {array[start:start + step][tuple(index)]}, too large for {dtype.name} "
                               f"(at most {np.finfo(dtype).max:.6g} in magnitude); scale the values down, or upload "
                               "with ?dtype=float64")
        yield chunk


# -- JSON --------------------------------------------------------------------------------------------
def convert_json(source: Path, dest: Path, max_rows: int, dtype: str | None = None) -> str:
    """A JSON object of inputs and targets; returns the SHA-256 of the stored form written to ``dest``."""
    try:
        body = json.loads(source.read_bytes())
    except UnicodeDecodeError:
        raise InvalidInput("the JSON body is not UTF-8 text") from None
    except ValueError as exc:
        raise InvalidInput(f"the body is not valid JSON ({exc}); send {{\"inputs\": [[...], ...], \"targets\": [...]}}") from None
    if not isinstance(body, dict) or set(body) != {"inputs", "targets"}:
        raise InvalidInput('a JSON dataset is an object with exactly "inputs" (rows of numbers) and "targets"')
    arrays = []
    for name in ("inputs", "targets"):
        try:
            array = np.array(body[name], dtype=np.float64)
        except (ValueError, TypeError):
            rows = body[name] if isinstance(body[name], list) else []
            widths = {len(r) if isinstance(r, list) else 0 for r in rows}
            what = f"rows of different lengths ({sorted(widths)[:5]})" if len(widths) > 1 else "values that are not numbers"
            raise InvalidInput(f"{name} holds {what}; every row needs the same number of numbers") from None
        arrays.append(array)
    inputs, targets = check_arrays(*arrays, max_rows)
    return write_arrays(dest, inputs, targets, dtype or "float32")


# -- CSV --------------------------------------------------------------------------------------------
def _fast_block(block: bytes, n_columns: int) -> np.ndarray | None:
    """Plain decimal numbers ([-]digits[.digits]) separated by ',' and '\\n', parsed with whole-array
    NumPy operations (several times faster than numpy.loadtxt); None when anything else is in the block."""
    b = np.frombuffer(block, np.uint8)
    is_newline = b == 10
    ends = np.flatnonzero(is_newline | (b == 44))
    n_fields = len(ends)
    n_rows = block.count(b"\n")
    if n_fields == 0 or n_fields != n_rows * n_columns:
        return None
    if not np.array_equal(np.searchsorted(ends, np.flatnonzero(is_newline)),
                          np.arange(n_columns - 1, n_fields, n_columns)):
        return None  # ragged rows that happen to add up: the slow path names them
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts
    longest = int(lengths.max())
    if lengths.min() == 0 or longest > 30:
        return None
    value = None  # set by the first character of every field
    digits_after_dot = None
    negative = None
    dot_seen = np.zeros(n_fields, bool)
    active = None  # None: every field
    for j in range(longest):
        if j:
            active = np.flatnonzero(lengths > j) if active is None else active[lengths[active] > j]
            chars = b[starts[active] + j]
        else:
            chars = b[starts]
        digit = chars - np.uint8(48)
        is_digit = digit < 10
        if is_digit.all():
            if value is None:
                value = digit.astype(np.float64)
            elif active is None:
                value *= 10
                value += digit
            else:
                value[active] = value[active] * 10 + digit
            continue
        odd = np.flatnonzero(~is_digit)
        fields = odd if active is None else active[odd]
        odd_chars = chars[odd]
        if j == 0 and (odd_chars == 45).all() and negative is None:
            negative = fields  # a leading minus
        elif (odd_chars == 46).all() and not dot_seen[fields].any():
            dot_seen[fields] = True
            digits_after_dot = digits_after_dot if digits_after_dot is not None else np.zeros(n_fields, np.int64)
            digits_after_dot[fields] = lengths[fields] - 1 - j
        else:
            return None
        digit[odd] = 0
        kept = np.where(is_digit, 10.0, 1.0)
        if value is None:
            value = digit.astype(np.float64)
        elif active is None:
            value = value * kept + digit
        else:
            value[active] = value[active] * kept + digit
    if digits_after_dot is not None:
        value /= _POW10[digits_after_dot]
    if negative is not None:
        if (lengths[negative] == 1).any():
            return None  # a lone '-'
        value[negative] = -value[negative]
    return value.reshape(-1, n_columns)


def _slow_block(block: bytes, n_columns: int, first_line: int, columns: list[str]) -> np.ndarray:
    """Anything the fast path does not take (quotes, spaces, exponents, CRLF), or the exact bad cell."""
    try:
        if b"\n\n" in block or block.startswith(b"\n"):
            raise ValueError("an empty line")  # loadtxt would skip it; the loop below names it
        return np.loadtxt(io.BytesIO(block), delimiter=",", dtype=np.float64, ndmin=2, comments=None,
                          encoding="utf-8").reshape(-1, n_columns)
    except (ValueError, UnicodeDecodeError):
        pass
    rows = []
    for offset, raw in enumerate(block.split(b"\n")[:-1] if block.endswith(b"\n") else block.split(b"\n")):
        line = first_line + offset
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"line {line} is not UTF-8 text; save the CSV file as UTF-8") from None
        if not text.strip():
            raise InvalidInput(f"line {line} is empty; remove empty lines from the CSV file")
        cells = next(csv.reader([text]))
        if len(cells) != n_columns:
            raise InvalidInput(f"line {line} has {len(cells)} values but the header names {n_columns} columns")
        row = []
        for name, cell in zip(columns, cells):
            try:
                row.append(float(cell))
            except ValueError:
                raise InvalidInput(f"line {line}, column {name!r}: {cell[:40]!r} is not a number") from None
        rows.append(row)
    return np.array(rows, dtype=np.float64).reshape(-1, n_columns)


def _blocks(handle, size: int, end: int) -> Iterator[bytes]:
    """The file up to byte ``end`` in blocks that end at a line end (the last one gets its line end)."""
    rest = b""
    while handle.tell() < end:
        data = rest + handle.read(min(size, end - handle.tell()))
        cut = data.rfind(b"\n") + 1
        rest = data[cut:]
        if cut:
            yield data[:cut]
    if rest:
        yield rest + b"\n"


def _count_rows(path: Path, header_end: int) -> tuple[int, int]:
    """(data lines after the header, where the last one ends), ignoring blank lines at the end of the file."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        handle.seek(max(header_end, size - 65536))
        tail = handle.read()
        end = size - (len(tail) - len(tail.rstrip(b"\r\n \t")))
        if end <= header_end:
            return 0, end
        handle.seek(header_end)
        count = 0
        while handle.tell() < end:
            count += handle.read(min(CHUNK_BYTES, end - handle.tell())).count(b"\n")
    return count + 1, end


def _numbered(blocks: Iterator[bytes], line: int) -> Iterator[tuple[bytes, int]]:
    """Each block with the file line it starts on."""
    for block in blocks:
        yield block, line
        line += block.count(b"\n")


def _in_threads(function, items: Iterator[tuple], workers: int = PARSE_THREADS) -> Iterator:
    """``function(*item)`` for each item, in order, ``workers`` at a time (NumPy releases the GIL in the
    parser's array operations), holding at most ``workers + 1`` blocks in memory."""
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(function, *item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def convert_csv(source: Path, dest: Path, max_rows: int, target_columns: list[str] | None = None,
                dtype: str | None = None) -> str:
    """A CSV file with a header row; the target column(s) by name (default: the last column). Returns the
    SHA-256 of the stored form written to ``dest``."""
    with open(source, "rb") as handle:
        first = handle.readline(1 << 20)
        header_end = handle.tell()
    try:
        header = first.decode("utf-8-sig").rstrip("\r\n")
    except UnicodeDecodeError:
        raise InvalidInput("line 1 (the header) is not UTF-8 text; save the CSV file as UTF-8") from None
    columns = next(csv.reader([header]), [])
    if len(columns) < 2 or not first.endswith(b"\n"):
        raise InvalidInput("a CSV dataset needs a header row naming at least two columns (features and a target), "
                           "then one line per sample")
    targets = target_columns or [columns[-1]]
    missing = [name for name in targets if name not in columns]
    if missing:
        shown = ", ".join(map(repr, columns[:20])) + (f" and {len(columns) - 20} more" if len(columns) > 20 else "")
        raise InvalidInput(f"no column {missing[0]!r} in the CSV header; ?target= names one of: {shown}")
    target_index = [columns.index(name) for name in targets]
    feature_index = [i for i in range(len(columns)) if i not in target_index]
    if not feature_index:
        raise InvalidInput("every column is a target; leave at least one feature column")
    n, end = _count_rows(source, header_end)
    if n == 0:
        raise InvalidInput("the CSV file has a header but no data lines")
    if n > max_rows:
        raise PayloadTooLarge(f"{n} samples; a dataset holds at most {max_rows} (NN_MAX_DATASET_ROWS)")
    input_dtype = np.dtype(dtype or "float32")
    target_values = np.empty((n, len(target_index)))
    contiguous = feature_index == list(range(len(feature_index))) and target_index == list(range(len(feature_index), len(columns)))
    done = 0

    def parse(block: bytes, first_line: int) -> tuple[np.ndarray, np.ndarray]:
        if b"\r" in block:
            block = block.replace(b"\r\n", b"\n")
        rows = _fast_block(block, len(columns))
        if rows is None:
            rows = _slow_block(block, len(columns), first_line, columns)
        if not np.isfinite(rows).all():
            index = np.argwhere(~np.isfinite(rows))[0]
            raise InvalidInput(f"line {first_line + int(index[0])}, column {columns[int(index[1])]!r} is "
                               f"{rows[tuple(index)]}: datasets must hold finite numbers")
        inputs = rows[:, :len(feature_index)] if contiguous else rows[:, feature_index]
        with np.errstate(over="ignore"):
            return inputs.astype(input_dtype), rows[:, target_index]

    def input_chunks() -> Iterator[np.ndarray]:
        nonlocal done
        with open(source, "rb") as handle:
            handle.seek(header_end)
            line = 2
            for inputs, targets in _in_threads(parse, _numbered(_blocks(handle, CSV_BLOCK, end), line)):
                if done + len(inputs) > n:
                    raise InvalidInput(f"line {line + n - done} is empty; remove empty lines from the CSV file")
                if not np.isfinite(inputs).all():
                    raise InvalidInput(f"inputs too large for {input_dtype.name} near line {line}; scale them")
                target_values[done:done + len(inputs)] = targets
                done += len(inputs)
                yield inputs

    writer = NpzWriter(dest)
    try:
        writer.member("inputs", input_dtype, (n, len(feature_index)), input_chunks())
        if done != n:
            raise InvalidInput(f"the CSV file has {done} data lines where {n} were counted; remove empty lines")
        values = target_values[:, 0] if len(target_index) == 1 else target_values
        with np.errstate(over="ignore"):
            if not np.isfinite(values.astype(input_dtype)).all():
                raise InvalidInput(f"targets too large for {input_dtype.name}")
        writer.array("targets", values, _target_dtype(values, input_dtype))
    finally:
        writer.close()
    return writer.sha256
