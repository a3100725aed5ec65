"""The datasets resource as the service offers it: uploads, reads, deletes, and the checks and arrays that
jobs, searches, /evaluate and /samples use. No HTTP in here: a body arrives as an async iterator of bytes."""

import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import numpy as np
from fastapi.concurrency import run_in_threadpool

from api import dataset_formats as formats
from api import uploads
from api.datasets import DatasetRecord, DatasetStore, check_values, model_arrays
from api.errors import DatasetExists, DatasetNotFound, InvalidInput, JobNotFound, PayloadTooLarge
from api.settings import MiB, Settings, dataset_root
from api.storage.base import ACTIVE, Store

log = logging.getLogger("api.datasets")


class DatasetService:
    def __init__(self, store: Store, settings: Settings):
        self.store, self.settings = store, settings
        self.files = DatasetStore(dataset_root(settings))

    # -- uploads ------------------------------------------------------------------------------
    @asynccontextmanager
    async def received(self, body: AsyncIterator[bytes], content_type: str, content_length: str | None,
                       fmt: str | None, targets: list[str] | None, dtype: str | None):
        """Receives a file body and converts it; yields (folder, stored NPZ path, its sha256 when known, format).
        The folder (under the dataset dir's .tmp) is removed afterwards unless it became a dataset."""
        folder = await run_in_threadpool(self.files.new_upload)
        try:
            is_json = fmt == "json" if fmt else uploads.is_json(content_type)  # ?format= says what the body is
            limit = (self.settings.max_request_bytes, "NN_MAX_REQUEST_BYTES: JSON is for small data; upload NPZ or CSV") \
                if is_json else (self.settings.max_dataset_bytes, "NN_MAX_DATASET_BYTES")
            upload = await uploads.receive(body, content_type, content_length, folder / "upload", *limit, asked=fmt,
                                           in_flight=int(self.settings.upload_buffer_mb * MiB))
            data, sha256, fmt = await run_in_threadpool(self._convert, folder, upload, fmt, targets, dtype)
            yield folder, data, sha256, fmt
        finally:
            await run_in_threadpool(self.files.discard, folder)

    def _convert(self, folder: Path, upload: uploads.Upload, fmt: str | None, targets: list[str] | None,
                 dtype: str | None) -> tuple[Path, str | None, str]:
        fmt = uploads.resolve_format(upload, fmt)
        if targets and fmt != "csv":
            raise InvalidInput(f"?target= names CSV columns; a {fmt} upload gives its targets as an array")
        if fmt == "json" and upload.size > self.settings.max_request_bytes:
            raise PayloadTooLarge(f"a JSON dataset is for small data: at most {self.settings.max_request_bytes} bytes "
                                  "(NN_MAX_REQUEST_BYTES); upload larger data as NPZ or CSV")
        data, digest = self.files.convert(folder, upload.path, fmt, targets=targets, dtype=dtype, newlines=upload.newlines,
                                          max_rows=self.settings.max_dataset_rows,
                                          max_bytes=self.settings.max_dataset_bytes)
        return data, digest or upload.sha256, fmt  # the upload's hash when it is kept as the stored form

    async def create(self, body: AsyncIterator[bytes], content_type: str, content_length: str | None, *,
                     fmt: str | None = None, targets: list[str] | None = None, dtype: str | None = None,
                     name: str | None = None, dataset_id: str | None = None, owner: str | None = None) -> DatasetRecord:
        if dataset_id is not None:
            await run_in_threadpool(self._check_free, dataset_id)  # before the body is read
        async with self.received(body, content_type, content_length, fmt, targets, dtype) as (folder, data, sha256, fmt):
            record = await run_in_threadpool(self.files.publish, folder, data, fmt=fmt, name=name,
                                             dataset_id=dataset_id, sha256=sha256, owner=owner)
        log.info("dataset %s: uploaded %s, %d x %d, %d bytes", record.dataset_id, fmt, record.n_samples,
                 record.n_features, record.bytes)
        return record

    def _check_free(self, dataset_id: str) -> None:
        try:
            self.files.get(dataset_id)
        except DatasetNotFound:
            return
        raise DatasetExists(dataset_id)

    # -- reads and deletes ----------------------------------------------------------------------
    # ``viewer``: the API key name whose datasets a caller sees under NN_TENANCY; None: every dataset
    def get(self, dataset_id: str, viewer: str | None = None) -> DatasetRecord:
        return self.files.get(dataset_id, viewer)

    def page(self, offset: int, limit: int, viewer: str | None = None) -> tuple[list[DatasetRecord], int]:
        return self.files.page(offset, limit, viewer)

    def path(self, dataset_id: str, viewer: str | None = None) -> Path:
        return self.files.path(dataset_id, viewer)

    def _job_status(self, job_id: str) -> str:
        try:
            return "active" if self.store.get_job(job_id).status in ACTIVE else "ended"
        except JobNotFound:
            return "unknown"

    def delete(self, dataset_id: str, viewer: str | None = None) -> None:
        self.files.delete(dataset_id, self._job_status, viewer)
        log.info("dataset %s: deleted", dataset_id)

    # -- use by models ----------------------------------------------------------------------------
    def check(self, model_id: str, info: dict, dataset_id: str, what: str = "dataset",
              viewer: str | None = None, values: bool = False) -> DatasetRecord:
        """The dataset's record, after checking its width and target shape against the model's (from the record),
        and with ``values`` its values too (``check_values``: the file is read once, a block at a time), so a job
        is refused at submit time with /evaluate's words instead of failing when it runs."""
        record = self.files.get(dataset_id, viewer)
        check_fits(model_id, info, record.n_features, record.targets, f"{what} {dataset_id!r}")
        if values:
            check_values(*self.files.arrays(dataset_id), info, f"{what} {dataset_id!r}")
        return record

    def arrays(self, model_id: str, info: dict, dataset_id: str, what: str = "dataset",
               viewer: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, prepared targets) of a checked dataset, in the model's dtype."""
        self.check(model_id, info, dataset_id, what, viewer)
        return model_arrays(*self.files.arrays(dataset_id), info, f"{what} {dataset_id!r}")

    def use(self, dataset_ids: list[str], job_id: str) -> None:
        """Marks datasets as read by a job about to be stored, so they cannot be deleted under it."""
        for dataset_id in dataset_ids:
            self.files.add_use(dataset_id, job_id)

    def release(self, dataset_ids: list[str], job_id: str) -> None:
        for dataset_id in dataset_ids:
            self.files.remove_use(dataset_id, job_id)

    def upload_arrays(self, folder_data: Path, model_id: str, info: dict) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, prepared targets) of a file uploaded with a request, checked against the model."""
        inputs, targets = formats.load(folder_data)
        check_fits(model_id, info, inputs.shape[1], formats.summary(targets), "the uploaded file")
        return model_arrays(inputs, targets, info, "the uploaded file")


def check_fits(model_id: str, info: dict, n_features: int, targets: dict, what: str) -> None:
    """A 422 naming both sides when a dataset's width or target shape does not fit the model."""
    width, n_out, task = info["input_size"], info["output_size"], info["task"]
    if n_features != width:
        raise InvalidInput(f"{what} has {n_features} features per sample but model {model_id!r} takes {width} inputs")
    shape = targets["shape"]
    if len(shape) == 2 and shape[1] != n_out:
        raise InvalidInput(f"{what} has {shape[1]} targets per sample but model {model_id!r} has {n_out} outputs")
    if len(shape) == 1 and n_out > 1 and task != "multiclass":
        raise InvalidInput(f"{what} has one target per sample but model {model_id!r} ({task}) has {n_out} outputs; "
                           f"upload targets of shape (n, {n_out})")
    # labels beyond the model's classes: the values check that follows every use names the first by its row
