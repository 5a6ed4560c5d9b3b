"""Optuna storages: the URL a sweep uses (``CLIPSWEEP_STORAGE`` wins, the password masked in every
message), opening one (SQLite, PostgreSQL or a journal file; heartbeats for a sweep, none for a
reader), riding out a database that is briefly unreachable, and claims that one of several workers
wins."""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.exceptions import ExperimentalWarning, StorageInternalError
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from sqlalchemy.exc import ArgumentError, DisconnectionError, IntegrityError, OperationalError

from clipsweep.errors import ConfigError
from clipsweep.names import STORAGE_ENV

_OPEN_ATTEMPTS = 4
_CONNECT_TIMEOUT_S = 10
_log = logging.getLogger(__name__)
T = TypeVar("T")


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, for every message and log line."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL: mask anything between ':' and '@' after '//'
        head, sep, tail = url.partition("//")
        if sep and "@" in tail:
            credentials, _, host = tail.rpartition("@")
            if ":" in credentials:
                credentials = credentials.split(":", 1)[0] + ":***"
            return f"{head}//{credentials}@{host}"
        return url


def local_file(url: str) -> Path | None:
    """The file a local store's URL names (``sqlite:///path``, ``journal:path``); None for a server or
    an in-memory store. Commands that only read a store refuse a missing file rather than create an
    empty store beside the user (a wrong working directory would otherwise look like no results)."""
    for prefix in ("sqlite:///", JOURNAL_PREFIX):
        if url.startswith(prefix):
            path = url[len(prefix) :]
            return Path(path) if path and path != ":memory:" else None
    return None


def require_existing(key: str, url: str, what: str, first: str) -> None:
    """Refuse (ConfigError naming ``key``) a local store whose file does not exist yet."""
    path = local_file(url)
    if path is not None and not path.exists():
        raise ConfigError(key, mask_url(url), f"an existing {what}: no such file (run {first} first)")


def absolute_url(url: str, base: str | os.PathLike[str]) -> str:
    """``url`` with a relative local file made absolute against ``base``; any other URL unchanged.

    A job that a launcher runs in another working directory (a Ray worker, a submitit job) must open
    the same SQLite file, journal or MLflow store as the sweep that started it, not a fresh one
    beside itself. Covers ``sqlite:///rel``, ``journal:rel``, ``file:rel`` and a bare path (an
    MLflow local store); server URLs (``postgresql://``, ``http://``) and in-memory SQLite pass.
    """
    for prefix in ("sqlite:///", JOURNAL_PREFIX, "file:"):
        if url.startswith(prefix):
            path = url[len(prefix) :]
            if prefix == "file:" and path.startswith("//"):
                return url  # file:///abs or file://host/...: already absolute
            if not path or path.startswith("/") or path.startswith(":memory:"):
                return url
            return prefix + os.path.normpath(os.path.join(os.fspath(base), path))
    if "://" in url or not url:
        return url
    return os.path.normpath(os.path.join(os.fspath(base), url))


def storage_url(configured: str | None) -> str:
    """``CLIPSWEEP_STORAGE`` when set (credentials stay out of config files), else the config's."""
    url = os.environ.get(STORAGE_ENV) or configured
    if not url:
        raise ConfigError("hydra.sweeper.storage", configured, f"a storage URL (or set {STORAGE_ENV})")
    if ":***@" in url:  # what a config file holds of a URL whose password stayed in the sweep's environment
        raise ConfigError(
            "hydra.sweeper.storage", url, f"the URL with its password in {STORAGE_ENV} (set it on every node)"
        )
    return url


JOURNAL_PREFIX = "journal:"

# Errors a database restart or a dropped connection produces; anything else is not retried.
TRANSIENT = (OperationalError, DisconnectionError, StorageInternalError)


