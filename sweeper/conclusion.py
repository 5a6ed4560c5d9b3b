"""What a sweep leaves when its trials are done: the results file, the best trial and plots on the
parent run, and (once per study, over every worker's trials) the recommendation, its validation
and the exported clip config."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from omegaconf import OmegaConf
from optuna.trial import TrialState

from clipsweep.export import ExportFormat, Which, choose, render, reproduce_command, source
from clipsweep.names import BEST_TRIAL_TAG, CONCLUDED_ATTR, FAIL_REASON_ATTR, STATUS_ATTR, VALIDATION_ATTR
from clipsweep.plan import SweepPlan
from clipsweep.recommend import recommend
from clipsweep.recommendation import spans_a_decade
from clipsweep.report import log_recommendation, log_sweep_figure, trials_table
from clipsweep.storage import claim, mask_url
from clipsweep.tracker import Tracker


def write_results(
    plan: SweepPlan,
    study: optuna.Study,
    parent: Tracker,
    sweep_dir: Path,
    best_config: Callable[[Sequence[str]], dict[str, Any]],
) -> str:
    """``optimization_results.yaml`` (Hydra's Optuna sweeper's keys plus the best trial's config),
    the best trial and the plots on the parent run; returns the summary to print."""
    completed = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    results: dict[str, Any] = {
        "name": "optuna",
        "study_name": plan.study_name,
        "storage": mask_url(plan.storage_url),
        "n_trials": plan.n_trials,
    }
    if not completed:
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
        return (
            "[clipsweep] no completed trial yet: nothing to recommend. Look at the failed trials' "
            f"'{FAIL_REASON_ATTR}' and the pruned ones' '{STATUS_ATTR}' user attributes."
        )
    if len(plan.directions) == 1:
        best = study.best_trial
        results |= {
            "best_params": dict(best.params),
            "best_value": best.value,
            "best_trial_number": best.number,
            "best_config": best_config(plan.space.overrides(best.params)),
        }
        parent.log_metrics([("best/value", float(best.value), best.number)])
        parent.log_params({f"best.{k}": v for k, v in best.params.items()})
        parent.set_tags({BEST_TRIAL_TAG: str(best.number)})
        _log_plots(study, parent)
    else:
        results["solutions"] = [
            {"number": t.number, "params": dict(t.params), "values": list(t.values)} for t in study.best_trials
        ]
    OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
    return (
        "[clipsweep] "
        + trials_table(study, plan.objectives)
        + f"\n[clipsweep] results: {sweep_dir / 'optimization_results.yaml'}"
    )


def _log_plots(study: optuna.Study, parent: Tracker) -> None:
    """Optuna's figures on the parent run. With one searched parameter, importances (a random
    forest fitted for a foregone 100%: 2.1 s of a sweep's fixed cost here) and the parallel
    coordinates (the slice plot again) say nothing, so they are left out."""
    import warnings

    from optuna.visualization import matplotlib as plots

    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    values = [t.value for t in completed if t.value is not None]
    searched = {key for t in completed for key in t.params}
    figures = [("optimization_history", plots.plot_optimization_history)]
    if len(searched) > 1:
        figures += [("param_importances", plots.plot_param_importances),
                    ("parallel_coordinate", plots.plot_parallel_coordinate)]  # fmt: skip
    figures.append(("slice", plots.plot_slice))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, draw in figures:
            try:
                axes = draw(study)
            except Exception:  # e.g. importances need several completed trials
                continue
            first = axes.flat[0] if hasattr(axes, "flat") else axes
            if name == "optimization_history" and spans_a_decade(values):
                first.set_yscale("log")  # good values are not squashed against the axis
            parent.log_figure(first.figure, f"plots/{name}.png")


def browse_line(parent: Tracker, uri: str) -> str:
    """Where to look at the sweep in the MLflow UI: its trials, and its parent run."""
    runs = f"http://127.0.0.1:5000/#/experiments/{getattr(parent, 'experiment_id', '')}/runs"
    return (
        f"[clipsweep] MLflow: clipsweep ui --tracking-uri {uri}, then open {runs} (the trials nest under this "
        f"sweep's parent run) or {runs}/{parent.run_id} (the parent: recommendation, plots)"
    )


def conclude(
    plan: SweepPlan, study: optuna.Study, parent: Tracker, sweep_dir: Path, tracking: Mapping[str, Any]
) -> str:
    """Recommend (validate if asked), export ``<sweep dir>/clip/best.yaml``, log to the parent run.

    The recommendation is over every worker's trials in the study, not only this invocation's,
    and made once: workers end together (each waits for the others' running trials), and the
    first to claim the study's count of completed trials makes it (an atomic claim: two workers
    ending within the same milliseconds made it twice when this was a check, then a set).
    """
    if len(plan.directions) != 1:
        front = sorted(t.number for t in study.best_trials)
        return (
            f"[clipsweep] multi-objective: no single recommendation; the Pareto front is trials {front} "
            "(solutions in optimization_results.yaml; clipsweep trials lists every trial)"
        )
    completed = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    prefix = f"{CONCLUDED_ATTR}."  # one key per count of trials covered: a resumed study concludes again
    covered = [int(k[len(prefix) :]) for k in study.user_attrs if k.startswith(prefix)]
    later = max((n for n in covered if n >= completed), default=None)  # a worker that ended with more trials
    if later is not None or not claim(study, f"{prefix}{completed}", parent.run_id):
        run = study.user_attrs.get(f"{prefix}{completed if later is None else later}")
        where = f" (parent run {run})" if run else ""  # tracking off: no run to name
        return f"[clipsweep] recommendation over these {completed} trials already made{where}"
    try:
        recommendation = recommend(study, plan.recommend, plan.objectives[0])
    except ValueError as err:
        return f"[clipsweep] no recommendation: {err}"
    validation = None
    lines = [recommendation.describe()]
    if plan.validate:
        from clipsweep.validation import validate

        validation = validate(recommendation, plan.validate, tracking, parent.run_id)
        lines.append(validation.describe())
    if validation is not None:
        study.set_user_attr(VALIDATION_ATTR, validation.to_dict())
    choice = choose(recommendation, validation, Which.auto)
    out = sweep_dir / "clip" / "best.yaml"  # its header's reproduce line runs it from here, as printed below
    origin = source(recommendation, choice, mask_url(plan.storage_url), out)
    text = render(choice.clip, origin, ExportFormat.yaml, choice.params)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    log_recommendation(parent, recommendation, validation)
    log_sweep_figure(parent, study, recommendation)
    parent.log_text(text, "export/best.yaml")
    lines.append(
        f"exported the {choice.which.value} config ({choice.reason}) to {out}\n"
        f"  train with it: {reproduce_command(choice, out)}"
    )
    return "\n".join(f"[clipsweep] {line}" for line in "\n".join(lines).splitlines())
