"""`Network`: a sequence of layers with training, evaluation, introspection and saving.

The training loop lives in `training.py` (`Run`) and the file format in `serialization.py`.

Every trainable parameter lives in one flat array (`self._flat`; weights of all layers first, then
biases and other parameters) with a twin for gradients; layers see views into both. An optimiser
step, gradient clipping and l1/l2 are therefore a few whole-array operations.
"""
import math

import numpy as np

from . import losses as loss_registry
from . import metrics
from . import optimizers as optimizer_registry
from . import schedules as schedule_registry
from . import serialization
from .errors import ConfigError, ShapeError
from .layers import WEIGHT, BatchNorm, Dense, Layer
from .layers import from_config as layer_from_config
from .losses import _as_float_array
from .losses import classes as _classes
from .losses import task as _task
from .registry import is_number, is_whole
from .training import EarlyStopping, Run, check_training_options, validation_size

DTYPES = ("float32", "float64")
MAX_CLASS_NAME_LENGTH = 200  # characters in one class name
PREDICT_BATCH = 4096  # rows per forward pass of predict and evaluate (batch_size=None)


class Network:
    """A feed-forward network built layer by layer (Keras style) or from a list of sizes.

    >>> net = Network(input_size=2, seed=0)
    >>> net.add(Dense(16, activation="relu")).add(Dense(1, activation="sigmoid"))
    """

    def __init__(self, input_size, seed=None, dtype="float32", loss="auto", class_names=None):
        if not is_whole(input_size) or input_size < 1:
            raise ConfigError(f"input_size must be a positive integer; received input_size={input_size!r}")
        if _dtype_name(dtype) not in DTYPES:
            raise ConfigError(f"dtype must be one of: {', '.join(DTYPES)} (a name, np.float32 or np.dtype(...)); "
                              f"received dtype={dtype!r}")
        if seed is not None and (not is_whole(seed) or seed < 0):
            raise ConfigError(f"seed must be a non-negative integer or None; received seed={seed!r}")
        self.input_size = int(input_size)
        self.dtype = np.dtype(_dtype_name(dtype))
        self.seed = None if seed is None else int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.layers = []
        self._loss_spec = loss if isinstance(loss, (str, dict)) or loss is None else loss.get_config()
        loss_registry.get(self._loss_spec) if self._loss_spec not in (None, "auto") else None
        self.class_names = _class_names(class_names)
        self.optimizer = None
        self.epochs_trained = 0
        self._flat = self._grad_flat = None
        self._n_weights = 0

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_layer_sizes(cls, layer_sizes, activations="relu", weight_init="auto", bias_init="zeros",
                         loss="auto", dropout=0.0, seed=None, dtype="float32", class_names=None):
        """Dense layers from sizes [n_in, h1, ..., n_out]; `activations` is one name for every layer or
        one per layer after the input; `dropout` is one rate for every hidden layer or one per layer;
        `class_names` names the classes of a classifier (see `check_class_names`)."""
        sizes = list(layer_sizes) if isinstance(layer_sizes, (list, tuple)) else None
        if not sizes or len(sizes) < 2:
            raise ConfigError(f"layer_sizes needs at least an input and an output size; received {layer_sizes!r}")
        n_layers = len(sizes) - 1
        activations = _per_layer(activations, n_layers, "activations")
        if isinstance(dropout, (list, tuple)):
            dropouts = _per_layer(list(dropout), n_layers, "dropout")
        else:
            dropouts = [dropout] * (n_layers - 1) + [0.0]
        net = cls(sizes[0], seed=seed, dtype=dtype, loss=loss, class_names=class_names)
        for units, activation, rate in zip(sizes[1:], activations, dropouts):
            net.add(Dense(units, activation=activation, weight_init=weight_init, bias_init=bias_init, dropout=rate))
        net._get_loss(None)  # a loss the output cannot take is refused now, not at the first fit
        net.check_class_names()
        return net

    def add(self, layer):
        """Append a layer (a new one: it belongs to one network, once); its parameters are initialised at once."""
        if not isinstance(layer, Layer):
            raise ConfigError(f"add() expects a Dense or BatchNorm layer; received {layer!r}")
        if layer.n_in is not None:  # set below, by the add that made it part of a network
            raise ConfigError("this layer already belongs to a network; create a new layer for each place it goes")
        n_in = self.layers[-1].units if self.layers else self.input_size
        layer.n_in = n_in
        if isinstance(layer, BatchNorm):
            layer.build_units(n_in)
            layer.init_buffers(self.dtype)
        layer.params = {name: np.empty(shape, self.dtype) for name, shape, _ in layer.param_specs()}
        layer.initialize(self.rng)
        self.layers.append(layer)
        self._flatten()
        return self

    def _flatten(self):
        """Place every parameter in one flat array (weights first) and point layers at views."""
        specs = [(layer, name, shape, kind) for layer in self.layers for name, shape, kind in layer.param_specs()]
        specs.sort(key=lambda spec: spec[3] != WEIGHT)  # stable: weights first, in layer order
        total = sum(int(np.prod(shape)) for _, _, shape, _ in specs)
        flat, grad_flat = np.empty(total, self.dtype), np.zeros(total, self.dtype)
        offset = 0
        self._n_weights = 0
        for layer, name, shape, kind in specs:
            size = int(np.prod(shape))
            view = flat[offset:offset + size].reshape(shape)
            view[...] = layer.params[name]
            layer.params[name] = view
            layer.grads[name] = grad_flat[offset:offset + size].reshape(shape)
            offset += size
            self._n_weights += size if kind == WEIGHT else 0
        self._flat, self._grad_flat = flat, grad_flat
        if self.optimizer is not None and not self.optimizer.is_bound_to(total, self.dtype):
            self.optimizer = None

    def _ready(self):
        if not self.layers:
            raise ConfigError("the network has no layers; add at least one Dense layer")
        if self.layers[-1].dropout:
            raise ConfigError("the output layer cannot have dropout; set dropout=0 on the last layer")

    # ------------------------------------------------------------------ properties
    @property
    def output_size(self):
        return self.layers[-1].units if self.layers else None

    @property
    def layer_sizes(self):
        return [self.input_size] + [layer.units for layer in self.layers if isinstance(layer, Dense)]

    @property
    def n_params(self):
        return sum(p.size for layer in self.layers for p in layer.params.values())

    @property
    def loss(self):
        """The resolved default loss ("auto" picks by the output layer), unchecked against the output: what the
        network reports of itself, so one saved before the checks predicts; fit and evaluate check it."""
        self._ready()
        return loss_registry.resolve(self._loss_spec, self.layers[-1].activation.name, self.output_size, check=False)

    @property
    def loss_name(self):
        return self.loss.name

    @property
    def task(self):
        """"multiclass", "binary", "multilabel" or "regression", from the default loss."""
        return _task(self.loss, self.output_size)

    # ------------------------------------------------------------------ inputs
    def _inputs(self, x):
        x = _as_float_array(x, self.dtype, "inputs")
        if x.ndim == 1 and x.shape[0] == self.input_size:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.input_size:
            raise ShapeError(f"inputs must have shape (batch, {self.input_size}) or ({self.input_size},); received {x.shape}")
        if x.shape[0] == 0:
            raise ShapeError("inputs hold no samples; send at least one row")
        return x

    def _targets(self, y, loss, n):
        y = loss.prepare(y, self.output_size, self.dtype)
        if y.shape[0] != n:
            raise ShapeError(f"inputs hold {n} samples but targets hold {y.shape[0]}; send one target per input")
        return y

    def _get_loss(self, loss):
        self._ready()
        return loss_registry.resolve(self._loss_spec if loss is None else loss, self.layers[-1].activation.name,
                                     self.output_size)

    # ------------------------------------------------------------------ inference
    def _forward(self, x, training=False, dropout=True, update_stats=True, trace=None):
        for layer in self.layers:
            x = layer.forward(x, training=training, dropout=dropout, rng=self.rng, update_stats=update_stats, trace=trace)
        return x

    def forward(self, x, return_activations=False):
        """Inference pass. With return_activations, also [{"z": pre-activation, "a": activation}] per layer."""
        self._ready()
        trace = [] if return_activations else None
        out = self._forward(self._inputs(x), trace=trace)
        return out if trace is None else (out, trace)

    def predict(self, x, batch_size=None):
        """Outputs (batch, n_out) for inputs (batch, n_in) or one vector (n_in,), batch_size rows at a time."""
        if batch_size is None:
            batch_size = PREDICT_BATCH
        elif not is_whole(batch_size) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive whole number or None; received batch_size={batch_size!r}")
        self._ready()
        x = self._inputs(x)
        if x.shape[0] <= batch_size:
            return self._forward(x)
        return np.concatenate([self._forward(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])

    def predict_classes(self, x, batch_size=None):
        """Class index per sample (batch,): argmax for multi-class, p > 0.5 (or logit > 0) for binary; for
        multilabel (sigmoid outputs, binary_cross_entropy) 0/1 per label (batch, n_out) at the same threshold."""
        task = self.task
        if task == "regression":
            hint = ("; for a 0/1 per sigmoid output, give loss='binary_cross_entropy' (multilabel)"
                    if self.layers[-1].activation.name == "sigmoid" else "")
            raise ConfigError(f"predict_classes is for classifiers; this network's task is regression (loss "
                              f"{self.loss_name}): use predict{hint}")
        out = self.predict(x, batch_size)
        if task == "multilabel":
            return (out > (0.0 if self.loss.from_logits else 0.5)).astype(np.intp)
        return _classes(out, self.loss)

    def predict_labels(self, x):
        """Class name per sample (`class_names[predict_classes(x)]`), like scikit-learn's `classes_[argmax]`."""
        if self.class_names is None:
            raise ConfigError("the network has no class_names; pass class_names=[...] when building it, "
                              "or use predict_classes for class indices")
        self.check_class_names()
        return [self.class_names[k] for k in self.predict_classes(x)]

    def check_class_names(self):
        """Raises ConfigError unless `class_names` is None or names each class of a classifier: one name per
        output for multiclass (softmax, cross_entropy), two (class 0, class 1) for binary (one sigmoid output)."""
        if self.class_names is None:
            return
        task = self.task
        if task not in ("multiclass", "binary"):
            raise ConfigError(f"class_names are for classifiers (a softmax output, or one sigmoid output); this network's "
                              f"task is {task}, so leave class_names out")
        n_classes = self.output_size if task == "multiclass" else 2
        if len(self.class_names) != n_classes:
            what = f"one per output ({n_classes})" if task == "multiclass" else "2 (for class 0 and class 1 of the one sigmoid output)"
            raise ConfigError(f"class_names holds {len(self.class_names)} names; this {task} network needs {what}")

    # ------------------------------------------------------------------ gradients
    def _output_backward(self, out, y, loss):
        """Loss value and back-propagation from the output; fills the flat gradient array."""
        last = self.layers[-1]
        if _fused(loss, last):
            value = loss.value_from_logits(last.z, y)
            grad = loss.fused_gradient(out, y, out=last.output_grad_buffer(out))
            grad_is_dz = True
        else:
            value = loss.value(out, y)
            grad, grad_is_dz = loss.gradient(out, y), False
        for index in range(len(self.layers) - 1, -1, -1):
            grad = self.layers[index].backward(grad, need_input_grad=index > 0, grad_is_dz=grad_is_dz)
            grad_is_dz = False
        return value

    def _regularize(self, l1, l2):
        """Add the l1/l2 penalty's gradient to the weights' gradients; return the penalty."""
        if not (l1 or l2):
            return 0.0
        weights, grads = self._flat[:self._n_weights], self._grad_flat[:self._n_weights]
        penalty = 0.0
        if l1:
            penalty += l1 * float(np.abs(weights).sum())
            grads += l1 * np.sign(weights)
        if l2:
            penalty += l2 * float(np.vdot(weights, weights))
            grads += (2.0 * l2) * weights
        return penalty

    def gradients(self, x, y, loss=None, l1=0.0, l2=0.0):
        """(loss, grads): the loss of a training-mode forward pass without dropout (batch statistics
        for BatchNorm, running statistics untouched), plus l1 * sum|w| + l2 * sum w^2 over weights,
        and its gradient as [{"weights": (n_in, n_out), "biases": (n_out,)}] per Dense layer (no
        "biases" for a layer with use_bias=False)."""
        loss = self._get_loss(loss)
        x = self._inputs(x)
        y = self._targets(y, loss, x.shape[0])
        out = self._forward(x, training=True, dropout=False, update_stats=False)
        value = self._output_backward(out, y, loss) + self._regularize(l1, l2)
        grads = [{key: grad.copy() for key, grad in layer.grads.items()}
                 for layer in self.layers if isinstance(layer, Dense)]
        return value, grads

    # ------------------------------------------------------------------ weights
    def get_weights(self):
        """[{"weights": (n_in, n_out), "biases": (n_out,)}] per Dense layer (copies; no "biases" for a
        layer with use_bias=False)."""
        return [{key: param.copy() for key, param in layer.params.items()}
                for layer in self.layers if isinstance(layer, Dense)]

    def set_weights(self, layers):
        """Replace every Dense layer's weights and biases; shapes are checked before anything changes."""
        dense = [layer for layer in self.layers if isinstance(layer, Dense)]
        if not isinstance(layers, (list, tuple)) or len(layers) != len(dense):
            raise ShapeError(f"expected weights for {len(dense)} dense layers; received {len(layers) if isinstance(layers, (list, tuple)) else type(layers).__name__}")
        arrays = []
        for index, (layer, given) in enumerate(zip(dense, layers)):
            keys = list(layer.params)
            if not isinstance(given, dict):
                what = "'weights' and 'biases'" if layer.use_bias else "'weights' only (the layer has use_bias=False)"
                raise ShapeError(f"layer {index}: expected a dict with keys {what}; received {type(given).__name__}")
            for key in keys:
                if key not in given:  # biases null over HTTP said "expected a dict with keys ...", which it was
                    raise ShapeError(f"layer {index}: {key!r} is missing; the layer has {key} of shape "
                                     f"{layer.params[key].shape}: send them")
            for key in set(given) - set(keys):
                hint = " (the layer has use_bias=False): leave them out" if key == "biases" else ""
                raise ShapeError(f"layer {index}: {key!r} is not a parameter of the layer{hint}; it takes "
                                 + " and ".join(map(repr, keys)))
            for key in keys:
                array = _as_float_array(given[key], self.dtype, f"layer {index} {key}")
                expected = layer.params[key].shape
                if array.shape != expected:
                    raise ShapeError(f"layer {index} {key}: expected shape {expected}; received {array.shape}")
                arrays.append((layer.params[key], array))
        for target, array in arrays:
            target[...] = array

    def set_dropout(self, rates):
        """Set every layer's dropout rate: one number for all hidden layers (the output layer keeps 0)
        or one per layer. Returns the previous rates, so a caller can put them back."""
        previous = [layer.dropout for layer in self.layers]
        rates = list(rates) if isinstance(rates, (list, tuple)) else [rates] * (len(self.layers) - 1) + [0.0]
        if len(rates) != len(self.layers):
            raise ConfigError(f"dropout needs one rate per layer ({len(self.layers)}); received {len(rates)}")
        for index, rate in enumerate(rates):
            if not (is_number(rate) and 0.0 <= rate < 1.0):
                raise ConfigError(f"dropout must be a number in [0, 1); received {rate!r} for layer {index}")
        if rates[-1]:
            raise ConfigError("the output layer cannot have dropout; set dropout=0 on the last layer")
        for layer, rate in zip(self.layers, rates):
            layer.dropout = float(rate)
            layer.clear_workspaces()  # buffers for dropout masks are sized per rate
        return previous

    def reseed(self, seed):
        """Restart the generator used for shuffling and dropout (not the weights) from `seed`."""
        self.rng = np.random.default_rng(seed)

    def named_parameters(self):
        """{"layers.0.weights": array view, ...} for every parameter."""
        return {f"layers.{i}.{key}": value for i, layer in enumerate(self.layers) for key, value in layer.params.items()}

    # ------------------------------------------------------------------ training
    def _get_optimizer(self, optimizer, learning_rate):
        candidate = optimizer_registry.resolve(optimizer, learning_rate)
        current = self.optimizer
        by_name = candidate is not optimizer  # built from a name or config dict, not an instance given
        if current is not None and (candidate is current or by_name and current.get_config() == candidate.get_config()):
            return current  # the same instance, or the same name and settings: keep its state (resume)
        candidate.bind(self._flat.size, self.dtype, decay_size=self._n_weights, owner=self)
        self.optimizer = candidate
        return candidate

    def fit(self, x, y, epochs=10, batch_size=32, optimizer="adam", learning_rate=None, loss=None,
            validation_data=None, validation_split=0.0, shuffle=True, l1=0.0, l2=0.0, schedule=None,
            schedule_options=None, early_stopping=None, clip_norm=None, callbacks=None, initial_epoch=0):
        """Mini-batch training for epochs initial_epoch+1 .. epochs; returns a `History`.

        x: (n, n_in); y: (n, n_out), or integer labels (n,) for cross_entropy. `validation_split`
        holds out the last fraction of the samples (before shuffling; no randomness used).
        Calling fit again with the optimizer's name and settings, or the same instance, continues with its
        state (moments, step count). So a run of E epochs saved after epoch k and resumed with fit(epochs=E,
        initial_epoch=k) ends as the run that was never interrupted, even across save/load, when ReduceOnPlateau
        and EarlyStopping go on as well (the same instances, or rebuilt with `replay` / `resume`).
        fit(epochs=2) then fit(epochs=4, initial_epoch=2) is a run of 2 epochs and then more: it equals
        fit(epochs=4) only when the schedule does not depend on the total epochs (cosine does).
        Another optimizer instance replaces the network's and starts from zero state; an instance holds the
        state of one network, so passing one that another network trains with is a ConfigError.
        Raises NonFiniteError (weights restored to the end of the last finite epoch) if the loss
        becomes NaN or Inf.
        """
        loss = self._get_loss(loss)
        x = self._inputs(x)
        y = self._targets(y, loss, x.shape[0])
        check_training_options(epochs, batch_size, validation_split, l1, l2, clip_norm, initial_epoch, callbacks, shuffle)
        if validation_data is not None:
            if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
                raise ConfigError("validation_data must be a pair (x_val, y_val)")
            x_val = self._inputs(validation_data[0])
            y_val = self._targets(validation_data[1], loss, x_val.shape[0])
        elif validation_split:
            n_val = validation_size(x.shape[0], validation_split)
            x, x_val, y, y_val = x[:-n_val], x[-n_val:], y[:-n_val], y[-n_val:]
        else:
            x_val = y_val = None
        schedule = schedule_registry.resolve(schedule, schedule_options)
        stopper = EarlyStopping.coerce(early_stopping)
        optimizer = self._get_optimizer(optimizer, learning_rate)
        return Run(self, x, y, x_val, y_val, loss, optimizer, schedule, stopper, callbacks or [],
                    epochs, batch_size, shuffle, l1, l2, clip_norm, initial_epoch).train()

    def _train_step(self, xb, yb, loss, optimizer, lr, l1, l2, clip_norm):
        out = self._forward(xb, training=True)
        value = self._output_backward(out, yb, loss) + self._regularize(l1, l2)
        if clip_norm:
            norm = math.sqrt(float(np.vdot(self._grad_flat, self._grad_flat)))
            if norm > clip_norm:
                self._grad_flat *= clip_norm / norm
        optimizer.step(self._flat, self._grad_flat, lr)
        return value, out

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, x, y, loss=None):
        """{"loss", ...metrics}: accuracy, precision, recall, f1 (macro), confusion_matrix (and
        roc_auc for binary) for classifiers; mae, rmse, r2, pearson_r for regression."""
        loss = self._get_loss(loss)
        x = self._inputs(x)
        y = self._targets(y, loss, x.shape[0])
        out, value = self._outputs_and_loss(x, y, loss)
        result = {"loss": value}
        task = _task(loss, self.output_size)
        if task in ("multiclass", "binary"):
            n_classes = self.output_size if task == "multiclass" else 2
            truth = np.argmax(y, axis=1) if task == "multiclass" else (y[:, 0] > 0.5).astype(np.intp)
            result.update(metrics.classification_metrics(truth, _classes(out, loss), n_classes,
                                                         scores=out[:, 0] if task == "binary" else None))
        elif task == "multilabel":
            result["accuracy"] = metrics.accuracy((y > 0.5).ravel(), (out > (0 if loss.from_logits else 0.5)).ravel())
        else:
            result.update(metrics.regression_metrics(y, out))
        return result

    def _outputs_and_loss(self, x, y, loss, chunk=PREDICT_BATCH):
        """Inference outputs and the loss, in chunks of rows (every reduction is a mean over rows)."""
        fused = _fused(loss, self.layers[-1])
        outputs, total = [], 0.0
        for start in range(0, x.shape[0], chunk):
            trace = [] if fused else None  # the logits of the last layer, of this call (inference keeps no state)
            out, yc = self._forward(x[start:start + chunk], trace=trace), y[start:start + chunk]
            value = loss.value_from_logits(trace[-1]["z"], yc) if fused else loss.value(out, yc)
            total += value * out.shape[0]
            outputs.append(out)
        return np.concatenate(outputs) if len(outputs) > 1 else outputs[0], total / x.shape[0]

    # ------------------------------------------------------------------ config and saving
    def get_config(self):
        """The constructor's arguments and the layers' configs; `class_names` only when set (files and configs
        from before it existed load unchanged)."""
        config = {
            "input_size": self.input_size,
            "seed": self.seed,
            "dtype": self.dtype.name,
            "loss": self._loss_spec,
            "layers": [layer.get_config() for layer in self.layers],
        }
        if self.class_names is not None:
            config["class_names"] = list(self.class_names)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        layers = config.pop("layers", [])
        net = cls(**config)
        for layer_config in layers:
            net.add(layer_from_config(layer_config))
        return net

    def to_bytes(self):
        """The network as .npz bytes: a JSON header (config, training state, RNG state) and arrays."""
        return serialization.to_bytes(self)

    @classmethod
    def from_bytes(cls, data, max_layers=None, max_layer_size=None, max_parameters=None):
        """A network from `to_bytes()` output. Files from elsewhere: pass limits (dense layers, units per
        layer input included, parameters); the architecture is checked against them before anything is
        allocated, and every array's size before it is read (see `serialization.from_bytes`)."""
        return serialization.from_bytes(cls, data, max_layers, max_layer_size, max_parameters)

    def save(self, path):
        """Write `to_bytes()` to a path or a binary file object (.npz, no pickle)."""
        serialization.save(self, path)

    @classmethod
    def load(cls, path):
        return serialization.load(cls, path)

    def summary(self):
        rows = [f"input: {self.input_size}"]
        for i, layer in enumerate(self.layers):
            params = sum(p.size for p in layer.params.values())
            rows.append(f"{i}: {layer.type_name} {layer.units} {layer.activation.name} ({params} params)")
        return "\n".join(rows + [f"total params: {self.n_params}"])

    def __repr__(self):
        return f"Network(layer_sizes={self.layer_sizes}, loss={self._loss_spec!r}, dtype={self.dtype.name})"


