"""Storages: the real PostgreSQL (a fresh database per test run), SQLite files, journal files, bad URLs."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from clipsweep import storage as storages
from clipsweep import study as studies
from clipsweep.errors import ConfigError
from clipsweep.names import STORAGE_ENV


def test_open_storage_postgres_shares_a_study_between_connections(postgres_url: str) -> None:
    first = studies.open_study(storages.open_storage(postgres_url), "shared", ["minimize"])
    trial = first.ask()
    first.tell(trial, 0.5)
    second = studies.open_study(storages.open_storage(postgres_url), "shared", ["minimize"])
    assert [t.value for t in second.get_trials()] == [0.5]
    with pytest.raises(ConfigError, match=r"hydra\.sweeper\.direction=\['maximize'\]"):
        studies.open_study(storages.open_storage(postgres_url), "shared", ["maximize"])


def test_open_storage_refuses_a_missing_postgres_database_with_the_password_masked(postgres_url: str) -> None:
    # Needs the server itself (the fixture skips or fails without it): only it can say "does not exist".
    server = postgres_url.rsplit("/", 1)[0].replace("postgres@", "postgres:s3cret@")
    with pytest.raises(ConfigError) as info:
        storages.open_storage(f"{server}/no_such_database_here")
    assert "does not exist" in str(info.value) and "s3cret" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("postgresql://clip:s3cret@127.0.0.1:1/optuna", "Connection refused"),
        ("mysql://clip:s3cret@127.0.0.1/optuna", "driver is not installed"),
        ("nosuchdialect://clip:s3cret@localhost/db", "Can't load plugin"),
        ("not a url at all", "Could not parse"),
        ("sqlite:////no/such/directory/clipsweep.db", "unable to open database file"),
        ("journal:/no/such/directory/clipsweep.journal", "journal:<file> in an existing directory"),
    ],
)
def test_open_storage_refuses_bad_urls_with_the_password_masked(url: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        storages.open_storage(url)
    message = str(info.value)
    assert message.startswith("hydra.sweeper.storage=") and reason in message
    assert "s3cret" not in message
    if "s3cret" in url:
        assert "***" in message


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://clip:s3cret@postgres:5432/optuna", "postgresql://clip:***@postgres:5432/optuna"),
        ("postgresql+psycopg://clip:p%40ss@127.0.0.1/optuna", "postgresql+psycopg://clip:***@127.0.0.1/optuna"),
        ("sqlite:///clipsweep.db", "sqlite:///clipsweep.db"),
        ("redis://user:s3cret@localhost:6379", "redis://user:***@localhost:6379"),
    ],
)
def test_mask_url_hides_passwords(url: str, masked: str) -> None:
    assert storages.mask_url(url) == masked


def test_storage_url_prefers_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STORAGE_ENV, "postgresql://127.0.0.1/from-env")
    assert storages.storage_url("sqlite:///config.db") == "postgresql://127.0.0.1/from-env"
    monkeypatch.delenv(STORAGE_ENV)
    assert storages.storage_url("sqlite:///config.db") == "sqlite:///config.db"


def test_open_storage_journal_file_holds_a_study(tmp_path: Path) -> None:
    url = f"journal:{tmp_path / 'clipsweep.journal'}"
    study = studies.open_study(storages.open_storage(url), "j", ["minimize"])
    study.tell(study.ask(), 1.0)
    again = optuna.load_study(study_name="j", storage=storages.open_storage(url))
    assert [t.state for t in again.get_trials()] == [TrialState.COMPLETE]
    with studies.Heartbeat(study._storage, 1) as heartbeat:  # no heartbeats on a journal: a no-op
        heartbeat.add(again.ask()._trial_id)


def _cluster(action: str) -> None:
    version = next(Path("/etc/postgresql").iterdir()).name
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action], check=True, timeout=120)


@pytest.mark.skipif(shutil.which("pg_ctlcluster") is None, reason="needs pg_ctlcluster to restart PostgreSQL")
def test_retrying_rides_out_a_postgres_restart(postgres_url: str) -> None:
    study = studies.open_study(storages.open_storage(postgres_url), "restart", ["minimize"])
    study.tell(study.ask(), 1.0)
    _cluster("stop")
    starter = threading.Timer(3.0, _cluster, args=("start",))
    try:
        starter.start()
        started = time.monotonic()
        trial = storages.retrying(study.ask, patience=120)  # fails while the server is down, then goes on
        study.tell(trial, 2.0)
        assert time.monotonic() - started >= 2.5
        assert [t.value for t in study.get_trials()] == [1.0, 2.0]
    finally:
        starter.join()
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", next(Path("/etc/postgresql").iterdir()).name,
                        "main", "start"], timeout=120, capture_output=True)  # fmt: skip
