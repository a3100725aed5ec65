"""Search trials on the worker side: score one claimed trial, and plan the apply stage of a search.

Runners (api/worker.py, api/rq_runner.py) call these; api/search.py checks requests and stores the trials.
"""

import logging
import math
import time
from typing import Any

from neural_net import Callback, Network
from neural_net.errors import NeuralNetError
from neural_net.selection import run_trial, split_params

from api.datasets import job_samples
from api.errors import DatasetNotFound, InvalidInput, LeaseLost, ModelNotFound, StoreUnavailable
from api.records import jsonable, log_transition
from api.settings import Settings
from api.storage.base import JobRecord, Store, rank_trials

log = logging.getLogger("api.search")

CANCEL_CHECK_INTERVAL = 0.05  # seconds between reads of the job's cancel flag while a trial trains


def _name(activation) -> str:
    return activation if isinstance(activation, str) else activation["name"]


def trial_config(config: dict, arch: dict) -> dict:
    """The network config of a trial: the model's own (`info["config"]`, every layer with its type and
    options, the output layer, loss and dtype) with only what `arch` searches replaced:

    - hidden_sizes: the units of the hidden dense layers (all dense layers but the last), in order, each
      keeping its options, batch_norm layers where they are. A different number of sizes is taken only when
      the hidden layers are one block repeated (a dense layer and what follows it up to the next dense,
      identical but for the units; a plain stack or dense + batch_norm pairs): the block is repeated
      once per size. A model without hidden layers gets relu dense layers with its output's initialisers.
    - activation, dropout: set on the hidden layers that carry the non-linearity (those whose activation is
      not linear: the dense layers, or the batch_norm after a linear dense), or on the hidden dense layers
      when none does. Searching a layer's own activation keeps its options (alpha, slope).
    - weight_init, bias_init: every dense layer's, the output's included.
    Raises InvalidInput for hidden_sizes the model's layers cannot take."""
    layers = [dict(layer) for layer in config["layers"]]
    hidden, output = layers[:-1], layers[-1]
    if "hidden_sizes" in arch:
        hidden = _resize(hidden, list(arch["hidden_sizes"]), output)
    targets = ([layer for layer in hidden if _name(layer["activation"]) != "linear"]
               or [layer for layer in hidden if layer["type"] == "dense"])
    for layer in targets:
        if "activation" in arch and _name(layer["activation"]) != arch["activation"]:
            layer["activation"] = arch["activation"]
        if "dropout" in arch:
            layer["dropout"] = arch["dropout"]
    for layer in hidden + [output]:
        if layer["type"] == "dense":
            layer.update({key: arch[key] for key in ("weight_init", "bias_init") if key in arch})
    return {**config, "layers": hidden + [output]}


def _resize(hidden: list[dict], sizes: list[int], output: dict) -> list[dict]:
    dense = [i for i, layer in enumerate(hidden) if layer["type"] == "dense"]
    if len(sizes) == len(dense):
        return [{**layer, "units": sizes[dense.index(i)]} if i in dense else layer for i, layer in enumerate(hidden)]
    if not hidden:
        block = [{"type": "dense", "activation": "relu", "weight_init": output["weight_init"], "bias_init": output["bias_init"]}]
    else:
        prefix = hidden[:dense[0]]  # e.g. a batch_norm of the inputs: kept in front
        blocks = [hidden[start:end] for start, end in zip(dense, dense[1:] + [len(hidden)])]
        strip = lambda b: [{k: v for k, v in layer.items() if k != "units"} for layer in b]  # noqa: E731
        if any(strip(b) != strip(blocks[0]) for b in blocks):
            current = [hidden[i]["units"] for i in dense]
            raise InvalidInput(
                f"hidden_sizes {sizes} has {len(sizes)} sizes; this model's hidden layers differ in type or options, "
                f"so a search keeps their number: give {len(dense)} sizes, one per hidden dense layer (now {current}); "
                "each keeps its activation and options")
        return prefix + [{**layer, "units": units} if j == 0 else dict(layer)
                         for units in sizes for j, layer in enumerate(blocks[0])]
    return [{**block[0], "units": units} for units in sizes]


def builder_for(info: dict):
    """``build(params, seed)`` for the model's trials: the network of `trial_config`, with the trial's seed."""
    config = info["config"]
    return lambda params, seed=None: Network.from_config({**trial_config(config, params), "seed": seed})


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


def with_optimizer_options(params: dict[str, Any], defaults: dict[str, Any] | None) -> tuple[dict, dict]:
    """A trial's params and the core's fit defaults, the search's ``optimizer_options`` given to the trial's optimizer
    (searched or the default) as fit takes them, {"name": ..., **options}; submit checked that each optimizer takes
    them."""
    defaults = dict(defaults or {})
    options = defaults.pop("optimizer_options", None)
    if options:
        optimizer = {"name": params.get("optimizer", defaults.get("optimizer", "adam")), **options}
        if "optimizer" in params:
            params = {**params, "optimizer": optimizer}
        else:
            defaults["optimizer"] = optimizer
    return params, defaults


def run_search_trial(store: Store, job: JobRecord, trial: dict, settings: Settings, stop_event) -> JobRecord:
    """Scores one claimed trial and records it; a stopping worker gives the trial back (it re-runs from the start)."""
    index, p = trial["index"], job.params
    try:
        _, model = store.load_model(job.model_id)
        x, y, _ = job_samples(store, job, settings, model.info)
        params, defaults = with_optimizer_options(trial["params"], p.get("defaults"))
        result = run_trial(builder_for(model.info), x, y, params, index, p["metric"], p.get("folds"),
                           p.get("validation_split") or 0.2, p.get("seed"), defaults,
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
