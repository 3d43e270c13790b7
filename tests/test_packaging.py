"""What can be checked of the Docker set-up without a Docker engine, and the README's promises."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

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


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client")
def test_compose_config_parses_when_the_plugin_exists() -> None:
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("docker compose plugin not installed")
    subprocess.run(["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], check=True)


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
