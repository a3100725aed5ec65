"""Search trials on the worker side: score one claimed trial, and plan the apply stage of a search.

Runners (api/worker.py, api/rq_runner.py) call these; api/search.py checks requests and stores the trials.
"""

import logging
import math
import time
from typing import Any

from neural_net import Callback
from neural_net.errors import NeuralNetError
from neural_net.selection import dense_builder, run_trial, split_params

from api.datasets import job_samples
from api.errors import DatasetNotFound, InvalidInput, LeaseLost, ModelNotFound, StoreUnavailable
from api.records import jsonable, log_transition
from api.settings import Settings
from api.storage.base import JobRecord, Store, rank_trials

log = logging.getLogger("api.search")

CANCEL_CHECK_INTERVAL = 0.05  # seconds between reads of the job's cancel flag while a trial trains


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
