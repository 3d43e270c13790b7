"""What can be checked of the Docker set-up without a Docker engine, and the README's promises."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import yaml

from app.config import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_compose_wires_postgres_migrations_and_api() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"db", "migrate", "api"} <= set(services)
    assert "healthcheck" in services["db"]
    assert services["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for name in ("migrate", "api"):
        assert services[name]["environment"]["DATABASE_URL"].startswith("postgresql+psycopg://")
    assert services["migrate"]["command"] == ["caliper", "db", "upgrade"]


def test_compose_config_parses_where_compose_is_installed() -> None:
    plugin = shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True)
    compose = ["docker", "compose"] if plugin and plugin.returncode == 0 else None
    compose = compose or (["docker-compose"] if shutil.which("docker-compose") else None)
    if compose is None:
        pytest.skip("neither the compose plugin nor docker-compose is installed (make docker-smoke installs one)")
    subprocess.run([*compose, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], check=True)


def test_compose_validates_against_the_compose_spec_schema() -> None:
    checker = Path(sys.executable).with_name("check-jsonschema")
    done = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", str(ROOT / "docker-compose.yml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_names_its_image_and_takes_the_port_and_cors_from_the_environment() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert services["api"]["image"] == services["migrate"]["image"] == "caliper-service:latest"
    assert services["api"]["ports"] == ["127.0.0.1:${CALIPER_PORT:-8000}:8000"]
    assert services["api"]["environment"]["CALIPER_CORS_ORIGINS"] == "${CALIPER_CORS_ORIGINS:-}"
    assert services["api"]["command"] == ["caliper", "serve"]


def test_dockerfile_installs_the_lock_writes_only_its_volume_and_checks_readiness_on_its_port() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "pip install --require-hashes -r requirements.lock" in text and "pip install --no-deps ./client ." in text
    build = text.split("\nFROM ")[1]
    assert "COPY app ./app" in build and "COPY migrations ./migrations" in build  # the wheel carries them
    lock = (ROOT / "requirements.lock").read_text()
    assert "file://" not in lock and "--find-links" not in lock and "--hash=sha256:" in lock
    pinned = {line.split("==")[0] for line in lock.splitlines() if "==" in line and not line.startswith(" ")}
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=\[ ]", d)[0].lower() for d in declared} - {"caliper-client"}  # ./client: built here
    assert "COPY client ./client" in build
    assert names <= pinned, f"requirements.lock lacks {sorted(names - pinned)}: run `make lock`"
    assert "CALIPER_DATABASE_URL=sqlite:////var/lib/caliper/caliper.db" in text
    assert "CALIPER_ARTIFACT_DIR=/var/lib/caliper/artifacts" in text
    assert "CALIPER_AUTH=required" in text  # api.md: the image needs keys
    assert 'VOLUME ["/var/lib/caliper"]' in text and "chown -R caliper /var/lib/caliper" in text
    healthcheck = next(line for line in text.splitlines() if "urlopen" in line)
    assert "/readyz" in healthcheck and "CALIPER_PORT" in healthcheck and "8000/" not in healthcheck
    assert re.search(r'^CMD \["sh", "-c", "caliper db upgrade && exec caliper serve --workers .*nproc', text, re.M)


def test_dockerfile_is_multi_stage_non_root_and_ships_migrations() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) == 2
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    migrations = re.search(r"CALIPER_MIGRATIONS_DIR=(\S+)", text)
    assert migrations and re.search(rf"^COPY migrations {re.escape(migrations.group(1))}", text, re.M)


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in Settings.model_fields:
        env = "DATABASE_URL" if name == "database_url" else f"CALIPER_{name.upper()}"
        assert f"`{env}`" in readme, f"README's configuration table lacks {env}"


def test_the_wheel_carries_the_migrations_and_a_plain_install_can_migrate(tmp_path: Path) -> None:
    """`pip install .` (not editable), then `caliper db upgrade` from elsewhere: the migrations come from the
    installed package (the repository keeps them at its top level). The distribution is `caliper-service`."""
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("caliper_service-*.whl")
    target = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert (target / "app" / "migrations" / "versions" / "0001_evaluations.py").exists()
    assert not (target / "migrations").exists()  # not a top-level `migrations` module
    assert (target / "app" / "api" / "response_examples.json").exists()  # the OpenAPI answers' examples
    script = (
        f"import sys; sys.path.insert(0, {str(target)!r}); import app, app.config; "
        "assert app.__file__.startswith(sys.path[0]), app.__file__; "
        "print(app.config.Settings().migrations_dir); from app.cli import main; "
        "raise SystemExit(main(['db', 'upgrade']))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CALIPER_MIGRATIONS_DIR")}
    env["CALIPER_DATABASE_URL"] = f"sqlite:///{tmp_path / 'plain.db'}"
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[0] == str(target / "app" / "migrations")
    head = max(p.name.split("_")[0] for p in (ROOT / "migrations" / "versions").glob("[0-9]*.py"))
    assert f"is at migration {head}" in done.stdout


def test_the_package_list_names_every_package_of_the_tree() -> None:
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    tree = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "app").rglob("__init__.py")}
    assert declared == tree | {"app.migrations", "app.migrations.versions"}


def test_the_thin_client_installs_alone_into_a_clean_venv_and_gates_against_a_server(
    live_server: str, tmp_path: Path
) -> None:
    """What a CI job installs: caliper-client (httpx, numpy, stamina), no service code; its `caliper` verbs
    store a baseline, promote it, gate a worse candidate (exit 1) and report the verdict again."""
    venv = tmp_path / "ci-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    installed = subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "install", "-q", str(ROOT / "client")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    listed = subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, check=True
    )
    names = {line.split("==")[0].lower() for line in listed.stdout.splitlines()}
    assert "caliper-client" in names and not names & {"caliper-service", "fastapi", "onnxruntime", "sqlalchemy"}
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 400)
    good = rng.normal(size=(400, 3)) + 4.0 * np.eye(3)[labels]
    worse = rng.normal(size=(400, 3)) + 0.5 * np.eye(3)[labels]
    np.savez(tmp_path / "good.npz", logits=good, labels=labels)
    np.savez(tmp_path / "worse.npz", logits=worse, labels=labels)
    (tmp_path / "gate.toml").write_text('[[rules]]\nmetric = "accuracy"\nop = "max_decrease_abs"\nvalue = 0.01\n')
    env = {k: v for k, v in os.environ.items() if k not in ("CALIPER_URL", "VIRTUAL_ENV", "PYTHONPATH")}

    def caliper(*args: str) -> subprocess.CompletedProcess[str]:
        command = [str(venv / "bin" / "caliper"), *args]
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    baseline = caliper("evaluate", "--url", live_server, "--npz", "good.npz", "--model", "m")
    assert baseline.returncode == 0, baseline.stderr
    assert caliper("promote", baseline.stdout.strip(), "--url", live_server).returncode == 0
    gated = caliper(
        "gate", "--url", live_server, "--policy", "gate.toml", "--candidate-file", "worse.npz",
        "--baseline", "tag:prod", "--model", "m", "--json", "gate.json",
    )  # fmt: skip
    assert gated.returncode == 1 and "FAIL" in gated.stdout, gated.stdout + gated.stderr
    gate_id = json.loads((tmp_path / "gate.json").read_text())["id"]
    again = caliper("report", gate_id, "--url", live_server, "--junit", "again.xml")
    assert again.returncode == 1 and again.stdout == gated.stdout.split("\n", 1)[1], again.stdout
    assert 'failures="1"' in (tmp_path / "again.xml").read_text()
    alone = caliper("gate", "--policy", "gate.toml", "--candidate", "a", "--baseline", "b")
    assert alone.returncode == 2 and "needs caliper-service" in alone.stderr  # no server, no service code
