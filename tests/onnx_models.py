"""ONNX classifiers built for the tests with onnx.helper (not with the code under test): an MLP with
`logits` and `embedding` outputs, and hostile models of every kind the intake must refuse."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


@dataclass(frozen=True)
class Mlp:
    w1: np.ndarray  # [D, H]
    b1: np.ndarray
    w2: np.ndarray  # [H, C]
    b2: np.ndarray

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """numpy oracle: (logits, embedding) in float64."""
        h = np.maximum(x.astype(np.float64) @ self.w1 + self.b1, 0)
        return h @ self.w2 + self.b2, h


def mlp(
    d: int = 6,
    hidden: int = 5,
    classes: int = 3,
    dtype: type = np.float32,
    batch: int | None = None,
    seed: int = 0,
    squeeze: bool = False,
) -> tuple[bytes, Mlp]:
    """x [N, d] -> embedding = relu(x·w1 + b1) [N, hidden] -> logits = embedding·w2 + b2 [N, classes] (with
    `squeeze`, classes = 1: binary log-odds [N])."""
    rng = np.random.default_rng(seed)
    weights = Mlp(
        rng.normal(size=(d, hidden)),
        rng.normal(size=hidden),
        rng.normal(size=(hidden, classes)),
        rng.normal(size=classes),
    )
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    n = batch if batch is not None else "N"
    inits = [numpy_helper.from_array(getattr(weights, k).astype(dtype), k) for k in ("w1", "b1", "w2", "b2")]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["embedding"]),
        helper.make_node("MatMul", ["embedding", "w2"], ["z0"]),
        helper.make_node("Add", ["z0", "b2"], ["z1" if squeeze else "logits"]),
    ]
    if squeeze:
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "axis"))
        nodes.append(helper.make_node("Squeeze", ["z1", "axis"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", elem, [n, d])],
        [
            helper.make_tensor_value_info("logits", elem, [n] if squeeze else [n, classes]),
            helper.make_tensor_value_info("embedding", elem, [n, hidden]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model.SerializeToString(), weights


def _single(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    inits: list[onnx.TensorProto] | None = None,
    opset: int = OPSET,
    domain: str = "",
) -> bytes:
    graph = helper.make_graph(nodes, "hostile", inputs, outputs, inits or [])
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = 8
    return model.SerializeToString()


X = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])
LOGITS = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])


def external_data() -> bytes:
    weight = numpy_helper.from_array(np.eye(2, dtype=np.float32), "w")
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "/etc/passwd"
    return _single([helper.make_node("MatMul", ["x", "w"], ["logits"])], [X], [LOGITS], [weight])


def custom_domain() -> bytes:
    return _single(
        [helper.make_node("Evil", ["x"], ["logits"], domain="com.example")], [X], [LOGITS], domain="com.example"
    )


def future_opset() -> bytes:
    return _single([helper.make_node("Identity", ["x"], ["logits"])], [X], [LOGITS], opset=99)


def huge_allocation() -> bytes:
    """Passes every static check, then asks for a [200000, 200000] float32 tensor (160 GB) at run time."""
    shape = numpy_helper.from_array(np.array([200_000, 200_000], np.int64), "shape")
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["big"], value=numpy_helper.from_array(np.ones(1, np.float32))),
        helper.make_node("ReduceSum", ["big"], ["total"], keepdims=1),
        helper.make_node("Add", ["x", "total"], ["logits"]),
    ]
    return _single(nodes, [X], [LOGITS], [shape])


def long_loop(trips: int = 2_000_000_000) -> bytes:
    """A Loop whose body adds one, `trips` times: runs far longer than any time limit."""
    body = helper.make_graph(
        [
            helper.make_node("Add", ["acc_in", "one"], ["acc_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, ["N", 2]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, ["N", 2]),
        ],
        [numpy_helper.from_array(np.array(1.0, np.float32), "one")],
    )
    inits = [
        numpy_helper.from_array(np.array(trips, np.int64), "trips"),
        numpy_helper.from_array(np.array(True), "cond"),
    ]
    nodes = [helper.make_node("Loop", ["trips", "cond", "x"], ["logits"], body=body)]
    return _single(nodes, [X], [LOGITS], inits)


def image_and_meta(dtype: type = np.float32, seed: int = 0) -> bytes:
    """Two inputs: an NCHW image `image` [N, 1, 4, 4] and an integer `meta` [N, 2] (cast to the float
    dtype), flattened, concatenated and mapped to 3 logits."""
    rng = np.random.default_rng(seed)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = [numpy_helper.from_array(rng.normal(size=(18, 3)).astype(dtype), "w")]
    nodes = [
        helper.make_node("Flatten", ["image"], ["flat"], axis=1),
        helper.make_node("Cast", ["meta"], ["meta_f"], to=elem),
        helper.make_node("Concat", ["flat", "meta_f"], ["joined"], axis=1),
        helper.make_node("MatMul", ["joined", "w"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "image_and_meta",
        [
            helper.make_tensor_value_info("image", elem, ["N", 1, 4, 4]),
            helper.make_tensor_value_info("meta", TensorProto.INT64, ["N", 2]),
        ],
        [helper.make_tensor_value_info("logits", elem, ["N", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model.SerializeToString()


ARCHITECTURES = ("mlp", "cnn", "residual", "attention")
INPUT_SHAPES = {"mlp": (6,), "cnn": (1, 8, 8), "residual": (6,), "attention": (4, 8)}


def architecture(name: str, opset: int, seed: int = 0) -> bytes:
    """A float32 classifier (3 classes) with `logits` and `embedding` outputs, written with the operators
    of ai.onnx `opset` as an exporter at that opset would write them (ReduceMean's axes an attribute
    before 18, LayerNormalization spelled out before 17) and the onnx package's default IR version:
    - mlp: MatMul, Add, Relu;
    - cnn: Conv, BatchNormalization, Relu, MaxPool, GlobalAveragePool, Flatten, Gemm;
    - residual: two Gemm layers and a skip connection (Add);
    - attention: one self-attention block (MatMul, Transpose, Softmax) with layer normalisation and a mean
      over the sequence."""
    builder = _Builder(np.random.default_rng(seed), opset)
    embedding = getattr(builder, name)("x")
    builder.node(
        "Gemm", [embedding, builder.weight((3, builder.width[embedding])), builder.weight((3,))], "logits", transB=1
    )
    builder.rename(embedding, "embedding")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *INPUT_SHAPES[name]])
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3]),
        helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", builder.width[embedding]]),
    ]
    graph = helper.make_graph(builder.nodes, name, [x], outputs, builder.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


class _Builder:
    """Nodes and initializers of one test graph; each layer method returns its output's name."""

    def __init__(self, rng: np.random.Generator, opset: int) -> None:
        self.rng, self.opset = rng, opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.width: dict[str, int] = {}  # the last dimension of a 2-D value

    def node(self, op_type: str, inputs: list[str], output: str | None = None, **attributes: object) -> str:
        output = output or f"v{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, inputs, [output], **attributes))
        return output

    def weight(self, shape: tuple[int, ...], value: np.ndarray | None = None) -> str:
        name = f"w{len(self.initializers)}"
        array = value if value is not None else self.rng.normal(scale=0.5, size=shape)
        self.initializers.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def rename(self, old: str, new: str) -> None:
        for node in self.nodes:
            node.input[:] = [new if v == old else v for v in node.input]
            node.output[:] = [new if v == old else v for v in node.output]
        self.width[new] = self.width[old]

    def dense(self, x: str, d_in: int, d_out: int) -> str:
        out = self.node("Gemm", [x, self.weight((d_out, d_in)), self.weight((d_out,))], transB=1)
        self.width[out] = d_out
        return out

    def mean(self, x: str, axes: list[int]) -> str:
        if self.opset < 18:
            return self.node("ReduceMean", [x], axes=axes, keepdims=1)
        axes_name = f"axes{len(self.initializers)}"
        self.initializers.append(numpy_helper.from_array(np.asarray(axes, np.int64), axes_name))
        return self.node("ReduceMean", [x, axes_name], keepdims=1)

    def layer_norm(self, x: str, d: int) -> str:
        scale, bias = self.weight((d,), 1 + 0.1 * self.rng.normal(size=d)), self.weight((d,))
        if self.opset >= 17:
            return self.node("LayerNormalization", [x, scale, bias], axis=-1, epsilon=1e-5)
        centred = self.node("Sub", [x, self.mean(x, [-1])])
        variance = self.mean(self.node("Mul", [centred, centred]), [-1])
        std = self.node("Sqrt", [self.node("Add", [variance, self.weight((), np.float32(1e-5))])])
        return self.node("Add", [self.node("Mul", [self.node("Div", [centred, std]), scale]), bias])

    def mlp(self, x: str) -> str:
        out = self.node("Relu", [self.dense(x, 6, 5)])
        self.width[out] = 5
        return out

    def residual(self, x: str) -> str:
        h = self.node("Relu", [self.dense(x, 6, 8)])
        inner = self.node("Relu", [self.dense(h, 8, 8)])
        out = self.node("Add", [h, inner])
        self.width[out] = 8
        return out

    def cnn(self, x: str) -> str:
        conv = self.node("Conv", [x, self.weight((4, 1, 3, 3)), self.weight((4,))], pads=[1, 1, 1, 1])
        variance = self.weight((4,), 1 + np.abs(self.rng.normal(size=4)))
        normed = self.node(
            "BatchNormalization", [conv, self.weight((4,)), self.weight((4,)), self.weight((4,)), variance]
        )
        pooled = self.node("MaxPool", [self.node("Relu", [normed])], kernel_shape=[2, 2], strides=[2, 2])
        out = self.node("Flatten", [self.node("GlobalAveragePool", [pooled])])
        self.width[out] = 4
        return out

    def attention(self, x: str) -> str:
        q = self.node("MatMul", [x, self.weight((8, 8))])
        k = self.node("MatMul", [x, self.weight((8, 8))])
        scores = self.node("MatMul", [q, self.node("Transpose", [k], perm=[0, 2, 1])])
        attended = self.node("MatMul", [self.node("Softmax", [scores], axis=-1), x])
        normed = self.layer_norm(self.node("Add", [x, attended]), 8)
        out = self.node("Flatten", [self.mean(normed, [1])])
        self.width[out] = 8
        return out
