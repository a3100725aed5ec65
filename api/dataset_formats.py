"""Reading uploaded datasets (NPZ, CSV, JSON) into the one form the service keeps: an uncompressed NPZ
with ``inputs`` (n, features), float32 or float64, and ``targets`` (n,) or (n, k), int64, float32 or float64.

Every reader works from a file on disk and in chunks, so memory stays near one copy of the data (or
less); bad content raises ``InvalidInput`` naming the array, row and column. An NPZ that already has
that form is kept as uploaded (no second copy is written); its uncompressed members are memory-mapped.
Of an uploaded NPZ only the members used are read, and only after their headers are checked against the
limits; a deflated one is decompressed a chunk at a time to a file beside the output (a small NPZ can
hold gigabytes of zeros). CSV syntax lives in api/csv_rows.py, JSON datasets in api/dataset_json.py.
"""

import io
import math
import mmap
import os
import struct
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from isal import isal_zlib

from api import csv_rows
from api.errors import InvalidInput, PayloadTooLarge
from api.npz_writer import NpzWriter, rows_per_chunk

FORMATS = ("npz", "csv", "json")
INPUT_DTYPES = ("<f4", "<f8")
TARGET_DTYPES = ("<i8", "<f4", "<f8")
MAX_CLASSES = 1000  # integer targets with at most this many distinct values are summarised as classes
MAX_NPY_HEADER = 10_000  # bytes; numpy's own bound on a .npy header
INFLATE_BYTES = 1 << 20  # of a deflated NPZ member decompressed at a time
MAX_NPZ_MEMBERS = 1024
MAX_DIRECTORY_BYTES = MAX_NPZ_MEMBERS * 1024  # of the zip's list of members: 46 bytes each, plus name and extras
CRC_BYTES = 16 << 20  # of a stored member checked at a time
INT64_MAX = np.iinfo(np.int64).max
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first member, or the end record of an empty one
FOREIGN_MAGIC = (  # files that are no format the service reads, by their first bytes
    (b"\x1f\x8b", "gzip-compressed; the service reads NPZ, CSV and JSON files as they are: gunzip it first, or save "
                  "the arrays with numpy.savez_compressed"),
    (b"\x93NUMPY", "one .npy array; a dataset holds inputs and targets: save both with "
                   "numpy.savez(path, inputs=..., targets=...)"),
)


# -- the stored form ---------------------------------------------------------------------------------
@dataclass
class _Member:
    """A .npy member of an NPZ whose header alone has been read."""
    name: str  # without .npy
    info: zipfile.ZipInfo
    shape: tuple
    fortran: bool
    dtype: np.dtype
    offset: int  # of its data: in the file when stored, in the member when deflated
    start: int  # of its .npy header: in the file when stored, 0 when deflated

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _npy_header(handle) -> tuple[tuple, bool, np.dtype, int]:
    """(shape, fortran order, dtype, header bytes) of the .npy stream at ``handle``, reading its header and
    nothing more (numpy's own reader reads a header of any declared length before it checks it)."""
    prefix = handle.read(10)
    if len(prefix) < 10 or prefix[:6] != b"\x93NUMPY" or prefix[6:8] not in (b"\x01\x00", b"\x02\x00"):
        raise ValueError("not a .npy array of format 1.0 or 2.0; save it with numpy.savez")
    if prefix[6] == 2:
        prefix += handle.read(2)
    length = struct.unpack("<H" if prefix[6] == 1 else "<I", prefix[8:])[0]
    if length > MAX_NPY_HEADER:
        raise ValueError(f"its header is {length} bytes long")
    stream = io.BytesIO(prefix + handle.read(length))
    version = np.lib.format.read_magic(stream)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(stream)
    if dtype.hasobject:
        raise ValueError("holds Python objects")
    if any(n < 0 for n in shape):
        raise ValueError(f"its header gives it the shape {shape}")
    return shape, fortran, dtype, len(prefix) + length


