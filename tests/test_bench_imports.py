"""Every benchmark imports against today's app (they run outside the suite, so nothing else would notice
a moved name); those that need the bench extras (torch, faiss) are skipped without them."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCH = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "bench").glob("*.py") if p.stem != "__init__")
EXTRAS = {"torch", "faiss"}


@pytest.mark.parametrize("name", BENCH)
def test_the_benchmark_imports(name: str) -> None:
    try:
        importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError as exc:
        if exc.name not in EXTRAS:
            raise
        pytest.skip(f"needs the bench extras ({exc.name})")
