"""Merging a user's ONNX model with the heads graph into one self-contained model (api.md "Models",
`/export`), by `onnx.compose.merge_models`: ours is the side that gets a prefix, theirs keeps every name.

Opsets are reconciled with `onnx.version_converter`. Our graph is written with spox's ai.onnx.v21 module,
and spox declares the lowest opset that its nodes need (14 for a softmax head, 21 with a detector). It is
converted, up or down, to the user's opset; when that fails, the lower of the two graphs is converted up to
the other's; when both fail, 422 naming both faults. `merged_file` is what a model worker runs (its memory
and time bounded), so that a large or hostile model is never loaded, converted or checked in the API
process.
"""

from __future__ import annotations

import onnx
import onnx.checker
import onnx.compose
import onnx.defs
import onnx.version_converter

from app.core.errors import InputError

PREFIX = "caliper_"  # on every name of our graph; on an output name only where the user's model has it
INITIALIZER_BYTES = 1024  # constants larger than this become initializers (support sets, tables, weights)


def merged_file(
    path: str, heads: bytes, io_map: list[tuple[str, str]], metadata: dict[str, str], max_bytes: int, field: str
) -> onnx.ModelProto:
    """The model at `path` with the serialized `heads` graph fed through `io_map`, its `metadata` added,
    checked in full; InputError (naming `field`) when it would exceed `max_bytes`."""
    user = onnx.load(path, load_external_data=False)
    merged = compose(user, onnx.load_from_string(heads), io_map)
    del user
    for key, value in metadata.items():
        merged.metadata_props.add(key=key, value=value)
    size = merged.ByteSize()
    if size > max_bytes:
        raise InputError(field, f"the export would be {size} bytes; CALIPER_MAX_EXPORT_BYTES is {max_bytes}")
    onnx.checker.check_model(merged, full_check=True)
    return merged


def compose(user: onnx.ModelProto, ours: onnx.ModelProto, io_map: list[tuple[str, str]]) -> onnx.ModelProto:
    """`ours` fed by the user's model through `io_map` (user output, our input), every output of both
    kept. Every name of ours gets a prefix free in the user's graph, except our output names that the
    user's graph does not have (they stay api.md's)."""
    ours = _constants_as_initializers(ours)
    user, ours = _reconciled(user, ours)
    taken = _names(user.graph)
    clashing = [o.name for o in ours.graph.output if o.name in taken]
    prefix = next(
        (p for p in _prefixes() if not any(p + name in taken for name in _names(ours.graph))),
        None,
    )
    if prefix is None:
        raise InputError("model_id", "the model's names leave no free prefix for the heads")
    renamed = onnx.ModelProto()
    renamed.CopyFrom(ours)
    onnx.compose.add_prefix_graph(
        renamed.graph, prefix, rename_outputs=False, inplace=True, name_map={o: prefix + o for o in clashing}
    )
    outputs = [o.name for o in user.graph.output] + [o.name for o in renamed.graph.output]
    try:
        merged = onnx.compose.merge_models(
            user,
            renamed,
            io_map=[(theirs, prefix + mine) for theirs, mine in io_map],
            outputs=outputs,
            producer_name="caliper",
            doc_string=user.doc_string,
        )
    except ValueError as exc:  # onnx.compose's refusals (IR versions, opsets, names) are ValueErrors
        raise InputError("model_id", f"the model and the heads cannot be merged: {str(exc)[:300]}") from exc
    unique = {(o.domain or "", o.version): o for o in merged.opset_import}  # merge_models lists shared ones twice
    del merged.opset_import[:]
    merged.opset_import.extend(unique.values())
    return merged


def _names(graph: onnx.GraphProto) -> set[str]:
    """Every value, node, initializer, input and output name of a graph (not its subgraphs')."""
    names = {v for n in graph.node for v in (*n.input, *n.output, n.name)} | {i.name for i in graph.initializer}
    return names | {v.name for v in (*graph.input, *graph.output, *graph.value_info)}


def _prefixes() -> list[str]:
    return [PREFIX, *(f"caliper{i}_" for i in range(1, 100))]


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _reconciled(user: onnx.ModelProto, ours: onnx.ModelProto) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """Both at one ai.onnx opset and one IR version. The user's opset first (their graph and IR version
    unchanged, ours converted up or down), then the higher of the two opsets (the lower side converted up,
    the higher IR version); 422 naming every converter fault when neither holds."""
    user_opset, our_opset = _default_opset(user), _default_opset(ours)
    faults: list[str] = []
    for target in dict.fromkeys((user_opset, max(user_opset, our_opset))):
        ir_version = user.ir_version if target == user_opset else max(user.ir_version, ours.ir_version)
        try:
            return _at(user, target, ir_version), _at(ours, target, ir_version)
        except Exception as exc:  # the converter raises bare RuntimeErrors and ValueErrors alike
            faults.append(f"to {target}: {str(exc).splitlines()[0][:200]}")
    raise InputError(
        "model_id",
        f"cannot reconcile opsets: the model is ai.onnx {user_opset}, the heads {our_opset}; "
        f"onnx.version_converter failed ({'; '.join(faults)})",
    )


def _at(model: onnx.ModelProto, opset: int, ir_version: int) -> onnx.ModelProto:
    """The model at ai.onnx `opset` (converted when it is at another) and at `ir_version`."""
    if _default_opset(model) != opset:
        model = onnx.version_converter.convert_version(_without_default_attributes(model), opset)
        onnx.checker.check_model(model)
    model.ir_version = ir_version
    return model


def _without_default_attributes(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every attribute that equals its schema default left out (same meaning): spox
    writes defaults such as ReduceMax's `noop_with_empty_axes = 0`, which the converter's down-adapters
    carry into opsets where the attribute does not exist."""
    opset = _default_opset(model)
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
        kept = []
        for attribute in node.attribute:
            declared = schema.attributes.get(attribute.name)
            default = declared.default_value if declared is not None else None
            if default is not None and default.name and _value(default) == _value(attribute):
                continue
            kept.append(attribute)
        del node.attribute[:]
        node.attribute.extend(kept)
    return model


def _value(attribute: onnx.AttributeProto) -> object:
    return onnx.helper.get_attribute_value(attribute)


def _constants_as_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Large `Constant` nodes (spox's way to embed an array) as graph initializers, where ONNX tools expect
    weights (and where onnx.compose's name prefixing and checkers look)."""
    kept: list[onnx.NodeProto] = []
    for node in model.graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None) if node.op_type == "Constant" else None
        if value is not None and value.ByteSize() > INITIALIZER_BYTES:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value)
            tensor.name = node.output[0]
            model.graph.initializer.append(tensor)
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model
