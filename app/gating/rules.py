"""Gate rules: one comparison of a candidate's metric against bounds or against a baseline.

Semantics (api.md, "Gates"): `min`/`max` bound the candidate; `max_increase_*`/`max_decrease_*`
tolerate a numeric change against the baseline; `min_improvement_*` demand a change in the metric's
better direction. `_rel` changes divide by |baseline|; at baseline 0 the relative change is 0 when
the values are equal and ±inf otherwise. With an interval (bootstrap, in the same units as the
change), a tolerance rule fails only if the whole interval lies beyond the tolerance, and an
improvement rule passes only if the whole interval shows the improvement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Op = Literal[
    "min",
    "max",
    "max_increase_abs",
    "max_increase_rel",
    "max_decrease_abs",
    "max_decrease_rel",
    "min_improvement_abs",
    "min_improvement_rel",
]
Severity = Literal["fail", "warn"]


def relative(change: float, baseline: float) -> float:
    if baseline != 0:
        return change / abs(baseline)
    return 0.0 if change == 0 else math.copysign(math.inf, change)


@dataclass(frozen=True)
class Outcome:
    passed: bool
    delta: float | None
    reason: str


def check(
    op: Op,
    value: float,
    candidate: float | None,
    baseline: float | None,
    direction: int,
    interval: tuple[float, float] | None = None,
) -> Outcome:
    """Evaluate one rule; `interval` bounds candidate − baseline (absolute units) when significance is on."""
    if candidate is None:
        return Outcome(False, None, "the candidate has no value for this metric")
    if op == "min":
        return Outcome(
            candidate >= value, None, f"candidate {candidate:.6g} {'≥' if candidate >= value else '<'} {value}"
        )
    if op == "max":
        return Outcome(
            candidate <= value, None, f"candidate {candidate:.6g} {'≤' if candidate <= value else '>'} {value}"
        )
    if baseline is None:
        return Outcome(False, None, "the baseline has no value for this metric")
    delta = candidate - baseline
    scale = (lambda x: relative(x, baseline)) if op.endswith("_rel") else (lambda x: x)
    change = scale(delta)
    bounds = (scale(interval[0]), scale(interval[1])) if interval is not None else None
    unit = "relative change" if op.endswith("_rel") else "change"
    if op.startswith("max_increase"):
        passed = change <= value if bounds is None else bounds[0] <= value
        return Outcome(
            passed,
            delta,
            f"{unit} {change:+.6g}, tolerated increase {value}"
            + ("" if bounds is None else f", interval [{bounds[0]:+.6g}, {bounds[1]:+.6g}]"),
        )
    if op.startswith("max_decrease"):
        passed = -change <= value if bounds is None else -bounds[1] <= value
        return Outcome(
            passed,
            delta,
            f"{unit} {change:+.6g}, tolerated decrease {value}"
            + ("" if bounds is None else f", interval [{bounds[0]:+.6g}, {bounds[1]:+.6g}]"),
        )
    improvement = change * direction
    passed = improvement >= value if bounds is None else min(b * direction for b in bounds) >= value
    return Outcome(
        passed,
        delta,
        f"improvement {improvement:+.6g} in the better direction, demanded {value}"
        + ("" if bounds is None else f", interval [{bounds[0]:+.6g}, {bounds[1]:+.6g}]"),
    )


def tolerated(op: Op, value: float, baseline: float | None, direction: int) -> tuple[float | None, float | None]:
    """The changes (candidate − baseline, absolute units) a rule accepts without an interval, as (lower,
    upper), None for an open end; (None, None) for `min`/`max` (they bound the candidate, not a change)
    or without a baseline. The web report shades this region behind each rule's interval."""
    if op in ("min", "max") or baseline is None:
        return None, None
    limit = value * abs(baseline) if op.endswith("_rel") else value
    if op.startswith("max_increase"):
        return None, limit
    if op.startswith("max_decrease"):
        return -limit, None
    return (limit, None) if direction > 0 else (None, -limit)
