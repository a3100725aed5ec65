"""Model selection: k-fold cross-validation and grid / random hyper-parameter search.

    from neural_net.selection import cross_validate, search, dense_builder
    build = dense_builder(input_size=2, output_size=1, output_activation="sigmoid")
    cv = cross_validate(lambda seed: build({"hidden_sizes": [16]}, seed), x, y, folds=5, epochs=30)
    result = search(build, x, y, {"hidden_sizes": [[16], [32, 32]], "learning_rate": [1e-3, 1e-2]},
                    folds=3, metric="accuracy", seed=0)
    result.best.params, result.best.score

Trial i gets the seed `seed + i` for its networks, and every trial is scored on one split drawn from `seed`
(as scikit-learn's GridSearchCV), so a search is reproducible from its seed and candidates differ only by their
parameters. Parameters named in FIT_PARAMETERS go to `Network.fit`; the rest go to the builder, which may list
the names it takes in `build.parameters` (dense_builder does): `search` refuses any other name.
"""
import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from .errors import ConfigError, ShapeError
from .metrics import LOWER_IS_BETTER, higher_is_better  # noqa: F401 (LOWER_IS_BETTER: part of this module's API)
from .network import Network
from .optimizers import Optimizer
from .registry import is_number, is_whole
from .schedules import Schedule
from .training import EarlyStopping

FIT_PARAMETERS = ("epochs", "batch_size", "optimizer", "learning_rate", "l1", "l2", "schedule", "schedule_options",
                  "clip_norm", "early_stopping", "shuffle")
DENSE_PARAMETERS = ("hidden_sizes", "activation", "dropout", "weight_init", "bias_init")  # what dense_builder takes
MAX_GRID = 10_000  # combinations `grid` builds by default


def fold_indices(n, folds=5, labels=None, seed=None):
    """[(train_idx, val_idx)] for k folds that partition range(n). With `labels`, each fold holds
    every class in proportion (class counts per fold differ by at most one)."""
    if not (is_whole(folds) and 2 <= folds <= n):
        raise ConfigError(f"folds must be a whole number from 2 to the number of samples ({n}); received {folds!r}")
    rng = np.random.default_rng(seed)
    assignment = np.empty(n, dtype=np.intp)
    if labels is None:
        order = rng.permutation(n)
        assignment[order] = np.arange(n) % folds
    else:
        offset = 0
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            # deal each class round-robin, continuing where the previous class stopped
            assignment[members] = (np.arange(members.size) + offset) % folds
            offset += members.size
    return [(np.flatnonzero(assignment != k), np.flatnonzero(assignment == k)) for k in range(folds)]


