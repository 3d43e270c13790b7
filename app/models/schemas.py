"""Request and response bodies of /v1/models (api.md, "Models — ONNX classifiers")."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.examples import DIGIT_ROW, EXAMPLE_ID, examples
from app.records import RecordOut, Tags
from app.tensors import MODEL_INPUTS_NOTE, Tensor


class ModelRequest(BaseModel):
    """The `request` part (or plain form fields) of an upload; the `file` part holds the .onnx bytes."""

    model_config = examples({"name": "digits", "embedding_output": "embedding", "tags": {"git_sha": "abc123"}})

    name: str = Field(min_length=1, max_length=256, description="The model's name (evaluations default to it).")
    logits_output: str | None = Field(
        None, description="The [N, C] logits output; default the only output, else the one named `logits`."
    )
    embedding_output: str | None = Field(None, description="An [N, D] output used by detectors and SDM.")
    feature_outputs: list[str] = Field(default_factory=list, description="Further [N, D_l] outputs (layer ensembles).")
    binary: bool = Field(
        False,
        description="Read an [N, 1] logits output as one log-odds per row (the two-class problem, api.md); an [N] "
        "logits output is binary without it.",
    )
    tags: Tags = Field(default_factory=dict)


class TensorInfo(BaseModel):
    name: str
    dtype: str = Field(description="float32, float64, int64, … (this API's names).")
    shape: list[int] = Field(description="-1 for a symbolic or dynamic dimension.")


class ModelOut(RecordOut):
    name: str
    sha256: str = Field(description="Of the uploaded bytes.")
    size_bytes: int
    opset: int = Field(description="The model's default-domain (ai.onnx) opset.")
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    logits_output: str
    embedding_output: str | None
    feature_outputs: list[str]
    classes: int | None = Field(description="C when the model declares it, else null until its first run.")
    binary: bool = Field(False, description="Its logits are one log-odds per row ([N], or [N, 1] uploaded as binary).")
    tags: dict[str, str]


class PredictRequest(BaseModel):
    """`inputs` (by input name; tensors as elsewhere, or multipart parts `inputs.<name>`) and the heads."""

    model_config = examples({"inputs": {"x": [DIGIT_ROW]}, "calibrator_id": EXAMPLE_ID})

    inputs: dict[str, Tensor] = Field(
        default_factory=dict, description=f"One tensor per model input, batch first. {MODEL_INPUTS_NOTE}"
    )
    calibrator_id: str | None = None
    detector_id: str | None = None
    sdm_id: str | None = None
    conformal_id: str | None = Field(None, description="Adds the column `prediction_set` [N, C] (booleans).")
    return_embedding: bool = False
