"""Classification and regression metrics on NumPy arrays; every result is a plain Python number/list.

Classification takes integer labels `y_true`, `y_pred` of shape (batch,). Precision, recall and F1 are
macro averages over the classes that appear in `y_true` or `y_pred` (a class with no predictions has
precision 0). ROC AUC is the probability that a random positive scores above a random negative
(ties count one half), computed from ranks.
"""
import numpy as np

# What `Network.evaluate` reports besides "loss", per task (`Network.task`); confusion_matrix aside.
BY_TASK = {
    "multiclass": ("accuracy", "precision", "recall", "f1"),
    "binary": ("accuracy", "precision", "recall", "f1", "roc_auc"),
    "multilabel": ("accuracy",),
    "regression": ("mae", "rmse", "r2", "pearson_r"),
}


LOWER_IS_BETTER = ("loss", "mae", "rmse")  # the others (accuracy, f1, r2, pearson_r, ...): higher is better


def higher_is_better(metric):
    """Whether a larger value of `metric` ("accuracy", "val_loss", ...) is better."""
    return metric.removeprefix("val_") not in LOWER_IS_BETTER


def names(task):
    """The metrics `Network.evaluate` reports for a task, "loss" first."""
    return ("loss", *BY_TASK[task])


def accuracy(y_true, y_pred):
    return float(np.mean(y_true == y_pred)) if len(y_true) else 0.0


def confusion_matrix(y_true, y_pred, n_classes):
    """Rows are true classes, columns predicted classes."""
    counts = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes)


def precision_recall_f1(y_true, y_pred, n_classes):
    cm = confusion_matrix(y_true, y_pred, n_classes).astype(np.float64)
    true_pos = np.diag(cm)
    predicted = cm.sum(axis=0)
    actual = cm.sum(axis=1)
    present = (predicted + actual) > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, true_pos / predicted, 0.0)
        recall = np.where(actual > 0, true_pos / actual, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    if not present.any():
        return 0.0, 0.0, 0.0
    return tuple(float(m[present].mean()) for m in (precision, recall, f1))


def roc_auc(y_true, scores):
    """Binary ROC AUC from 0/1 labels and scores; None when only one class is present."""
    y_true = np.asarray(y_true).astype(bool)
    n_pos = int(y_true.sum())
    n_neg = y_true.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = np.asarray(scores)[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(average, counts)
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def classification_metrics(y_true, y_pred, n_classes, scores=None):
    precision, recall, f1 = precision_recall_f1(y_true, y_pred, n_classes)
    result = {
        "accuracy": accuracy(y_true, y_pred),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "confusion_matrix": confusion_matrix(y_true, y_pred, n_classes).tolist(),
    }
    if scores is not None and n_classes == 2:
        result["roc_auc"] = roc_auc(y_true, scores)
    return result


def regression_metrics(y_true, y_pred):
    """MAE and RMSE over all elements; R^2 (1 - SS_res / SS_tot) and Pearson r per output column, then their mean
    (scikit-learn's r2_score "uniform_average", Keras' R2Score). A column where they are undefined (constant
    targets; for r, constant predictions too) is left out; None when every column is."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_true = y_true.reshape(y_true.shape[0], -1) if y_true.ndim else y_true.reshape(1, 1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(y_true.shape)
    error = y_pred - y_true
    if not error.size:
        return {"mae": 0.0, "rmse": 0.0, "r2": None, "pearson_r": None}
    true_dev, pred_dev = y_true - y_true.mean(axis=0), y_pred - y_pred.mean(axis=0)
    varies = np.ptp(y_true, axis=0) > 0  # exact, where a mean's rounding would leave a constant a tiny spread
    both_vary = varies & (np.ptp(y_pred, axis=0) > 0)
    with np.errstate(divide="ignore", invalid="ignore", under="ignore"):
        r2 = 1.0 - np.sum(error ** 2, axis=0) / np.sum(true_dev ** 2, axis=0)
        r = np.mean(true_dev * pred_dev, axis=0) / (y_true.std(axis=0) * y_pred.std(axis=0))
    # a spread too small to square in float64 (targets 0 and 1e-170) leaves the ratio undefined too
    varies, both_vary = varies & np.isfinite(r2), both_vary & np.isfinite(r)
    return {
        "mae": float(np.abs(error).mean()),
        "rmse": float(np.sqrt(np.mean(error ** 2))),
        "r2": float(r2[varies].mean()) if varies.any() else None,
        "pearson_r": float(r[both_vary].mean()) if both_vary.any() else None,
    }
