"""The service layer: what the routes (and later other front ends) can do, with no HTTP in it.

Functions take plain values or request schemas, talk to a `Store`, use the core, and raise the
domain errors of `api.errors`.
"""

import logging
import time
import uuid
from typing import Any

import numpy as np
from fastapi.concurrency import run_in_threadpool

from neural_net import Network, losses, training

from api import notify, records
from api.dataset_service import DatasetService
from api.errors import FeatureUnavailable, InvalidInput, JobNotFound, ModelNotFound, NoJobs, PayloadTooLarge, ServiceError
from api.model_cache import CachedModel, ModelCache, ServedModels
from api.predict import check_answer_size, check_finite, predict
from api.records import describe, jsonable, log_transition
from api.schemas import (EvaluateRequest, JobCreate, ModelCreate, NotifyTarget, OutputRequest, SamplesCreate,
                         Weights)
from api.settings import Settings
from api.specs import check_model_id, fit_config, network_from_file, network_from_request
from api.storage.base import JobRecord, ModelRecord, Notification, Store, VersionRecord, source_of

log = logging.getLogger("api.jobs")
APPEND_BATCH_BYTES = 32 << 20  # rows appended to a buffer per store step (a request's rows may take several)


class Service:
    def __init__(self, store: Store, settings: Settings):
        self.store = store
        self.settings = settings
        self.cache = ModelCache(int(settings.model_cache_mb * 1024 * 1024))
        self.models = ServedModels(store, self.cache)
        self.datasets = DatasetService(store, settings)
        self._store_answered = True  # healthy() logs a failed check only after the store last answered

    def healthy(self) -> bool:
        """Whether the store answers; a failure is logged once (one line), then again only after it has answered."""
        try:
            self.store.list_models(0, 1)
        except Exception as exc:
            if self._store_answered:
                log.warning("store check failed: %s (not logged again until the store answers)", exc)
            self._store_answered = False
            return False
        if not self._store_answered:
            log.info("store check: the store answers again")
        self._store_answered = True
        return True

    def metrics_snapshot(self, buffers: bool = True) -> dict[str, Any]:
        """Jobs per state, samples/s of running jobs; with ``buffers``, each non-empty buffer (the counts alone)."""
        counts, running = self.store.jobs_overview()
        sizes = self.store.buffer_sizes() if buffers else {}
        rate = sum(p.get("samples_per_second") or 0.0 for p in running)
        return {"jobs": counts, "samples_per_second": rate, "buffers": sizes}

    # -- validation helpers --------------------------------------------------------
    def _check_rows(self, n: int) -> None:
        limit = self.settings.max_samples_per_request
        if n > limit:
            raise PayloadTooLarge(f"{n} samples in one request; at most {limit} (NN_MAX_SAMPLES_PER_REQUEST), "
                                  f"so send them in several requests")

    def _inputs(self, info: dict, rows: list[list[float]], what: str = "inputs") -> np.ndarray:
        self._check_rows(len(rows))
        width = info["input_size"]
        if isinstance(rows, np.ndarray):  # read by api/json_body.py: regular rows of finite numbers
            if rows.shape[1] != width:
                raise InvalidInput(f"{what}[0] has {rows.shape[1]} values; model expects {width} per input vector")
        else:
            for i, row in enumerate(rows):
                if len(row) != width:
                    raise InvalidInput(f"{what}[{i}] has {len(row)} values; model expects {width} per input vector")
        with np.errstate(over="ignore"):  # too large for float32 becomes inf, caught below
            x = np.asarray(rows, dtype=info["dtype"]).reshape(len(rows), width)
        if not np.isfinite(x).all():
            raise InvalidInput(f"{what} hold values too large for {info['dtype']}; scale the inputs")
        return x

    def _targets(self, info: dict, targets: list, n: int) -> np.ndarray:
        """(n, n_out) targets from rows, or from one class index, class name or value per sample."""
        if isinstance(targets, list) and targets and isinstance(targets[0], str):
            targets = self._class_indices(info, targets)
        n_out = info["output_size"]
        flat = targets.ndim == 1 if isinstance(targets, np.ndarray) else bool(targets) and not isinstance(targets[0], list)
        if flat:  # one number per sample
            if len(targets) != n and n == 1 and len(targets) == n_out:
                targets = [targets] if isinstance(targets, list) else targets[None, :]  # the single target row of a single input
            elif len(targets) != n:
                raise InvalidInput(f"{n} inputs but {len(targets)} targets; send one target per input")
            elif n_out > 1 and info["task"] != "multiclass":
                raise InvalidInput(f"targets must be rows of {n_out} values for this {info['task']} model; "
                                   f"single numbers are class indices for multiclass models or values for 1-output models")
        else:
            if len(targets) != n:
                raise InvalidInput(f"{n} inputs but {len(targets)} targets; send one target per input")
            for i, row in enumerate(targets[:1] if isinstance(targets, np.ndarray) else targets):  # arrays are regular
                if len(row) != n_out:
                    raise InvalidInput(f"targets[{i}] has {len(row)} values; model has {n_out} outputs")
        with np.errstate(over="ignore"):
            y = losses.get(info["loss"]).prepare(targets, n_out, info["dtype"])
        if not np.isfinite(y).all():
            raise InvalidInput(f"targets hold values too large for {info['dtype']}")
        return y

    @staticmethod
    def _class_indices(info: dict, names: list[str]) -> list[int]:
        """Targets given as class names: their indices in the model's class_names."""
        known = info["config"].get("class_names")
        if not known:
            raise InvalidInput(f"targets[0] is the text {names[0][:60]!r}: class names need a model created with "
                               "class_names; send class indices or values as numbers without quotes")
        index = {name: i for i, name in enumerate(known)}
        unknown = next((name for name in names if name not in index), None)
        if unknown is not None:
            shown = ", ".join(map(repr, known[:20])) + (f" and {len(known) - 20} more" if len(known) > 20 else "")
            raise InvalidInput(f"target {unknown[:60]!r} is not one of the model's class_names: {shown}")
        return [index[name] for name in names]

    def _load(self, model_id: str) -> tuple[Network, ModelRecord]:
        """A fresh network of the committed version, for callers that change it."""
        blob, record = self.store.load_model(model_id)
        return Network.from_bytes(blob), record

    # -- models -------------------------------------------------------------------
    def create_model(self, req: ModelCreate, owner: str | None = None) -> ModelRecord:
        net = network_from_request(self.settings, req)
        model_id = req.model_id or uuid.uuid4().hex[:16]
        record = self.store.create_model(model_id, net.to_bytes(), describe(net), owner=owner)
        log.info("model %s: created %s (%d parameters)", model_id, net.layer_sizes, net.n_params)
        return record

    def get_model(self, model_id: str, viewer: str | None = None) -> ModelRecord:
        return self._latest_job_for(self.store.get_model(model_id), viewer)

    def list_models(self, offset: int, limit: int, owner: str | None = None) -> tuple[list[ModelRecord], int]:
        records, count = self.store.list_models(offset, limit, owner=owner)
        return [self._latest_job_for(record, owner) for record in records], count

    def _latest_job_for(self, record: ModelRecord, viewer: str | None) -> ModelRecord:
        """Tenancy: a job belongs to who submitted it, so `latest_job` is the viewer's latest on this model (or
        None), never one it could not open; one more read only when another name submitted the model's latest."""
        latest = record.latest_job
        if viewer is None or latest is None or latest.get("owner") == viewer:
            return record
        try:
            job = self.latest_job(record.model_id, viewer)
            record.latest_job = {"job_id": job.job_id, "status": job.status, "owner": job.owner}
        except (NoJobs, ModelNotFound):  # none of the viewer's, or the model was deleted since
            record.latest_job = None
        return record

    # -- tenancy (api/auth.py): another owner's model or job is as absent -----------------
    def check_model_owner(self, model_id: str, owner: str) -> None:
        if self.store.get_model(model_id).owner != owner:
            raise ModelNotFound(model_id)

    def check_job_owner(self, job_id: str, owner: str) -> None:
        if self.store.get_job(job_id).owner != owner:
            raise JobNotFound(job_id)

    def delete_model(self, model_id: str) -> None:
        cancelled = self.store.delete_model(model_id)
        for job_id in cancelled:
            log.info("job %s model %s: cancelled (model deleted)", job_id, model_id)
        log.info("model %s: deleted", model_id)

    def export_model(self, model_id: str, format: str = "npz", version: int | None = None) -> bytes:
        """The current version's file, or a kept older version's."""
        blob = self.store.load_model(model_id)[0] if version is None else self.store.get_version(model_id, version)[0]
        if format == "onnx":
            try:
                from api.onnx_export import to_onnx  # onnx is imported only when someone asks for it
            except ImportError:
                raise FeatureUnavailable("ONNX export needs the onnx package, which this installation lacks: "
                                         "pip install 'nn-service[onnx]' (or -r requirements.txt); format=npz works") from None
            return to_onnx(Network.from_bytes(blob), name=model_id)
        return blob

    def import_model(self, data: bytes, model_id: str | None, owner: str | None = None) -> ModelRecord:
        check_model_id(model_id)
        if not data:
            raise InvalidInput("the request holds no file; send a .npz from GET /models/{model_id}/export "
                               "as the raw body or as the multipart field `file`")
        net = network_from_file(self.settings, data)
        model_id = model_id or uuid.uuid4().hex[:16]
        # the model's own file, not the bytes as sent: zipfile reads an archive at the end of any prefix, so 120 MiB of
        # padding before a 1 KB export passed every check and was stored, exported and copied per version
        record = self.store.create_model(model_id, net.to_bytes(), describe(net), owner=owner, source=source_of("import"))
        log.info("model %s: imported %s", model_id, net.layer_sizes)
        return record

    # -- outputs ------------------------------------------------------------------
    async def output_on_loop(self, model_id: str, req: OutputRequest) -> dict[str, Any] | None:
        """``output`` of a plain prediction computed on the event loop (``ServedModels.on_loop``); None for a thread."""
        if req.targets is not None or req.include_activations or req.include_gradients:
            return None
        model = await self.models.on_loop(model_id, len(req.inputs) if req.inputs is not None else 1)
        return None if model is None else self.output(model_id, req, model=model)

    def output(self, model_id: str, req: OutputRequest, version: int | None = None,
               model: CachedModel | None = None) -> dict[str, Any]:
        """Outputs (and predictions, cost, gradients, activations as asked) of ``version`` or the current one, or
        of ``model`` when the caller has it already."""
        if (req.inputs is None) == (req.input is None):
            raise InvalidInput("give either `inputs` (a list of vectors) or `input` (one vector)")
        if req.include_gradients and req.targets is None:
            raise InvalidInput("include_gradients needs `targets`: the gradient is of the cost between outputs and targets")
        if model is None:
            model = self.models.version(model_id, version)
        rows = req.inputs if req.inputs is not None else [req.input]
        if len(rows) == 0:
            raise InvalidInput("inputs hold no samples; send at least one vector")
        net, info = model.net, model.record.info
        width = net.output_size + 1 + (2 * sum(layer.units for layer in net.layers) if req.include_activations else 0)
        check_answer_size(len(rows), width, int(net.n_params) if req.include_gradients else 0,
                          self.settings.max_response_values, "outputs, predictions and activations"
                          if req.include_activations else "outputs and predictions")
        x = self._inputs(info, rows)
        y = self._targets(info, req.targets, len(x)) if req.targets is not None else None
        result: dict[str, Any] = {"model_id": model_id, "model_version": model.record.version}
        dtype = info["dtype"]
        with np.errstate(over="ignore", invalid="ignore"):  # overflow becomes Inf or NaN, refused below
            if req.include_activations or y is not None:
                with model.exclusive():  # gradients keep per-call state on the layers
                    if req.include_activations:
                        out, layers = net.forward(x, return_activations=True)
                        for i, layer in enumerate(layers):
                            check_finite(f"layer {i}'s activations", (layer["z"], layer["a"]), dtype)
                        result["activations"] = [{"z": jsonable(layer["z"]), "a": jsonable(layer["a"])} for layer in layers]
                    else:
                        out = net.predict(x)
                    if y is not None and req.include_gradients:
                        cost, grads = net.gradients(x, y)
                        for i, g in enumerate(grads):
                            check_finite(f"layer {i}'s gradients", tuple(v for v in g.values() if v is not None), dtype)
                        result["gradients"] = [{"weights": jsonable(g["weights"]), "biases": jsonable(g.get("biases"))}
                                               for g in grads]
                    elif y is not None:
                        cost = net.evaluate(x, y)["loss"]
            else:
                out = predict(net, x)  # split across the cores when large
        check_finite("the outputs", (out,), dtype)
        result["outputs"] = jsonable(out)
        classes = losses.classes(out, net.loss)  # the core's, without a second forward pass
        result["predictions"] = None if classes is None else classes.tolist()
        if classes is not None and net.class_names is not None:
            result["labels"] = [net.class_names[k] for k in result["predictions"]]
        if y is not None:
            check_finite("the cost", (np.asarray(cost),), dtype)
            result["cost"] = jsonable(cost)
        return result

    def _labelled(self, model_id: str, info: dict, req: EvaluateRequest | SamplesCreate,
                  viewer: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The arrays of a request's inline `inputs`/`targets`, or of its `dataset` (one ``viewer`` sees)."""
        if req.dataset is not None:
            if req.inputs is not None or req.targets is not None:
                raise InvalidInput("give either `dataset` or `inputs` and `targets`, not both")
            return self.datasets.arrays(model_id, info, req.dataset, viewer=viewer)
        if req.inputs is None or req.targets is None:
            raise InvalidInput("give `inputs` and `targets` (or the id of an uploaded `dataset`)")
        x = self._inputs(info, req.inputs)
        return x, self._targets(info, req.targets, len(x))

    def evaluate(self, model_id: str, req: EvaluateRequest, version: int | None = None,
                 viewer: str | None = None) -> dict[str, Any]:
        model = self.models.version(model_id, version)
        x, y = self._labelled(model_id, model.record.info, req, viewer)
        with model.exclusive(), np.errstate(over="ignore", invalid="ignore"):  # overflow becomes Inf or NaN, refused below
            metrics = model.net.evaluate(x, y)
        check_finite("the loss", (np.asarray(metrics["loss"]),), model.record.info["dtype"])
        return {"model_id": model_id, "model_version": model.record.version, "n_samples": len(x),
                "metrics": jsonable(metrics)}

    def get_weights(self, model_id: str) -> dict[str, Any]:
        model = self.models.current(model_id)
        return {"layers": jsonable(model.net.get_weights()), "version": model.record.version}

    def set_weights(self, model_id: str, req: Weights, expected_uid: str | None = None) -> ModelRecord:
        """``expected_uid``: the model an If-Match named, else the one read here; it must still hold the id."""
        net, record = self._load(model_id)
        with np.errstate(over="ignore"):  # too large for float32 becomes inf, which set_weights refuses
            net.set_weights([{"weights": layer.weights, **({} if layer.biases is None else {"biases": layer.biases})}
                             for layer in req.layers])
        updated = self.store.replace_model(model_id, net.to_bytes(), describe(net), expected_version=req.version,
                                           expected_uid=expected_uid or record.uid)
        log.info("model %s: weights replaced (version %d)", model_id, updated.version)
        return updated

    # -- versions -------------------------------------------------------------------------
    def _with_metrics(self, versions: list[VersionRecord]) -> list[VersionRecord]:
        """Each version made by a job gets that job's final metrics (jobs are kept, so they are read here)."""
        for v in versions:
            job_id = v.source.get("job_id")
            if job_id:
                try:
                    v.metrics = (self.store.get_job(job_id).progress or {}).get("metrics")
                except ServiceError:
                    v.metrics = None
        return versions

    def list_versions(self, model_id: str) -> list[VersionRecord]:
        return self._with_metrics(self.store.list_versions(model_id))

    def get_version(self, model_id: str, version: int) -> VersionRecord:
        return self._with_metrics([self.store.get_version(model_id, version)[1]])[0]

    def version_weights(self, model_id: str, version: int) -> dict[str, Any]:
        model = self.models.version(model_id, version)
        return {"layers": jsonable(model.net.get_weights()), "version": model.record.version}

    def restore_version(self, model_id: str, version: int) -> ModelRecord:
        """A new version whose weights (and optimizer state, epochs trained) equal those of ``version``."""
        blob, kept = self.store.get_version(model_id, version)
        record = self.store.replace_model(model_id, blob, kept.info, source=source_of("restore", restored_from=version),
                                          expected_uid=kept.uid)  # not onto a model created since under the id
        log.info("model %s: version %d restored as version %d", model_id, version, record.version)
        return record

    # -- training buffer -------------------------------------------------------------
    def add_samples(self, model_id: str, req: SamplesCreate, viewer: str | None = None) -> tuple[int, list[str]]:
        """The buffer's size after the append, and the jobs it queued (they took their samples from the buffer)."""
        info = self.store.get_model(model_id).info
        x, y = self._labelled(model_id, info, req, viewer)
        return self._append(model_id, x, y, viewer)

    async def add_samples_file(self, model_id: str, body, content_type: str, content_length: str | None, *,
                               fmt: str | None = None, targets: list[str] | None = None,
                               viewer: str | None = None) -> tuple[int, list[str]]:
        """Appends the samples of a file body (NPZ, CSV or JSON, as for POST /datasets) to the buffer."""
        info = (await run_in_threadpool(self.store.get_model, model_id)).info  # 404 before the body is read
        # CSV and JSON text parsed straight into the model's dtype: a float64 model keeps all its digits
        async with self.datasets.received(body, content_type, content_length, fmt, targets, info["dtype"]) as (_, data, _, _):
            return await run_in_threadpool(self._append_file, model_id, info, data, viewer)

    def _append_file(self, model_id: str, info: dict, data, viewer: str | None) -> tuple[int, list[str]]:
        x, y = self.datasets.upload_arrays(data, model_id, info)
        return self._append(model_id, x, y, viewer)

    def _append(self, model_id: str, x: np.ndarray, y: np.ndarray, viewer: str | None) -> tuple[int, list[str]]:
        """Appends a request's rows all or none, in batches of about 32 MB: in one step where the store can hold any
        request in one (SQLite), else earlier steps stage them apart from the buffer (no job sees them) and one last
        step moves them in and queues the jobs it fills; a failure drops what was staged. Returns the jobs it queued
        that ``viewer`` may open."""
        limit = self.settings.max_buffer_samples
        if len(x) > limit - self.store.count_samples(model_id):
            raise PayloadTooLarge(f"the buffer of model {model_id!r} would hold more than NN_MAX_BUFFER_SAMPLES={limit} "
                                  "samples; train on it or clear it first, or train on the dataset directly")
        step = max(1, APPEND_BATCH_BYTES // max(1, x.shape[1] * x.dtype.itemsize))
        # where the last step's rows begin (one step on SQLite: staging would write every row twice)
        last = 0 if self.store.appends_in_one_step else max(0, len(x) - 1) // step * step
        stage_id, staged = uuid.uuid4().hex, 0
        try:
            for start in range(0, last, step):
                staged = self.store.stage_samples(model_id, stage_id, x[start:start + step], y[start:start + step], limit)
            size, promoted = self.store.append_samples(model_id, x[last:], y[last:], limit,
                                                       staged=(stage_id, staged) if last else None, batch_rows=step)
        except BaseException:
            if last:
                self._discard_staged(model_id, stage_id)
            raise
        for job in promoted:
            log_transition(job, "buffering")
        return size, [job.job_id for job in promoted if viewer is None or job.owner == viewer]

    def _discard_staged(self, model_id: str, stage_id: str) -> None:
        try:
            self.store.discard_staged(model_id, stage_id)
        except ServiceError as exc:  # the store is down: the rows go once they are stale (lifecycle.STALE_STAGING_SECONDS)
            log.warning("model %s: the staged rows of a failed append stay until they are stale: %s", model_id, exc)

    def buffer_size(self, model_id: str) -> int:
        return self.store.count_samples(model_id)

    def clear_samples(self, model_id: str) -> int:
        removed = self.store.clear_samples(model_id)
        log.info("model %s: buffer cleared (%d samples)", model_id, removed)
        return removed

    # -- training jobs -----------------------------------------------------------------
    def inline_samples(self, info: dict, inputs, targets, otherwise: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Checked arrays of a request's inline `inputs`/`targets`, or (None, None) when it has none."""
        if (inputs is None) != (targets is None):
            raise InvalidInput(f"give `inputs` and `targets` together (or neither, {otherwise})")
        if inputs is None:
            return None, None
        if not inputs:  # [] trained on the buffer as if `inputs` were left out
            raise InvalidInput(f"`inputs` is empty: send at least one row, or leave `inputs` and `targets` out {otherwise}")
        x = self._inputs(info, inputs)
        return x, self._targets(info, targets, len(x))

    def dataset_params(self, model_id: str, info: dict, req, params: dict[str, Any], viewer: str | None = None) -> list[str]:
        """Checks a job's `dataset` (and `validation_dataset`) against the model and records them in its
        params; returns the dataset ids the job will read. A job with a dataset leaves the buffer alone."""
        used = []
        if req.dataset is not None:
            if req.inputs is not None or req.targets is not None:
                raise InvalidInput("give either `dataset` or inline `inputs` and `targets`, not both")
            buffer_options = sorted({"min_samples", "consume_buffer"} & req.model_fields_set)
            if buffer_options:
                named = " and ".join(f"`{name}`" for name in buffer_options)
                raise InvalidInput(f"{named} {'apply' if len(buffer_options) > 1 else 'applies'} to the buffer; a job "
                                   f"with `dataset` trains on the dataset, so leave {'them' if len(buffer_options) > 1 else 'it'} out")
            record = self.datasets.check(model_id, info, req.dataset, viewer=viewer, values=True)
            params.update(dataset=req.dataset, dataset_samples=record.n_samples)
            used.append(req.dataset)
        if getattr(req, "validation_dataset", None) is not None:
            if req.validation_split:
                raise InvalidInput("give either validation_split or validation_dataset, not both")
            self.datasets.check(model_id, info, req.validation_dataset, "validation_dataset", viewer,
                                values=req.validation_dataset != req.dataset)  # read once when both are one
            params["validation_dataset"] = req.validation_dataset
            used.append(req.validation_dataset)
        return used

    def submit_job(self, model_id: str, req: JobCreate, owner: str | None = None, viewer: str | None = None) -> JobRecord:
        info = self.store.get_model(model_id).info
        params = fit_config(self.settings, info, req).to_params()
        used = self.dataset_params(model_id, info, req, params, viewer)
        x, y = self.inline_samples(info, req.inputs, req.targets, "to train on the buffer")
        if x is not None and req.min_samples > len(x):
            raise InvalidInput(f"min_samples={req.min_samples} but the job carries {len(x)} inline samples, which are "
                               "exactly what it trains on; send more inputs, or leave inputs out to wait for the buffer")
        n_samples = len(x) if x is not None else params.get("dataset_samples")  # a buffer's size is known at its start
        if req.validation_split and n_samples is not None:
            training.validation_size(n_samples, req.validation_split)  # a 422 now, not a failed job
        self.check_notify(req.notify)
        from_dataset = req.dataset is not None  # queued at once (min_samples 0), the buffer untouched (a copy)
        job = JobRecord(job_id=uuid.uuid4().hex, model_id=model_id, model_uid="", status="buffering", params=params,
                        min_samples=0 if from_dataset else req.min_samples,
                        consume_buffer=False if from_dataset else req.consume_buffer, created_at=time.time(), owner=owner)
        self.add_notification(job.job_id, req.notify)
        self.datasets.use(used, job.job_id)
        try:
            job = self.store.create_job(job, x, y, self.settings.max_buffer_samples)
        except BaseException:
            self.datasets.release(used, job.job_id)
            raise
        log_transition(job, None)
        return self.get_job(job.job_id)

    def get_job(self, job_id: str, history_from: int | None = 0) -> JobRecord:
        return self.with_notifications([self.store.get_job(job_id, history_from)])[0]

    def list_jobs(self, model_id: str, offset: int, limit: int, owner: str | None = None) -> tuple[list[JobRecord], int]:
        jobs, count = self.store.list_jobs(model_id, offset, limit, owner=owner)
        return self.with_notifications(jobs), count

    def list_all_jobs(self, offset: int, limit: int, *, status: str | None = None, model_id: str | None = None,
                      kind: str | None = None, owner: str | None = None) -> tuple[list[JobRecord], int]:
        jobs, count = self.store.list_all_jobs(offset, limit, status=status, model_id=model_id, kind=kind, owner=owner)
        return self.with_notifications(jobs), count

    # -- notifications (api/notify.py delivers them) ------------------------------------
    def check_notify(self, target: NotifyTarget | None) -> None:
        """A refused URL is a 422 before anything is stored."""
        if target is not None:
            notify.check_url(target.url, self.settings.notify_allow)

    def add_notification(self, job_id: str, target: NotifyTarget | None) -> None:
        """Written just before the job: a deliverer ignores it until the job exists and has ended."""
        if target is not None:
            self.store.add_notification(Notification(job_id=job_id, url=target.url, secret=target.secret))

    def with_notifications(self, jobs: list[JobRecord]) -> list[JobRecord]:
        notes = self.store.get_notifications([j.job_id for j in jobs]) if jobs else {}
        for job in jobs:
            job.notification = notes.get(job.job_id)
        return jobs

    def latest_job(self, model_id: str, owner: str | None = None) -> JobRecord:
        jobs, _ = self.store.list_jobs(model_id, 0, 1, owner=owner)
        if not jobs:
            raise NoJobs(model_id)
        return jobs[0]

    def cancel_job(self, job_id: str) -> JobRecord:
        before = self.store.get_job(job_id).status
        job = self.store.cancel_job(job_id)
        if job.status != before:
            log_transition(job, before)
        return self.with_notifications([job])[0]

    def requeue_interrupted(self, worker_ids: list[str] | None = None) -> list[JobRecord]:
        return records.requeue_interrupted(self.store, worker_ids)
