"""The README's examples run as written: each block tagged `# readme-test: <name>` is executed against a
live server, and every `print(...)  # expected` line must print what its comment says."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI

from app.config import Settings

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n# readme-test: (?P<name>[\w-]+)\n(?P<code>.*?)```", re.S)


def readme_block(name: str) -> str:
    for match in BLOCK.finditer((ROOT / "README.md").read_text()):
        if match["name"] == name:
            return match["code"]
    pytest.fail(f"README has no block tagged `# readme-test: {name}`")


@contextlib.contextmanager
def grpc_service(app: FastAPI, wanted: bool) -> Iterator[str]:
    """The suite's app over gRPC on a free port, where a block calls `CALIPER_GRPC_PORT=8001`."""
    if not wanted:
        yield ""
        return
    from app.grpc_api.service import serve

    server = serve(app.state.resources)
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        server.stop(0)


def expected_prints(code: str) -> list[str]:
    return [
        line.split("#", 1)[1].strip()
        for line in code.splitlines()
        if line.lstrip().startswith("print(") and "#" in line
    ]


@pytest.mark.parametrize(
    "name",
    ["client", "multilabel", "calibrators", "sdm", "conformal", "estimates", "models", "serving", "serving-grpc"],
)
def test_readme_block_runs_and_prints_what_it_says(
    name: str, live_server: str, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = readme_block(name)
    assert "http://127.0.0.1:8000" in code  # the server of `make run`, replaced by the suite's
    monkeypatch.chdir(ROOT)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), grpc_service(app, "127.0.0.1:8001" in code) as grpc_address:
        runnable = code.replace("http://127.0.0.1:8000", live_server).replace("127.0.0.1:8001", grpc_address)
        exec(compile(runnable, f"README:{name}", "exec"), {})
    expected = expected_prints(code)
    assert expected, "the block shows no output to check"
    assert printed.getvalue().splitlines() == expected


SHELL_BLOCK = re.compile(r"```sh\n# readme-test: (?P<name>[\w-]+)\n(?P<code>.*?)```", re.S)
FILE_BLOCK = re.compile(r"```\w+\n# (?P<file>[\w.]+)\n# readme-test: (?P<name>[\w-]+)\n(?P<content>.*?)```", re.S)
SHELL_EXAMPLES = [
    "sh-evaluations",
    "sh-calibrators",
    "sh-ood",
    "sh-detectors",
    "sh-sdm",
    "sh-gates",
    "sh-cli",
    "sh-keys",
    "sh-models",
    "sh-report",
    "sh-jobs",
    "sh-sources",
    "sh-guarantees",
]


def test_every_tagged_shell_block_is_run() -> None:
    names = {m["name"] for m in SHELL_BLOCK.finditer((ROOT / "README.md").read_text())}
    assert names == set(SHELL_EXAMPLES)


@pytest.mark.parametrize("name", SHELL_EXAMPLES)
def test_readme_shell_block_runs_as_written(name: str, live_server: str, settings: Settings, tmp_path: Path) -> None:
    """The blocks of one tag, in README order, run by bash with `set -euo pipefail` in a folder that has
    the checkout's `.venv` (as the repository root after `make run`); every curl uses --fail-with-body,
    so any answer of 400 or more fails the block. Files a block needs are the README's own (gate.toml)."""
    readme = (ROOT / "README.md").read_text()
    script = "\n".join(m["code"] for m in SHELL_BLOCK.finditer(readme) if m["name"] == name)
    assert "http://127.0.0.1:8000" in script or ".venv/bin/caliper" in script
    for match in FILE_BLOCK.finditer(readme):
        if match["name"] == name:
            (tmp_path / match["file"]).write_text(match["content"])
    assert "<<<" not in script and "[[ " not in script, "a block fenced `sh` uses bash syntax"
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    (tmp_path / "models").symlink_to(ROOT / "models")  # the demo model and its splits, as in the repository
    before = {p.name for p in tmp_path.iterdir()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALIPER_")}
    env.update(DATABASE_URL=settings.database_url, PATH=f"{ROOT / '.venv' / 'bin'}:{env['PATH']}")
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script.replace("http://127.0.0.1:8000", live_server)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    assert result.stdout.strip()
    left = {p.name for p in tmp_path.iterdir()} - before - {"var"}
    assert left == set(), f"the examples leave files in the checkout (write them under var/): {sorted(left)}"


def test_every_loss_and_metric_is_listed_in_what_can_be_computed() -> None:
    from app.core.losses import LOSSES
    from app.core.metrics import METRICS

    section = (ROOT / "README.md").read_text().split("### What can be computed")[1].split("Conventions")[0]
    missing = sorted(n for n in (*LOSSES, *METRICS) if f"`{n}`" not in section)
    assert not missing, missing
