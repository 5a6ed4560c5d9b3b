"""Storages: the real PostgreSQL (a fresh database per test run), SQLite files, journal files, bad URLs."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from pathlib import Path

import optuna
import pytest
from conftest import free_port
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


class _Outage:
    """A TCP forwarder in front of the real PostgreSQL that can go down and come back: what a client
    sees of a server restart (its connections dropped, new ones refused, then accepted again), without
    stopping the server that other tests, and the suite's other xdist workers, are using."""

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5432)) -> None:
        self.target, self.port = target, free_port()
        self.links: list[socket.socket] = []
        self.up = threading.Event()

    def url(self, postgres_url: str) -> str:
        return postgres_url.replace(f"{self.target[0]}:{self.target[1]}/", f"127.0.0.1:{self.port}/")

    def start(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: the same port again
        listener.settimeout(0.1)
        self.up.set()
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        self.up.clear()
        time.sleep(0.3)  # the accept loop sees it and closes the listener
        for link in self.links:
            with contextlib.suppress(OSError):
                link.shutdown(socket.SHUT_RDWR)
            link.close()
        self.links.clear()

    def _accept(self, listener: socket.socket) -> None:
        with listener:
            while self.up.is_set():
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                upstream = socket.create_connection(self.target)
                self.links += [client, upstream]
                for source, sink in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def test_retrying_rides_out_a_postgres_outage(postgres_url: str) -> None:
    outage = _Outage()
    outage.start()
    study = studies.open_study(storages.open_storage(outage.url(postgres_url)), "restart", ["minimize"])
    study.tell(study.ask(), 1.0)
    outage.stop()
    comeback = threading.Timer(3.0, outage.start)
    try:
        comeback.start()
        started = time.monotonic()
        trial = storages.retrying(study.ask, patience=120)  # fails while the server is away, then goes on
        study.tell(trial, 2.0)
        assert time.monotonic() - started >= 2.5
        assert [t.value for t in study.get_trials()] == [1.0, 2.0]
    finally:
        comeback.join()
        outage.stop()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "journal"])
def test_claim_lets_exactly_one_of_racing_workers_through(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Workers released at once (a barrier), each with its own storage connection, claim the same
    keys: each key has one winner, and it holds the winner's value. A check, then a set, let two or
    more through in most rounds here, on all three storages."""
    url = {
        "sqlite": f"sqlite:///{tmp_path / 'study.db'}",
        "postgresql": request.getfixturevalue("postgres_url") if kind == "postgresql" else "",
        "journal": f"journal:{tmp_path / 'study.log'}",
    }[kind]
    name = f"claims-{uuid.uuid4().hex[:8]}"
    optuna.create_study(study_name=name, storage=storages.open_storage(url))
    workers, rounds = 6, 8
    opened = [optuna.load_study(study_name=name, storage=storages.open_storage(url)) for _ in range(workers)]
    barrier = threading.Barrier(workers)
    won: dict[str, list[int]] = {f"k{r}": [] for r in range(rounds)}

    def work(worker: int) -> None:
        for key in won:
            barrier.wait()
            if storages.claim(opened[worker], key, worker):
                won[key].append(worker)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    attrs = optuna.load_study(study_name=name, storage=storages.open_storage(url)).user_attrs
    assert {key: len(winners) for key, winners in won.items()} == dict.fromkeys(won, 1)
    assert all(attrs[key] == winners[0] for key, winners in won.items())
