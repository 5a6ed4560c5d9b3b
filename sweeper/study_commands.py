"""``clipsweep recommend | export | report | calibrate``: what a user does after (or instead of) a sweep.

The first three read a stored study (``--study``, ``--storage``); nothing but the storage is needed,
so they work from any worker's machine. What they derive is also logged to the sweep's parent MLflow
run when the study knows it. Bad input exits 2 with one line before anything is written.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipsweep.errors import ConfigError, UsageError
from clipsweep.names import PARENT_RUN_ATTR, ROLE_TAG, STORAGE_TAG, STUDY_TAG, TRACKING_URI_ATTR, VALIDATION_ATTR

if TYPE_CHECKING:
    from clipsweep.tracker import Tracker

_MASKED = "***"


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so a bad flag is one line and exit code 2 like the rest."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


_STUDY_HELP = "study name (hydra.sweeper.study_name of the sweep; default: the storage's only study)"


def _study_parser(prog: str, description: str) -> argparse.ArgumentParser:
    from clipsweep.sweep_config import RecommendConf, SweeperConf

    parser = _Parser(prog=f"clipsweep {prog}", description=description)
    parser.add_argument("--study", help=_STUDY_HELP)
    parser.add_argument(
        "--storage", default=None, help=f"Optuna storage URL (default: $CLIPSWEEP_STORAGE, else {SweeperConf.storage})"
    )
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: the one the sweep used)")
    parser.add_argument("--objective", default=None, help="metric the study optimised (default: the one it stored)")
    defaults = RecommendConf()
    for name, kind, text in (
        ("tolerance", float, "good trials: within this fraction of the best-to-worst gap"),
        ("bandwidth", float, "neighbourhood width in the normalised search space"),
        ("transient", float, "fraction of each trial's steps left out of its norm statistics"),
        ("percentile", float, "read the threshold off the good trials' norms at this percentile (an extrapolation)"),
        ("validate", int, "retrain the recommendation and the best trial on K fresh seeds (a stored one is reused)"),
    ):
        parser.add_argument(
            f"--{name}", type=kind, default=getattr(defaults, name), help=f"{text} (default: %(default)s)"
        )
    return parser


def _open_study(options: argparse.Namespace) -> tuple[Any, str]:
    """The stored study; refuses a missing storage file or an unknown study without creating either.

    Without ``--study`` a storage that holds one study means that one (``optuna.load_study``'s own
    rule): the default sweep names its study by the time it started, which nobody types. With several,
    guessing (the latest?) could export another sweep's config, so it refuses and lists them."""
    import optuna

    from clipsweep.storage import mask_url, open_storage, require_existing, storage_url
    from clipsweep.sweep_config import SweeperConf

    url = storage_url(options.storage or SweeperConf.storage)
    require_existing("--storage", url, "storage", "clipsweep sweep")
    storage = open_storage(url)
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))
    if not options.study and len(names) == 1:
        options.study = names[0]
    elif not options.study:
        raise ConfigError("--study", None, f"the name of a study in {mask_url(url)}: one of {names}")
    if options.study not in names:
        raise ConfigError("--study", options.study, f"a study in {mask_url(url)}: one of {names}")
    return optuna.load_study(study_name=options.study, storage=storage), url


def _recommend(options: argparse.Namespace, opened: tuple[Any, str] | None = None) -> tuple[Any, Any, Any, str]:
    from clipsweep.recommend import RecommendSettings, recommend
    from clipsweep.validation import Validation, validate

    if options.validate < 0:
        raise ConfigError("--validate", options.validate, "a number of seeds >= 0")
    try:
        settings = RecommendSettings(options.tolerance, options.bandwidth, options.transient, options.percentile)
    except ConfigError as err:  # named by its flag here, not by its config key
        raise ConfigError(f"--{err.key.rpartition('.')[2]}", err.value, err.allowed) from None
    study, url = opened or _open_study(options)
    objective = _objective(study, options.objective)
    try:
        recommendation = recommend(study, settings, objective)
    except ValueError as err:
        raise ConfigError("--study", options.study, f"a study with a usable completed trial ({err})") from None
    stored = study.user_attrs.get(VALIDATION_ATTR)
    validation = Validation.from_dict(stored) if stored else None
    if validation is not None and not validation.covers(recommendation):
        validation = None  # it compared other configs (other settings, or trials added since)
    if options.validate and (validation is None or len(validation.seeds) < options.validate):
        tracking = {"uri": _tracking_uri(study, options), "enabled": True}
        validation = validate(recommendation, options.validate, tracking, _parent_run_id(study))
        study.set_user_attr(VALIDATION_ATTR, validation.to_dict())
    return study, recommendation, validation, url


