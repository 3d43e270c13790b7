"""Calibration methods by name: a parameter model (api.md's names) and a factory for the fitter."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.core.calibration.fitters import (
    AffineScaling,
    BetaCalibration,
    Calibrator,
    CorrectnessAwareTemperature,
    HistogramBinning,
    IsotonicCalibration,
    PlattScaling,
    TemperatureScaling,
)
from app.core.runtime import SessionCache

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


class BinsParams(NoParams):
    bins: int = Field(15, ge=1, le=1000)


@dataclass(frozen=True)
class Method:
    params: type[NoParams]
    make: Callable[[NoParams, SessionCache | None], Calibrator]
    min_rows: Callable[[int], int]  # for C classes: its parameter count, the fewest rows a fit needs

    def create(self, params: NoParams, cache: SessionCache | None = None) -> Calibrator:
        return self.make(params, cache)


METHODS: dict[str, Method] = {
    "temperature": Method(BoundsParams, lambda p, c: TemperatureScaling(p.bounds, c), lambda k: 1),  # type: ignore[attr-defined]
    "temperature_ca": Method(CaParams, lambda p, c: CorrectnessAwareTemperature(p.bounds, c), lambda k: 1),  # type: ignore[attr-defined]
    "vector_scaling": Method(
        VectorParams,
        lambda p, c: AffineScaling("vector", False, 0.0, p.reg_mu, c),  # type: ignore[attr-defined]
        lambda k: 2 * k,
    ),
    "matrix_scaling": Method(
        OdirParams,
        lambda p, c: AffineScaling("matrix", False, p.reg_lambda, p.reg_mu, c),  # type: ignore[attr-defined]
        lambda k: k * k + k,
    ),
    "dirichlet": Method(
        OdirParams,
        lambda p, c: AffineScaling("matrix", True, p.reg_lambda, p.reg_mu, c),  # type: ignore[attr-defined]
        lambda k: k * k + k,
    ),
    "histogram_binning": Method(BinsParams, lambda p, c: HistogramBinning(p.bins, c), lambda k: 2),  # type: ignore[attr-defined]
    "isotonic": Method(NoParams, lambda p, c: IsotonicCalibration(c), lambda k: 2),
    "platt": Method(NoParams, lambda p, c: PlattScaling(c), lambda k: 2),
    "beta": Method(NoParams, lambda p, c: BetaCalibration(c), lambda k: 3),
}


def restore(
    method: str, params: dict[str, object], fitted: dict[str, object], cache: SessionCache | None = None
) -> Calibrator:
    definition = METHODS[method]
    return definition.create(definition.params.model_validate(params), cache).load(fitted)