def _labels_for_stratification(y):
    """What to stratify by: whole-number labels, (n,) or a column (n, 1) as cross_entropy takes them, or the argmax
    of rows (n, k); None for other targets."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 1 and np.all(np.equal(np.mod(y, 1), 0)):
        return y.astype(np.intp)
    if y.ndim == 2 and y.shape[1] > 1:
        return np.argmax(y, axis=1)
    return None


def _summary(per_fold):
    keys = [k for k, v in per_fold[0].items() if isinstance(v, (int, float)) and v is not None]
    mean = {k: float(np.mean([f[k] for f in per_fold if f.get(k) is not None])) for k in keys}
    std = {k: float(np.std([f[k] for f in per_fold if f.get(k) is not None])) for k in keys}
    return mean, std


def cross_validate(build, x, y, folds=5, stratified=True, seed=None, callbacks_for_fold=None, split_seed=None,
                   **fit_args):
    """Train a fresh network per fold and evaluate it on the held-out fold.

    `build(seed)` returns a new `Network`; fold k's network gets seed `seed + k` (or None). The folds are drawn
    with `split_seed` (default: `seed`). An optimizer, schedule or early stopping instance in `fit_args` gives
    each fold a new one with its settings (see `fresh`).
    Returns {"folds": [metrics per fold], "mean": {...}, "std": {...}} with the metrics of
    `Network.evaluate` (loss, accuracy, f1, ... or mae, rmse, r2, ...).
    """
    if "callbacks" in fit_args:  # each fold needs callbacks of its own
        raise ConfigError("cross_validate takes callbacks_for_fold, a function of the fold index k that returns the "
                          "fold's callbacks (e.g. callbacks_for_fold=lambda k: [Logger(k)]), not callbacks")
    x = np.asarray(x)
    y = np.asarray(y)
    if x.shape[0] != y.shape[0]:
        raise ShapeError(f"inputs hold {x.shape[0]} samples but targets hold {y.shape[0]}")
    labels = _labels_for_stratification(y) if stratified else None
    per_fold = []
    splits = fold_indices(x.shape[0], folds, labels, seed if split_seed is None else split_seed)
    for k, (train, val) in enumerate(splits):
        net = build(None if seed is None else seed + k)
        callbacks = callbacks_for_fold(k) if callbacks_for_fold else None
        net.fit(x[train], y[train], callbacks=callbacks, **fresh(fit_args))
        result = net.evaluate(x[val], y[val])
        result.pop("confusion_matrix", None)
        per_fold.append(result)
    mean, std = _summary(per_fold)
    return {"folds": per_fold, "mean": mean, "std": std}


def fresh(fit_args):
    """`fit_args` with a new optimizer, schedule and early stopping in place of each instance given, made from its
    settings (`get_config`): their state (moments, plateau counts, best value) belongs to one run, so every fold
    and trial starts as the first did."""
    return {key: _renewed(value) for key, value in fit_args.items()}


def _renewed(value):
    if not isinstance(value, (Optimizer, Schedule, EarlyStopping)):
        return value
    config = value.get_config()
    config.pop("name", None)
    return type(value)(**config)


def dense_builder(input_size, output_size, output_activation="linear", loss="auto", dtype="float32"):
    """A `build(params, seed)` for searches over dense networks. Params: hidden_sizes (list of units),
    activation (hidden layers), dropout (hidden layers), weight_init, bias_init."""

    def build(params, seed=None):
        hidden = list(params.get("hidden_sizes", []))
        activations = [params.get("activation", "relu")] * len(hidden) + [output_activation]
        dropout = [params.get("dropout", 0.0)] * len(hidden) + [0.0]
        return Network.from_layer_sizes([input_size, *hidden, output_size], activations=activations,
                                        weight_init=params.get("weight_init", "auto"),
                                        bias_init=params.get("bias_init", "zeros"), dropout=dropout,
                                        loss=loss, seed=seed, dtype=dtype)

    build.parameters = DENSE_PARAMETERS
    return build


def grid(space, max_size=MAX_GRID):
    """Every combination of a {name: [values]} space, in a fixed order; ConfigError beyond `max_size`
    combinations (None: no limit), counted before any is built."""
    _check_space(space)
    size = math.prod(len(values) for values in space.values())
    if max_size is not None and size > max_size:
        raise ConfigError(f"the grid has {size} combinations; at most {max_size}: narrow the space or sample it with "
                          "trials=N (random search)")
    names = list(space)
    return [dict(zip(names, values)) for values in itertools.product(*(space[n] for n in names))]


def random_samples(space, trials, seed=None):
    """`trials` draws from a space whose values are lists (uniform choice) or ranges
    {"low": a, "high": b, "log": bool, "integer": bool}. An integer range draws among the whole numbers in
    [low, high], each as likely (with log: each with the log-uniform mass of [k - 1/2, k + 1/2])."""
    _check_space(space, allow_ranges=True)
    if not (is_whole(trials) and trials >= 1):
        raise ConfigError(f"trials must be a positive whole number; received {trials!r}")
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(trials):
        params = {}
        for name, values in space.items():
            if isinstance(values, dict):
                params[name] = _draw(rng, float(values["low"]), float(values["high"]), values.get("log"),
                                     values.get("integer"))
            else:
                params[name] = values[int(rng.integers(len(values)))]
        samples.append(params)
    return samples


def _draw(rng, low, high, log, integer):
    if integer:
        low, high = math.ceil(low), math.floor(high)
        if not log:
            return int(rng.integers(low, high + 1))
        value = round(math.exp(rng.uniform(math.log(low - 0.5), math.log(high + 0.5))))
        return int(min(max(value, low), high))
    if log:
        return math.exp(rng.uniform(math.log(low), math.log(high)))
    return float(rng.uniform(low, high))


def _check_space(space, allow_ranges=False):
    if not isinstance(space, dict) or not space:
        raise ConfigError("the search space must be a non-empty dict of parameter name -> list of values")
    for name, values in space.items():
        if isinstance(values, dict) and allow_ranges:
            low, high = values.get("low"), values.get("high")
            if not (is_number(low) and is_number(high) and low <= high):
                raise ConfigError(f"range for {name!r} needs numbers low <= high; received {values!r}")
            if values.get("log") and low <= 0:
                raise ConfigError(f"log range for {name!r} needs low > 0; received {values!r}")
            if values.get("integer") and math.ceil(low) > math.floor(high):
                raise ConfigError(f"integer range for {name!r} holds no whole number; received {values!r}: widen it, "
                                  "or leave integer out")
        elif not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(f"{name!r} needs a non-empty list of values" + (" or a {low, high} range" if allow_ranges else "")
                              + f"; received {values!r}")


@dataclass
class Trial:
    index: int
    params: dict
    score: float
    metrics: dict
    seed: int | None = None


@dataclass
class SearchResult:
    metric: str
    trials: list = field(default_factory=list)  # ranked, best first

    @property
    def best(self):
        return self.trials[0] if self.trials else None


def split_params(params):
    fit = {k: v for k, v in params.items() if k in FIT_PARAMETERS}
    return {k: v for k, v in params.items() if k not in FIT_PARAMETERS}, fit


def run_trial(build, x, y, params, index, metric, folds=None, validation_split=0.2, seed=None, fit_defaults=None,
              callbacks=None, split_seed=None):
    """Score one configuration: mean over `folds` cross-validation folds, or one hold-out split
    (a seeded shuffle, then the last `validation_split` fraction). The networks get seed `seed + index`; the
    split is drawn from `split_seed` (default: `seed`), the same for every trial of a search."""
    trial_seed = None if seed is None else seed + index
    split_seed = seed if split_seed is None else split_seed
    arch, fit = split_params(params)
    fit = {**(fit_defaults or {}), **fit}
    if folds:
        result = cross_validate(lambda s: build(arch, s), x, y, folds=folds, seed=trial_seed, split_seed=split_seed,
                                callbacks_for_fold=(lambda k: callbacks) if callbacks else None, **fit)
        metrics = result["mean"]
    else:
        x, y = np.asarray(x), np.asarray(y)
        if not (is_number(validation_split) and 0 < validation_split < 1):
            raise ConfigError(f"validation_split must be a number in (0, 1), the fraction of the samples that scores "
                              f"each trial (or give folds); received validation_split={validation_split!r}")
        order = np.random.default_rng(split_seed).permutation(x.shape[0])
        n_val = max(1, int(round(x.shape[0] * validation_split)))
        if n_val >= x.shape[0]:
            raise ConfigError(f"validation_split={validation_split} of {x.shape[0]} samples leaves none to train on; "
                              "send more samples or hold out less")
        train, val = order[:-n_val], order[-n_val:]
        net = build(arch, trial_seed)
        net.fit(x[train], y[train], callbacks=callbacks, **fresh(fit))
        metrics = net.evaluate(x[val], y[val])
        metrics.pop("confusion_matrix", None)
    name = metric.removeprefix("val_")
    if metrics.get(name) is None:
        raise ConfigError(f"metric {metric!r} is not reported for this task; available: {', '.join(sorted(metrics))}")
    return Trial(index=index, params=params, score=float(metrics[name]), metrics=metrics, seed=trial_seed)


def rank(trials, metric):
    """Best first; ties keep trial order, so equal requests give equal rankings."""
    sign = -1.0 if higher_is_better(metric) else 1.0
    return sorted(trials, key=lambda t: (sign * t.score if math.isfinite(t.score) else math.inf, t.index))


def search(build, x, y, space, trials=None, folds=None, validation_split=0.2, metric="loss", seed=0,
           fit_defaults=None, on_trial=None):
    """Grid search (trials=None) or `trials` random draws from `space`; returns a ranked `SearchResult`.

    `build(params, seed)` makes a network from the non-fit parameters (see `dense_builder`).
    `metric` is any key of `Network.evaluate` ("loss", "accuracy", "f1", "rmse", "r2", ...);
    loss-like metrics rank lowest first, the others highest first. `on_trial(trial)` is called after
    each trial and may return True to stop the search. Every trial is scored on the same split (drawn from
    `seed`, or once at random when it is None). A name in `space` must be in FIT_PARAMETERS or, when the builder
    lists its names in `build.parameters`, among those.
    """
    if getattr(build, "parameters", None) is not None and isinstance(space, dict):
        accepted = (*build.parameters, *FIT_PARAMETERS)
        unknown = sorted(set(space) - set(accepted))
        if unknown:  # a typo, or an option fit does not take per trial: every trial would train the same network
            raise ConfigError(f"cannot search {', '.join(map(repr, unknown))}; accepted: {', '.join(accepted)}")
    candidates = grid(space) if trials is None else random_samples(space, trials, seed)
    split_seed = seed if seed is not None else int(np.random.default_rng().integers(2**63))
    done = []
    for index, params in enumerate(candidates):
        trial = run_trial(build, x, y, params, index, metric, folds, validation_split, seed, fit_defaults,
                          split_seed=split_seed)
        done.append(trial)
        if on_trial and on_trial(trial):
            break
    return SearchResult(metric=metric, trials=rank(done, metric))
