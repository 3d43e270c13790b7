"""docs/architecture.md stays true: every file it names exists, every `farm-studio walk` it quotes names a
real function, and it states each import-linter contract of pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "architecture.md").read_text()


def test_every_named_file_exists() -> None:
    named = set(re.findall(r"\b((?:app|client|migrations)/[\w/]+\.py)\b", DOC))
    named |= {m.rstrip("/") for m in re.findall(r"\b(app/\w+)/?[\s:`\"]", DOC)}
    assert len(named) > 20
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, missing


def test_the_walks_it_quotes_start_at_real_functions() -> None:
    walks = re.findall(r"farm-studio walk ([\w/]+\.py):([\w.]+):(\w+)", DOC)
    assert walks
    for path, function, parameter in walks:
        source = (ROOT / path).read_text()
        name = function.split(".")[-1]
        assert re.search(rf"def {name}\([^)]*\b{parameter}\b", source, re.S), (path, function, parameter)


def test_it_states_every_contract() -> None:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    section = DOC.split("What the contracts say")[1].split("## ")[0]
    bullets = [line for line in section.splitlines() if line.startswith("- ")]
    assert len(bullets) == len(contracts)
