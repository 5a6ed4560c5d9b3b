"""New SQLite MLflow stores as copies of an empty store that MLflow itself made once per machine and
MLflow version.

MLflow creates a store by running every schema migration since its first release: about a second on
a 2-core machine with a warm disk, several on a cold one, paid by each new directory's first run (a
user's first ``clipsweep run``, each test's store), where a copy takes milliseconds. The template is
MLflow's own store, taken right after MLflow created it, with its experiments removed: it keeps the
tables, the schema version and the workspace row, and MLflow adds its Default experiment to each copy
itself, with artifacts under that store's own working directory (MLflow records it absolutely, so a
copied Default would point at the first store's). Anything that goes wrong leaves MLflow to create the
store as before. ``tracking`` (the only module importing mlflow) gives the version and schema revision.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

_log = logging.getLogger(__name__)


def template_path(mlflow_version: str) -> Path:
    """Where this MLflow version's template lives: the user's cache (``$XDG_CACHE_HOME`` respected)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "clipsweep" / f"mlflow-{mlflow_version}-empty.db"


def seed(path: Path, mlflow_version: str, latest_revision: Callable[[], str]) -> bool:
    """Start the new store ``path`` as a copy of the template; False when there is none (or no valid one)."""
    try:
        template = template_path(mlflow_version)
        if not template.is_file() or _schema_revision(template) != latest_revision():
            return False
        shutil.copyfile(template, path)
    except Exception as err:  # a template is only a shortcut: MLflow creates the store as before
        _log.debug("MLflow store not seeded from a template: %s", err)
        path.unlink(missing_ok=True)
        return False
    return True


def keep(path: Path, mlflow_version: str) -> None:
    """Keep an empty copy of the store MLflow has just created at ``path`` (only its experiments removed)."""
    partial = None
    try:
        template = template_path(mlflow_version)
        template.parent.mkdir(parents=True, exist_ok=True)
        partial = template.with_name(f"{template.name}.{os.getpid()}.tmp")
        with contextlib.closing(sqlite3.connect(path)) as source, contextlib.closing(sqlite3.connect(partial)) as copy:
            source.backup(copy)
            with copy:
                copy.execute("DELETE FROM experiment_tags")
                copy.execute("DELETE FROM experiments")
        os.replace(partial, template)  # atomic: a process copying the template reads a whole one
    except Exception as err:  # an unwritable cache: every new store is created by MLflow, as before
        _log.debug("no MLflow store template kept: %s", err)
        if partial is not None:
            partial.unlink(missing_ok=True)


def _schema_revision(path: Path) -> str | None:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT version_num FROM alembic_version").fetchone()
    return row[0] if row else None
