"""Export a clip config: a ``clip/`` group file, JSON for pipelines, or a plain PyTorch snippet.

Every format carries where the config came from (study, trial, objective value, date, which config
and why) and the learning rate it was found with: a threshold is only meaningful with its lr.
"""

from __future__ import annotations

import json
import os
import shlex
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from clipsweep.clipping import ClipMethod, clipper_class
from clipsweep.composition import search_path_entries, search_path_override
from clipsweep.errors import ConfigError
from clipsweep.recommendation import FLAT, Recommendation, TrialNorms
from clipsweep.validation import Validation

if TYPE_CHECKING:
    from clipsweep.calibrate import Calibration


class ExportFormat(str, Enum):
    yaml = "yaml"
    json = "json"
    python = "python"


class Which(str, Enum):
    """Which config to export; ``auto``: the recommendation when validated at least as good, else best."""

    auto = "auto"
    best = "best"
    recommended = "recommended"


@dataclass(frozen=True)
class Choice:
    """What gets exported: a clip config with the co-searched parameters it was found with."""

    clip: dict[str, Any]
    which: Which
    reason: str
    params: dict[str, Any]
    """Searched parameters other than the clip method's own (``optim.lr``, ``model``, ...)."""
    trial: TrialNorms | None
    """The trial the export reproduces, or None for an extrapolated recommendation."""


def _others(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k != "clip" and not k.startswith("clip.")}


def _best(recommendation: Recommendation, reason: str) -> Choice:
    best = recommendation.best
    return Choice(best.clip, Which.best, reason, _others(best.params), best)


def _recommended(recommendation: Recommendation, reason: str) -> Choice:
    r = recommendation
    return Choice(dict(r.clip), Which.recommended, reason, _others(r.params), r.trial)


def choose(recommendation: Recommendation, validation: Validation | None, which: Which) -> Choice:
    """The config to export; ``auto`` takes the recommendation unless validation or extrapolation speaks against it."""
    if which is Which.best:
        return _best(recommendation, "asked for the best trial's config")
    if which is Which.recommended:
        return _recommended(recommendation, "asked for the recommendation")
    if validation is not None and validation.one_config:
        r = validation.recommended
        scored = f"{validation.objective} {r.mean:.5g} over {len(validation.seeds)} fresh seeds"
        return _recommended(recommendation, f"the best trial is also the robust choice; validated: {scored}")
    if validation is not None:
        r, b = validation.recommended, validation.best
        comparison = f"{validation.objective} {r.mean:.5g} vs {b.mean:.5g} over {len(validation.seeds)} fresh seeds"
        if validation.recommended_wins():
            return _recommended(recommendation, f"validated at least as good as the best trial's ({comparison})")
        return _best(recommendation, f"the recommendation validated worse ({comparison})")
    if recommendation.extrapolated:
        return _best(recommendation, "the recommendation is an unvalidated extrapolation (add --validate K)")
    if recommendation.trial is not None and recommendation.trial.number == recommendation.best.number:
        return _recommended(recommendation, "the best trial is also the robust choice")
    return _recommended(
        recommendation,
        "a good trial in a good neighbourhood, within tolerance of the best; not validated (--validate K "
        "compares it with the best trial's config on fresh seeds)",
    )


def reproduce_command(choice: Choice, clip_file: Path | None = None) -> str:
    """The command that retrains the exported trial: its sweep's fixed overrides and ``--config-dir``,
    then the exported clip file (``clip_file``, or ``clip=best`` in the user's own config dir)."""
    if choice.trial is None:
        return run_command([], None, clip_file)
    return run_command(choice.trial.fixed, choice.trial.config_dir, clip_file)


def run_command(
    overrides: Sequence[str], config_dir: str | None, clip_file: Path | None = None, clip: Sequence[str] = ()
) -> str:
    """``clipsweep run`` with the overrides a clip config was found with, then that clip config: the
    group file ``clip_file`` (``<dir>/clip/<name>.yaml`` gives ``clip=<name>``; None or a file outside
    a ``clip/`` group: ``clip=best``, which the user puts into their config dir), or the ``clip``
    overrides themselves.

    It may need two config dirs: ``config_dir``, whose own groups the overrides may name
    (``task=my_task``), and the one holding the clip file. Hydra takes one ``--config-dir``; a second
    goes on ``hydra.searchpath``; ``./conf`` alone needs neither (clipsweep finds it itself)."""
    # The clip config is given last and whole; search presets and hydra.* only steered the search.
    # The config dirs it named (--config-dir, hydra.searchpath) are kept, in one searchpath override.
    owned = ("hydra.", "search=", "clip=", "clip.", "+clip.", "++clip.", "~clip")
    searched, overrides = search_path_entries(overrides)
    kept = [o for o in overrides if not o.startswith(owned)]
    in_group = clip_file is not None and clip_file.parent.name == "clip"
    clip_dir = clip_file.parent.parent if in_group else None
    clip = list(clip) or [f"clip={clip_file.stem if in_group else 'best'}"]
    dirs = list(dict.fromkeys(_shown(d) for d in (config_dir, clip_dir) if d is not None))
    where = [] if dirs in ([], ["conf"]) else ["--config-dir", shlex.quote(dirs[0])]
    if extra := [*(f"file://{d}" for d in dirs[1:]), *searched]:
        where.append(shlex.quote(search_path_override(extra)))
    return " ".join(["clipsweep run", *where, *(shlex.quote(o) for o in kept), *clip])


