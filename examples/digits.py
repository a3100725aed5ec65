"""scikit-learn digits (8x8 images; what one seed's "MNIST" really was): train over HTTP, test held out.

    python examples/digits.py [--url http://127.0.0.1:8000]
"""
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from _common import Client, evaluate, fresh_model, parse_args, plot_confusion, plot_history, report, train_and_wait, upload

args = parse_args(__doc__, epochs=40)
x, y = load_digits(return_X_y=True)
x_train, x_test, y_train, y_test = train_test_split(x / 16.0, y, test_size=0.25, random_state=args.seed, stratify=y)
with Client(args.url, api_key=args.api_key) as api:
    fresh_model(api, "example-digits", [64, 128, 64, 10], activations=["relu", "relu", "softmax"],
                dropout=[0.1, 0.1, 0.0], seed=args.seed)
    upload(api, "example-digits", x_train, y_train)
    job, seconds = train_and_wait(api, "example-digits", epochs=args.epochs, batch_size=32, learning_rate=0.002,
                                  schedule="cosine", validation_split=0.1, seed=args.seed)
    metrics = evaluate(api, "example-digits", x_test, y_test)
    plot_history("digits", job["history"])
    plot_confusion("digits", metrics["confusion_matrix"])
    report("digits", {"test_accuracy": metrics["accuracy"], "test_loss": metrics["loss"], "epochs": args.epochs,
                      "train_seconds": round(seconds, 1)})
