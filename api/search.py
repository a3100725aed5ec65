"""Hyper-parameter search as a job: the request is checked and split into trials here, and workers run them.

A search job (kind "search") claims its samples like a training job (``consume_buffer`` defaults to
false), then its trials wait to be claimed by any worker, several at once (worker processes, or RQ
workers with NN_BACKEND=redis). Trial i of a search with seed s is the core's ``run_trial`` with
seed s + i, so the same request gives the same scores and ranking. Trials never write the model. With
``apply_best``, once every trial has ended the job goes to its "apply" stage: an ordinary claim (one
writer per model) trains a new network of the best configuration on all the job's samples and the
model takes it, version += 1.
"""

import logging
import math
import time
import uuid
from typing import Any

from pydantic import ValidationError

from neural_net import Callback, activations, initializers, metrics
from neural_net.errors import NeuralNetError
from neural_net.selection import FIT_PARAMETERS, dense_builder, grid, random_samples, run_trial, split_params

from api.errors import DatasetNotFound, InvalidInput, LeaseLost, ModelNotFound, StoreUnavailable
from api.schemas import JobCreate, SearchCreate
from api.services import Service, jsonable, log_transition
from api.settings import Settings
from api.datasets import job_samples
from api.storage.base import JobRecord, Store, new_trial, rank_trials

log = logging.getLogger("api.search")

ARCHITECTURE_PARAMETERS = ("hidden_sizes", "activation", "dropout", "weight_init", "bias_init")
SEARCHABLE = ARCHITECTURE_PARAMETERS + FIT_PARAMETERS
MAX_TRIALS = 1000
CANCEL_CHECK_INTERVAL = 0.05  # seconds between reads of the job's cancel flag while a trial trains


# -- the service side: check the request, make the trials ---------------------------------------------
def submit_search(service: Service, model_id: str, req: SearchCreate, owner: str | None = None,
                  viewer: str | None = None) -> JobRecord:
    """Checks every trial before anything is stored, then stores the job and its pending trials."""
    info = service.store.get_model(model_id).info
    metric = req.metric.removeprefix("val_")
    valid = metrics.names(info["task"])  # what the core's evaluate reports for this task
    if metric not in valid:
        raise InvalidInput(f"metric {req.metric!r} is not reported for this {info['task']} model; valid: {', '.join(valid)}")
    candidates = _candidates(req)
    defaults = {"epochs": req.epochs, "batch_size": req.batch_size, "optimizer": req.optimizer,
                "learning_rate": req.learning_rate, "l1": req.l1, "l2": req.l2}
    build = builder_for(info)
    built: set[str] = set()
    for i, params in enumerate(candidates):
        _check_candidate(service, info, build, defaults, params, f"trial {i} {params}", built)
    x, y = service.inline_samples(info, req.inputs, req.targets, "to search on the buffer")
    service.check_notify(req.notify)
    if x is not None and len(x) < (req.folds or 2):
        raise InvalidInput(f"{len(x)} samples; a search needs at least {req.folds or 2} (one per fold)")
    params = {"space": {k: v.model_dump() if hasattr(v, "model_dump") else v for k, v in req.space.items()},
              "trials": req.trials, "folds": req.folds, "validation_split": req.validation_split, "metric": req.metric,
              "seed": req.seed, "apply_best": req.apply_best, "defaults": defaults}
    used = service.dataset_params(model_id, info, req, params, viewer)  # queued at once, the buffer untouched
    if params.get("dataset_samples", req.folds or 2) < (req.folds or 2):
        raise InvalidInput(f"dataset {req.dataset!r} has {params['dataset_samples']} samples; a search needs at least "
                           f"{req.folds or 2} (one per fold)")
    job = JobRecord(job_id=uuid.uuid4().hex, model_id=model_id, model_uid="", status="buffering", params=params,
                    min_samples=0 if used else max(req.min_samples, req.folds or 2),
                    consume_buffer=False if used else req.consume_buffer,
                    created_at=time.time(), kind="search", stage="trials", owner=owner)
    trials = [new_trial(i, p, req.seed + i) for i, p in enumerate(candidates)]
    service.add_notification(job.job_id, req.notify)
    service.datasets.use(used, job.job_id)
    try:
        job = service.store.create_search_job(job, trials, x, y, service.settings.max_buffer_samples)
    except BaseException:
        service.datasets.release(used, job.job_id)
        raise
    log_transition(job, None)
    service.promote()
    return service.get_job(job.job_id)


