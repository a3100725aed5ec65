"""The core learns: XOR, scikit-learn's moons and digits, on data made offline."""
import numpy as np
from sklearn.datasets import load_digits, make_moons
from sklearn.model_selection import train_test_split

from neural_net import Dense, Network


def test_xor():
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float)
    y = np.array([0, 1, 1, 0], dtype=float)
    net = Network.from_layer_sizes([2, 8, 1], activations=["tanh", "sigmoid"], seed=0)
    net.fit(x, y, epochs=300, batch_size=4, learning_rate=0.05)
    np.testing.assert_array_equal(net.predict_classes(x), y)
    assert net.evaluate(x, y)["loss"] < 0.05


def test_moons_at_least_99_percent_held_out():
    x, y = make_moons(1000, noise=0.1, random_state=0)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0)
    net = Network(input_size=2, seed=0)
    net.add(Dense(32, activation="relu")).add(Dense(32, activation="relu")).add(Dense(1, activation="sigmoid"))
    net.fit(x_train, y_train, epochs=60, batch_size=32, learning_rate=0.01)
    assert net.evaluate(x_test, y_test)["accuracy"] >= 0.99


def test_digits_at_least_97_percent_held_out():
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    net = Network.from_layer_sizes([64, 128, 64, 10], activations=["relu", "relu", "softmax"],
                                   dropout=0.1, seed=0)
    history = net.fit(x_train, y_train, epochs=40, batch_size=32, learning_rate=0.002, schedule="cosine",
                      validation_data=(x_test, y_test))
    result = net.evaluate(x_test, y_test)
    assert result["accuracy"] >= 0.97, history.epochs[-1]
    assert np.trace(result["confusion_matrix"]) == round(result["accuracy"] * len(y_test))