def _objective(study: Any, requested: str | None) -> str:
    """The objective the study stored (its metric names), or the one asked for if it is among them."""
    stored = study.metric_names
    if requested is None:
        return stored[0] if stored else "val/loss"  # a study stored before its objective was
    if stored is not None and requested not in stored:
        raise ConfigError("--objective", requested, f"the objective study {study.study_name!r} optimised: {stored}")
    return requested


def _tracking_uri(study: Any, options: argparse.Namespace) -> str:
    from clipsweep.config import default_tracking_uri

    stored = study.user_attrs.get(TRACKING_URI_ATTR)
    if stored and _MASKED in stored:  # its password is not stored: $MLFLOW_TRACKING_URI has it
        stored = None
    return options.tracking_uri or stored or default_tracking_uri()


def _parent_run_id(study: Any) -> str | None:

    return study.user_attrs.get(PARENT_RUN_ATTR)


def _parent_tracker(study: Any, options: argparse.Namespace) -> Any:
    """A tracker writing to the study's last parent run, or None when there is none to write to."""
    from clipsweep.tracking import make_tracker

    run_id = _parent_run_id(study)
    if run_id is None:
        return None
    tracker = make_tracker(_tracking_uri(study, options), "clipsweep", True)
    try:
        tracker.resume_run(run_id)
    except ConfigError as err:
        print(f"clipsweep: note: not logged to MLflow ({err})", file=sys.stderr)
        return None
    return tracker


def _write_to_parent(study: Any, options: argparse.Namespace, write: Callable[[Tracker], None]) -> None:
    """Run ``write`` against the study's parent run, if it has one, and wait until it is stored."""
    tracker = _parent_tracker(study, options)
    if tracker is None:
        return
    write(tracker)
    tracker.end_run()  # a resumed run keeps its status: this only closes our writer
    tracker.flush()


def recommend_command(args: Sequence[str]) -> int:
    """Recompute the recommendation from the stored study; --validate K retrains it against the best."""
    from clipsweep.report import log_recommendation

    options = _study_parser("recommend", recommend_command.__doc__).parse_args(list(args))
    study, recommendation, validation, _ = _recommend(options)
    print(recommendation.describe())
    if validation is not None:
        print(validation.describe())
    _write_to_parent(study, options, lambda tracker: log_recommendation(tracker, recommendation, validation))
    return 0


def _resolve_run_id(options: argparse.Namespace) -> None:
    """``--run-id``: the parent run names its study (and, unless masked, its storage) in its tags."""
    from clipsweep.config import default_tracking_uri
    from clipsweep.tracking import make_tracker

    uri = options.tracking_uri or default_tracking_uri()
    tags = make_tracker(uri, "clipsweep", True).run_tags(options.run_id)
    if tags.get(ROLE_TAG) != "sweep" or STUDY_TAG not in tags:
        raise ConfigError("--run-id", options.run_id, "the id of a sweep's parent run (tag clipsweep.role=sweep)")
    options.study = options.study or tags[STUDY_TAG]
    stored = tags.get(STORAGE_TAG, "")
    if options.storage is None and stored and _MASKED not in stored:
        options.storage = stored
    options.tracking_uri = uri


