"""What a request asks to build, checked before anything is built or stored: a network from `POST /models`
(layer sizes or a Keras-like layers list) and a job's training configuration (`FitConfig`), each against
the service's limits and the core's registries. Names are case-insensitive; errors list the valid ones."""

from dataclasses import asdict, dataclass, fields
from typing import Any

from neural_net import Network, activations, initializers, losses, optimizers, schedules
from neural_net.errors import LimitError, NeuralNetError
from neural_net.layers import LAYER_TYPES
from neural_net.serialization import MAX_COUNTER, check_layer_count
from neural_net.training import reported

from api.errors import InvalidInput
from api.schemas import JobCreate, LayerSpec, ModelCreate
from api.settings import Settings

FIT_KEYS = ("epochs", "batch_size", "optimizer", "learning_rate", "schedule", "schedule_options", "l1", "l2",
            "validation_split", "early_stopping", "clip_norm", "shuffle")


@dataclass(frozen=True)
class FitConfig:
    """One job's training configuration, validated once by `fit_config` and stored as the job's params.

    `fit_kwargs()` are `Network.fit`'s keyword arguments, one to one, with fit's defaults, but for `optimizer_options`,
    which go with the name as fit takes them, in the optimizer's config {"name": ..., **options}, so a job resumed from
    its checkpoint rebuilds the same optimizer and keeps its state; `dropout` (per-layer rates for the job), `seed` and
    `max_loss_ratio` (the blow-up guard) are what the runner does around the fit."""

    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "adam"
    optimizer_options: dict[str, float] | None = None
    learning_rate: float | None = None
    schedule: str | None = None
    schedule_options: dict[str, Any] | None = None
    l1: float = 0.0
    l2: float = 0.0
    validation_split: float | None = 0.0
    early_stopping: dict[str, Any] | None = None
    clip_norm: float | None = None
    shuffle: bool = True
    dropout: list[float] | None = None
    seed: int | None = None
    max_loss_ratio: float | None = None

    def fit_kwargs(self) -> dict[str, Any]:
        kwargs = {key: getattr(self, key) for key in FIT_KEYS}
        if self.optimizer_options:
            kwargs["optimizer"] = {"name": self.optimizer, **self.optimizer_options}
        return kwargs

    def to_params(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "FitConfig":
        """The config in a stored job's params (which may carry other keys, such as its dataset ids)."""
        return cls(**{f.name: params[f.name] for f in fields(cls) if f.name in params})


def check_model_id(model_id: str | None) -> None:
    """'.' and '..' fit the id pattern but name directories in paths and URLs (a client or proxy resolves them)."""
    if model_id in (".", ".."):
        raise InvalidInput(f"model_id {model_id!r} is not allowed: '.' and '..' name directories in URLs and paths, "
                           "so /models/{model_id} could never reach it; use letters, digits, '_', '-' and '.'")


def check_name(kind: str, name: str, valid: list[str], where: str) -> str:
    """The name in lower case (names are case-insensitive), or InvalidInput listing the valid ones."""
    if name.lower() not in valid:
        raise InvalidInput(f"unknown {kind} {name!r} in {where}; valid names: {', '.join(valid)}")
    return name.lower()


def activation_spec(spec: LayerSpec, where: str) -> str | dict[str, float]:
    """A layer's activation as the core's registry takes it: a name, or {"name", "alpha" | "slope"}."""
    name = check_name("activation", spec.activation or "linear", activations.names(), f"{where}.activation")
    options = {key: value for key, value in (("alpha", spec.alpha), ("slope", spec.slope)) if value is not None}
    takes = {"leaky_relu": {"alpha"}, "elu": {"alpha"}, "sigmoid": {"slope"}}.get(name, set())
    if set(options) - takes:
        raise InvalidInput(f"{where}: activation {name!r} takes no {' or '.join(sorted(set(options) - takes))}; "
                           "alpha belongs to leaky_relu and elu, slope to sigmoid")
    return {"name": name, **options} if options else name


def limit_exceeded(exc: LimitError) -> InvalidInput:
    """The core's LimitError, naming the setting that set the limit (max_layers: NN_MAX_LAYERS)."""
    return InvalidInput(f"{exc} (NN_{exc.limit.upper()})")


def check_layers(settings: Settings, input_size: int, layers: list[dict[str, Any]]) -> None:
    """A layers list (network config layers: type, units, use_bias) against the limits, counted as the core
    builds it: every layer counts toward NN_MAX_LAYERS (the core's check_layer_count, which an imported file
    passes too), a dense layer has n_in·units weights (+ units biases unless use_bias is false), a batch_norm
    layer 2·width (gamma, beta) and the width of the layer before it."""
    s = settings
    try:
        check_layer_count(layers, s.max_layers)
    except LimitError as exc:
        raise limit_exceeded(exc) from None
    sizes, n_params = [input_size], 0
    for layer in layers:
        if layer["type"] == "dense":
            n_params += sizes[-1] * layer["units"] + (layer["units"] if layer.get("use_bias", True) is not False else 0)
            sizes.append(layer["units"])
        else:
            n_params += 2 * sizes[-1]
            sizes.append(sizes[-1])
    if max(sizes) > s.max_layer_size:
        raise InvalidInput(f"a layer of {max(sizes)} units; at most {s.max_layer_size} (NN_MAX_LAYER_SIZE)")
    if n_params > s.max_parameters:
        raise InvalidInput(f"{n_params} parameters; at most {s.max_parameters} (NN_MAX_PARAMETERS): use fewer or smaller layers")


def network_from_request(settings: Settings, req: ModelCreate) -> Network:
    """The network `POST /models` asks for, checked against the limits before anything is allocated."""
    check_model_id(req.model_id)
    weight_init = check_name("weight initialiser", req.weight_init, ["auto"] + initializers.weight_names(), "weight_init")
    bias_init = check_name("bias initialiser", req.bias_init, initializers.bias_names(), "bias_init")
    loss = check_name("loss", req.loss, ["auto"] + losses.names(), "loss")
    build = _network_from_layers if req.layers is not None else _network_from_sizes
    net = build(settings, req, weight_init, bias_init, loss)
    net._get_loss(None)  # a loss the output cannot take is refused when the model is made (a stored one still predicts)
    return net


def network_from_file(settings: Settings, data: bytes) -> Network:
    """The network of an imported file, checked against the limits (counted as for `POST /models`) before
    anything is allocated."""
    s = settings
    try:
        return Network.from_bytes(data, max_layers=s.max_layers, max_layer_size=s.max_layer_size,
                                  max_parameters=s.max_parameters)
    except LimitError as exc:  # a model file, beyond NN_MAX_LAYERS, NN_MAX_LAYER_SIZE or NN_MAX_PARAMETERS
        raise limit_exceeded(exc) from None
    except NeuralNetError as exc:
        raise InvalidInput(f"not a model file: {exc}") from None
    except Exception as exc:  # a damaged zip can fail in many ways
        raise InvalidInput(f"not a model file (.npz from GET /models/{{model_id}}/export): {exc}") from None


def _network_from_sizes(settings: Settings, req: ModelCreate, weight_init: str, bias_init: str, loss: str) -> Network:
    if req.layer_sizes is None or req.input_size is not None:
        raise InvalidInput("give `layer_sizes` (e.g. [4, 8, 3]), or `input_size` with `layers` (e.g. 4 and "
                           '[{"type": "dense", "units": 8, "activation": "relu"}, {"type": "dense", "units": 3, '
                           '"activation": "softmax"}])')
    check_layers(settings, req.layer_sizes[0], [{"type": "dense", "units": units} for units in req.layer_sizes[1:]])
    n_layers = len(req.layer_sizes) - 1
    if req.activations is not None and req.activation is not None:
        raise InvalidInput("give either `activations` (one per layer) or `activation` (for all layers), not both")
    names = req.activations if req.activations is not None else [req.activation or "relu"] * n_layers
    if len(names) != n_layers:
        raise InvalidInput(f"activations has {len(names)} names; layer_sizes {req.layer_sizes} needs one per "
                           f"layer after the input ({n_layers})")
    names = [check_name("activation", name, activations.names(), f"activations[{i}]") for i, name in enumerate(names)]
    return Network.from_layer_sizes(req.layer_sizes, activations=names, weight_init=weight_init, bias_init=bias_init,
                                    loss=loss, dropout=req.dropout, seed=req.seed, dtype=req.dtype,
                                    class_names=req.class_names)  # a ConfigError (422) says what the names need

def _network_from_layers(settings: Settings, req: ModelCreate, weight_init: str, bias_init: str, loss: str) -> Network:
    """A network from `input_size` and a Keras-like `layers` list, checked against the limits before
    anything is allocated."""
    if req.input_size is None:
        raise InvalidInput("`layers` needs `input_size`, the number of values per input vector")
    others = [name for name in ("layer_sizes", "activations", "activation") if getattr(req, name) is not None]
    if others or req.dropout != 0.0:
        raise InvalidInput(f"with `layers`, give {', '.join(others) or 'dropout'} inside each layer, not beside it")
    layer_types = ", ".join(sorted(LAYER_TYPES))
    built = []
    for i, spec in enumerate(req.layers):
        where = f"layers[{i}]"
        kind = check_name("layer type", spec.type, sorted(LAYER_TYPES), f"{where}.type")
        options: dict[str, Any] = {"activation": activation_spec(spec, where), "dropout": spec.dropout}
        if kind == "dense":
            if spec.units is None:
                raise InvalidInput(f"{where}: a dense layer needs `units`, e.g. {{\"type\": \"dense\", \"units\": 8}}")
            wrong = [key for key in ("momentum", "eps") if getattr(spec, key) is not None]
            use_bias = spec.use_bias is not False
            options.update(units=spec.units, use_bias=use_bias,
                           weight_init=check_name("weight initialiser", spec.weight_init or weight_init,
                                                   ["auto"] + initializers.weight_names(), f"{where}.weight_init"),
                           bias_init=check_name("bias initialiser", spec.bias_init or bias_init,
                                                 initializers.bias_names(), f"{where}.bias_init"))
        else:
            wrong = [key for key in ("units", "use_bias", "weight_init", "bias_init") if getattr(spec, key) is not None]
            options.update({key: getattr(spec, key) for key in ("momentum", "eps") if getattr(spec, key) is not None})
        if wrong:
            raise InvalidInput(f"{where}: a {kind} layer takes no {', '.join(wrong)} (layer types: {layer_types})")
        built.append((kind, options))
    check_layers(settings, req.input_size, [{"type": kind, **options} for kind, options in built])
    if req.layers[-1].dropout:
        raise InvalidInput(f"layers[{len(req.layers) - 1}]: the output layer cannot have dropout; set it to 0")
    net = Network(req.input_size, seed=req.seed, dtype=req.dtype, loss=loss, class_names=req.class_names)
    for i, (kind, options) in enumerate(built):
        try:
            net.add(LAYER_TYPES[kind](**options))
        except NeuralNetError as exc:
            raise InvalidInput(f"layers[{i}]: {exc}") from None
    net.check_class_names()  # a ConfigError (422) says what the names need
    return net


RATE_NAMES = {"lr", "rate", "eta", "step_size"}  # what other libraries call the learning rate


def check_optimizer_options(optimizer: str, options: dict[str, float], learning_rate: float | None) -> dict[str, float]:
    """The options, checked by the core as it builds the optimizer (an option it does not take is named, with those it
    takes); the rate has a field of its own, so inside the options it is refused."""
    if "learning_rate" in options:
        raise InvalidInput(f"optimizer_options: learning_rate is not an option here; send it in the job's `learning_rate` "
                           f"field, e.g. {{\"optimizer\": \"{optimizer}\", \"learning_rate\": {options['learning_rate']!r}}}")
    if "name" in options:  # it would replace the optimizer's name in the core's config {"name": ..., **options}
        raise InvalidInput("optimizer_options: name is not an option; the optimizer's name goes in `optimizer`")
    try:
        optimizers.get({"name": optimizer, **options, **({"learning_rate": learning_rate} if learning_rate else {})})
    except NeuralNetError as exc:
        if not options:
            raise InvalidInput(f"optimizer: {exc}") from None
        hint = ("; momentum is an optimizer of its own: 'momentum' or 'nesterov'" if optimizer == "sgd" and "momentum" in options
                else "; the learning rate goes in the `learning_rate` field" if set(options) & RATE_NAMES else "")
        raise InvalidInput(f"optimizer_options: {exc}{hint}") from None
    return options


def fit_config(settings: Settings, info: dict, req: JobCreate) -> FitConfig:
    """A job's training configuration, checked against the limits and the core's registries before the job is stored."""
    if req.epochs > settings.max_epochs:
        raise InvalidInput(f"epochs={req.epochs}; at most {settings.max_epochs} (NN_MAX_EPOCHS)")
    if req.min_samples > settings.max_buffer_samples:
        raise InvalidInput(f"min_samples={req.min_samples} can never be reached: a buffer holds at most "
                           f"{settings.max_buffer_samples} samples (NN_MAX_BUFFER_SAMPLES)")
    if info.get("epochs_trained", 0) + req.epochs > MAX_COUNTER:  # its file could not record the count exactly
        raise InvalidInput(f"the model has trained {info['epochs_trained']} epochs; {req.epochs} more would pass "
                           f"{MAX_COUNTER}, the most a model file records: train a new model from its weights")
    optimizer = check_name("optimizer", req.optimizer, optimizers.names(), "optimizer")
    optimizer_options = check_optimizer_options(optimizer, req.optimizer_options or {}, req.learning_rate)
    options = dict(req.schedule_options or {})
    if req.decay_rate is not None:
        options["decay_rate"] = req.decay_rate
    options = {k: int(v) if float(v).is_integer() and k in ("step_size", "warmup_epochs", "patience") else v for k, v in options.items()}
    schedule = None if req.schedule is None else check_name("schedule", req.schedule, schedules.names(), "schedule")
    if options:
        try:
            schedules.get(schedule or "constant", **options)
        except NeuralNetError as exc:  # an option it does not take, or of the wrong type: named, with those it takes
            raise InvalidInput(f"schedule_options: {exc}") from None
    stopping = req.early_stopping
    if stopping is not None and stopping.monitor is not None:  # else the job would fail at its first epoch
        validated = bool(req.validation_split or req.validation_dataset)
        keys = reported(info["task"], validated)
        if stopping.monitor not in keys:
            raise InvalidInput(f"early_stopping.monitor {stopping.monitor!r} is not reported by this job; send one of: "
                               f"{', '.join(keys)}" + ("" if validated else " (val_ keys need validation_split or "
                                                                            "validation_dataset)"))
    dropout = None
    if req.dropout is not None:
        n_layers = len(info["activations"])  # one per layer, batch_norm layers included
        rates = req.dropout if isinstance(req.dropout, list) else [req.dropout] * (n_layers - 1) + [0.0]
        if len(rates) != n_layers:
            raise InvalidInput(f"dropout has {len(rates)} rates; the model has {n_layers} layers after the input")
        if any(not 0 <= r < 1 for r in rates):
            raise InvalidInput("every dropout rate must be in [0, 1)")
        if rates[-1]:
            raise InvalidInput("the output layer cannot have dropout; make the last rate 0")
        dropout = rates
    return FitConfig(
        epochs=req.epochs, batch_size=req.batch_size, optimizer=optimizer, optimizer_options=optimizer_options or None,
        learning_rate=req.learning_rate,
        schedule=schedule, schedule_options=options or None, l1=req.l1, l2=req.l2,
        validation_split=req.validation_split,
        early_stopping=req.early_stopping.model_dump() if req.early_stopping else None,
        clip_norm=req.clip_norm, shuffle=req.shuffle, dropout=dropout, seed=req.seed, max_loss_ratio=req.max_loss_ratio)
