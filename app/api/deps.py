"""Request-scoped access to the composition root (`app.context.Resources`) and the 404 lookup routes share."""

from __future__ import annotations

from typing import TypeVar

from fastapi import Request

from app.api.problems import ProblemError
from app.context import Resources
from app.storage.models import CalibratorRecord, DetectorRecord, SdmRecord

T = TypeVar("T")


def load_or_404(resources: Resources, model: type[T], record_id: str, noun: str) -> T:
    """A stored record by id, or a 404 problem naming what was looked for."""
    with resources.sessions() as session:
        record = session.get(model, record_id)
    if record is None:
        raise ProblemError(404, f"no {noun} with id {record_id!r}")
    return record


def load_calibrator(resources: Resources, calibrator_id: str) -> CalibratorRecord:
    return load_or_404(resources, CalibratorRecord, calibrator_id, "calibrator")


def load_detector(resources: Resources, detector_id: str) -> DetectorRecord:
    return load_or_404(resources, DetectorRecord, detector_id, "detector")


def load_sdm(resources: Resources, sdm_id: str) -> SdmRecord:
    return load_or_404(resources, SdmRecord, sdm_id, "SDM estimator")


def resources_of(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


async def get_resources(request: Request) -> Resources:
    """Async on purpose: FastAPI runs sync dependencies in its thread pool (a hop per request)."""
    return resources_of(request)
