"""Datasets on disk: one folder per dataset under the dataset directory, shared by every process.

    <root>/<dataset_id>/data.npz      inputs and targets (api/dataset_formats.py's stored form)
    <root>/<dataset_id>/meta.json     the record: sizes, target summary, sha256, created_at
    <root>/<dataset_id>/uses/<job>    one empty file per job or search that reads the dataset
    <root>/.tmp/                      uploads being received and converted
    <root>/.trash/                    datasets being deleted

A dataset is built in its own folder under ``.tmp`` (file written, fsync'd), then appears with one
``rename`` of that folder: a process killed at any point leaves either the whole dataset or none of
it (left-overs in ``.tmp`` are removed after a day). Deleting renames the folder into ``.trash`` first.
The embedded backend keeps the root in NN_DATA_DIR/datasets; with NN_BACKEND=redis every replica and
worker must reach the same folder (NN_DATASET_DIR on a shared file system).
"""

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from api import dataset_formats as formats, dataset_json
from api.npz_writer import CHUNK_BYTES
from neural_net import losses
from neural_net.errors import NeuralNetError, TargetValueError

from api.errors import DatasetExists, DatasetInUse, DatasetNotFound, InvalidInput, StoreUnavailable
from api.schemas import DATASET_ID_PATTERN
from api.settings import dataset_root

log = logging.getLogger("api.datasets")

STALE_SECONDS = 86400  # left-overs in .tmp older than this are removed
PENDING_USE_SECONDS = 60.0  # a use whose job is not stored yet (being submitted) counts for this long
DATASET_ID = re.compile(DATASET_ID_PATTERN)


@dataclass
class DatasetRecord:
    dataset_id: str
    name: str | None
    n_samples: int
    n_features: int
    dtype: str
    targets: dict[str, Any]  # shape, min, max, mean, classes, counts (api/dataset_formats.summary)
    bytes: int
    sha256: str
    format: str  # the uploaded format
    created_at: float
    owner: str | None = None  # the API key name that uploaded it (NN_TENANCY: only that name sees it)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _castable(array: np.ndarray, dtype: np.dtype, what: str, name: str) -> None:
    """Refuses values that become Inf in the model's dtype (a float64 dataset, a float32 model)."""
    if array.dtype.kind == "f" and array.dtype.itemsize > dtype.itemsize:
        with np.errstate(over="ignore"):
            if not np.isfinite(array.astype(dtype)).all():
                raise InvalidInput(f"{what} holds {name} too large for {dtype.name}; scale them")


def _prepared(targets: np.ndarray, info: dict, what: str) -> np.ndarray:
    """The targets as the model's loss takes them (one-hot rows for class labels); a 422 naming what does not fit."""
    try:
        return losses.get(info["loss"]).prepare(np.asarray(targets), info["output_size"], np.dtype(info["dtype"]))
    except NeuralNetError as exc:
        raise InvalidInput(f"{what}: {exc}") from None


