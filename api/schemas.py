"""Request and response bodies, a small family per resource. Every request rejects unknown
fields and NaN/Inf; each example works as-is in /docs (the job example trains the model example)."""

import time
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from neural_net.network import MAX_CLASS_NAME_LENGTH

from api.storage.base import JobRecord, ModelRecord, Notification, VersionRecord, rank_trials
from api.storage.records import TRIALS_RAN

MODEL_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
Row = list[float]
Rows = list[Row]
Rate = Annotated[float, Field(ge=0, lt=1)]  # a dropout rate
ClassName = Annotated[str, Field(min_length=1, max_length=MAX_CLASS_NAME_LENGTH)]
# 2-D rows, or one per sample: a class index or class name (classifiers), or the value (single output).
Targets = Rows | list[float] | list[ClassName]



def _optimizer_name(value: Any) -> Any:
    """An object (the core's {"name", **options} config) in `optimizer` is told where its parts go."""
    if isinstance(value, dict):
        raise PydanticCustomError("optimizer_object", "send the name as text in `optimizer`, its options in `optimizer_options` and the "
                                  'rate in `learning_rate`: {"optimizer": "momentum", "optimizer_options": {"momentum": 0.5}, "learning_rate": 0.1}')
    return value


OptimizerName = Annotated[str, BeforeValidator(_optimizer_name)]
OptimizerOptions = dict[str, float]

IRIS_X = [[5.1, 3.5, 1.4, 0.2], [4.9, 3.0, 1.4, 0.2], [7.0, 3.2, 4.7, 1.4],
          [6.4, 3.2, 4.5, 1.5], [6.3, 3.3, 6.0, 2.5], [5.8, 2.7, 5.1, 1.9]]
IRIS_Y = [0, 0, 1, 1, 2, 2]


def _utc(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, tz=timezone.utc)


class Request(BaseModel):
    # strict: "1.5" or true where a number belongs is a 422, not silently converted
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


# -- models --------------------------------------------------------------------
class LayerSpec(Request):
    """One layer of a `layers` list (Keras style): a dense layer or a batch normalisation."""

    type: str = Field(description="'dense' or 'batch_norm'.")
    units: int | None = Field(None, ge=1, description="dense: number of units (required).")
    activation: str | None = Field(None, description="Activation name, e.g. 'relu', 'leaky_relu', 'sigmoid', 'softmax'; "
                                                     "default 'linear'.")
    alpha: float | None = Field(None, description="leaky_relu: slope for z < 0 (default 0.01); elu: scale for z < 0 (default 1).")
    slope: float | None = Field(None, gt=0, description="sigmoid: a = 1 / (1 + e^(-slope z)) (default 1).")
    dropout: Rate = Field(0.0, description="Fraction of this layer's outputs zeroed while training, in [0, 1); 0 on the last layer.")
    use_bias: bool | None = Field(None, description="dense: add biases (default true); false for z = x @ weights.")
    weight_init: str | None = Field(None, description="dense: weight initialiser; the model's `weight_init` when absent.")
    bias_init: str | None = Field(None, description="dense: bias initialiser; the model's `bias_init` when absent.")
    momentum: float | None = Field(None, ge=0, lt=1, description="batch_norm: running statistics' momentum (default 0.9).")
    eps: float | None = Field(None, gt=0, description="batch_norm: added to the variance (default 1e-5).")


