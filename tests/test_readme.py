"""The README's examples run as written: each block tagged `# readme-test: <name>` is executed against a
live server, and every `print(...)  # expected` line must print what its comment says."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n# readme-test: (?P<name>[\w-]+)\n(?P<code>.*?)```", re.S)


def readme_block(name: str) -> str:
    for match in BLOCK.finditer((ROOT / "README.md").read_text()):
        if match["name"] == name:
            return match["code"]
    pytest.fail(f"README has no block tagged `# readme-test: {name}`")


def expected_prints(code: str) -> list[str]:
    return [
        line.split("#", 1)[1].strip()
        for line in code.splitlines()
        if line.lstrip().startswith("print(") and "#" in line
    ]


@pytest.mark.parametrize("name", ["client", "calibrators", "sdm", "models", "serving"])
def test_readme_block_runs_and_prints_what_it_says(
    name: str, live_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = readme_block(name)
    assert "http://127.0.0.1:8000" in code  # the server of `make run`, replaced by the suite's
    monkeypatch.chdir(ROOT)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code.replace("http://127.0.0.1:8000", live_server), f"README:{name}", "exec"), {})
    expected = expected_prints(code)
    assert expected, "the block shows no output to check"
    assert printed.getvalue().splitlines() == expected