def open_storage(
    url: str, heartbeat_interval: int | None = None, grace_period: int | None = None, max_retry: int | None = None
) -> BaseStorage:
    """The study storage for ``url``; raises ConfigError (password masked) when it cannot be opened.

    Any SQLAlchemy URL gives an RDB storage; a sweep's (``heartbeat_interval`` given: the sweep's
    settings) has heartbeats, whose stale trials are failed and re-enqueued up to ``max_retry``
    times, while a reader's (``recommend``, ``export``, ...) has none. ``journal:<file>`` gives
    Optuna's journal storage (a log file with file locks: safe for local processes, but without
    heartbeats, so a killed worker's trial stays RUNNING until the study is cleaned up by hand).
    """
    if url.startswith(JOURNAL_PREFIX):
        return _journal_storage(url)
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Several processes write one SQLite file (sweeper, jobs reporting intermediate values).
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs["pool_pre_ping"] = True  # a connection dropped by a database restart is replaced
    if url.startswith("postgresql"):
        # A node behind a firewall that drops packets would otherwise wait on connect() forever.
        engine_kwargs["connect_args"] = {"connect_timeout": _CONNECT_TIMEOUT_S}
    error: Exception | None = None
    # Workers started together race to create the schema; a few short retries settle it.
    for attempt in range(_OPEN_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                # Optuna 4.9 renamed the stale-trial retry hook; older releases only have the old name.
                if heartbeat_interval is None:
                    return RDBStorage(url, engine_kwargs=engine_kwargs)
                if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):
                    retry = {
                        "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry)
                    }
                else:
                    retry = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry)}
                return RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    **retry,
                )
        except (ValueError, ImportError, ArgumentError) as err:  # a malformed URL or a missing driver
            error = err
            break
        except Exception as err:
            error = err
            time.sleep(0.2 * 2**attempt)
    raise _storage_error(url, error)


def _storage_error(url: str, error: BaseException | None) -> ConfigError:
    cause = error.__cause__ if isinstance(error, ImportError) and error.__cause__ is not None else error
    reason = str(cause).strip().splitlines()[0] if cause is not None and str(cause).strip() else type(cause).__name__
    if isinstance(cause, ModuleNotFoundError):  # Optuna's own message hides which module
        reason = f"the database driver is not installed: {reason} (PostgreSQL: pip install 'clipsweep[postgres]')"
    return ConfigError("hydra.sweeper.storage", mask_url(url), f"a database URL Optuna can open ({mask_url(reason)})")


def _journal_storage(url: str) -> BaseStorage:
    from optuna.storages.journal import JournalStorage

    path = url[len(JOURNAL_PREFIX) :].removeprefix("//")
    if not path or not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise ConfigError("hydra.sweeper.storage", url, "journal:<file> in an existing directory")
    try:
        return JournalStorage(JournalFileBackend(path))
    except Exception as err:
        raise _storage_error(url, err) from None


def retrying(call: Callable[..., T], *args: Any, patience: float = 300.0, **kwargs: Any) -> T:
    """``call(*args)``, retried with backoff while the database is unreachable (e.g. restarting).

    Gives up after ``patience`` seconds and re-raises: a database that stays down ends the worker
    with its error rather than hanging it.
    """
    delay, waited = 0.5, 0.0
    while True:
        try:
            return call(*args, **kwargs)
        except TRANSIENT as err:
            if waited >= patience:
                raise
            _log.warning("storage unavailable (%s); retrying in %.1f s", str(err).splitlines()[0][:200], delay)
            time.sleep(delay)
            waited += delay
            delay = min(delay * 2, 15.0)


def claim(study: optuna.Study, key: str, value: Any) -> bool:
    """Set the study user attribute ``key`` to ``value`` unless it is set; True when this call set it.

    Work that one of several workers must do once (the end-of-sweep recommendation) needs a winner,
    and Optuna's ``set_study_user_attr`` is an upsert: two workers that check, then set, can both see
    the key unset and both go on (seen in CI, two workers ending in the same few milliseconds). On a
    database the insert itself is the check: the attribute table's unique (study, key) constraint
    lets exactly one insert through. A journal file is checked and set under a file lock beside it.
    """
    storage = study._storage
    backend = storage if isinstance(storage, RDBStorage) else getattr(storage, "_backend", None)  # under a cache
    if isinstance(backend, RDBStorage):
        from optuna.storages._rdb.models import StudyUserAttributeModel

        row = {"study_id": study._study_id, "key": key, "value_json": json.dumps(value)}
        try:
            with backend.engine.begin() as connection:
                connection.execute(StudyUserAttributeModel.__table__.insert().values(**row))
        except IntegrityError:
            return False
        return True
    lock = JournalFileOpenLock(f"{backend._file_path}.claims") if isinstance(backend, JournalFileBackend) else None
    if lock is not None:
        lock.acquire()
    try:
        if key in storage.get_study_user_attrs(study._study_id):
            return False
        storage.set_study_user_attr(study._study_id, key, value)
        return True
    finally:
        if lock is not None:
            lock.release()