def _candidates(req: SearchCreate) -> list[dict[str, Any]]:
    unknown = sorted(set(req.space) - set(SEARCHABLE))
    if unknown:
        raise InvalidInput(f"cannot search {', '.join(map(repr, unknown))}; searchable: {', '.join(SEARCHABLE)}")
    space = {k: v.model_dump() if hasattr(v, "model_dump") else v for k, v in req.space.items()}
    try:
        if req.trials is None:
            ranges = [k for k, v in space.items() if isinstance(v, dict)]
            if ranges:
                raise InvalidInput(f"{', '.join(ranges)}: a range needs `trials` (random search); a grid takes lists of values")
            size = math.prod(len(v) for v in space.values())
            if size > MAX_TRIALS:
                raise InvalidInput(f"the grid has {size} combinations; at most {MAX_TRIALS}: use fewer values or `trials`")
            return grid(space)
        return random_samples(space, req.trials, req.seed)
    except NeuralNetError as exc:
        raise InvalidInput(f"space: {exc}") from None


def _check_candidate(service: Service, info: dict, build, defaults: dict, params: dict, where: str, built: set) -> None:
    arch, fit = split_params(params)
    try:
        req = JobCreate(**{**defaults, **fit})
    except ValidationError as exc:
        error = exc.errors()[0]
        raise InvalidInput(f"{where}: {'.'.join(map(str, error['loc']))}: {error['msg']}") from None
    except TypeError as exc:
        raise InvalidInput(f"{where}: {exc}") from None
    try:
        service._fit_params(info, req)
    except InvalidInput as exc:
        raise InvalidInput(f"{where}: {exc}") from None
    hidden = arch.get("hidden_sizes", [])
    if not isinstance(hidden, list) or not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden):
        raise InvalidInput(f"{where}: hidden_sizes must be a list of positive whole numbers, e.g. [16, 16]")
    for key, names in (("activation", activations.names()), ("weight_init", ["auto"] + initializers.weight_names()),
                       ("bias_init", initializers.bias_names())):
        if key in arch and arch[key] not in names:
            raise InvalidInput(f"{where}: unknown {key} {arch[key]!r}; valid names: {', '.join(names)}")
    if "dropout" in arch and not (isinstance(arch["dropout"], (int, float)) and 0 <= arch["dropout"] < 1):
        raise InvalidInput(f"{where}: dropout must be a number in [0, 1)")
    try:  # the limits before anything is built
        service._check_architecture([info["input_size"], *(hidden if "hidden_sizes" in arch else
                                                           info["layer_sizes"][1:-1]), info["output_size"]])
    except InvalidInput as exc:
        raise InvalidInput(f"{where}: {exc}") from None
    key = repr(sorted(arch.items()))
    if key not in built:  # each distinct architecture is built once, so every name and option is checked
        try:
            build(arch, 0)
        except (NeuralNetError, TypeError, ValueError) as exc:
            raise InvalidInput(f"{where}: {exc}") from None
        built.add(key)


# -- the worker side ------------------------------------------------------------------------------
def builder_for(info: dict):
    """``build(params, seed)`` for the model's trials: the model's input size, output layer, loss and dtype;
    hidden layers from params, defaulting to the model's own (sizes, first hidden activation and dropout)."""
    layers = info["config"]["layers"]
    dense = [layer for layer in layers if layer.get("type", "dense") == "dense"]
    hidden = [layer["units"] for layer in dense[:-1]]
    defaults: dict[str, Any] = {"hidden_sizes": hidden, "weight_init": dense[0].get("weight_init", "auto"),
                                "bias_init": dense[0].get("bias_init", "zeros")}
    if hidden:
        defaults.update(activation=dense[0]["activation"], dropout=dense[0].get("dropout") or 0.0)
    base = dense_builder(info["input_size"], info["output_size"], dense[-1]["activation"], info["loss"], info["dtype"])
    return lambda params, seed=None: base({**defaults, **params}, seed)


