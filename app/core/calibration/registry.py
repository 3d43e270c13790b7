"""Calibration methods by name: a parameter model (api.md's names) and the estimator it configures."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.core.calibration.fitters import (
    AdaptiveTemperature,
    AffineScaling,
    BetaCalibration,
    Calibrator,
    CorrectnessAwareTemperature,
    HistogramBinning,
    IsotonicCalibration,
    PlattScaling,
    TemperatureScaling,
)

Penalty = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BoundsParams(NoParams):
    bounds: tuple[Positive, Positive] = Field((0.05, 20.0), description="Search interval for T.")

    @model_validator(mode="after")
    def _ordered(self) -> BoundsParams:
        if self.bounds[0] >= self.bounds[1]:
            raise ValueError("bounds must be [low, high] with low < high")
        return self


class CaParams(BoundsParams):
    bounds: tuple[Positive, Positive] = Field((0.1, 10.0), description="Search interval for T.")


class VectorParams(NoParams):
    reg_mu: Penalty = Field(0.0, description="Weight of the bias penalty μ Σ b²/C.")


class OdirParams(NoParams):
    reg_lambda: Penalty = Field(0.01, description="ODIR off-diagonal weight λ (Kull et al. 2019).")
    reg_mu: Penalty = Field(0.01, description="ODIR intercept weight μ.")


class AdaptiveParams(NoParams):
    reg: Penalty = Field(1e-2, description="L2 penalty on the temperature's feature weights w.")


class BinsParams(NoParams):
    bins: int = Field(15, ge=1, le=1000)


@dataclass(frozen=True)
class Method:
    """A calibration method: its parameter model (api.md's names, which are the estimator's constructor
    arguments), its estimator class, the constructor arguments the method fixes, and for C classes its
    parameter count, the fewest rows a fit needs."""

    params: type[NoParams]
    estimator: type[Calibrator]
    min_rows: Callable[[int], int]
    fixed: Mapping[str, Any] = field(default_factory=dict)

    def create(self, params: NoParams) -> Calibrator:
        """The unfitted estimator with these hyper-parameters."""
        return self.estimator(**self.fixed, **params.model_dump())


METHODS: dict[str, Method] = {
    "temperature": Method(BoundsParams, TemperatureScaling, lambda k: 1),
    "temperature_ca": Method(CaParams, CorrectnessAwareTemperature, lambda k: 1),
    "adaptive_temperature": Method(AdaptiveParams, AdaptiveTemperature, lambda k: min(k, 10) + 2),
    "vector_scaling": Method(
        VectorParams, AffineScaling, lambda k: 2 * k, {"kind": "vector", "on_log_probs": False, "reg_lambda": 0.0}
    ),
    "matrix_scaling": Method(OdirParams, AffineScaling, lambda k: k * k + k, {"kind": "matrix", "on_log_probs": False}),
    "dirichlet": Method(OdirParams, AffineScaling, lambda k: k * k + k, {"kind": "matrix", "on_log_probs": True}),
    "histogram_binning": Method(BinsParams, HistogramBinning, lambda k: 2),
    "isotonic": Method(NoParams, IsotonicCalibration, lambda k: 2),
    "platt": Method(NoParams, PlattScaling, lambda k: 2),
    "beta": Method(NoParams, BetaCalibration, lambda k: 3),
}


def restore(method: str, params: dict[str, object], fitted: dict[str, object]) -> Calibrator:
    definition = METHODS[method]
    return definition.create(definition.params.model_validate(params)).load(fitted)