def _member(path: Path, archive: zipfile.ZipFile, name: str) -> _Member:
    """The header of member ``name`` (x.npy), checked against the member's size; its data is not read."""
    info = archive.getinfo(name)
    if info.flag_bits & 0x1:  # its data are encrypted: a memory map would read ciphertext as numbers
        raise InvalidInput(f"array {name[:-4]!r} of the NPZ file is encrypted; save the file with numpy.savez")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise InvalidInput(f"array {name[:-4]!r} of the NPZ file is compressed with method {info.compress_type}; "
                           "save the file with numpy.savez or numpy.savez_compressed")
    try:
        if info.compress_type == zipfile.ZIP_DEFLATED:
            with archive.open(info) as handle:
                shape, fortran, dtype, offset = _npy_header(handle)
            start = 0
        else:
            with open(path, "rb") as handle:
                handle.seek(info.header_offset)
                local = handle.read(30)
                if len(local) < 30 or local[:4] != b"PK\x03\x04":
                    raise InvalidInput(f"{name}: damaged zip entry; the NPZ file is truncated or corrupt")
                name_length, extra_length = struct.unpack("<HH", local[26:30])
                start = info.header_offset + 30 + name_length + extra_length
                size = os.fstat(handle.fileno()).st_size  # the directory's file_size is the sender's word, not the file's
                if start + info.file_size > size:
                    raise InvalidInput(f"array {name[:-4]!r} of the NPZ file: its {info.file_size} bytes would end at "
                                       f"byte {start + info.file_size} of a {size}-byte file; the file is truncated or corrupt")
                handle.seek(start)
                shape, fortran, dtype, length = _npy_header(handle)
                offset = start + length
    except InvalidInput:
        raise
    except Exception as exc:  # a bad header, a truncated member, pickled objects, ...
        raise InvalidInput(f"array {name[:-4]!r} of the NPZ file cannot be read: {exc}") from None
    member = _Member(name[:-4], info, shape, fortran, dtype, offset, start)
    if offset - start + member.nbytes > info.file_size:
        raise InvalidInput(f"array {member.name!r} of the NPZ file: its header promises {member.nbytes} bytes of data "
                           "that are not there; the file is truncated or corrupt")
    return member


def _member_array(path: Path, archive: zipfile.ZipFile, member: _Member, scratch: Path | None) -> np.ndarray:
    """A member's array: memory-mapped when stored uncompressed; a deflated one is decompressed a chunk at a time
    into ``scratch``/member-<name>.npy, then mapped (so memory holds one chunk, whatever the array's size)."""
    if member.nbytes == 0:
        return np.zeros(member.shape, member.dtype)
    if member.info.compress_type == zipfile.ZIP_STORED:
        try:  # _member checked its bytes against the file's size; a file cut short since is no 500 either
            return np.memmap(path, dtype=member.dtype, mode="r", offset=member.offset, shape=member.shape,
                             order="F" if member.fortran else "C")
        except (ValueError, OSError) as exc:
            raise InvalidInput(f"array {member.name!r} of the NPZ file cannot be read: {exc}; the file is truncated "
                               "or corrupt") from None
    if scratch is None:
        raise InvalidInput(f"array {member.name!r} is compressed; a stored dataset's arrays are not")
    copy = scratch / f"member-{member.name}.npy"
    left = member.offset + member.nbytes  # header and data: what its header promises, and no more
    try:
        with archive.open(member.info) as handle, open(copy, "wb") as out:
            while left:
                chunk = handle.read(min(left, INFLATE_BYTES))
                if not chunk:
                    raise ValueError("the member ends early")
                out.write(chunk)
                left -= len(chunk)
            if handle.read(1):
                raise ValueError(f"it holds more than the {member.nbytes} bytes its header promises")
    except (ValueError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise InvalidInput(f"array {member.name!r} of the NPZ file cannot be read: {exc}; the file is truncated "
                           "or corrupt") from None
    return np.load(copy, mmap_mode="r", allow_pickle=False)


def _check_crc(path: Path, members: list[_Member]) -> None:
    """The CRC-32 of each stored member, which its memory map does not check (zipfile checks a deflated one as it
    inflates it): a bit flipped in the file would be served as a different number, where numpy.load refuses it.
    ISA-L's CRC runs at about 12 GB/s here (zlib's at 2: 0.07 s more on a 189 MB upload, 1.27x its time)."""
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)
        try:
            for member in members:
                if member.info.compress_type != zipfile.ZIP_STORED:
                    continue
                crc, end = 0, member.start + member.info.file_size
                for at in range(member.start, end, CRC_BYTES):
                    crc = isal_zlib.crc32(view[at:min(at + CRC_BYTES, end)], crc)
                if crc != member.info.CRC:
                    raise InvalidInput(f"array {member.name!r} of the NPZ file fails its CRC-32 check: the file is "
                                       "corrupt (numpy.load refuses it too); save it again with numpy.savez")
        finally:
            view.release()


