"""The training loop's guards: what `fit` leaves behind when training diverges."""

import numpy as np
import pytest

from neural_net import Callback, Network, NonFiniteError

rng = np.random.default_rng(0)
X = rng.normal(size=(20, 3))
Y = (X.sum(axis=1) > 0).astype(int)


class _EpochWeights(Callback):
    def __init__(self, net):
        self.net, self.finite = net, []

    def on_epoch_end(self, progress):
        self.finite.append(bool(np.isfinite(self.net._flat).all()))


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_a_step_that_overflows_the_weights_is_undone_even_when_its_loss_was_finite(optimizer):
    # batch = all samples: epoch 1's only step makes the weights Inf, yet the loss it reports (computed
    # before the step) is finite; the epoch must not end with those weights.
    net = Network.from_layer_sizes([3, 4, 2], activations=["relu", "softmax"], seed=0)
    before = net._flat.copy()
    seen = _EpochWeights(net)
    with pytest.raises(NonFiniteError, match="diverged at epoch 1.*restored to the end of epoch 0"):
        net.fit(X, Y, epochs=3, batch_size=20, optimizer=optimizer, learning_rate=1e300, callbacks=[seen])
    assert seen.finite == []  # no epoch ended (so no checkpoint was written) with non-finite weights
    np.testing.assert_array_equal(net._flat, before)
    assert net.epochs_trained == 0
    assert all(np.isfinite(state).all() for state in net.optimizer.state.values())