class ModelCreate(Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "model_id": "iris", "layer_sizes": [4, 8, 3], "activations": ["relu", "softmax"],
        "weight_init": "he", "bias_init": "zeros", "loss": "auto", "seed": 0, "class_names": ["setosa", "versicolor", "virginica"]}, {
        "model_id": "iris-bn", "input_size": 4, "layers": [
            {"type": "dense", "units": 16, "activation": "leaky_relu", "alpha": 0.1, "use_bias": False},
            {"type": "batch_norm"},
            {"type": "dense", "units": 3, "activation": "softmax"}], "seed": 0}]})

    model_id: str | None = Field(None, pattern=MODEL_ID_PATTERN, description="Id of the new model, [A-Za-z0-9_.-]{1,64}; generated when absent.")
    # fail_fast: a million zeros are one error, not a million (rows are bounded by api/json_body.py instead)
    layer_sizes: Annotated[list[Annotated[int, Field(ge=1)]], Field(fail_fast=True)] | None = Field(None, min_length=2, description="Units per layer, input first: [4, 8, 3] is 4 inputs, 8 hidden units, 3 outputs. "
                                                                                                  "Or give `input_size` and `layers` instead.")
    input_size: int | None = Field(None, ge=1, description="With `layers`: values per input vector.")
    layers: list[LayerSpec] | None = Field(None, min_length=1, description="Instead of `layer_sizes`: the layers after the input, each "
                                           "{type: dense|batch_norm, units, activation, alpha, slope, dropout, use_bias, ...}.")
    activations: list[str] | None = Field(None, description="With layer_sizes: one activation per layer after the input, e.g. ['relu', 'softmax'].")
    activation: str | None = Field(None, description="With layer_sizes: one activation for every layer (instead of `activations`); default 'relu'.")
    weight_init: str = Field("auto", description="Weight initialiser name: 'auto' (he after relu-like activations, "
                                                 "else xavier), 'xavier', 'he', 'gaussian', ...")
    bias_init: str = Field("zeros", description="Bias initialiser name, e.g. 'zeros', 'random'.")
    loss: str = Field("auto", description="Loss name; 'auto' picks cross_entropy after softmax, binary_cross_entropy after a 1-unit sigmoid, else mse.")
    dropout: Rate | list[Rate] = Field(0.0, description="With layer_sizes: dropout rate for every hidden layer, or one rate per layer after the input, each in [0, 1).")
    dtype: Literal["float32", "float64"] = Field("float32", description="Floating point type of weights and computations.")
    seed: int | None = Field(None, ge=0, description="Seed of the weight initialisation and training randomness; random when absent.")
    class_names: list[ClassName] | None = Field(None, min_length=1, max_length=4096, description="Classifiers only: a distinct "
                                                "name per class, e.g. ['setosa', 'versicolor', 'virginica']: one per output "
                                                "after softmax, two (class 0, class 1) for one sigmoid output. Kept in the model's file.")


class JobSummary(BaseModel):
    job_id: str = Field(description="Id of the job.")
    status: str = Field(description="Status of the job.")


class ModelPublic(BaseModel):
    model_id: str = Field(description="Id of the model.")
    version: int = Field(description="Increments on every weight change (training, PUT weights).")
    layer_sizes: list[int] = Field(description="Units per layer, input first.")
    activations: list[str] = Field(description="Activation of each layer after the input.")
    loss: str = Field(description="Resolved loss name.")
    task: str = Field(description="'multiclass', 'binary' or 'regression'.")
    dtype: str = Field(description="Floating point type.")
    input_size: int = Field(description="Values per input vector.")
    output_size: int = Field(description="Values per output vector.")
    n_params: int = Field(description="Number of trainable parameters.")
    epochs_trained: int = Field(description="Epochs trained so far, over all jobs.")
    buffer_size: int = Field(description="Samples waiting in the training buffer.")
    latest_job: JobSummary | None = Field(description="The model's most recent job; under NN_TENANCY, the most recent "
                                                      "one the key's name submitted (one it may open), else null.")
    created_at: datetime = Field(description="When the model was created (UTC).")
    updated_at: datetime = Field(description="When its weights last changed (UTC).")
    config: dict[str, Any] = Field(description="The core's network configuration (get_config()).")
    class_names: list[str] | None = Field(None, description="Name of each class (index k is class k); null when not given.")
    owner: str | None = Field(None, description="Name of the API key that created it (NN_API_KEYS); null without keys.")

    @classmethod
    def from_record(cls, r: ModelRecord) -> "ModelPublic":
        info = r.info
        return cls(model_id=r.model_id, version=r.version, buffer_size=r.buffer_size, owner=r.owner,
                   latest_job=JobSummary(**r.latest_job) if r.latest_job else None,
                   created_at=_utc(r.created_at), updated_at=_utc(r.updated_at), class_names=info["config"].get("class_names"),
                   **{k: info[k] for k in ("layer_sizes", "activations", "loss", "task", "dtype", "input_size",
                                           "output_size", "n_params", "epochs_trained", "config")})


