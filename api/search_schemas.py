"""The body of POST /models/{id}/search-jobs: the space to search and each trial's defaults (api/schemas.py has
the rest, the search's record included)."""

from typing import Any

from pydantic import ConfigDict, Field

from api.schemas import (IRIS_X, IRIS_Y, DatasetId, NotifyTarget, OptimizerName, OptimizerOptions, Request, Rows,
                         Targets)


class SearchRange(Request):
    low: float = Field(description="Smallest value.")
    high: float = Field(description="Largest value (>= low).")
    log: bool = Field(False, description="Draw uniformly in log space (low > 0), e.g. for learning rates.")
    integer: bool = Field(False, description="Draw among the whole numbers in [low, high], each equally likely (with "
                                             "`log`, by its log-uniform share), e.g. for epochs or batch sizes; "
                                             "a range holding no whole number is a 422.")


class SearchCreate(Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "inputs": IRIS_X, "targets": IRIS_Y, "space": {"hidden_sizes": [[8], [16]], "learning_rate": [0.01, 0.05]},
        "folds": 2, "metric": "accuracy", "seed": 0, "epochs": 30, "batch_size": 2, "apply_best": True}]})

    space: dict[str, list[Any] | SearchRange] = Field(
        min_length=1, description="Values to try per hyper-parameter: hidden_sizes (lists of units), activation, dropout, "
        "weight_init, bias_init (the network: every trial is the model's own layers, options and output layer with only "
        "these replaced; hidden_sizes gives the hidden dense layers' units, another count only when they repeat one block), epochs, batch_size, optimizer, learning_rate, l1, l2, schedule, "
        "schedule_options, clip_norm, early_stopping, shuffle (training). Without `trials`: every combination of the "
        "lists (a grid). With `trials`: that many random draws; a value may then also be a range {low, high, log, integer}.")
    trials: int | None = Field(None, ge=1, le=1000, description="Random search: number of draws from `space`; absent: the whole grid.")
    folds: int | None = Field(None, ge=2, le=20, description="Score each trial by stratified k-fold cross-validation "
                                                            "(mean over folds); absent: one hold-out split.")
    validation_split: float = Field(0.2, gt=0, lt=1, description="Without `folds`: fraction held out (after a seeded shuffle) to score each trial.")
    metric: str = Field("loss", description="Validation metric that ranks trials: loss, accuracy, precision, recall, f1 "
                                            "(roc_auc for binary) for classifiers; loss, mae, rmse, r2, pearson_r for "
                                            "regression. Loss-like metrics rank lowest first.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the search: random draws and the folds or hold-out "
                                           "split, the same for every trial; trial i's network and shuffling use seed + i, "
                                           "so the same request gives the same ranking.")
    apply_best: bool = Field(False, description="When every trial has ended, train a new network of the best "
                                                "configuration on all the job's samples and make it the model (version + 1).")
    epochs: int = Field(10, ge=1, description="Epochs of each trial unless `space` searches it.")
    batch_size: int = Field(32, ge=1, description="Batch size of each trial unless searched.")
    optimizer: OptimizerName = Field("adam", description="Optimizer of each trial unless searched.")
    optimizer_options: OptimizerOptions | None = Field(None, description="The optimizer's own options for each trial, "
                                                       "as for a training job, e.g. {'momentum': 0.5}; not searchable.")
    learning_rate: float | None = Field(None, gt=0, description="Learning rate of each trial unless searched; the optimizer's default when absent.")
    l1: float = Field(0.0, ge=0, description="L1 penalty of each trial unless searched.")
    l2: float = Field(0.0, ge=0, description="L2 penalty of each trial unless searched.")
    inputs: Rows | None = Field(None, description="The search's own samples (the buffer is not used or changed); absent: "
                                                  "the search waits for and uses the model's buffer.")
    targets: Targets | None = Field(None, description="Targets of `inputs`: rows, or one class index / value per sample.")
    dataset: DatasetId | None = Field(None, description="Search on this uploaded dataset (POST /datasets) instead of "
                                                        "inline samples or the buffer.")
    min_samples: int = Field(1, ge=1, le=2**31 - 1, description="Without inputs: the job waits in 'buffering' until the buffer holds this many samples (at least `folds`).")
    consume_buffer: bool = Field(False, description="Take the buffered samples out of the buffer. Default false: the search "
                                                    "uses a copy. When true, they are used up only if apply_best trains the "
                                                    "model with them; otherwise they go back to the buffer when the search ends.")
    notify: NotifyTarget | None = Field(None, description="POST the final job record to this URL when the job ends (README: Notifications).")
