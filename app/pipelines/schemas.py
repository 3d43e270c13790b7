"""Request and response bodies of /v1/pipelines (api.md, "Pipelines and the Open Inference Protocol")."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app.examples import EXAMPLE_ID, examples
from app.models.schemas import TensorInfo
from app.records import RecordOut, Tags


class PipelineRequest(BaseModel):
    model_config = examples({"name": "digits", "model_id": EXAMPLE_ID, "calibrator_id": EXAMPLE_ID})

    name: str = Field(
        min_length=1,
        max_length=256,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="The V2 model name (re-posting a name makes a new version).",
    )
    model_id: str
    calibrator_id: str | None = None
    detector_id: str | None = None
    sdm_id: str | None = None
    conformal_id: str | None = Field(None, description="Adds the outputs `prediction_set` (BOOL) and `set_size`.")
    dtype: Literal["float32", "float64"] | None = Field(
        None, description="Precision of the calibrator and detector heads; default the logits output's."
    )
    tags: Tags = Field(default_factory=dict)


class PipelineOut(RecordOut):
    name: str
    version: int = Field(description="1, 2, … per name.")
    model_id: str
    calibrator_id: str | None
    detector_id: str | None
    sdm_id: str | None
    conformal_id: str | None
    dtype: str
    sha256: str = Field(description="Of the composed export (GET /v1/pipelines/{id}/onnx).")
    size_bytes: int
    inputs: list[TensorInfo] = Field(description="The model's inputs.")
    outputs: list[TensorInfo] = Field(description="The export's outputs: the model's, then the heads'.")
    tags: dict[str, str]