def model_arrays(inputs: np.ndarray, targets: np.ndarray, info: dict, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Inputs in the model's dtype (the memory map itself when it already is) and targets prepared for its loss."""
    dtype = np.dtype(info["dtype"])
    with np.errstate(over="ignore"):
        x = np.asarray(inputs, dtype=dtype)
        if inputs.dtype != dtype:
            if not np.isfinite(x).all():
                raise InvalidInput(f"{what} holds inputs too large for {dtype.name}; scale them")
    _castable(targets, dtype, what, "targets")
    return x, _prepared(targets, info, what)


def check_values(inputs: np.ndarray, targets: np.ndarray, info: dict, what: str) -> None:
    """What ``model_arrays`` refuses, in its words, found a block of rows at a time, so that a memory-mapped
    dataset is read once and never held whole: inputs or targets beyond the model's dtype, targets that do not
    fit its loss. Inputs that need no narrowing cast are not read (an upload holds finite numbers only)."""
    dtype, n_out = np.dtype(info["dtype"]), info["output_size"]
    row = max(inputs[:1].nbytes, targets[:1].nbytes, n_out * dtype.itemsize, 1)
    step = max(1, CHUNK_BYTES // row)
    for start in range(0, len(targets), step):
        _castable(inputs[start:start + step], dtype, what, "inputs")
        _castable(targets[start:start + step], dtype, what, "targets")
        try:
            losses.get(info["loss"]).prepare(np.asarray(targets[start:start + step]), n_out, dtype)
        except TargetValueError as exc:  # its row in the whole dataset, as /evaluate names it
            raise InvalidInput(f"{what}: {exc.at(start)}") from None
        except NeuralNetError as exc:
            raise InvalidInput(f"{what}: {exc}") from None


def job_samples(store, job, settings, info: dict) -> tuple[np.ndarray, np.ndarray, tuple | None]:
    """A job's training arrays (its dataset's, or the samples it claimed from the buffer) and its
    validation_dataset's arrays, if it has one, all ready for the model described by ``info``."""
    dataset, validation = job.params.get("dataset"), job.params.get("validation_dataset")
    files = DatasetStore(dataset_root(settings), sweep=False) if dataset or validation else None
    if dataset:
        x, y = model_arrays(*files.arrays(dataset), info, f"dataset {dataset!r}")
    else:
        x, y = store.job_samples(job.job_id)
    if validation:
        return x, y, model_arrays(*files.arrays(validation), info, f"validation_dataset {validation!r}")
    return x, y, None


class DatasetStore:
    def __init__(self, root: Path, sweep: bool = True):
        self.root = Path(root)
        self.tmp = self.root / ".tmp"
        self.trash = self.root / ".trash"
        try:
            for folder in (self.root, self.tmp, self.trash):
                folder.mkdir(parents=True, exist_ok=True)
            if sweep:
                self._sweep()
        except OSError as exc:  # the service still starts; uploads answer 503 until the folder is writable
            log.warning("dataset folder %s is not usable (%s); set NN_DATASET_DIR", self.root, exc)

    def _sweep(self) -> None:
        """Removes what crashed uploads and deletes left behind."""
        now = time.time()
        for entry in list(self.tmp.iterdir()) + list(self.trash.iterdir()):
            try:
                if entry.parent == self.trash or now - entry.stat().st_mtime > STALE_SECONDS:
                    shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            except OSError:
                pass

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialises deletes with new uses (every process, every machine on the shared folder)."""
        with open(self.root / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _folder(self, dataset_id: str) -> Path:
        """The folder of an id an upload can have (DATASET_ID_PATTERN: no '.', '/', or a name longer than a file
        name may be); DatasetNotFound for any other."""
        if not DATASET_ID.fullmatch(dataset_id):
            raise DatasetNotFound(dataset_id)
        return self.root / dataset_id

    # -- uploads --------------------------------------------------------------------------
    def new_upload(self) -> Path:
        """A fresh folder under .tmp for one upload; the caller removes it (``discard``) when done."""
        folder = self.tmp / uuid.uuid4().hex
        try:
            self.tmp.mkdir(parents=True, exist_ok=True)
            folder.mkdir()
        except OSError as exc:
            raise StoreUnavailable(f"the dataset folder {self.root} cannot be written ({exc.strerror}); the operator "
                                   "sets NN_DATASET_DIR to a writable folder") from None
        return folder

    @staticmethod
    def discard(folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)

    def convert(self, folder: Path, upload: Path, fmt: str, *, targets: list[str] | None, dtype: str | None,
                max_rows: int, max_bytes: int, newlines: int | None = None) -> tuple[Path, str | None]:
        """The stored form of an upload (in ``folder``), and its SHA-256 when the converter wrote it (hashed
        while written); None when the stored form is the upload itself (it had that form)."""
        data = folder / "data.npz"
        if fmt in formats.FORMATS:
            formats.check_kind(upload, fmt)
        if fmt == "npz":
            digest = formats.convert_npz(upload, data, max_rows, dtype, max_bytes)
            if digest is None:
                upload.rename(data)
        elif fmt == "csv":
            digest = formats.convert_csv(upload, data, max_rows, targets, dtype, newlines)
        elif fmt == "json":
            digest = dataset_json.convert_json(upload, data, max_rows, dtype)
        else:
            raise InvalidInput(f"unknown format {fmt!r}; use one of: {', '.join(formats.FORMATS)}")
        return data, digest

    def publish(self, folder: Path, data: Path, *, fmt: str, name: str | None, dataset_id: str | None,
                sha256: str | None, owner: str | None = None) -> DatasetRecord:
        """Makes a converted upload a dataset: the record beside the file, both fsync'd, one rename."""
        dataset_id = dataset_id or uuid.uuid4().hex[:16]
        record = DatasetRecord(dataset_id=dataset_id, name=name, **formats.describe(data), bytes=data.stat().st_size,
                               sha256=sha256 or _sha256(data), format=fmt, created_at=time.time(), owner=owner)
        with open(data, "rb+") as handle:
            os.fsync(handle.fileno())
        meta = folder / "meta.json"
        with open(meta, "w") as handle:
            json.dump(record.__dict__, handle)
            handle.flush()
            os.fsync(handle.fileno())
        for entry in folder.iterdir():
            if entry.name not in ("data.npz", "meta.json"):
                entry.unlink()
        (folder / "uses").mkdir()
        _fsync_dir(folder)
        try:
            os.rename(folder, self._folder(dataset_id))
        except OSError:  # ENOTEMPTY / EEXIST: the id is taken
            raise DatasetExists(dataset_id) from None
        _fsync_dir(self.root)
        return record

    # -- reads ----------------------------------------------------------------------------
    def get(self, dataset_id: str, owner: str | None = None) -> DatasetRecord:
        """The record; DatasetNotFound when it is absent or, with ``owner``, someone else's."""
        try:
            with open(self._folder(dataset_id) / "meta.json") as handle:
                record = DatasetRecord(**json.load(handle))
        except (FileNotFoundError, NotADirectoryError, DatasetNotFound):
            raise DatasetNotFound(dataset_id, self._named(dataset_id, owner)) from None
        if owner is not None and record.owner != owner:
            raise DatasetNotFound(dataset_id)
        return record

    def _named(self, name: str, owner: str | None) -> list[str]:
        """Ids of the datasets called ``name`` that ``owner`` may read: a 404's hint (it reads every record)."""
        ids = []
        for entry in sorted(self.root.iterdir()) if self.root.is_dir() else ():
            try:
                meta = json.loads((entry / "meta.json").read_text())
            except (OSError, ValueError):
                continue  # .tmp, or deleted meanwhile
            if meta.get("name") == name and (owner is None or meta.get("owner") == owner):
                ids.append(meta["dataset_id"])
        return ids

    def page(self, offset: int, limit: int, owner: str | None = None) -> tuple[list[DatasetRecord], int]:
        records = []
        for entry in self.root.iterdir() if self.root.is_dir() else ():
            if entry.name.startswith("."):
                continue
            try:
                records.append(self.get(entry.name, owner))
            except DatasetNotFound:
                continue  # deleted meanwhile, or another owner's
        records.sort(key=lambda r: (r.created_at, r.dataset_id))
        return records[offset:offset + limit], len(records)

    def path(self, dataset_id: str, owner: str | None = None) -> Path:
        self.get(dataset_id, owner)
        return self._folder(dataset_id) / "data.npz"

    def arrays(self, dataset_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Memory-mapped inputs and targets (read-only)."""
        try:
            return formats.load(self.path(dataset_id))
        except FileNotFoundError:
            raise DatasetNotFound(dataset_id) from None

    # -- uses and deletes -----------------------------------------------------------------
    def add_use(self, dataset_id: str, user: str) -> None:
        """Marks ``dataset_id`` as read by job ``user`` (before the job is stored), so deletes answer 409."""
        self.get(dataset_id)
        with self._locked():
            self.get(dataset_id)
            (self._folder(dataset_id) / "uses" / user).touch()

    def remove_use(self, dataset_id: str, user: str) -> None:
        try:
            (self._folder(dataset_id) / "uses" / user).unlink(missing_ok=True)
        except (OSError, DatasetNotFound):
            pass

    def delete(self, dataset_id: str, job_status, owner: str | None = None) -> None:
        """Deletes a dataset unless a job still uses it. ``job_status(job_id)`` says "active", "ended" or "unknown"."""
        self.get(dataset_id, owner)
        with self._locked():
            folder = self._folder(dataset_id)
            self.get(dataset_id, owner)
            for use in sorted((folder / "uses").iterdir()):
                status = job_status(use.name)
                if status == "ended" or (status == "unknown" and time.time() - use.stat().st_mtime > PENDING_USE_SECONDS):
                    use.unlink(missing_ok=True)
                    continue
                raise DatasetInUse(f"dataset {dataset_id!r} is used by job {use.name!r}; cancel the job or wait until "
                                   "it ends, then delete the dataset")
            gone = self.trash / f"{dataset_id}-{uuid.uuid4().hex[:8]}"
            os.rename(folder, gone)
        shutil.rmtree(gone, ignore_errors=True)