# -- versions --------------------------------------------------------------------
class VersionPublic(BaseModel):
    model_id: str = Field(description="Id of the model.")
    version: int = Field(description="The version number; the model's current version is the highest.")
    current: bool = Field(description="Whether this is the model's current version.")
    source: Literal["create", "import", "job", "put", "restore"] = Field(
        description="What made it: POST /models (create), POST /models/import, a training or search job's commit (job), "
                    "PUT /models/{model_id}/weights (put), or POST .../versions/{v}/restore (restore).")
    job_id: str | None = Field(None, description="source=job: the job that made it.")
    job_status: str | None = Field(None, description="source=job: how that job ended (a cancelled or failed job keeps "
                                                     "its last checkpoint).")
    restored_from: int | None = Field(None, description="source=restore: the version it equals.")
    created_at: datetime = Field(description="When the version was made (UTC).")
    epochs_trained: int = Field(description="Epochs the network of this version was trained, over all jobs.")
    n_params: int = Field(description="Trainable parameters.")
    metrics: dict[str, Any] | None = Field(None, description="source=job: the job's final metrics (as in GET /jobs/{job_id}).")

    @classmethod
    def from_record(cls, r: VersionRecord, current: int) -> "VersionPublic":
        return cls(model_id=r.model_id, version=r.version, current=r.version == current, source=r.source["source"],
                   job_id=r.source.get("job_id"), job_status=r.source.get("job_status"),
                   restored_from=r.source.get("restored_from"), created_at=_utc(r.created_at),
                   epochs_trained=r.info.get("epochs_trained", 0), n_params=r.info.get("n_params", 0), metrics=r.metrics)


class VersionsPublic(BaseModel):
    data: list[VersionPublic] = Field(description="The kept versions, newest (the current one) first.")
    count: int = Field(description="Number of kept versions.")
    current_version: int = Field(description="The model's current version.")
    keep: int = Field(description="Previous versions kept beside the current one (NN_KEEP_VERSIONS); older ones are pruned.")


# -- outputs and evaluation -------------------------------------------------------
class OutputRequest(Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "inputs": IRIS_X[::2], "targets": IRIS_Y[::2], "include_gradients": True, "include_activations": False}]})

    inputs: Rows | None = Field(None, description="Input vectors, one row per sample, each of the model's input size.")
    input: Row | None = Field(None, description="One input vector (instead of `inputs`).")
    targets: Targets | None = Field(None, description="Expected outputs: one row per sample, or one class index (classifiers) / value (one output) per sample.")
    include_gradients: bool = Field(False, description="Also return d cost / d weights and biases for every layer (needs targets).")
    include_activations: bool = Field(False, description="Also return each layer's pre-activation z and activation a.")


