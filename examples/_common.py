"""Shared by the examples: command-line options, a fresh model, chunked uploads and PNG plots."""
import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as `python examples/x.py` from anywhere

from client import ApiError, Client  # noqa: E402, F401 (Client is re-exported to the examples)

OUT = Path(__file__).resolve().parent / "out"


def parse_args(description, **defaults):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--url", default=os.environ.get("NN_URL", "http://127.0.0.1:8000"), help="service URL")
    parser.add_argument("--api-key", default=os.environ.get("NN_API_KEY"), help="API key, if the service needs one")
    parser.add_argument("--epochs", type=int, default=defaults.get("epochs", 20))
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def fresh_model(api, model_id, layer_sizes, **options):
    """Create `model_id`, replacing a model of that id left by an earlier run."""
    try:
        api.delete_model(model_id)
    except ApiError as error:
        if error.status_code != 404:
            raise
    return api.create_model(layer_sizes, model_id=model_id, **options)


def upload(api, model_id, x, y, chunk=2000):
    """Append samples to the training buffer in chunks that respect the request size limits."""
    size = 0
    for start in range(0, len(x), chunk):
        size = api.add_samples(model_id, x[start:start + chunk], y[start:start + chunk])
    return size


def evaluate(api, model_id, x, y, chunk=5000):
    """Metrics over all of x, y (several requests for large sets; sample-weighted)."""
    import numpy as np

    if len(x) <= chunk:
        return api.evaluate(model_id, x, y)["metrics"]
    parts = [(api.evaluate(model_id, x[i:i + chunk], y[i:i + chunk])["metrics"], len(x[i:i + chunk]))
             for i in range(0, len(x), chunk)]
    total = sum(n for _, n in parts)
    merged = {"loss": sum(m["loss"] * n for m, n in parts) / total,
              "accuracy": sum(m["accuracy"] * n for m, n in parts) / total}
    if "confusion_matrix" in parts[0][0]:
        merged["confusion_matrix"] = np.sum([m["confusion_matrix"] for m, _ in parts], axis=0).tolist()
    return merged


@functools.cache
def _pyplot():
    """matplotlib.pyplot, or None with a one-line note: the plots are extras (pip install matplotlib), and an
    example without them still trains and prints its result."""
    try:
        import matplotlib
    except ImportError:
        print("(no plots: pip install matplotlib to get the PNG curves in examples/out/)", file=sys.stderr)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_history(name, history, metric="accuracy"):
    """Loss (and validation loss) per epoch, plus `metric` when present, to out/<name>_curves.png (None without
    matplotlib)."""
    plt = _pyplot()
    if plt is None:
        return None
    OUT.mkdir(exist_ok=True)
    epochs = [record["epoch"] for record in history]
    panels = [("loss", ["loss", "val_loss"])]
    if any(metric in record for record in history):
        panels.append((metric, [metric, f"val_{metric}"]))
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for axis, (title, keys) in zip(axes[0], panels):
        for key in keys:
            values = [record.get(key) for record in history]
            if any(v is not None for v in values):
                axis.plot(epochs, values, label=key)
        axis.set_xlabel("epoch")
        axis.set_title(f"{name}: {title}")
        axis.legend()
        axis.grid(alpha=0.3)
    figure.tight_layout()
    path = OUT / f"{name}_curves.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_confusion(name, matrix):
    plt = _pyplot()
    if plt is None:
        return None
    OUT.mkdir(exist_ok=True)
    size = len(matrix)
    figure, axis = plt.subplots(figsize=(1.2 + 0.45 * size, 1 + 0.45 * size))
    image = axis.imshow(matrix, cmap="Blues")
    for i in range(size):
        for j in range(size):
            axis.text(j, i, matrix[i][j], ha="center", va="center", fontsize=8,
                      color="white" if matrix[i][j] > max(map(max, matrix)) / 2 else "black")
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(f"{name}: confusion matrix")
    figure.colorbar(image)
    figure.tight_layout()
    path = OUT / f"{name}_confusion.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def report(name, result, seed_claim=None):
    """Print one line and write out/<name>.json."""
    OUT.mkdir(exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(result, indent=2))
    parts = [f"{key}={value:.4f}" if isinstance(value, float) else f"{key}={value}" for key, value in result.items()
             if not isinstance(value, (list, dict))]
    print(f"{name}: " + " ".join(parts) + (f"  (seed reported {seed_claim})" if seed_claim else ""))


def train_and_wait(api, model_id, **hyper):
    started = time.perf_counter()
    job = api.train(model_id, **hyper)
    record = job.wait(progress=True)
    if record["status"] != "succeeded":
        raise SystemExit(f"job {record['job_id']} ended {record['status']}: {record.get('error')}")
    return record, time.perf_counter() - started