class TrialStopped(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason  # "cancel" or "shutdown"


class _TrialCallback(Callback):
    """Stops a trial within one batch when its job is cancelled or the worker stops."""

    def __init__(self, store: Store, job_id: str, stop_event):
        self.store, self.job_id, self.stop_event = store, job_id, stop_event
        self.last_check = 0.0

    def on_batch_end(self, progress) -> bool:
        if self.stop_event.is_set():
            raise TrialStopped("shutdown")
        now = time.monotonic()
        if now - self.last_check >= CANCEL_CHECK_INTERVAL:
            self.last_check = now
            if self.store.cancel_requested(self.job_id):
                raise TrialStopped("cancel")
        return False


def run_search_trial(store: Store, job: JobRecord, trial: dict, settings: Settings, stop_event) -> JobRecord:
    """Scores one claimed trial and records it; a stopping worker gives the trial back (it re-runs from the start)."""
    index, p = trial["index"], job.params
    try:
        _, model = store.load_model(job.model_id)
        x, y, _ = job_samples(store, job, settings, model.info)
        result = run_trial(builder_for(model.info), x, y, trial["params"], index, p["metric"], p.get("folds"),
                           p.get("validation_split") or 0.2, p.get("seed"), p.get("defaults"),
                           callbacks=[_TrialCallback(store, job.job_id, stop_event)])
    except TrialStopped as stop:
        if stop.reason == "shutdown":
            return store.release_trial(job.job_id, index)
        return _end(store, job, store.finish_trial(job.job_id, index, "cancelled"))
    except ModelNotFound:
        return _end(store, job, store.finish_trial(job.job_id, index, "cancelled", error="model deleted"))
    except (InvalidInput, DatasetNotFound) as exc:  # its dataset
        return _end(store, job, store.finish_trial(job.job_id, index, "failed", error=str(exc)))
    except (LeaseLost, StoreUnavailable):
        raise  # backend=redis: the trial's lease decides who runs it
    except NeuralNetError as exc:
        return _end(store, job, store.finish_trial(job.job_id, index, "failed", error=str(exc)))
    except Exception as exc:
        log.exception("search %s trial %d crashed", job.job_id, index)
        return _end(store, job, store.finish_trial(job.job_id, index, "failed", error=f"internal error: {exc!r}"))
    score = result.score if math.isfinite(result.score) else None
    done = store.finish_trial(job.job_id, index, "succeeded" if score is not None else "failed", score=score,
                              metrics=jsonable(result.metrics), error=None if score is not None else f"{p['metric']} is not finite")
    log.info("search %s model %s: trial %d %s = %s", job.job_id, job.model_id, index, p["metric"], score)
    return _end(store, job, done)


def _end(store: Store, job: JobRecord, done: JobRecord) -> JobRecord:
    if done.status not in ("running", "cancelling") or done.stage != job.stage:
        log_transition(done, "running")
    return done


def apply_plan(store: Store, job: JobRecord) -> tuple[dict[str, Any], bytes]:
    """The apply stage's fit parameters (the search's defaults, the best trial's, its seed) and a new
    network of the best trial's architecture, which the job trains on all its samples."""
    job = store.get_job(job.job_id)
    best = rank_trials(job.trials or [], job.params["metric"])[0]
    _, model = store.load_model(job.model_id)
    arch, fit = split_params(best["params"])
    net = builder_for(model.info)(arch, best["seed"])
    return {**job.params["defaults"], **fit, "seed": best["seed"]}, net.to_bytes()