class LayerArrays(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    weights: Rows = Field(description="(n_in, n_out) matrix: row i holds the weights from input unit i.")
    biases: Row | None = Field(None, description="(n_out,) vector; null for a layer with use_bias false.")


class LayerActivations(BaseModel):
    z: Rows = Field(description="(batch, units) pre-activations.")
    a: Rows = Field(description="(batch, units) activations.")


class OutputResponse(BaseModel):
    model_id: str = Field(description="Id of the model.")
    model_version: int = Field(description="Version of the weights that computed this.")
    outputs: Rows = Field(description="(batch, n_out) outputs of the network.")
    predictions: list[int] | None = Field(description="Class index per sample for classifiers; null for regression.")
    labels: list[str] | None = Field(None, description="Class name per sample, for a model created with class_names; else null.")
    cost: float | None = Field(None, description="Mean loss over the batch, when targets were given.")
    gradients: list[LayerArrays] | None = Field(None, description="d cost / d weights and biases per layer, when asked.")
    activations: list[LayerActivations] | None = Field(None, description="Per-layer z and a, when asked.")


DATASET_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
DatasetId = Annotated[str, Field(pattern=DATASET_ID_PATTERN)]


class LabelledSamples(Request):
    """Inputs with their targets, or a dataset; the body of /evaluate and of /samples."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"inputs": IRIS_X, "targets": IRIS_Y}]})

    inputs: Rows | None = Field(None, min_length=1, description="Input vectors, one row per sample.")
    targets: Targets | None = Field(None, min_length=1, description="Expected outputs: rows, or one class index / value per sample.")
    dataset: DatasetId | None = Field(None, description="Id of an uploaded dataset (POST /datasets), instead of inputs and targets.")


class EvaluateRequest(LabelledSamples):
    """Samples to compute the loss and metrics on."""


class EvaluateResponse(BaseModel):
    model_id: str = Field(description="Id of the model.")
    model_version: int = Field(description="Version of the weights evaluated.")
    n_samples: int = Field(description="Samples evaluated.")
    metrics: dict[str, Any] = Field(description="loss and, for classifiers, accuracy, precision, recall, f1, confusion_matrix; "
                                                "for regression mae, rmse, r2, pearson_r.")


class Weights(Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        # fits the model example (4 inputs, 8 hidden units, 3 outputs)
        "layers": [{"weights": [[0.1, -0.2, 0.3, -0.1, 0.2, -0.3, 0.1, 0.2]] * 4, "biases": [0.0] * 8},
                   {"weights": [[0.2, -0.1, 0.1]] * 8, "biases": [0.0, 0.1, -0.1]}]}]})

    layers: list[LayerArrays] = Field(min_length=1, description="Weights and biases of each dense layer after the input.")
    version: int | None = Field(None, description="In GET: the model version. In PUT: optional; when given, the update "
                                                  "only happens if the model is still at that version (else 409).")


# -- training buffer ----------------------------------------------------------------
class SamplesCreate(LabelledSamples):
    """Samples to append to the training buffer."""


class BufferPublic(BaseModel):
    model_id: str = Field(description="Id of the model.")
    buffer_size: int = Field(description="Samples waiting in the training buffer (after the jobs it filled took theirs).")
    queued_jobs: list[str] = Field([], description="Jobs this append queued: they were waiting for samples and took "
                                                    "them from the buffer in the same step.")


# -- training jobs ------------------------------------------------------------------
class EarlyStoppingOptions(Request):
    patience: int = Field(5, ge=1, description="Epochs without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0, description="Smallest decrease of the monitored loss that counts as improvement.")
    restore_best: bool = Field(True, description="End with the weights of the best epoch.")
    monitor: str | None = Field(None, max_length=40, description="What to watch: val_loss with validation data, else "
                                "loss; or any key the job's epochs report (accuracy, val_accuracy, val_f1, val_r2, ...).")
    mode: Literal["auto", "min", "max"] = Field("auto", description="Which way is better; auto: lower for loss, mae "
                                                "and rmse, higher for the others (accuracy, f1, r2, ...).")


class NotifyTarget(Request):
    url: str = Field(min_length=1, max_length=2048, description="http(s) URL that gets the final job record (POST, JSON) "
                                                                "when the job ends; its host must be in NN_NOTIFY_ALLOW.")
    secret: str = Field(min_length=1, max_length=256, description="Key of the X-NN-Signature header: sha256=<hex "
                                                                  "HMAC-SHA256 of the body with this secret>. Never shown again.")


class NotifyPublic(BaseModel):
    url: str = Field(description="Where the final job record is POSTed.")
    status: Literal["pending", "delivered", "failed"] = Field(description="pending (the job has not ended, or delivery "
                                                                          "is being retried), delivered (a 2xx answer), "
                                                                          "failed (no 2xx within NN_NOTIFY_RETRY_SECONDS).")
    attempts: int = Field(description="Delivery attempts so far.")
    last_error: str | None = Field(description="Why the last attempt failed.")
    last_attempt_at: datetime | None = Field(description="When the last attempt was made (UTC).")
    next_attempt_at: datetime | None = Field(description="When the next attempt is due, while pending after a failure (UTC).")
    delivered_at: datetime | None = Field(description="When a receiver answered 2xx (UTC).")

    @classmethod
    def from_record(cls, n: Notification) -> "NotifyPublic":
        return cls(url=n.url, status=n.status, attempts=n.attempts, last_error=n.last_error,
                   last_attempt_at=_utc(n.last_attempt_at), delivered_at=_utc(n.delivered_at),
                   next_attempt_at=_utc(n.next_attempt_at) if n.status == "pending" and n.attempts else None)


class JobCreate(Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "inputs": IRIS_X, "targets": IRIS_Y, "min_samples": 6, "epochs": 50, "batch_size": 2,
        "optimizer": "adam", "learning_rate": 0.01}, {"inputs": IRIS_X, "targets": IRIS_Y, "epochs": 50, "batch_size": 2,
        "optimizer": "nesterov", "optimizer_options": {"momentum": 0.8}, "learning_rate": 0.05}]})

    inputs: Rows | None = Field(None, description="The job's own samples: it trains on exactly these (queued at once, the "
                                "buffer is not used); absent: the job waits for the buffer.")
    targets: Targets | None = Field(None, description="Targets of `inputs`: rows, or one class index / value per sample.")
    dataset: DatasetId | None = Field(None, description="Train on this uploaded dataset (POST /datasets) instead of the "
                                                        "buffer: the job is queued at once and the buffer is left as it is.")
    validation_dataset: DatasetId | None = Field(None, description="An uploaded dataset to validate on after every epoch "
                                                                   "(instead of validation_split).")
    min_samples: int = Field(1, ge=1, le=2**31 - 1, description="Without inputs: the job waits in 'buffering' until the buffer holds this many samples.")
    consume_buffer: bool = Field(True, description="Take the buffered samples out of the buffer (no other job sees them); "
                                                   "false trains on a copy and leaves the buffer as it is.")
    epochs: int = Field(10, ge=1, description="Epochs to train (at most NN_MAX_EPOCHS).")
    batch_size: int = Field(32, ge=1, description="Samples per gradient step.")
    optimizer: OptimizerName = Field("adam", description="Optimizer name, e.g. 'sgd', 'momentum', 'rmsprop', 'adam'.")
    optimizer_options: OptimizerOptions | None = Field(None, description="The optimizer's own options, e.g. {'momentum': 0.5}, {'beta2': 0.99} (adam); the rate is learning_rate.")
    learning_rate: float | None = Field(None, gt=0, description="Step size; the optimizer's default when absent.")
    schedule: str | None = Field(None, description="Learning-rate schedule: 'constant', 'exponential', 'step', 'cosine' or "
                                                   "'reduce_on_plateau' (options factor, patience, min_lr, min_delta; on "
                                                   "val_loss with a validation_split, else the training loss).")
    decay_rate: float | None = Field(None, gt=0, description="Decay rate of the 'exponential' schedule (shortcut for schedule_options).")
    schedule_options: dict[str, float] | None = Field(None, description="Other schedule options, e.g. {'step_size': 10, 'gamma': 0.5} "
                                                                       "or {'factor': 0.5, 'patience': 3, 'min_lr': 0.0001}.")
    l1: float = Field(0.0, ge=0, description="L1 penalty on weights.")
    l2: float = Field(0.0, ge=0, description="L2 penalty on weights.")
    dropout: float | list[float] | None = Field(None, description="Dropout rate(s) for this job; the model's own when absent.")
    validation_split: float = Field(0.0, ge=0, lt=1, description="Fraction of the samples held out to report validation loss and metrics.")
    early_stopping: EarlyStoppingOptions | None = Field(None, description="Stop when the (validation) loss stops improving.")
    clip_norm: float | None = Field(None, gt=0, description="Clip the global gradient norm to this value.")
    shuffle: bool = Field(True, description="Shuffle the samples every epoch.")
    seed: int | None = Field(None, ge=0, description="Seed of shuffling and dropout for this job; the model's generator when absent.")
    notify: NotifyTarget | None = Field(None, description="POST the final job record to this URL when the job ends (README: Notifications).")
    max_loss_ratio: float | None = Field(None, gt=1, description="The job fails as diverged, and the model keeps its weights "
                                         "from before the job, if its final loss (on the samples of its final metrics) is "
                                         "more than this many times the loss it started from; NN_MAX_LOSS_RATIO when absent.")


class Progress(BaseModel):
    epoch: int | None = Field(None, description="Epoch in progress (1-based, counted over the whole job); null while a search runs trials.")
    epochs: int | None = Field(None, description="Epochs of the job; null while a search runs trials.")
    batch: int | None = Field(None, description="Batch in progress within the epoch (1-based).")
    batches: int | None = Field(None, description="Batches per epoch.")
    percent: float = Field(description="0..100, moving smoothly within an epoch (a search: trials done / total).")
    loss: float | None = Field(None, description="Mean training loss of this epoch so far.")
    learning_rate: float | None = Field(None, description="Current learning rate.")
    samples_per_second: float | None = Field(None, description="Training throughput.")
    eta_seconds: float | None = Field(None, description="Estimated seconds to the end of the job.")
    elapsed: float | None = Field(None, description="Seconds this run of the job has trained.")
    trials_done: int | None = Field(None, description="Search jobs: trials that ran to an end (succeeded or failed).")
    trials_cancelled: int | None = Field(None, description="Search jobs: trials cancelled before they ended (with the "
                                                           "search, or by a model delete).")
    trials_total: int | None = Field(None, description="Search jobs: trials of the search.")
    trials_running: int | None = Field(None, description="Search jobs: trials training now, on as many workers.")
    metric: str | None = Field(None, description="Search jobs: the metric that ranks trials.")
    best: dict[str, Any] | None = Field(None, description="Search jobs: the best trial so far, {index, score, params}.")


# -- search jobs (their request body is in api/search_schemas.py) -------------------
class TrialPublic(BaseModel):
    index: int = Field(description="Position of the trial in the grid or among the random draws.")
    status: Literal["pending", "running", "succeeded", "failed", "cancelled"] = Field(description="State of the trial.")
    params: dict[str, Any] = Field(description="The trial's hyper-parameters (the search's defaults apply to the rest).")
    seed: int | None = Field(description="Seed of the trial's network and shuffling: the search's seed + index (the split "
                                                 "comes from the search's seed, the same for every trial).")
    score: float | None = Field(description="Value of the search's metric on held-out samples (mean over folds).")
    metrics: dict[str, Any] | None = Field(description="Every validation metric of the trial (means over folds).")
    error: str | None = Field(description="Why the trial failed.")
    worker_id: str | None = Field(None, description="The worker that ran (or runs) the trial.")
    started_at: datetime | None = Field(description="When the trial started (UTC).")
    finished_at: datetime | None = Field(description="When it ended (UTC).")


class SearchSummary(BaseModel):
    metric: str = Field(description="The metric that ranks trials.")
    trials_total: int = Field(description="Trials of the search.")
    trials_done: int = Field(description="Trials that ran to an end (succeeded or failed).")
    trials_cancelled: int = Field(description="Trials cancelled before they ended.")
    best: TrialPublic | None = Field(description="The best trial so far.")
    trials: list[TrialPublic] = Field(description="Every trial: succeeded ones ranked best first, then the others by index.")

    @classmethod
    def from_record(cls, r: JobRecord) -> "SearchSummary":
        metric = r.params.get("metric", "loss")
        ranked = [TrialPublic(**{**t, "started_at": _utc(t["started_at"]), "finished_at": _utc(t["finished_at"])})
                  for t in rank_trials(r.trials or [], metric)]
        best = ranked[0] if ranked and ranked[0].status == "succeeded" and ranked[0].score is not None else None
        return cls(metric=metric, trials_total=len(ranked), best=best, trials=ranked,
                   trials_done=sum(t.status in TRIALS_RAN for t in ranked),
                   trials_cancelled=sum(t.status == "cancelled" for t in ranked))


class JobPublic(BaseModel):
    job_id: str = Field(description="Id of the job.")
    model_id: str = Field(description="Model the job trains.")
    status: Literal["buffering", "queued", "running", "cancelling", "cancelled", "succeeded", "failed"] = Field(
        description="buffering (waiting for samples) -> queued -> running -> succeeded | failed | cancelled (via cancelling).")
    params: dict[str, Any] = Field(description="Training hyper-parameters.")
    min_samples: int = Field(description="Samples the job waits for.")
    consume_buffer: bool = Field(description="Whether the job takes its samples out of the buffer.")
    n_samples: int = Field(description="Samples the job trains on (0 while buffering).")
    epochs_completed: int = Field(description="Epochs completed and checkpointed.")
    progress: Progress | None = Field(description="Latest progress; null before training starts.")
    history: list[dict[str, Any]] = Field(description="Per epoch: epoch, loss, val_loss and validation metrics, learning_rate, time, ...")
    error: str | None = Field(description="Why the job failed or was cancelled by the service.")
    model_version: int | None = Field(description="Model version the job produced.")
    created_at: datetime = Field(description="When the job was submitted (UTC).")
    started_at: datetime | None = Field(description="When training first started (UTC).")
    finished_at: datetime | None = Field(description="When the job ended (UTC).")
    kind: Literal["training", "search"] = Field("training", description="'training', or 'search' (POST /models/{model_id}/search-jobs).")
    stage: Literal["trials", "apply"] | None = Field(None, description="Search jobs: 'trials' while trials run, 'apply' "
                                                                      "while the best configuration trains the model.")
    search: SearchSummary | None = Field(None, description="Search jobs: the trials ranked by score, and the best so far.")

    metrics: dict[str, Any] | None = Field(None, description=(
        "When the job succeeded: loss and metrics of the trained model on the samples held out for validation "
        "(`on: validation`), or on all its samples without a validation split (`on: training`); classifiers "
        "include accuracy, precision, recall, f1 and the confusion_matrix (rows: true class), regressors mae, rmse, r2 and pearson_r."))
    owner: str | None = Field(None, description="Name of the API key that submitted it (NN_API_KEYS); null without keys.")
    duration_seconds: float | None = Field(None, description="Seconds from the start of training to the end (to now "
                                                             "while it runs); null before it starts.")
    notify: NotifyPublic | None = Field(None, description="The job's notification (when submitted with `notify`): "
                                                          "its URL and delivery status.")

    @classmethod
    def from_record(cls, r: JobRecord) -> "JobPublic":
        duration = None if r.started_at is None else max(0.0, (r.finished_at or time.time()) - r.started_at)
        return cls(kind=r.kind, stage=r.stage, owner=r.owner, search=SearchSummary.from_record(r) if r.kind == "search" else None,
                   duration_seconds=duration, notify=NotifyPublic.from_record(r.notification) if r.notification else None,
                   job_id=r.job_id, model_id=r.model_id, status=r.status, params=r.params, min_samples=r.min_samples,
                   consume_buffer=r.consume_buffer, n_samples=r.params.get("dataset_samples", r.n_samples), epochs_completed=r.epochs_done,
                   progress=Progress(**r.progress) if r.progress else None, history=r.history, error=r.error,
                   metrics=(r.progress or {}).get("metrics"),
                   model_version=r.model_version, created_at=_utc(r.created_at), started_at=_utc(r.started_at),
                   finished_at=_utc(r.finished_at))


class ModelProgress(BaseModel):
    model_id: str = Field(description="Id of the model.")
    job_id: str = Field(description="The model's latest job.")
    status: str = Field(description="Status of that job.")
    progress: Progress | None = Field(description="Its latest progress.")


class Health(BaseModel):
    status: str = Field(description="'ok' when the service can reach its store.")
    backend: str = Field(description="Store in use.")
    workers: int = Field(description="Training worker processes configured (NN_WORKERS); backend=redis: the live RQ "
                                     "workers of this store, as workers_alive (workers run elsewhere).")
    workers_alive: int = Field(description="Training worker processes running now (backend=redis: live RQ workers of "
                                           "this store's prefix; a dead one stops counting within about 20 s).")
    queued_jobs: int | None = Field(None, description="Training jobs queued and waiting for a worker (null if the store is "
                                                      "unreachable, or under NN_TENANCY without an admin key).")
    queue_length: int | None = Field(None, description="backend=redis: RQ jobs waiting on the training queue; "
                                                       "sqlite: the same as queued_jobs.")
    version: str = Field(description="Service version.")


class Whoami(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "name": "viewer", "scope": "read", "tenancy": False, "keys_required": True,
        "denied": {"POST /jobs/{job_id}/cancel": "train", "POST /models/{model_id}/versions/{version}/restore": "admin"}}]})

    name: str | None = Field(description="The key's name (its models' and jobs' owner); null when the service has no keys.")
    scope: Literal["read", "train", "admin"] = Field(description="The key's scope (read < train < admin); admin without keys.")
    tenancy: bool = Field(description="NN_TENANCY: a read or train key sees only its name's models and jobs.")
    keys_required: bool = Field(description="Whether the service needs an API key (NN_API_KEYS is set).")
    denied: dict[str, str] = Field(description="Each operation this key may not call, as 'METHOD /path/template', "
                                               "with the scope it needs; empty for admin keys and without keys.")
