"""Property-based tests of the core: random architectures, shapes and values."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from neural_net import Network, activations
from neural_net.errors import NeuralNetError

HIDDEN = [name for name in activations.names() if name != "softmax"]


@st.composite
def networks(draw):
    sizes = draw(st.lists(st.integers(1, 12), min_size=2, max_size=5))
    acts = draw(st.lists(st.sampled_from(HIDDEN), min_size=len(sizes) - 1, max_size=len(sizes) - 1))
    if sizes[-1] > 1 and draw(st.booleans()):
        acts[-1] = "softmax"
    dtype = draw(st.sampled_from(["float32", "float64"]))
    return Network.from_layer_sizes(sizes, activations=acts, seed=draw(st.integers(0, 2**32 - 1)), dtype=dtype)


finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(networks(), st.integers(1, 20), st.data())
def test_predict_is_finite_with_the_right_shape(net, batch, data):
    x = data.draw(arrays(np.float64, (batch, net.input_size), elements=finite))
    out = net.predict(x)
    assert out.shape == (batch, net.output_size) and out.dtype == net.dtype
    assert np.all(np.isfinite(out))
    if net.layers[-1].activation.name == "softmax":
        np.testing.assert_allclose(out.sum(axis=1), 1, rtol=1e-4)


@settings(max_examples=40, deadline=None)
@given(networks(), st.integers(1, 10), st.data())
def test_gradients_have_the_shape_of_the_weights(net, batch, data):
    x = data.draw(arrays(np.float64, (batch, net.input_size), elements=st.floats(-3, 3)))
    y = net.predict(x)  # valid targets for any loss: mse/binary on (0,1) or softmax rows
    if net.loss_name == "binary_cross_entropy":
        y = (y > 0.5).astype(float)
    loss, grads = net.gradients(x, y)
    assert np.isfinite(loss)
    for g, w in zip(grads, net.get_weights()):
        assert g["weights"].shape == w["weights"].shape and g["biases"].shape == w["biases"].shape


@settings(max_examples=40, deadline=None)
@given(networks(), st.data())
def test_save_load_round_trip(net, data):
    x = data.draw(arrays(np.float64, (3, net.input_size), elements=st.floats(-3, 3)))
    loaded = Network.from_bytes(net.to_bytes())
    np.testing.assert_array_equal(loaded.predict(x), net.predict(x))
    assert loaded.get_config() == net.get_config()


@settings(max_examples=30, deadline=None)
@given(networks(), st.integers(1, 30), st.integers(1, 8), st.data())
def test_fit_ends_finite_or_raises_a_core_error(net, n, batch_size, data):
    x = data.draw(arrays(np.float64, (n, net.input_size), elements=finite))
    y = data.draw(arrays(np.float64, (n, net.output_size), elements=st.floats(0, 1)))
    try:
        history = net.fit(x, y, epochs=2, batch_size=batch_size, loss="mse")
    except NeuralNetError:
        assert np.all(np.isfinite(net._flat))
        return
    assert len(history) == 2 and np.all(np.isfinite(net._flat))


@settings(max_examples=50, deadline=None)
@given(st.one_of(st.integers(-5, 0), st.floats(allow_nan=True), st.text(max_size=3), st.none()))
def test_bad_sizes_raise_core_errors(bad):
    try:
        Network.from_layer_sizes([2, bad, 1])
    except NeuralNetError:
        return
    raise AssertionError(f"layer size {bad!r} was accepted")
