"""Cross-validation folds and hyper-parameter search."""
import math

import numpy as np
import pytest
from sklearn.datasets import make_moons

from neural_net import Callback, EarlyStopping
from neural_net.errors import ConfigError
from neural_net.optimizers import Adam
from neural_net.schedules import ReduceOnPlateau
from neural_net.selection import (_labels_for_stratification, cross_validate, dense_builder, fold_indices, grid,
                                  random_samples, rank, run_trial, search, Trial)


@pytest.mark.parametrize("n,folds", [(10, 2), (103, 5), (50, 7)])
def test_folds_partition_the_samples(n, folds):
    splits = fold_indices(n, folds, seed=0)
    validation = np.concatenate([val for _, val in splits])
    assert sorted(validation.tolist()) == list(range(n))  # every sample in exactly one fold
    for train, val in splits:
        assert not set(train) & set(val) and len(train) + len(val) == n
    sizes = [len(val) for _, val in splits]
    assert max(sizes) - min(sizes) <= 1


def test_stratified_folds_keep_class_balance_within_one_sample():
    labels = np.array([0] * 37 + [1] * 11 + [2] * 52)
    np.random.default_rng(0).shuffle(labels)
    for _, val in fold_indices(100, 4, labels=labels, seed=3):
        for cls, total in ((0, 37), (1, 11), (2, 52)):
            assert abs(np.sum(labels[val] == cls) - total / 4) <= 1


@pytest.mark.parametrize("shape", [(30,), (30, 1)])
def test_integer_labels_as_a_column_are_stratified_too(shape):
    """Labels 0, 1, 2 as an (n, 1) column were not stratified: folds held [5, 0, 5], [2, 7, 1], [3, 3, 4]."""
    labels = np.repeat([0, 1, 2], 10)
    splits = fold_indices(30, 3, _labels_for_stratification(labels.reshape(shape)), seed=0)
    assert sorted(np.bincount(labels[val], minlength=3).tolist() for _, val in splits) == [[3, 3, 4], [3, 4, 3], [4, 3, 3]]


def test_cross_validate_reports_per_fold_and_mean():
    x, y = make_moons(200, noise=0.1, random_state=0)
    build = dense_builder(2, 1, "sigmoid")
    result = cross_validate(lambda seed: build({"hidden_sizes": [16]}, seed), x, y, folds=4, seed=0,
                            epochs=20, learning_rate=0.01)
    assert len(result["folds"]) == 4
    assert result["mean"]["accuracy"] == pytest.approx(np.mean([f["accuracy"] for f in result["folds"]]))
    assert result["mean"]["accuracy"] > 0.85 and result["std"]["accuracy"] >= 0


def test_grid_and_random_spaces():
    assert grid({"a": [1, 2], "b": ["x"]}) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
    draws = random_samples({"lr": {"low": 1e-4, "high": 1e-1, "log": True}, "units": [8, 16]}, 20, seed=1)
    assert all(1e-4 <= d["lr"] <= 1e-1 and d["units"] in (8, 16) for d in draws)
    assert draws == random_samples({"lr": {"low": 1e-4, "high": 1e-1, "log": True}, "units": [8, 16]}, 20, seed=1)
    with pytest.raises(ConfigError, match="non-empty list"):
        grid({"a": []})


