"""What a study holds, for the terminal and the parent MLflow run: top trials, recommendation, figure."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from clipsweep.names import RECOMMENDED_TAG, RECOMMENDED_TRIAL_TAG, REPEAT_OF_ATTR
from clipsweep.plots import norm_histogram_png
from clipsweep.recommendation import Recommendation, spans_a_decade
from clipsweep.tracker import Tracker
from clipsweep.validation import Validation


def _value_text(value: Any) -> str:
    return f"{value:.5g}" if isinstance(value, float) else str(value)


def trials_table(study: optuna.Study, objectives: Sequence[str], top: int = 5) -> str:
    """The ``top`` completed trials, best first (single objective), with their parameters; repeats
    (told an earlier trial's values) are left out, so each config trained is one row."""
    told = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    completed = [t for t in told if REPEAT_OF_ATTR not in t.user_attrs]
    if len(study.directions) == 1:
        reverse = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
        completed.sort(key=lambda t: t.value, reverse=reverse)
    names = sorted({k for t in completed for k in t.params})
    header = ["trial", *objectives, *names]
    rows = [
        [str(t.number), *map(_value_text, t.values), *(_value_text(t.params.get(n, "-")) for n in names)]
        for t in completed[:top]
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in [header, *rows]]
    repeats = f" ({len(told) - len(completed)} repeats left out)" if len(told) > len(completed) else ""
    return f"top {len(rows)} of {len(completed)} completed trials{repeats}:\n" + "\n".join(lines)


def recommendation_png(recommendation: Recommendation) -> bytes:
    """The pooled norm distribution with the recommended and the best trial's threshold marked."""
    marks: dict[str, float] = {}
    if recommendation.threshold is not None:
        marks["recommended"] = recommendation.threshold
    if recommendation.best_threshold is not None:
        marks[f"best trial {recommendation.best.number}"] = recommendation.best_threshold
    return norm_histogram_png(recommendation.histogram, marks)


def log_recommendation(tracker: Tracker, recommendation: Recommendation, validation: Validation | None) -> None:
    """Metrics, a JSON record and the figure on the sweep's parent run."""
    low, high = recommendation.interval or (None, None)
    values = {
        "recommend/threshold": recommendation.threshold,
        "recommend/threshold_low": low,
        "recommend/threshold_high": high,
        "recommend/percentile": recommendation.percentile,
        "recommend/clip_fraction": recommendation.clip_fraction,
        "recommend/good_trials": float(len(recommendation.good)),
        "recommend/steps": float(recommendation.steps),
        "recommend/value_spread": recommendation.value_spread,
    }
    rows = [(k, float(v), 0) for k, v in values.items() if v is not None and math.isfinite(v)]
    tracker.log_metrics(rows + (validation.metrics() if validation else []))
    tracker.set_tags(
        {
            RECOMMENDED_TAG: " ".join(f"{k}={v}" for k, v in recommendation.params.items()),
            RECOMMENDED_TRIAL_TAG: str(recommendation.trial.number if recommendation.trial else "none"),
        }
    )
    record = {"recommendation": recommendation.to_dict(), "validation": validation.to_dict() if validation else None}
    tracker.log_text(json.dumps(record, indent=1), "recommendation/recommendation.json")
    tracker.log_figure(recommendation_png(recommendation), "recommendation/grad_norms.png")


def log_sweep_figure(tracker: Tracker, study: optuna.Study, recommendation: Recommendation) -> None:
    """The objective against the threshold on the parent run; the trials are read here, the figure is
    drawn on the tracker's writer thread."""
    trials = study.get_trials(deepcopy=False)
    if any("clip.threshold" in t.params for t in trials):
        name = study.study_name
        tracker.log_figure(
            lambda: objective_vs_threshold(trials, name, recommendation), "plots/objective_vs_threshold.png"
        )


def objective_vs_threshold(trials: Sequence[FrozenTrial], study_name: str, recommendation: Recommendation) -> Any:
    """The picture the product is about: each trial's objective against its threshold (log x; log y
    when the objective spans a decade), coloured by learning rate when it was searched, pruned and
    diverged trials at the top edge, the recommendation and its interval marked. A matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = [t for t in trials if "clip.threshold" in t.params]
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]
    stopped = [t for t in trials if t.state == TrialState.PRUNED]
    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=100)
    values = [t.value for t in done]
    axes.set_xscale("log")
    if spans_a_decade(values):
        axes.set_yscale("log")
    x = [t.params["clip.threshold"] for t in done]
    if done and all("optim.lr" in t.params for t in done):
        points = axes.scatter(x, values, c=[t.params["optim.lr"] for t in done], cmap="viridis",
                              norm=matplotlib.colors.LogNorm(), label="completed", zorder=3)  # fmt: skip
        figure.colorbar(points, ax=axes, label="optim.lr")
    else:
        axes.scatter(x, values, color="tab:blue", label="completed", zorder=3)
    if stopped:
        top = max(values) if values else 1.0
        axes.scatter([t.params["clip.threshold"] for t in stopped], [top] * len(stopped), marker="x",
                     color="tab:gray", label="pruned / diverged (at the top edge)", zorder=2)  # fmt: skip
    if recommendation.interval is not None:
        axes.axvspan(*recommendation.interval, color="tab:green", alpha=0.15, label="within tolerance")
    if recommendation.threshold is not None:
        axes.axvline(recommendation.threshold, color="tab:green", label=f"recommended {recommendation.threshold:.3g}")
    axes.set_xlabel("clip.threshold")
    axes.set_ylabel(recommendation.objective)
    axes.set_title(f"study {study_name!r}: {recommendation.objective} ({recommendation.direction}) by threshold")
    axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    return figure
