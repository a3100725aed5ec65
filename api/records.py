"""What the service and the job runners share: a network's stored summary, JSON-safe values, and the
changes that need no request (promotion of full buffers, requeue after a crash, rows staged by appends
that died), each logged once here. Below `api.services` and the runners, so neither imports the other
for these."""

import logging
import math
from typing import Any

import numpy as np

from neural_net import Network

from api.storage.base import JobRecord, Store

log = logging.getLogger("api.jobs")


def describe(net: Network) -> dict[str, Any]:
    """The summary kept beside a model's bytes, so listing models never loads a network."""
    return {
        "layer_sizes": net.layer_sizes, "activations": [layer.activation.name for layer in net.layers],
        "loss": net.loss_name, "task": net.task, "dtype": net.dtype.name, "input_size": net.input_size,
        "output_size": net.output_size, "n_params": int(net.n_params), "epochs_trained": int(net.epochs_trained),
        "config": net.get_config(),
    }


def jsonable(value: Any) -> Any:
    """NumPy values as plain Python; NaN and Inf (JSON has neither) as None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f" and np.isfinite(value).all():  # no NaN to replace: one copy, not two
            return value.tolist()
        return jsonable(value.tolist())
    if isinstance(value, (np.integer, bool, int)):
        return value if isinstance(value, (bool, int)) else int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def log_transition(job: JobRecord, before: str | None) -> None:
    extra = f" ({job.error})" if job.error else ""
    log.info("job %s model %s: %s -> %s%s", job.job_id, job.model_id, before or "new", job.status, extra)


def promote(store: Store) -> None:
    """Buffering jobs whose buffer is full enough become queued."""
    for job in store.promote_ready_jobs():
        log_transition(job, "buffering")


def drop_unfinished_appends(store: Store, max_age: float) -> None:
    """Rows an append request staged and never moved into the buffer (the process died between its steps) go."""
    dropped = store.drop_stale_staging(max_age)
    if dropped:
        log.info("dropped %d staged rows of append requests that did not finish", dropped)


def requeue_interrupted(store: Store, worker_ids: list[str] | None = None) -> list[JobRecord]:
    """Jobs left running by a crash or a dead worker: back to queued (or cancelled if asked)."""
    jobs = store.requeue_jobs(worker_ids=worker_ids)
    for job in jobs:
        log_transition(job, "running" if job.status == "queued" else "cancelling")
    return jobs