def test_an_integer_range_draws_each_whole_number_in_it_equally_often():
    """Uniform draws rounded gave the ends half as often, and {0.2, 0.4} gave 0, outside the range."""
    draws = [d["k"] for d in random_samples({"k": {"low": 1, "high": 3, "integer": True}}, 6000, seed=0)]
    assert set(draws) == {1, 2, 3} and all(type(k) is int for k in draws)
    assert np.bincount(draws)[1:].min() > 1800  # 2000 each; the ends had 1500
    assert {d["k"] for d in random_samples({"k": {"low": 0.2, "high": 1.4, "integer": True}}, 50, seed=0)} == {1}
    logs = [d["k"] for d in random_samples({"k": {"low": 1, "high": 8, "integer": True, "log": True}}, 6000, seed=0)]
    assert set(logs) == set(range(1, 9))
    assert np.bincount(logs)[1] / 6000 == pytest.approx(np.log(3) / np.log(17), abs=0.02)  # the mass of [0.5, 1.5]
    for space, message in (({"k": {"low": 0.2, "high": 0.4, "integer": True}}, "integer range for 'k' holds no whole "
                                                                               "number"),
                           ({"k": {"low": "a", "high": 2}}, "range for 'k' needs numbers low <= high"),
                           ({"k": {"low": 1, "high": float("nan")}}, "range for 'k' needs numbers low <= high")):
        with pytest.raises(ConfigError, match=message):
            random_samples(space, 3, seed=0)


def test_ranking_direction_follows_the_metric():
    trials = [Trial(0, {}, 0.5, {}), Trial(1, {}, 0.9, {}), Trial(2, {}, 0.1, {})]
    assert [t.index for t in rank(trials, "accuracy")] == [1, 0, 2]
    assert [t.index for t in rank(trials, "val_loss")] == [2, 0, 1]


def test_search_on_moons_is_reproducible_and_beats_a_weak_default():
    x, y = make_moons(300, noise=0.15, random_state=1)
    build = dense_builder(2, 1, "sigmoid")
    space = {"hidden_sizes": [[2], [32, 32]], "learning_rate": [0.001, 0.02]}
    first = search(build, x, y, space, folds=3, metric="accuracy", seed=5, fit_defaults={"epochs": 20})
    second = search(build, x, y, space, folds=3, metric="accuracy", seed=5, fit_defaults={"epochs": 20})
    assert [t.params for t in first.trials] == [t.params for t in second.trials]
    assert [t.score for t in first.trials] == [t.score for t in second.trials]
    assert first.best.params == {"hidden_sizes": [32, 32], "learning_rate": 0.02}
    assert first.best.score >= max(t.score for t in first.trials) and first.best.score > 0.95


def test_search_stops_when_asked():
    x, y = make_moons(100, noise=0.1, random_state=0)
    seen = []
    result = search(dense_builder(2, 1, "sigmoid"), x, y, {"learning_rate": [0.01, 0.02, 0.03]},
                    fit_defaults={"epochs": 2}, on_trial=lambda t: seen.append(t) or len(seen) == 2)
    assert len(result.trials) == 2


def test_search_refuses_a_parameter_no_one_takes():
    x, y = make_moons(40, noise=0.1, random_state=0)
    with pytest.raises(ConfigError, match="cannot search 'activations', 'hidden_size'; accepted: hidden_sizes, "
                                          "activation, dropout, weight_init, bias_init, epochs, batch_size"):
        search(dense_builder(2, 1, "sigmoid"), x, y, {"hidden_size": [[4]], "activations": ["tanh"]},
               fit_defaults={"epochs": 1})


def test_search_with_a_builder_that_does_not_list_its_parameters_takes_any_name():
    x, y = make_moons(40, noise=0.1, random_state=0)
    seen = []

    def build(params, seed):
        seen.append(params)
        return dense_builder(2, 1, "sigmoid")({}, seed)

    search(build, x, y, {"width": [4]}, fit_defaults={"epochs": 1})
    assert seen == [{"width": 4}]


@pytest.mark.parametrize("folds", [None, 4])
def test_every_candidate_is_scored_on_the_same_split(folds):
    """Trial i drew its folds (or its hold-out) with seed + i: identical candidates got different scores."""
    x, y = make_moons(40, noise=0.3, random_state=0)
    build = lambda params, seed: dense_builder(2, 1, "sigmoid")({"hidden_sizes": [8]}, 0)  # noqa: E731 (ignores seed)
    result = search(build, x, y, {"l1": [0.0, 0.0, 0.0]}, folds=folds, metric="loss", seed=0,
                    fit_defaults={"epochs": 3})
    assert len({trial.score for trial in result.trials}) == 1
    assert [trial.seed for trial in sorted(result.trials, key=lambda t: t.index)] == [0, 1, 2]  # networks still differ


