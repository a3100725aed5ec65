"""The records stores keep and return: models, jobs and search trials (plain data, no rules)."""

from dataclasses import dataclass, field
from typing import Any

from neural_net.selection import Trial, rank

@dataclass
class ModelRecord:
    model_id: str
    uid: str  # changes when a model is deleted and re-created under the same id
    version: int
    info: dict[str, Any]  # summary of the network: sizes, activations, n_params, epochs_trained, ...
    created_at: float
    updated_at: float
    buffer_size: int = 0
    latest_job: dict[str, Any] | None = None  # {"job_id", "status", "owner"}
    owner: str | None = None  # name of the API key that created it (api/auth.py); None without keys


@dataclass
class JobRecord:
    job_id: str
    model_id: str
    model_uid: str
    status: str
    params: dict[str, Any]  # the core's fit hyper-parameters
    min_samples: int
    consume_buffer: bool
    created_at: float
    n_samples: int = 0  # samples the job claimed from the buffer
    epochs_done: int = 0  # epochs covered by the latest checkpoint
    progress: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    worker_id: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    model_version: int | None = None  # version of the model this job produced
    kind: str = "training"  # or "search": trials any worker claims, then (apply_best) one training of the best
    stage: str | None = None  # search jobs: "trials" while trials run, "apply" while the best configuration trains
    trials: list[dict[str, Any]] | None = None  # search jobs, on reads: every trial by index (see TRIAL_STATUSES)
    owner: str | None = None  # name of the API key that submitted it (api/auth.py); None without keys
    notification: "Notification | None" = None  # attached by the service on reads, when the job has one


@dataclass
class VersionRecord:
    """One kept version of a model's weights, keyed by (model uid, version)."""

    model_id: str
    uid: str
    version: int
    info: dict[str, Any]  # the summary of that version's network, as ModelRecord.info
    source: dict[str, Any]  # {"source": "create" | "import" | "job" | "put" | "restore", "job_id", "job_status", "restored_from"}
    created_at: float
    metrics: dict[str, Any] | None = None  # filled by the service: the final metrics of the job that made it


@dataclass
class Notification:
    """Where to POST a job's final record when it ends, and how delivery went."""

    job_id: str
    url: str
    secret: str
    status: str = "pending"  # pending -> delivered | failed (gave up after NN_NOTIFY_RETRY_SECONDS)
    attempts: int = 0
    last_error: str | None = None
    last_attempt_at: float | None = None
    next_attempt_at: float = 0.0
    delivered_at: float | None = None


def source_of(kind: str, **details: Any) -> dict[str, Any]:
    """The ``source`` of a new version: what made it (create, import, job, put, restore) and details."""
    return {"source": kind, **{k: v for k, v in details.items() if v is not None}}


def new_trial(index: int, params: dict, seed: int | None) -> dict[str, Any]:
    """A search trial as stores keep it; finished ones add score, metrics and error."""
    return {"index": index, "status": "pending", "params": params, "seed": seed, "score": None, "metrics": None,
            "error": None, "worker_id": None, "started_at": None, "finished_at": None}


def rank_trials(trials: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Succeeded trials best first by ``metric`` (ties by index, as the core's ``rank``), then the others by index."""
    scored = [t for t in trials if t["status"] == "succeeded" and t["score"] is not None]
    order = rank([Trial(t["index"], t["params"], t["score"], t["metrics"]) for t in scored], metric)
    by_index = {t["index"]: t for t in scored}
    return [by_index[t.index] for t in order] + sorted((t for t in trials if t not in scored), key=lambda t: t["index"])


TRIALS_RAN = ("succeeded", "failed")  # what "trials done" counts; cancelled trials are counted apart


def search_progress(job: JobRecord) -> dict[str, Any]:
    """Progress of a search job's trials stage, derived from its trials: done/total and the best so far."""
    trials = job.trials or []
    done = [t for t in trials if t["status"] in TRIALS_RAN]  # a cancelled trial did not run to an end
    metric = job.params.get("metric", "loss")
    ranked = rank_trials(trials, metric)
    best = ranked[0] if ranked and ranked[0]["status"] == "succeeded" and ranked[0]["score"] is not None else None
    total = len(trials)
    return {"percent": round(100.0 * len(done) / total, 3) if total else 0.0, "trials_done": len(done),
            "trials_cancelled": sum(t["status"] == "cancelled" for t in trials),
            "trials_total": total, "trials_running": sum(t["status"] == "running" for t in trials), "metric": metric,
            "best": None if best is None else {"index": best["index"], "score": best["score"], "params": best["params"]}}


def with_trials(job: JobRecord, trials: list[dict[str, Any]]) -> JobRecord:
    """Attaches a search job's trials; during the trials stage its progress is derived from them."""
    job.trials = sorted(trials, key=lambda t: t["index"])
    if job.stage == "trials" or job.progress is None:
        job.progress = search_progress(job)
    return job
