"""What an uploaded model is, read without running it, and every reason to refuse it (each a 422 that
names the fault): bytes that are not a model, external data (nothing is read from disk on a model's
behalf), operators outside the standard domains, opsets newer than this onnxruntime knows, and named
outputs that are missing or not float [N, C ≥ 2] / [N, D]. `onnx.checker` (full, with shape
inference) runs last. Allowed operator domains: ai.onnx and ai.onnx.ml, plus the model's own local
functions; com.microsoft contrib operators are refused (they are onnxruntime-specific, so the composed
export would not be portable)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from app.core.errors import InputError
from app.models.schemas import ModelRequest, TensorInfo

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
MAX_NAME = 256  # the models table's column for the logits and embedding output names
MAX_OPSET = onnx.defs.onnx_opset_version()  # the newest ai.onnx opset the installed onnx knows


@dataclass(frozen=True)
class ModelInfo:
    opset: int
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    logits_output: str
    embedding_output: str | None
    feature_outputs: list[str]
    classes: int | None
    binary: bool = False


def dtype_name(elem_type: int) -> str:
    try:
        return str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name)
    except (KeyError, TypeError, ValueError):
        return str(onnx.TensorProto.DataType.Name(elem_type)).lower()


def _tensor_info(value: onnx.ValueInfoProto) -> TensorInfo:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        raise InputError("file", f"graph input/output {value.name!r} is a {kind}, not a tensor")
    tensor = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
    return TensorInfo(name=value.name, dtype=dtype_name(tensor.elem_type), shape=dims)


def signature(model: onnx.ModelProto) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The graph's inputs (initializers excluded) and outputs."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [_tensor_info(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [_tensor_info(v) for v in model.graph.output]


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph (If/Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attribute.g)
            for sub in attribute.graphs:
                yield from _graphs(sub)


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors


def parse(path: Path) -> onnx.ModelProto:
    """The model proto, or a 422 saying why the bytes are not one (nothing external is loaded)."""
    if path.stat().st_size == 0:
        raise InputError("file", "is empty")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise InputError("file", f"is not an ONNX model (the protobuf does not parse: {exc})") from exc
    if model.ir_version <= 0 or not model.HasField("graph") or not model.graph.output:
        raise InputError("file", "is not an ONNX model (no IR version or no graph outputs)")
    return model


def check(model: onnx.ModelProto) -> None:
    """Every refusal that does not need the request: external data, domains, opset, the checker."""
    local_functions = {(f.domain, f.name) for f in model.functions}
    graphs = [g for top in [model.graph, *[_function_graph(f) for f in model.functions]] for g in _graphs(top)]
    for graph in graphs:
        for tensor in _tensors(graph):
            if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
                raise InputError(
                    "file",
                    f"tensor {tensor.name!r} uses external data: upload a self-contained model "
                    "(nothing is read from disk on a model's behalf)",
                )
        for node in graph.node:
            if node.domain not in STANDARD_DOMAINS and (node.domain, node.op_type) not in local_functions:
                raise InputError(
                    "file",
                    f"operator {node.op_type!r} of domain {node.domain!r} is not allowed "
                    f"(allowed: ai.onnx, ai.onnx.ml and the model's own functions)",
                )
    for value in (*model.graph.input, *model.graph.output):
        if not value.name.isprintable() or len(value.name) > MAX_NAME:
            raise InputError(
                "file", f"input or output name {value.name[:64]!r} must be printable and at most {MAX_NAME} characters"
            )
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > MAX_OPSET:
            raise InputError("file", f"opset {opset.version} is newer than this server supports ({MAX_OPSET})")
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as exc:
        raise InputError("file", f"fails the ONNX checker: {str(exc).splitlines()[0][:500]}") from exc


def _function_graph(function: onnx.FunctionProto) -> onnx.GraphProto:
    graph = onnx.GraphProto()
    graph.node.extend(function.node)
    return graph


def _float_matrix(outputs: dict[str, TensorInfo], name: str, field: str, what: str) -> TensorInfo:
    if name not in outputs:
        raise InputError(field, f"the model has no output {name!r} (outputs: {sorted(outputs)})")
    info = outputs[name]
    if info.dtype not in ("float32", "float64") or len(info.shape) != 2:
        raise InputError(field, f"output {name!r} is {info.dtype} {info.shape}; {what} must be float32/float64 [N, ·]")
    return info


def describe(model: onnx.ModelProto, request: ModelRequest) -> ModelInfo:
    """Inputs (initializers excluded), outputs and the named outputs, checked against the request."""
    inputs, outputs = signature(model)
    by_name = {o.name: o for o in outputs}
    logits = request.logits_output
    if logits is None:
        if len(outputs) == 1:
            logits = outputs[0].name
        elif "logits" in by_name:
            logits = "logits"
        else:
            raise InputError(
                "logits_output", f"the model has {len(outputs)} outputs and none is named 'logits': name one"
            )
    classes, binary = _logits_classes(by_name, logits, request.binary)
    if request.embedding_output is not None:
        _float_matrix(by_name, request.embedding_output, "embedding_output", "an embedding")
    for name in request.feature_outputs:
        _float_matrix(by_name, name, "feature_outputs", "a feature output")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return ModelInfo(
        opset, inputs, outputs, logits, request.embedding_output, list(request.feature_outputs), classes, binary
    )


def _logits_classes(outputs: dict[str, TensorInfo], name: str, binary: bool) -> tuple[int | None, bool]:
    """C (None while symbolic) and whether the logits are binary log-odds: an [N] output, or [N, 1] with
    `binary` (api.md); [N, 1] without it is C = 1, refused."""
    info = outputs.get(name)
    if info is not None and len(info.shape) == 1 and info.dtype in ("float32", "float64"):
        return 2, True
    info = _float_matrix(outputs, name, "logits_output", "logits")
    width = info.shape[1] if info.shape[1] > 0 else None
    if binary:
        if width not in (1, None):
            raise InputError("binary", f"output {name!r} is [N, {width}]; binary logits are [N] or [N, 1]")
        return 2, True
    if width is not None and width < 2:
        raise InputError(
            "logits_output", f"output {name!r} has C = {width}; logits need C ≥ 2 classes (or upload with binary: true)"
        )
    return width, False