def test_a_grid_beyond_the_cap_is_refused_before_it_is_built():
    space = {name: list(range(10)) for name in ("a", "b", "c", "d", "e", "f")}
    with pytest.raises(ConfigError, match="the grid has 1000000 combinations; at most 10000: narrow the space or sample "
                                          "it with trials="):
        grid(space)
    assert len(grid({"a": list(range(100)), "b": list(range(100))})) == 10000
    assert len(grid({"a": list(range(100)), "b": list(range(101))}, max_size=None)) == 10100


class Rates(Callback):
    """The learning rate of every epoch, of every run it is given to."""

    def __init__(self):
        self.runs = []

    def on_train_begin(self, progress):
        self.runs.append([])

    def on_epoch_end(self, progress):
        self.runs[-1].append(progress.learning_rate)


def test_every_fold_and_trial_starts_with_fresh_optimizer_schedule_and_early_stopping():
    """A ReduceOnPlateau instance carried its reductions from one fold (or trial) into the next: folds 2 and 3
    started at 0.25, not 0.5; the instances given stay as they were."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 2)), rng.integers(0, 2, 40)
    build = dense_builder(2, 1, "sigmoid")
    schedule, stopper, optimizer = ReduceOnPlateau(patience=1), EarlyStopping(patience=50), Adam(0.5)
    rates = Rates()
    cross_validate(lambda s: build({"hidden_sizes": [4]}, s), x, y, folds=3, epochs=4, seed=0, optimizer=optimizer,
                   schedule=schedule, early_stopping=stopper, callbacks_for_fold=lambda k: [rates])
    assert len(rates.runs) == 3 and [run[0] for run in rates.runs] == [0.5, 0.5, 0.5]
    assert any(rate < 0.5 for run in rates.runs for rate in run)  # the schedule did reduce within a fold
    assert (schedule.best, schedule.reductions, optimizer.t, optimizer.state) == (math.inf, 0, 0, {})
    assert not hasattr(stopper, "key")
    trials = Rates()
    for index in range(2):
        run_trial(lambda params, s: build({"hidden_sizes": [4]}, s), x, y, {}, index, "loss", seed=0,
                  fit_defaults={"epochs": 4, "optimizer": optimizer, "schedule": schedule}, callbacks=[trials])
    assert [run[0] for run in trials.runs] == [0.5, 0.5]


def test_a_hold_out_split_must_leave_samples_on_both_sides():
    """validation_split=0 scored each trial on 1 sample, and 1 raised "inputs hold no samples"."""
    x, y = make_moons(20, noise=0.1, random_state=0)
    build = dense_builder(2, 1, "sigmoid")
    for split in (0, 0.0, 1, 1.5, "0.2", None):
        with pytest.raises(ConfigError, match="validation_split must be a number in \\(0, 1\\)"):
            search(build, x, y, {"l2": [0.0]}, validation_split=split, fit_defaults={"epochs": 1})
    with pytest.raises(ConfigError, match="validation_split=0.99 of 20 samples leaves none to train on"):
        search(build, x, y, {"l2": [0.0]}, validation_split=0.99, fit_defaults={"epochs": 1})
    assert search(build, x, y, {"l2": [0.0]}, validation_split=0.5, fit_defaults={"epochs": 1}).best is not None


def test_cross_validate_takes_callbacks_per_fold():
    """callbacks=[...] raised TypeError: fit got callbacks twice."""
    x, y = make_moons(20, noise=0.1, random_state=0)
    with pytest.raises(ConfigError, match="cross_validate takes callbacks_for_fold"):
        cross_validate(lambda s: dense_builder(2, 1, "sigmoid")({}, s), x, y, folds=2, epochs=1, callbacks=[])