def _fused(loss, last):
    """Whether the loss and the output activation combine into one stable step (p - y): only for the
    plain activation (a sigmoid with a slope other than 1 is not the logistic function it fuses with)."""
    return last.activation.get_config() == {"name": loss.fuses_with} and not loss.from_logits


def _dtype_name(dtype):
    """"float32" for "float32", np.float32 or np.dtype("float32"); None for None (NumPy's float64) or a non-type."""
    try:
        return None if dtype is None else np.dtype(dtype).name
    except TypeError:
        return None


def _class_names(names):
    """None, or a list of distinct non-empty strings of at most MAX_CLASS_NAME_LENGTH characters."""
    if names is None:
        return None
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"class_names must be a list of strings, one per class; received {str(names)[:80]}")
    for index, name in enumerate(names):
        if not 0 < len(name) <= MAX_CLASS_NAME_LENGTH:
            raise ConfigError(f"class_names[{index}] has {len(name)} characters; a class name has 1 to {MAX_CLASS_NAME_LENGTH}")
    seen, repeated = set(), set()
    for name in names:
        (repeated if name in seen else seen).add(name)
    repeated = sorted(repeated)
    if repeated:
        raise ConfigError(f"class_names must be distinct; {', '.join(map(repr, repeated[:5]))} appear more than once")
    return list(names)


def _per_layer(value, n_layers, what):
    values = [value] * n_layers if isinstance(value, (str, dict, int, float)) else list(value)
    if len(values) != n_layers:
        raise ConfigError(f"{what} needs one entry per layer after the input ({n_layers}); received {len(values)}")
    return values
