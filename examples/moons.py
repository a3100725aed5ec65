"""Moons (the vornao seed: about 99% accuracy on 3000 samples): train over HTTP, test on held-out data.

    python examples/moons.py [--url http://127.0.0.1:8000]
"""
from sklearn.datasets import make_moons
from sklearn.model_selection import train_test_split

from _common import Client, evaluate, fresh_model, parse_args, plot_confusion, plot_history, report, train_and_wait, upload

args = parse_args(__doc__, epochs=60)
x, y = make_moons(3000, noise=0.1, random_state=args.seed)
x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=args.seed)
with Client(args.url, api_key=args.api_key) as api:
    fresh_model(api, "example-moons", [2, 32, 32, 1], activations=["relu", "relu", "sigmoid"], seed=args.seed)
    upload(api, "example-moons", x_train, y_train)
    job, seconds = train_and_wait(api, "example-moons", epochs=args.epochs, batch_size=32, learning_rate=0.01,
                                  validation_split=0.1, seed=args.seed)
    metrics = evaluate(api, "example-moons", x_test, y_test)
    plot_history("moons", job["history"])
    plot_confusion("moons", metrics["confusion_matrix"])
    report("moons", {"test_accuracy": metrics["accuracy"], "test_loss": metrics["loss"], "epochs": args.epochs,
                     "train_seconds": round(seconds, 1)}, seed_claim="about 99%")
