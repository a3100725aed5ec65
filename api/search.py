"""Hyper-parameter search as a job: the request is checked and split into trials here, and workers run them.

A search job (kind "search") claims its samples like a training job (``consume_buffer`` defaults to
false), then its trials wait to be claimed by any worker, several at once (worker processes, or RQ
workers with NN_BACKEND=redis). Trial i of a search with seed s is the core's ``run_trial`` with
seed s + i (its network and shuffling; every trial is scored on the same split, drawn from s), so the same
request gives the same scores and ranking. Trials never write the model. With
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

from neural_net import Network, activations, initializers, metrics
from neural_net.errors import NeuralNetError
from neural_net.selection import FIT_PARAMETERS, grid, random_samples, split_params

from api.errors import InvalidInput
from api.schemas import JobCreate
from api.search_schemas import SearchCreate
from api.records import log_transition
from api.search_trials import trial_config
from api.services import Service
from api.specs import check_layers, fit_config
from api.storage.base import JobRecord, new_trial

log = logging.getLogger("api.search")

ARCHITECTURE_PARAMETERS = ("hidden_sizes", "activation", "dropout", "weight_init", "bias_init")
SEARCHABLE = ARCHITECTURE_PARAMETERS + FIT_PARAMETERS
MAX_TRIALS = 1000


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
                "learning_rate": req.learning_rate, "l1": req.l1, "l2": req.l2,
                **({"optimizer_options": req.optimizer_options} if req.optimizer_options else {})}
    built: set[str] = set()
    for i, params in enumerate(candidates):
        _check_candidate(service, info, defaults, params, f"trial {i} {params}", built)
    x, y = service.inline_samples(info, req.inputs, req.targets, "to search on the buffer")
    service.check_notify(req.notify)
    params = {"space": {k: v.model_dump() if hasattr(v, "model_dump") else v for k, v in req.space.items()},
              "trials": req.trials, "folds": req.folds, "validation_split": req.validation_split, "metric": req.metric,
              "seed": req.seed, "apply_best": req.apply_best, "defaults": defaults}
    used = service.dataset_params(model_id, info, req, params, viewer)  # queued at once, the buffer untouched
    if x is not None and len(x) < (req.folds or 2):  # after dataset_params: `dataset` and inline rows is the error to name
        raise InvalidInput(f"{len(x)} samples; a search needs at least {req.folds or 2} (one per fold)")
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


def _check_candidate(service: Service, info: dict, defaults: dict, params: dict, where: str, built: set) -> None:
    arch, fit = split_params(params)
    try:
        req = JobCreate(**{**defaults, **fit})
    except ValidationError as exc:
        error = exc.errors()[0]
        raise InvalidInput(f"{where}: {'.'.join(map(str, error['loc']))}: {error['msg']}") from None
    except TypeError as exc:
        raise InvalidInput(f"{where}: {exc}") from None
    try:
        fit_config(service.settings, info, req)
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
    try:  # the trial's own layers (the model's but what is searched) against the limits before anything is built
        config = trial_config(info["config"], arch)
        check_layers(service.settings, config["input_size"], config["layers"])
    except InvalidInput as exc:
        raise InvalidInput(f"{where}: {exc}") from None
    key = repr(sorted(arch.items()))
    if key not in built:  # each distinct architecture is built once, so every name and option is checked
        try:
            Network.from_config(_one_unit_each(config))
        except (NeuralNetError, TypeError, ValueError) as exc:
            raise InvalidInput(f"{where}: {exc}") from None
        built.add(key)


def _one_unit_each(config: dict) -> dict:
    """A trial's network with one unit in each hidden dense layer: built, it checks every name and option as the
    real one would, at a cost that does not grow with the sizes searched (check_layers has checked those). Built
    whole, a grid of 1,000 architectures of 4M parameters each took 84 CPU-seconds to check."""
    layers = [{**layer, "units": 1} if layer["type"] == "dense" else layer for layer in config["layers"][:-1]]
    return {**config, "layers": [*layers, config["layers"][-1]], "seed": 0}
