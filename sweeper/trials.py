"""``clipsweep trials``: every trial of a study with its state, outcome and failure reason, at a glance.

What a sweep records per trial is spread over Optuna's state and user attributes (status, failure
reason, norms, MLflow run id); this puts it in one table, or JSON/CSV for scripts.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from typing import Any

import optuna

from clipsweep.names import (
    FAIL_REASON_ATTR,
    INTERRUPTED_ATTR,
    LOST_ATTR,
    NORMS_ATTR,
    REPEAT_OF_ATTR,
    RUN_ID_ATTR,
    STATUS_ATTR,
    SURPLUS_ATTR,
)
from clipsweep.telemetry import NormSegments

FORMATS = ("table", "json", "csv")


def _outcome(trial: optuna.trial.FrozenTrial) -> str:
    """What happened, in the words a user looks for: completed, pruned, diverged, failed, ..."""
    status = trial.user_attrs.get(STATUS_ATTR)
    if trial.user_attrs.get(SURPLUS_ATTR):
        return "surplus (never run)"
    if trial.user_attrs.get(INTERRUPTED_ATTR):
        return "interrupted (retried)"
    if trial.user_attrs.get(LOST_ATTR):
        return "lost (retried)"
    if status == "diverged":
        return "diverged"
    if REPEAT_OF_ATTR in trial.user_attrs:
        return "repeat (not trained)"
    return {"COMPLETE": "completed", "PRUNED": "pruned", "FAIL": "failed"}.get(
        trial.state.name, trial.state.name.lower()
    )


def _repeat(trial: optuna.trial.FrozenTrial) -> str:
    return f"repeats trial {trial.user_attrs[REPEAT_OF_ATTR]}" if REPEAT_OF_ATTR in trial.user_attrs else ""


def _clip_fraction(trial: optuna.trial.FrozenTrial) -> float | None:
    if NORMS_ATTR not in trial.user_attrs:
        return None
    histogram, clipped = NormSegments.from_dict(trial.user_attrs[NORMS_ATTR]).steady(0.0)
    return clipped / histogram.count if histogram.count else None


def rows(study: optuna.Study, objectives: Sequence[str]) -> list[dict[str, Any]]:
    """One dict per trial: number, state, outcome, objective(s), params, clip fraction, reason, run id."""
    table = []
    for t in study.get_trials(deepcopy=False):
        values = t.values or [None] * len(objectives)
        last = max(t.intermediate_values) if t.intermediate_values else None
        table.append(
            {
                "number": t.number,
                "state": t.state.name,
                "outcome": _outcome(t),
                **dict(zip(objectives, values)),
                "last_reported": None if last is None else t.intermediate_values[last],
                "step": last,
                **{f"params.{k}": v for k, v in t.params.items()},
                "clip_fraction": _clip_fraction(t),
                "reason": t.user_attrs.get(FAIL_REASON_ATTR) or t.user_attrs.get(LOST_ATTR) or _repeat(t),
                "mlflow_run_id": t.user_attrs.get(RUN_ID_ATTR, ""),
            }
        )
    return table


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def render(table: list[dict[str, Any]], fmt: str) -> str:
    columns = list(dict.fromkeys(k for row in table for k in row))
    if fmt == "json":
        return json.dumps(table, indent=1) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, columns)
        writer.writeheader()
        writer.writerows(table)
        return out.getvalue()
    shown = [c for c in columns if c != "mlflow_run_id"]
    cells = [[_text(row.get(c)) for c in shown] for row in table]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(shown)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(shown, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    counts: dict[str, int] = {}
    for row in table:
        counts[row["outcome"]] = counts.get(row["outcome"], 0) + 1
    return "\n".join(lines) + "\n" + ", ".join(f"{n} {k}" for k, n in counts.items()) + "\n"
