"""Export a clip config: a ``clip/`` group file, JSON for pipelines, or a plain PyTorch snippet.

Every format carries where the config came from (study, trial, objective value, date, which config
and why) and the learning rate it was found with: a threshold is only meaningful with its lr.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from sweeper.clipping import ClipMethod
from sweeper.errors import ConfigError
from sweeper.recommend import Recommendation
from sweeper.validation import Validation


class ExportFormat(str, Enum):
    yaml = "yaml"
    json = "json"
    python = "python"


class Which(str, Enum):
    """Which config to export; ``auto``: the recommendation when validated at least as good, else best."""

    auto = "auto"
    best = "best"
    recommended = "recommended"


def choose(
    recommendation: Recommendation, validation: Validation | None, which: Which
) -> tuple[dict[str, Any], Which, str]:
    """(clip config, which one, why)."""
    if which is Which.best:
        return dict(recommendation.best.clip), Which.best, "asked for the best trial's config"
    if which is Which.recommended:
        return dict(recommendation.clip), Which.recommended, "asked for the recommendation"
    if validation is None:
        return (
            dict(recommendation.best.clip),
            Which.best,
            "the recommendation was not validated (add --validate K to compare them on fresh seeds)",
        )
    r, b = validation.recommended, validation.best
    comparison = f"{validation.objective} {r.mean:.5g} vs {b.mean:.5g} over {len(validation.seeds)} fresh seeds"
    if validation.recommended_wins():
        return dict(recommendation.clip), Which.recommended, f"validated at least as good ({comparison})"
    return dict(recommendation.best.clip), Which.best, f"the recommendation validated worse ({comparison})"


def source(recommendation: Recommendation, which: Which, reason: str, storage: str | None = None) -> dict[str, Any]:
    best = recommendation.best
    return {
        "study": recommendation.study,
        "storage": storage,
        "trial": best.number,
        "objective": recommendation.objective,
        "direction": recommendation.direction,
        "value": best.value,
        "which": which.value,
        "reason": reason,
        "optim": dict(recommendation.optim),
        "recommendation": {
            "threshold": recommendation.threshold,
            "percentile": recommendation.percentile,
            "clip_fraction": recommendation.clip_fraction,
            "trials": recommendation.trials,
            "steps": recommendation.steps,
            "rule": recommendation.rule,
        },
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _header(origin: Mapping[str, Any], comment: str) -> list[str]:
    lr = origin["optim"].get("lr")
    return [
        f"{comment} exported by clipsweep on {origin['date']}",
        f"{comment} study {origin['study']!r}, trial {origin['trial']}: {origin['objective']}={origin['value']:.6g} "
        f"({origin['direction']})",
        f"{comment} config: {origin['which']} ({origin['reason']})",
        f"{comment} found with optim={origin['optim'].get('_target_', '?')} lr={lr}: a threshold goes with its lr",
    ]


def render(clip: Mapping[str, Any], origin: Mapping[str, Any], fmt: ExportFormat) -> str:
    """The exported text; YAML is a valid ``clip/`` group file (``clipsweep run clip=best``)."""
    clip = {k: (v.value if isinstance(v, Enum) else v) for k, v in clip.items()}
    method = ClipMethod(clip["method"])
    if fmt is ExportFormat.json:
        return json.dumps({"clip": clip, "source": dict(origin)}, indent=2) + "\n"
    if fmt is ExportFormat.yaml:
        body = {"defaults": [{"/schema/clip@_here_": method.value}, "_self_"], **clip}
        return "\n".join(_header(origin, "#")) + "\n" + yaml.safe_dump(body, sort_keys=False)
    return "\n".join([*_header(origin, "#"), _python(clip, method)]) + "\n"


def _python(clip: Mapping[str, Any], method: ClipMethod) -> str:
    """A self-contained ``clip_gradients(parameters)`` for a plain loop: backward → clip → step."""
    lines = ["import torch", ""]
    if method is ClipMethod.norm:
        body = (
            f"    return torch.nn.utils.clip_grad_norm_(parameters, max_norm={clip['threshold']!r}, "
            f"norm_type={clip.get('norm_type', 2.0)!r})"
        )
    elif method is ClipMethod.value:
        body = (
            "    parameters = [p for p in parameters if p.grad is not None]\n"
            "    norm = torch.nn.utils.get_total_norm([p.grad for p in parameters])\n"
            f"    torch.nn.utils.clip_grad_value_(parameters, clip_value={clip['threshold']!r})\n"
            "    return norm"
        )
    else:  # adaptive methods keep state between steps: the library's clipper carries it
        lines += ["from sweeper import GradClipper", "", f"_clipper = GradClipper.from_config({dict(clip)!r})", ""]
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


def refuse_existing(out: Path | None, force: bool) -> None:
    """An existing ``--out`` is refused unless ``force``; commands call it before any work too."""
    if out is not None and out.exists() and not force:
        raise ConfigError("--out", str(out), "a path that does not exist yet (or pass --force to overwrite)")


def write(text: str, out: Path, force: bool) -> Path:
    """Write ``text`` to ``out``; an existing file is refused unless ``force``."""
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
