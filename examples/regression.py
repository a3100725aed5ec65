"""Regression: Friedman #1 (y = 10 sin(pi x1 x2) + 20 (x3 - 0.5)^2 + 10 x4 + 5 x5 + noise), RMSE and R^2.

    python examples/regression.py [--url http://127.0.0.1:8000]
"""
from sklearn.datasets import make_friedman1
from sklearn.model_selection import train_test_split

from _common import Client, fresh_model, parse_args, plot_history, report, train_and_wait, upload

args = parse_args(__doc__, epochs=150)
x, y = make_friedman1(4000, noise=0.5, random_state=args.seed)
mean, std = y.mean(), y.std()
x_train, x_test, y_train, y_test = train_test_split(x, (y - mean) / std, test_size=0.25, random_state=args.seed)
with Client(args.url, api_key=args.api_key) as api:
    fresh_model(api, "example-regression", [10, 64, 64, 1], activations=["tanh", "tanh", "linear"], seed=args.seed)
    upload(api, "example-regression", x_train, y_train)
    job, seconds = train_and_wait(api, "example-regression", epochs=args.epochs, batch_size=32, learning_rate=0.003,
                                  schedule="cosine", validation_split=0.1, seed=args.seed)
    metrics = api.evaluate("example-regression", x_test, y_test)["metrics"]
    plot_history("regression", job["history"], metric="r2")
    report("regression", {"test_rmse": metrics["rmse"] * std, "test_r2": metrics["r2"], "noise_rmse": 0.5,
                          "epochs": args.epochs, "train_seconds": round(seconds, 1)})
