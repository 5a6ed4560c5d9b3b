"""docker-compose.yml, Dockerfile and .env.example checked against the code (no Docker engine here):
services wired as the README says, every variable defined, the workers' command accepted by the
real sweeper, the MLflow server's flags known to the installed mlflow, nothing but loopback exposed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clipsweep.cli import COMMANDS, main
from clipsweep.names import STORAGE_ENV, TRACKING_URI_ENV

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
ENV_EXAMPLE = dict(
    line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines() if line and not line.startswith("#")
)
_VARIABLE = re.compile(r"\$\{([A-Z_]+)(?::?[-?][^}]*)?\}")


def _substitute(text: str) -> str:
    """Compose's interpolation with the .env.example values (defaults where a variable has one)."""

    def value(match: re.Match[str]) -> str:
        name, rest = match.group(1), match.group(0)
        default = re.search(r":?-([^}]*)\}$", rest)
        return ENV_EXAMPLE.get(name) or (default.group(1) if default else "")

    return _VARIABLE.sub(value, text)


def test_compose_has_the_stack_services() -> None:
    assert {"postgres", "mlflow", "init", "worker", "worker-gpu", "optuna-dashboard"} <= set(SERVICES)
    assert SERVICES["postgres"]["image"].startswith("postgres:")
    assert SERVICES["mlflow"]["image"].startswith("ghcr.io/mlflow/mlflow:")
    assert SERVICES["postgres"]["healthcheck"]["test"][0] == "CMD-SHELL"
    assert {"pgdata", "mlartifacts"} <= set(COMPOSE["volumes"])
    assert SERVICES["worker"]["depends_on"]["init"] == {"condition": "service_completed_successfully"}
    assert SERVICES["worker-gpu"]["profiles"] == ["gpu"]
    device = SERVICES["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert SERVICES["worker"]["build"] == "." and (ROOT / "Dockerfile").is_file()


def test_compose_exposes_only_loopback_and_commits_no_credentials() -> None:
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
    text = (ROOT / "docker-compose.yml").read_text()
    assert "change-me" not in text
    assert re.findall(r"postgresql://[^$\s]*:[^$@\s]+@", text) == []  # passwords only as ${POSTGRES_PASSWORD}
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


def test_compose_variables_are_all_defined_in_env_example() -> None:
    used = set(_VARIABLE.findall((ROOT / "docker-compose.yml").read_text()))
    assert used <= set(ENV_EXAMPLE), used - set(ENV_EXAMPLE)


def test_compose_workers_use_the_codes_environment_variables() -> None:
    environment = SERVICES["worker"]["environment"]
    assert set(environment) == {STORAGE_ENV, TRACKING_URI_ENV}
    assert _substitute(environment[STORAGE_ENV]).startswith("postgresql://clipsweep:change-me@postgres:5432/optuna")
    assert environment[TRACKING_URI_ENV] == "http://mlflow:5000"
    for service in ("worker", "init", "worker-gpu"):
        assert SERVICES[service]["command"][0] in COMMANDS


def test_compose_worker_command_is_accepted_by_the_real_sweeper(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(STORAGE_ENV, f"sqlite:///{tmp_path / 'optuna.db'}")  # stands in for the postgres service
    monkeypatch.delenv(TRACKING_URI_ENV, raising=False)
    command = [_substitute(part) for part in SERVICES["init"]["command"]]
    assert main([*command, "tracking.enabled=false"]) == 0
    worker = [_substitute(part) for part in SERVICES["worker"]["command"]]
    assert worker[0] == "sweep" and "train.threads=1" in worker
    from clipsweep.preflight import validate_sweep_line

    assert validate_sweep_line([*worker[1:], "tracking.enabled=false"]) is None


def test_compose_mlflow_server_flags_exist_in_the_installed_mlflow() -> None:
    command = _substitute(SERVICES["mlflow"]["command"][0])
    flags = set(re.findall(r"(--[a-z-]+)", command.split("mlflow server", 1)[1]))
    assert flags == {"--backend-store-uri", "--artifacts-destination", "--serve-artifacts", "--host", "--port",
                     "--allowed-hosts"}  # fmt: skip
    help_text = subprocess.run(
        [sys.executable, "-m", "mlflow", "server", "--help"], capture_output=True, text=True, timeout=120
    ).stdout
    for flag in flags:
        assert flag in help_text, flag
    assert "postgresql://clipsweep:change-me@postgres:5432/mlflow" in command
    assert "CREATE DATABASE mlflow" in COMPOSE["configs"]["create-mlflow-db"]["content"]


@pytest.mark.parametrize("path", ["pyproject.toml", "README.md", "sweeper", "models", "conf", "hydra_plugins"])
def test_dockerfile_copies_what_exists(path: str) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(rf"^COPY .*\b{re.escape(path)}\b", dockerfile, re.M) and (ROOT / path).exists()
    assert 'ENTRYPOINT ["clipsweep"]' in dockerfile and "'.[postgres]'" in dockerfile