def _check_directory(handle, end: list) -> None:
    """At most MAX_NPZ_MEMBERS members in at most MAX_DIRECTORY_BYTES, read from the directory itself: zipfile
    parses every header the directory's byte size covers, whatever count the end record gives (300,000 empty
    members under a count of 2 took 1 GB), and holds an object per member, about 6 times the directory's bytes."""
    save = "save inputs and targets alone with numpy.savez(path, inputs=..., targets=...)"
    if end[zipfile._ECD_ENTRIES_TOTAL] > MAX_NPZ_MEMBERS:
        raise InvalidInput(f"the NPZ file has {end[zipfile._ECD_ENTRIES_TOTAL]} members; a dataset's has at most "
                           f"{MAX_NPZ_MEMBERS}: {save}")
    size = end[zipfile._ECD_SIZE]
    if size > MAX_DIRECTORY_BYTES:
        raise InvalidInput(f"the NPZ file's list of members (its central directory) is {size} bytes; a dataset's "
                           f"takes at most {MAX_DIRECTORY_BYTES} ({MAX_NPZ_MEMBERS} members at most): {save}")
    start = end[zipfile._ECD_LOCATION] - size  # where ZipFile looks for it, from the end
    if end[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:
        start -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator
    handle.seek(max(start, 0))
    directory, at, members = handle.read(size), 0, 0
    while directory[at:at + 4] == b"PK\x01\x02" and at + 46 <= len(directory):  # ZipFile names a damaged one
        members += 1
        if members > MAX_NPZ_MEMBERS:
            raise InvalidInput(f"the NPZ file has more than {MAX_NPZ_MEMBERS} members (its end record says "
                               f"{end[zipfile._ECD_ENTRIES_TOTAL]}); a dataset's has at most {MAX_NPZ_MEMBERS}: {save}")
        at += 46 + sum(struct.unpack_from("<HHH", directory, at + 28))  # name, extra field and comment lengths


def _open_zip(path: Path) -> zipfile.ZipFile:
    """The archive, once its directory holds at most MAX_NPZ_MEMBERS members (``_check_directory``), each name once."""
    try:
        with open(path, "rb") as handle:
            end = zipfile._EndRecData(handle)  # the end record (zip64's count included), as ZipFile reads it
            if end:
                _check_directory(handle, end)
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        with open(path, "rb") as handle:
            head = handle.read(16)
        if not head.startswith(b"PK"):  # no zip at all: most likely CSV or JSON sent as NPZ
            raise InvalidInput(f"not an NPZ (zip) file: it begins {head!r}, where a zip begins b'PK'. Send a CSV or JSON "
                               "file with ?format=csv (or json), or with its Content-Type (text/csv, application/json); "
                               "save an NPZ with numpy.savez(path, inputs=..., targets=...)") from None
        raise InvalidInput(f"not a readable NPZ (zip) file: {exc}; the file may be truncated. Save it with "
                           "numpy.savez(path, inputs=..., targets=...)") from None
    names = archive.namelist()
    if len(set(names)) < len(names):  # zipfile keeps the last of them; kept as uploaded, each use parsed them all
        twice = next(name for name, count in Counter(names).items() if count > 1)
        archive.close()
        raise InvalidInput(f"the NPZ file holds the member {twice!r} more than once, so which is the array is "
                           "ambiguous; save it with numpy.savez(path, inputs=..., targets=...)")
    return archive


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The (memory-mapped) inputs and targets of a stored dataset."""
    with _open_zip(path) as archive:
        return tuple(_member_array(path, archive, _member(path, archive, f"{name}.npy"), None)
                     for name in ("inputs", "targets"))


def check_kind(path: Path, fmt: str) -> None:
    """A 422 for a file whose first bytes say it is not ``fmt`` (an NPZ sent as CSV, a gzip or .npy file), before
    its reader reports that it is not UTF-8 text or not a zip."""
    with open(path, "rb") as handle:
        head = handle.read(64)
    for magic, what in FOREIGN_MAGIC:
        if head.startswith(magic):
            raise InvalidInput(f"the file is {what}")
    if fmt == "csv" and head.removeprefix(b"\xef\xbb\xbf").lstrip().startswith((b"{", b"[[", b"[{")):
        raise InvalidInput("the file is JSON, not CSV: send it with ?format=json or Content-Type: application/json")
    if fmt != "npz" and head.startswith(ZIP_MAGIC):
        raise InvalidInput(f"the file is an NPZ (zip) file, not {fmt.upper()}: send it with ?format=npz or "
                           "Content-Type: application/x-npz")


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
    if inputs.ndim and not len(inputs):
        raise InvalidInput("inputs is empty: a dataset needs at least one sample")
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
    if targets.dtype.kind == "u" and targets.dtype.itemsize == 8 and targets.max() > INT64_MAX:  # int64 would wrap
        index = np.argwhere(np.asarray(targets) > INT64_MAX)[0]
        raise InvalidInput(f"targets[{', '.join(map(str, index))}] is {targets[tuple(index)]}, beyond int64 (at most "
                           f"{INT64_MAX}); class labels and counts are far smaller: check the array")
    if inputs.dtype.kind == "f":
        _check_finite(inputs, "inputs")
    if targets.dtype.kind == "f":
        _check_finite(targets, "targets")
    return inputs, targets


def _input_dtype(source: np.dtype, wanted: str | None) -> np.dtype:
    if wanted is not None:
        return np.dtype(wanted)
    # by kind and size: '>f8' != np.float64, and big-endian float64 inputs were stored as float32
    return np.dtype("<f8") if source.kind == "f" and source.itemsize >= 8 else np.dtype("<f4")


def _whole_numbers(targets: np.ndarray) -> bool:
    """Float targets, one per sample, that are all whole numbers exact in float64: class indices or counts."""
    return (targets.dtype.kind == "f" and targets.ndim == 1 and len(targets) > 0
            and bool(np.array_equal(targets, np.round(targets))) and float(np.abs(targets).max()) < 2**53)


def _target_dtype(targets: np.ndarray, input_dtype: np.dtype) -> np.dtype:
    if targets.dtype.kind in "biu" or _whole_numbers(targets):
        return np.dtype("<i8")
    return input_dtype


def summary(targets: np.ndarray) -> dict:
    """Classes and their counts for integer targets (or one-hot rows), and min / max / mean."""
    values = np.asarray(targets)
    result = {"shape": list(values.shape), "min": float(values.min()), "max": float(values.max()),
              "mean": float(values.mean(dtype=np.float64)), "classes": None, "counts": None}
    # float labels that are whole numbers (an NPZ kept as uploaded) are counted like the int64 a conversion stores
    whole = _whole_numbers(values)
    if values.ndim == 1 and (values.dtype.kind in "iub" or whole):
        classes, counts = np.unique(values, return_counts=True)
        if len(classes) <= MAX_CLASSES:
            result.update(classes=classes.astype(np.int64).tolist() if whole else classes.tolist(), counts=counts.tolist())
    elif values.ndim == 2 and values.shape[1] > 1 and np.isin(values, (0, 1)).all() and (values.sum(1) == 1).all():
        result.update(classes=list(range(values.shape[1])), counts=values.sum(0).astype(np.int64).tolist())
    return result


def describe(path: Path) -> dict:
    """What a stored dataset's record says about its arrays."""
    inputs, targets = load(path)
    return {"n_samples": int(inputs.shape[0]), "n_features": int(inputs.shape[1]), "dtype": inputs.dtype.name,
            "targets": summary(targets)}


# -- NPZ --------------------------------------------------------------------------------------------
def _pick(archive: zipfile.ZipFile, names: tuple[str, str]) -> str:
    held = [name[:-4] for name in archive.namelist() if name.endswith(".npy")]
    for name in names:
        if name in held:
            return f"{name}.npy"
    others = sorted(set(archive.namelist()) - {f"{name}.npy" for name in held})  # not .npy arrays: numpy.load skips them
    found = ", ".join(sorted(held) + [f"{name!r} (not a .npy array)" for name in others[:5]]) or "none"
    raise InvalidInput(f"the NPZ file has no array {names[0]!r} (or {names[1]!r}); it holds: {found}. Save it with "
                       "numpy.savez(path, inputs=..., targets=...)")


def _check_limits(members: list[_Member], max_rows: int, max_bytes: int | None) -> None:
    """Rows and uncompressed bytes from the members' headers, before any data is read."""
    for member in members:
        if member.shape and member.shape[0] > max_rows:
            raise PayloadTooLarge(f"array {member.name!r} of the NPZ file has {member.shape[0]} rows; a dataset holds "
                                  f"at most {max_rows} samples (NN_MAX_DATASET_ROWS)")
    if max_bytes is not None and sum(m.nbytes for m in members) > max_bytes:
        big = max(members, key=lambda m: m.nbytes)
        raise PayloadTooLarge(f"array {big.name!r} of the NPZ file is {big.nbytes} bytes uncompressed (shape "
                              f"{big.shape}, {big.dtype}); a dataset's arrays hold at most {max_bytes} bytes "
                              "(NN_MAX_DATASET_BYTES): split the data into several datasets")


def is_stored_form(inputs: np.ndarray, targets: np.ndarray, archive: zipfile.ZipFile) -> bool:
    infos = {i.filename: i for i in archive.infolist()}
    if set(infos) != {"inputs.npy", "targets.npy"} or any(i.compress_type != zipfile.ZIP_STORED for i in infos.values()):
        return False
    # float targets may be float32 or float64 whatever the inputs are: a use casts them to the model's dtype
    return (inputs.dtype.str in INPUT_DTYPES and targets.dtype.str in TARGET_DTYPES and inputs.flags.c_contiguous
            and targets.flags.c_contiguous)


def convert_npz(source: Path, dest: Path, max_rows: int, dtype: str | None = None, max_bytes: int | None = None) -> str | None:
    """Checks an uploaded NPZ; writes the stored form to ``dest`` unless the upload already is in it
    (and no other dtype is asked for). Returns the SHA-256 of ``dest`` when it was written, else None.
    Only the members used are read (inputs and targets, or x and y), after their headers are checked against
    ``max_rows`` and ``max_bytes`` (their uncompressed total); deflated ones are decompressed beside ``dest``."""
    with _open_zip(source) as archive:
        with open(source, "rb") as handle:
            head = handle.read(8)
        if not head.startswith(ZIP_MAGIC):  # zipfile finds a zip after any prefix; numpy.load does not
            raise InvalidInput(f"the NPZ file begins {head!r}, where an NPZ begins b'PK\\x03\\x04': bytes come before "
                               "its zip, so numpy.load refuses it; save it with numpy.savez(path, inputs=..., targets=...)")
        members = [_member(source, archive, _pick(archive, names)) for names in (("inputs", "x"), ("targets", "y"))]
        _check_limits(members, max_rows, max_bytes)
        _check_crc(source, members)
        arrays = [_member_array(source, archive, member, dest.parent) for member in members]
        inputs, targets = check_arrays(*arrays, max_rows)
        if is_stored_form(inputs, targets, archive) and (dtype is None or np.dtype(dtype) == inputs.dtype):
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
            raise _too_large(where, array[start:start + step][tuple(index)], dtype)
        yield chunk


def _too_large(where: str, value, dtype: np.dtype) -> InvalidInput:
    """A finite value that ``dtype`` cannot hold (it would be stored as Inf), named by ``where``."""
    return InvalidInput(f"{where} is {value}, too large for {dtype.name} (at most {np.finfo(dtype).max:.6g} in "
                        "magnitude); scale the values down, or keep them as float64 (?dtype=float64 on POST /datasets; "
                        "a float64 model's /samples)")


# -- CSV --------------------------------------------------------------------------------------------
def convert_csv(source: Path, dest: Path, max_rows: int, target_columns: list[str] | None = None,
                dtype: str | None = None, newlines: int | None = None) -> str:
    """A CSV file with a header row; the target column(s) by name (default: the last column). Returns the
    SHA-256 of the stored form written to ``dest``. ``newlines``: the file's \\n bytes when they were counted
    as it was received (the rows are then not counted in a second read)."""
    header = csv_rows.read_header(source)
    columns = header.columns
    targets = target_columns or [columns[-1]]
    missing = [name for name in targets if name not in columns]
    if missing:
        shown = ", ".join(map(repr, columns[:20])) + (f" and {len(columns) - 20} more" if len(columns) > 20 else "")
        raise InvalidInput(f"no column {missing[0]!r} in the CSV header; ?target= names one of: {shown}")
    twice = sorted({name for name in targets if columns.count(name) > 1 or targets.count(name) > 1})
    if twice:  # columns.index would pick the first of them, and the second would quietly become a feature
        raise InvalidInput(f"?target={twice[0]} is ambiguous: the CSV header or ?target= names {twice[0]!r} more "
                           "than once; give the columns distinct names")
    target_index = [columns.index(name) for name in targets]
    feature_index = [i for i in range(len(columns)) if i not in target_index]
    if not feature_index:
        raise InvalidInput("every column is a target; leave at least one feature column")
    end = csv_rows.data_end(source, header)
    n = csv_rows.count_rows(source, header, end, newlines)
    if n == 0:
        raise InvalidInput("the CSV file has a header but no data lines")
    if n > max_rows:
        raise PayloadTooLarge(f"{n} samples; a dataset holds at most {max_rows} (NN_MAX_DATASET_ROWS)")
    input_dtype = np.dtype(dtype or "float32")
    target_values = np.empty((n, len(target_index)))
    contiguous = feature_index == list(range(len(feature_index))) and target_index == list(range(len(feature_index), len(columns)))
    done = 0

    def parse(block: bytes, first_line: int) -> tuple[np.ndarray, np.ndarray]:
        rows = csv_rows.parse_block(block, first_line, header)  # finite float64, or unsigned integers
        inputs = rows[:, :len(feature_index)] if contiguous else rows[:, feature_index]
        targets = rows[:, target_index]
        if input_dtype != rows.dtype:  # float32 of integers of at most 8 digits is finite
            with np.errstate(over="ignore"):
                inputs = inputs.astype(input_dtype)
                fitted = targets.astype(input_dtype)  # what targets that are not whole numbers are stored as
            for values, index in ((inputs, feature_index), (fitted, target_index)):
                if not np.isfinite(values).all():
                    row, column = np.argwhere(~np.isfinite(values))[0]
                    raise _too_large(f"line {first_line + row}, column {columns[index[column]]!r}",
                                     rows[row, index[column]], input_dtype)
        return inputs, targets

    def input_chunks() -> Iterator[np.ndarray]:
        nonlocal done
        for inputs, targets in csv_rows.parse_file(parse, source, header, end):
            if done + len(inputs) > n:
                raise InvalidInput(f"line {2 + n - done} is empty; remove empty lines from the CSV file")
            target_values[done:done + len(inputs)] = targets
            done += len(inputs)
            yield inputs

    writer = NpzWriter(dest)
    try:
        writer.member("inputs", input_dtype, (n, len(feature_index)), input_chunks())
        if done != n:
            raise InvalidInput(f"the CSV file has {done} data lines where {n} were counted; remove empty lines")
        values = target_values[:, 0] if len(target_index) == 1 else target_values
        writer.array("targets", values, _target_dtype(values, input_dtype))
    finally:
        writer.close()
    return writer.sha256
