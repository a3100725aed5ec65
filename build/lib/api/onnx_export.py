"""Export a core `Network` to ONNX (opset 17) for inference in any ONNX runtime.

Dense layers become MatMul + Add, BatchNorm is folded into Mul + Add with its running statistics
(inference form), and each activation maps to its ONNX operator (GELU is written out in its tanh
form, the one the core uses). Input "input" has shape (batch, n_in), output "output" (batch, n_out).
"""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from neural_net import BatchNorm, Dense, Network

OPSET = 17
_ELEMENT_TYPE = {np.dtype("float32"): TensorProto.FLOAT, np.dtype("float64"): TensorProto.DOUBLE}
_SIMPLE = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu", "softmax": "Softmax", "linear": "Identity"}


class _Graph:
    def __init__(self, dtype):
        self.dtype = dtype
        self.nodes, self.initializers = [], []
        self.count = 0

    def name(self, prefix):
        self.count += 1
        return f"{prefix}_{self.count}"

    def const(self, prefix, value):
        name = self.name(prefix)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=self.dtype), name))
        return name

    def op(self, op_type, inputs, **attributes):
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attributes))
        return out


def _activation(graph, activation, z):
    config = activation.get_config()
    name = config["name"]
    if name == "sigmoid" and "slope" in config:
        z = graph.op("Mul", [z, graph.const("slope", config["slope"])])
    if name in _SIMPLE:
        return graph.op(_SIMPLE[name], [z], **({"axis": -1} if name == "softmax" else {}))
    if name == "leaky_relu":
        return graph.op("LeakyRelu", [z], alpha=config["alpha"])
    if name == "elu" and graph.dtype == np.float32:
        return graph.op("Elu", [z], alpha=config["alpha"])
    if name == "elu":  # onnxruntime has no double Elu: where(z > 0, z, alpha * (exp(min(z, 0)) - 1))
        zero = graph.const("zero", 0.0)
        negative = graph.op("Sub", [graph.op("Exp", [graph.op("Min", [z, zero])]), graph.const("one", 1.0)])
        negative = graph.op("Mul", [negative, graph.const("alpha", config["alpha"])])
        return graph.op("Where", [graph.op("Greater", [z, zero]), z, negative])
    if name == "gelu":  # z/2 * (1 + tanh(sqrt(2/pi) * (z + 0.044715 z^3)))
        cube = graph.op("Mul", [graph.op("Mul", [z, z]), z])
        inner = graph.op("Add", [z, graph.op("Mul", [cube, graph.const("c", 0.044715)])])
        t = graph.op("Tanh", [graph.op("Mul", [inner, graph.const("k", np.sqrt(2.0 / np.pi))])])
        half = graph.op("Mul", [z, graph.const("half", 0.5)])
        return graph.op("Mul", [half, graph.op("Add", [t, graph.const("one", 1.0)])])
    raise ValueError(f"activation {name!r} has no ONNX export")


def to_onnx(net: Network, name: str = "network") -> bytes:
    """The network as a serialised ONNX ModelProto."""
    graph = _Graph(net.dtype)
    x = "input"
    for layer in net.layers:
        if isinstance(layer, Dense):
            z = graph.op("MatMul", [x, graph.const("weights", layer.params["weights"])])
            if layer.use_bias:
                z = graph.op("Add", [z, graph.const("biases", layer.params["biases"])])
        elif isinstance(layer, BatchNorm):
            scale = layer.params["gamma"] / np.sqrt(layer.buffers["running_var"] + layer.eps)
            shift = layer.params["beta"] - layer.buffers["running_mean"] * scale
            z = graph.op("Add", [graph.op("Mul", [x, graph.const("scale", scale)]), graph.const("shift", shift)])
        else:
            raise ValueError(f"layer {type(layer).__name__} has no ONNX export")
        x = _activation(graph, layer.activation, z)
    graph.nodes.append(helper.make_node("Identity", [x], ["output"]))
    element = _ELEMENT_TYPE[net.dtype]
    model = helper.make_model(
        helper.make_graph(
            graph.nodes, name,
            [helper.make_tensor_value_info("input", element, ["batch", net.input_size])],
            [helper.make_tensor_value_info("output", element, ["batch", net.output_size])],
            graph.initializers,
        ),
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="nn-service",
    )
    model.ir_version = 8  # readable by onnxruntime releases from 1.14 on
    onnx.checker.check_model(model)
    return model.SerializeToString()