def export_command(args: Sequence[str]) -> int:
    """Export the best trial's or the recommended clip config as a clip/ group file, JSON or Python."""
    from clipsweep.export import ExportFormat, Which, choose, refuse_existing, render, source, write
    from clipsweep.storage import mask_url

    parser = _study_parser("export", export_command.__doc__)
    parser.add_argument("--run-id", default=None, help="a sweep's parent MLflow run id instead of --study")
    parser.add_argument("--format", choices=[f.value for f in ExportFormat], default="yaml")
    parser.add_argument("--which", choices=[w.value for w in Which], default="auto")
    parser.add_argument("--out", default=None, help="file to write (default: standard output)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    options = parser.parse_args(list(args))
    out = Path(options.out) if options.out else None
    refuse_existing(out, options.force)  # before any work
    if options.run_id:
        _resolve_run_id(options)
    study, recommendation, validation, url = _recommend(options)
    choice = choose(recommendation, validation, Which(options.which))
    origin = source(recommendation, choice, mask_url(url), out)
    text = render(choice.clip, origin, ExportFormat(options.format), choice.params)
    if validation is not None:
        print(validation.describe(), file=sys.stderr)
    if out is None:
        sys.stdout.write(text)
    else:
        write(text, out, options.force)
        print(f"exported the {choice.which.value} clip config ({choice.reason}) to {out}", file=sys.stderr)
        print(f"  reproduce: {origin['reproduce']}", file=sys.stderr)
    suffix = {"python": "py"}.get(options.format, options.format)
    name = out.name if out is not None else f"best.{suffix}"
    _write_to_parent(study, options, lambda tracker: tracker.log_text(text, f"export/{name}"))
    return 0


def trials_command(args: Sequence[str]) -> int:
    """Every trial of a study: state, outcome (completed, pruned, diverged, failed), objective, params,
    clip fraction and failure reason."""
    from clipsweep.sweep_config import SweeperConf
    from clipsweep.trials import FORMATS, render, rows

    parser = _Parser(prog="clipsweep trials", description=trials_command.__doc__)
    parser.add_argument("--study", help=_STUDY_HELP)
    parser.add_argument(
        "--storage", default=None, help=f"Optuna storage URL (default: $CLIPSWEEP_STORAGE, else {SweeperConf.storage})"
    )
    parser.add_argument("--format", choices=FORMATS, default="table", help="(default: %(default)s)")
    options = parser.parse_args(list(args))
    study, _ = _open_study(options)
    objectives = ["value"] if len(study.directions) == 1 else [f"value{i}" for i in range(len(study.directions))]
    sys.stdout.write(render(rows(study, objectives), options.format))
    return 0


def report_command(args: Sequence[str]) -> int:
    """Top trials, the recommendation with its evidence, and a PNG of the pooled norm distribution."""
    from clipsweep.export import refuse_existing
    from clipsweep.report import log_recommendation, recommendation_png, trials_table

    parser = _study_parser("report", report_command.__doc__)
    parser.add_argument("--png", default=None, help="figure path (default: <study>-grad-norms.png)")
    parser.add_argument("--top", type=int, default=10, help="trials in the table (default: %(default)s)")
    options = parser.parse_args(list(args))
    if options.top < 1:
        raise ConfigError("--top", options.top, "a number of trials >= 1")
    opened = _open_study(options)  # it names the study when --study is left out
    png = Path(options.png or f"{options.study}-grad-norms.png")
    refuse_existing(png, force=True, flag="--png")  # before any work
    study, recommendation, validation, _ = _recommend(options, opened)
    print(trials_table(study, [recommendation.objective], options.top))
    print(recommendation.describe())
    if validation is not None:
        print(validation.describe())
    png.parent.mkdir(parents=True, exist_ok=True)
    png.write_bytes(recommendation_png(recommendation))
    print(f"norm distribution: {png}")
    _write_to_parent(study, options, lambda tracker: log_recommendation(tracker, recommendation, validation))
    return 0


def calibrate_command(args: Sequence[str]) -> int:
    """A norm threshold for the configured run without a sweep: a pilot anchors a log grid of thresholds,
    successive halving over short runs picks one, within a budget of optimizer steps."""
    from dataclasses import fields

    from clipsweep.calibrate import CalibrateSettings, calibrate
    from clipsweep.composition import compose, one_line, require_buildable, split_hydra_args
    from clipsweep.export import refuse_existing, run_command, write
    from clipsweep.sweep_config import SweeperConf
    from clipsweep.tracking import make_tracker
    from clipsweep.training import require_reported

    parser = _Parser(prog="clipsweep calibrate", description=calibrate_command.__doc__)
    for spec in fields(CalibrateSettings):
        parser.add_argument(
            f"--{spec.name.replace('_', '-')}", type=type(spec.default), default=spec.default,
            help=f"{spec.metadata['help']} (default: %(default)s)",
        )  # fmt: skip
    parser.add_argument("--out", default=None, help="also write the threshold as a clip/ group file")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    options, overrides = parser.parse_known_args(list(args))
    settings = CalibrateSettings(**{f.name: getattr(options, f.name) for f in fields(CalibrateSettings)})
    out = Path(options.out) if options.out else None
    refuse_existing(out, options.force)
    overrides, config_dir, config_name = split_hydra_args(overrides)
    try:
        config = compose(overrides, config_dir, config_name)
    except Exception as err:
        raise UsageError(one_line(err)) from None
    require_reported("--objective", settings.objective, require_buildable(config), prefix="val/")
    tracker = make_tracker(config.tracking.uri, config.tracking.experiment, config.tracking.enabled)
    try:
        calibration = calibrate(config, settings, tracker)
    except ValueError as err:
        print(f"clipsweep: calibration failed: {err}", file=sys.stderr)
        return 1
    sweep_steps = SweeperConf.n_trials * int(config.train.steps)
    print(calibration.describe(sweep_steps))
    if tracker.run_id is not None:
        tracker.flush()  # the pilot run's own writes first, then what calibration adds to it
        tracker.resume_run(tracker.run_id)
        tracker.log_metrics((k, v, 0) for k, v in calibration.metrics().items() if math.isfinite(v))
        tracker.end_run()
        tracker.flush()
        print(f"pilot run: {tracker.describe()}")
    if out is not None:
        from clipsweep.export import ExportFormat, calibration_source, render

        origin = calibration_source(calibration, settings.grid, dict(config.optim))
        write(render(calibration.clip, origin, ExportFormat.yaml), out, options.force)
        print(f"wrote {out}")
    clip = [] if out is not None else ["clip=norm", f"clip.threshold={calibration.threshold:.4g}"]
    print(f"train with it: {run_command(overrides, config_dir, out, clip)}")  # the model/task/lr it was found for
    return 0
