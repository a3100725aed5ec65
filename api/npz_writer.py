"""Writing the stored form of a dataset (an uncompressed NPZ) front to back, member by member and chunk by
chunk, hashing the bytes as they are written."""

import hashlib
import zipfile
from pathlib import Path

import numpy as np

CHUNK_BYTES = 16 * 1024 * 1024  # rows converted or checked at a time, by size


def rows_per_chunk(array: np.ndarray) -> int:
    row = max(1, int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize)
    return max(1, CHUNK_BYTES // row)


def _header(dtype: np.dtype, shape: tuple) -> dict:
    return {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}


def _write_bytes(handle, array: np.ndarray) -> None:
    handle.write(memoryview(np.ascontiguousarray(array).reshape(-1)).cast("B"))


class _HashingFile:
    """A file written front to back only, hashing every byte on the way. It cannot seek, so zipfile
    writes each member's CRC and sizes after its data (a data descriptor) instead of going back to the
    member's header: the bytes hashed are the file's bytes, and no second pass reads the file to hash it."""

    def __init__(self, path: Path):
        self.handle = open(path, "wb")
        self.digest = hashlib.sha256()
        self.position = 0

    def write(self, data) -> int:
        self.digest.update(data)
        self.position += self.handle.write(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def seek(self, *args):
        raise OSError("written front to back only")

    def flush(self) -> None:
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


class NpzWriter:
    """Writes the stored form member by member, each from chunks, so no whole array is ever copied;
    ``sha256`` is the file's hash once closed."""

    def __init__(self, path: Path):
        self.file = _HashingFile(path)
        self.zip = zipfile.ZipFile(self.file, "w", zipfile.ZIP_STORED, allowZip64=True)

    def member(self, name: str, dtype, shape: tuple, chunks) -> None:
        with self.zip.open(f"{name}.npy", "w", force_zip64=True) as handle:
            np.lib.format.write_array_header_2_0(handle, _header(dtype, shape))
            for chunk in chunks:
                _write_bytes(handle, np.asarray(chunk, dtype=dtype))

    def array(self, name: str, array: np.ndarray, dtype) -> None:
        step = rows_per_chunk(array)
        self.member(name, dtype, array.shape, (array[i:i + step] for i in range(0, len(array), step)))

    def close(self) -> None:
        try:
            self.zip.close()
        finally:
            self.file.close()

    @property
    def sha256(self) -> str:
        return self.file.digest.hexdigest()
