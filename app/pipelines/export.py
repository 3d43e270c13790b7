"""The composed export (api.md "Models", `/export`): the user's graph unchanged, with the heads merged in
as one self-contained ONNX model. The heads are built here as one spox graph from the same fragments the
service runs (a calibrator's apply fragment on the logits output, a detector's scoring fragment on the
embedding or feature outputs, the SDM estimator with its support embedded); a model worker merges them
with the user's graph (`app.core.compose`), under the workers' memory and time limits."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx
import spox.opset.ai.onnx.v21 as op
from spox import Tensor, Var, argument, build

from app.core import deadline
from app.core.graph_context import binary_columns, scalar
from app.models.runner import ModelRunner
from app.models.schemas import TensorInfo
from app.pipelines.heads import HeadCheck, Heads
from app.storage.models import ModelRecord


@dataclass(frozen=True)
class Export:
    data: bytes  # the serialized model
    model_name: str  # the uploaded model's, for a file name
    dtype: np.dtype  # of the calibrator and detector heads
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]


class ExportService:
    def __init__(self, runner: ModelRunner, heads: HeadCheck, max_bytes: int) -> None:
        self.runner, self.heads, self.max_bytes = runner, heads, max_bytes

    def export(self, model_id: str, heads: Heads, dtype: np.dtype | None = None) -> Export:
        """The user's model with `probabilities` (calibrated, or the softmax), `ood_score` (and `ood_p_value`
        when the detector has a calibration set), the SDM outputs and `prediction_set`/`set_size`; `dtype`
        (default: the logits output's) is the precision of the calibrator and detector (the SDM estimator
        runs in its own, as `/predict` does). 422 when a head does not fit, the opsets
        cannot be reconciled, or the result exceeds CALIPER_MAX_EXPORT_BYTES; the merge runs in a model
        worker (422 model-limits when it exceeds the workers' memory or time limit)."""
        record = self.runner.get(model_id)
        wanted = self.heads.outputs(record, heads)
        dtype = dtype or np.dtype(next(o["dtype"] for o in record.outputs if o["name"] == record.logits_output))
        ours = self._heads_graph(record, heads, wanted, dtype).SerializeToString()
        deadline.check()  # the request's time limit (an export takes a work slot), before the merge
        data, inputs, outputs = self.runner.workers.merge(
            str(self.runner.artifacts.path(record.sha256)),
            ours,
            [(name, f"in_{i}") for i, name in enumerate(wanted)],
            {"caliper.export": json.dumps(vars(heads) | {"model_id": model_id})},
            self.max_bytes,
            "sdm_id" if heads.sdm_id else "model_id",
        )
        described = [TensorInfo.model_validate(i) for i in inputs], [TensorInfo.model_validate(o) for o in outputs]
        return Export(data, record.name, dtype, *described)

    def _heads_graph(self, record: ModelRecord, heads: Heads, wanted: list[str], dtype: np.dtype) -> onnx.ModelProto:
        """Our graph: input `in_<i>` for the i-th model output it reads, api.md's output names."""
        declared = {o["name"]: o for o in record.outputs}
        arguments = [_argument(declared[name]) for name in wanted]
        inputs = dict(zip(wanted, arguments, strict=True))
        logits = inputs[record.logits_output]
        if record.binary:  # log-odds [N] or [N, 1]: the heads see the two-class problem [0, z] (api.md)
            logits = binary_columns(logits, logits=True)
        z = _as(logits, dtype)
        outputs: dict[str, Var] = {}
        if heads.calibrator_id is not None:
            calibrator = self.heads.calibrators.restored(self.heads.calibrators.record(heads.calibrator_id))
            probabilities = calibrator.apply_fragment(z)
        else:
            probabilities = op.softmax(z, axis=-1)
        # a binary model's probabilities are P(class 1) [N], as `/predict` answers
        outputs["probabilities"] = (
            op.gather(probabilities, scalar(1, np.int64), axis=1) if record.binary else probabilities
        )
        if heads.detector_id is not None:
            reads = self.heads.detectors.model_outputs(heads.detector_id, record.embedding_output)
            features = {key: _as(inputs[name], dtype) for key, name in reads.items()}
            outputs["ood_score"] = self.heads.detectors.score_fragment(heads.detector_id, features)
            p_value = self.heads.detectors.p_value_fragment(heads.detector_id, outputs["ood_score"])
            if p_value is not None:
                outputs["ood_p_value"] = p_value
        if heads.conformal_id is not None:
            outputs["prediction_set"], outputs["set_size"] = self.heads.conformal.set_fragment(heads.conformal_id, z)
        if heads.sdm_id is not None:
            estimator = self.heads.sdm.estimator(self.heads.sdm.record(heads.sdm_id))
            columns = estimator.fragment(inputs[record.embedding_output or ""], logits)
            outputs |= {
                "sdm_probabilities": columns["probabilities"],
                "sdm_q": columns["q"],
                "sdm_d": columns["d"],
                "high_reliability": columns["high_reliability"],
            }
        return build({f"in_{i}": var for i, var in enumerate(arguments)}, outputs)


def _argument(info: dict[str, object]) -> Var:
    shape = info["shape"]
    assert isinstance(shape, list)
    return argument(Tensor(np.dtype(str(info["dtype"])), tuple(d if d > 0 else None for d in shape)))


def _as(x: Var, dtype: np.dtype) -> Var:
    return x if np.dtype(x.unwrap_tensor().dtype) == dtype else op.cast(x, to=dtype)