def _shown(directory: str | Path) -> str:
    """A config dir as the user would type it here: relative when it lies under the working directory."""
    path = Path(directory)
    if path.is_absolute() and not (relative := os.path.relpath(path)).startswith(".."):
        return relative
    return str(path)


def source(
    recommendation: Recommendation, choice: Choice, storage: str | None = None, clip_file: Path | None = None
) -> dict[str, Any]:
    trial = choice.trial
    optim = dict((trial.config if trial is not None else recommendation.config).get("optim", {}))
    return {
        "study": recommendation.study,
        "storage": storage,
        "trial": None if trial is None else trial.number,
        "objective": recommendation.objective,
        "direction": recommendation.direction,
        "value": None if trial is None else trial.value,
        "which": choice.which.value,
        "reason": choice.reason,
        "optim": optim,
        "reproduce": reproduce_command(choice, clip_file),
        "recommendation": {
            "threshold": recommendation.threshold,
            "interval": None if recommendation.interval is None else list(recommendation.interval),
            "percentile": recommendation.percentile,
            "clip_fraction": recommendation.clip_fraction,
            "good_trials": recommendation.trials,
            "rule": recommendation.rule,
            "median_value": recommendation.median_value,
            "flat": recommendation.flat,
            "unclipped": None
            if recommendation.clipping_matters or recommendation.unclipped is None
            else {"trial": recommendation.unclipped.number, "value": recommendation.unclipped.value},
        },
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def calibration_source(calibration: Calibration, grid: int, optim: Mapping[str, Any]) -> dict[str, Any]:
    """What an export of a calibrated threshold says of its origin (no study, no trial: a search)."""
    objective = calibration.objective
    return {
        "study": "calibrate",
        "storage": None,
        "trial": None,
        "objective": objective,
        "direction": "maximize" if objective.endswith("accuracy") else "minimize",
        "value": None,
        "which": "calibrated",
        "reason": f"successive halving over {grid} thresholds, {calibration.steps} steps",
        "optim": dict(optim),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _header(origin: Mapping[str, Any], comment: str) -> list[str]:
    lr = origin["optim"].get("lr")
    value = origin.get("value")
    found = "an extrapolation, no trial" if origin.get("trial") is None else f"trial {origin['trial']}"
    scored = "" if value is None else f": {origin['objective']}={value:.6g} ({origin['direction']})"
    lines = [
        f"{comment} exported by clipsweep on {origin['date']}",
        f"{comment} study {origin['study']!r}, {found}{scored}",
        f"{comment} config: {origin['which']} ({origin['reason']})",
        f"{comment} found with optim={origin['optim'].get('_target_', '?')} lr={lr}: a threshold goes with its lr",
    ]
    facts = origin.get("recommendation") or {}
    if facts.get("flat"):
        lines.append(
            f"{comment} note: the best trial is within {FLAT:.0%} of the median one ({facts['median_value']:.5g}): "
            "the sweep measured no difference between the settings it tried"
        )
    if facts.get("unclipped"):
        plain = facts["unclipped"]
        lines.append(
            f"{comment} note: clip=none (trial {plain['trial']}) scored {plain['value']:.5g}, within {FLAT:.0%} of "
            "the best: clipping made no measurable difference in this sweep"
        )
    interval = facts.get("interval")
    if interval:
        lines.append(
            f"{comment} uncertainty: thresholds {interval[0]:.4g}..{interval[1]:.4g} were within tolerance"
            if interval[0] < interval[1]
            else f"{comment} uncertainty: not bounded (a lone good trial at {interval[0]:.4g})"
        )
    if origin.get("reproduce"):
        lines.append(f"{comment} reproduce: {origin['reproduce']}")
    return lines


def _overrides_body(params: Mapping[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Co-searched parameters as a ``_global_`` file's content: group choices become defaults-list
    overrides (``model: gru`` → ``override /model: gru``), dotted keys nested values."""
    groups, values = [], {}
    for key, value in params.items():
        if "." not in key:
            groups.append({f"override /{key}": value})
            continue
        *path, leaf = key.split(".")
        node = values
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return groups, values


def render(
    clip: Mapping[str, Any], origin: Mapping[str, Any], fmt: ExportFormat, params: Mapping[str, Any] | None = None
) -> str:
    """The exported text; YAML is a ``clip/`` group file (``clipsweep run clip=best``) that also sets the
    co-searched ``params`` (the learning rate above all), so the run reproduces the exported trial."""
    clip = {k: (v.value if isinstance(v, Enum) else v) for k, v in clip.items()}
    params = dict(params or {})
    method = ClipMethod(clip["method"])
    if fmt is ExportFormat.json:
        return json.dumps({"clip": clip, "params": params, "source": dict(origin)}, indent=2) + "\n"
    if fmt is ExportFormat.yaml:
        groups, values = _overrides_body(params)
        body = {"defaults": [{"/schema/clip@clip": method.value}, *groups, "_self_"], "clip": clip, **values}
        header = ["# @package _global_", *_header(origin, "#")]
        return "\n".join(header) + "\n" + yaml.safe_dump(body, sort_keys=False)
    return "\n".join([*_header(origin, "#"), _python(clip, method)]) + "\n"


def _python(clip: Mapping[str, Any], method: ClipMethod) -> str:
    """A self-contained ``clip_gradients(parameters)`` for a plain loop: backward → clip → step."""
    lines = ["import torch", ""]
    body = clipper_class(method).torch_snippet(clip)
    if body is None:  # adaptive methods keep state between steps: the library's clipper carries it
        lines += ["from clipsweep import GradClipper", "", f"_clipper = GradClipper.from_config({dict(clip)!r})", ""]
        body = "    return _clipper(parameters)"
    lines += [
        "",
        "def clip_gradients(parameters) -> torch.Tensor:",
        '    """Clip in place; returns the pre-clip global norm. Call after backward (and',
        '    scaler.unscale_(optimizer) under AMP), before optimizer.step(), once per optimizer step."""',
        "    parameters = list(parameters)",
        body,
        "",
        "",
        "# for x, y in loader:",
        "#     optimizer.zero_grad(set_to_none=True)",
        "#     loss_fn(model(x), y).backward()",
        "#     clip_gradients(model.parameters())",
        "#     optimizer.step()",
    ]
    return "\n".join(lines)


def refuse_existing(out: Path | None, force: bool, flag: str = "--out") -> None:
    """Refuse, before any work, an output path that exists (unless ``force``) or cannot be written.

    A missing directory is fine (``write`` creates it, as ``conf/clip/`` usually is in a new
    project), but its nearest existing ancestor must be a writable directory.
    """
    if out is None:
        return
    if out.exists() and not force:
        raise ConfigError(flag, str(out), "a path that does not exist yet (or pass --force to overwrite)")
    if out.is_dir():
        raise ConfigError(flag, str(out), "a file path, not a directory")
    problem = unwritable(out.absolute().parent)
    if problem is not None:
        raise ConfigError(flag, str(out), f"a path in a directory that can be written ({problem})")


def unwritable(directory: Path) -> str | None:
    """Why ``directory`` cannot be created or written, or None: a probe directory is made and removed at
    once in its nearest existing ancestor (permission bits alone do not tell: root, read-only mounts)."""
    existing = next(p for p in (directory, *directory.parents) if p.exists())
    try:
        if not existing.is_dir():
            return f"{existing} is not a directory"
        os.rmdir(tempfile.mkdtemp(dir=existing))
    except OSError as err:
        return str(err)
    return None


def write(text: str, out: Path, force: bool) -> Path:
    """Write ``text`` to ``out`` (creating its directory); an existing file is refused unless ``force``."""
    refuse_existing(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out


def load_clip(path: Path) -> dict[str, Any]:
    """The clip config of an exported YAML or JSON file (what ``GradClipper.from_file`` reads)."""
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, Mapping):
        raise ConfigError("path", str(path), "an exported clip config (YAML clip group or JSON)")
    clip = dict(data.get("clip", data))
    clip.pop("defaults", None)
    if "method" not in clip:
        for entry in data.get("defaults", []):  # a hand-written group file names its schema only
            if isinstance(entry, Mapping):
                clip["method"] = next(iter(entry.values()))
    return clip
