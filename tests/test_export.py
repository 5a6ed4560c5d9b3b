"""Exported files load back to the same clip config: through Hydra's composition, JSON, and as Python."""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from clipsweep.composition import compose, split_hydra_args
from clipsweep.errors import ConfigError
from clipsweep.export import ExportFormat, Which, choose, load_clip, render, run_command, source, write
from clipsweep.histogram import NormHistogram
from clipsweep.recommendation import Recommendation, TrialNorms
from clipsweep.validation import Arm, Validation

ORIGIN = {
    "study": "s",
    "storage": "sqlite:///clipsweep.db",
    "trial": 7,
    "objective": "val/loss",
    "direction": "minimize",
    "value": 0.0123,
    "which": "recommended",
    "reason": "validated at least as good",
    "optim": {"_target_": "torch.optim.Adam", "lr": 0.03},
    "date": "2026-11-26T12:00:00+00:00",
}
CLIPS = [
    {"method": "norm", "threshold": 0.4416, "norm_type": 2.0},
    {"method": "value", "threshold": 0.25},
    {"method": "percentile", "percentile": 85.0, "history": 200, "cap": 5.0},
    {"method": "zclip", "alpha": 0.9, "z_threshold": 2.0, "warmup_steps": 5, "eps": 1e-6, "cap": 3.0},
]


@pytest.mark.parametrize("clip", CLIPS, ids=lambda c: c["method"])
def test_export_yaml_is_a_clip_group_file_hydra_composes_back(tmp_path: Path, clip: dict[str, Any]) -> None:
    text = render(clip, ORIGIN, ExportFormat.yaml)
    assert (
        text.startswith("# @package _global_\n# exported by clipsweep")
        and "study 's', trial 7: val/loss=0.0123" in text
    )
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "best.yaml").write_text(text)
    composed = compose(["clip=best"], config_dir=str(tmp_path))
    assert OmegaConf.to_container(composed.clip, enum_to_str=True) == clip
    assert load_clip(tmp_path / "clip" / "best.yaml") == clip


@pytest.mark.parametrize("clip", CLIPS, ids=lambda c: c["method"])
def test_export_json_round_trips_with_its_source(tmp_path: Path, clip: dict[str, Any]) -> None:
    path = write(render(clip, ORIGIN, ExportFormat.json), tmp_path / "best.json", force=False)
    assert load_clip(path) == clip
    assert json.loads(path.read_text())["source"] == ORIGIN


def _model_with_grads(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.LSTM(3, 8)
    out, _ = model(torch.randn(5, 2, 3) * 10)
    out.square().sum().backward()
    return model


@pytest.mark.parametrize("clip", CLIPS[:2], ids=lambda c: c["method"])
def test_export_python_snippet_runs_and_clips_like_torch(clip: dict[str, Any]) -> None:
    namespace: dict[str, Any] = {}
    exec(render(clip, ORIGIN, ExportFormat.python), namespace)  # the file as a user would run it
    ours, oracle = _model_with_grads(0), _model_with_grads(0)
    norm = namespace["clip_gradients"](ours.parameters())
    if clip["method"] == "norm":
        expected = torch.nn.utils.clip_grad_norm_(oracle.parameters(), clip["threshold"])
    else:
        expected = torch.nn.utils.get_total_norm([p.grad for p in oracle.parameters()])
        torch.nn.utils.clip_grad_value_(oracle.parameters(), clip["threshold"])
    assert torch.equal(norm, expected)
    for a, b in zip(ours.parameters(), oracle.parameters()):
        assert torch.equal(a.grad, b.grad)


def test_export_python_snippet_for_adaptive_methods_uses_the_library_clipper() -> None:
    namespace: dict[str, Any] = {}
    exec(render(CLIPS[2], ORIGIN, ExportFormat.python), namespace)
    model = _model_with_grads(0)
    norm = namespace["clip_gradients"](model.parameters())
    assert float(norm) > 0 and namespace["_clipper"].clip == CLIPS[2]


def test_export_write_refuses_an_existing_file_unless_forced(tmp_path: Path) -> None:
    path = tmp_path / "best.yaml"
    path.write_text("keep me")
    with pytest.raises(ConfigError, match=r"--out=.*best\.yaml.*--force"):
        write("new", path, force=False)
    assert path.read_text() == "keep me"
    write("new", path, force=True)
    assert path.read_text() == "new"


def _recommendation(extrapolated: bool = False) -> Recommendation:
    histogram = NormHistogram()
    histogram.add(np.linspace(0.1, 1.0, 100))
    best_clip, chosen_clip = ({"method": "norm", "threshold": t, "norm_type": 2.0} for t in (0.5, 0.6))
    best = TrialNorms(3, 0.01, {"clip": best_clip, "optim": {"lr": 0.1}}, histogram, 40, {"clip.threshold": 0.5,
                      "optim.lr": 0.1}, ["train.steps=20"])  # fmt: skip
    chosen = TrialNorms(5, 0.011, {"clip": chosen_clip, "optim": {"lr": 0.05}}, histogram, 40, {"clip.threshold": 0.6,
                        "optim.lr": 0.05}, ["train.steps=20", "search=threshold_lr"])  # fmt: skip
    return Recommendation(
        study="s", objective="val/loss", direction="minimize", clip=chosen_clip, params=chosen.params,
        trial=None if extrapolated else chosen, best=best, good=[best, chosen], histogram=histogram, threshold=0.6,
        interval=(0.5, 0.6), percentile=60.0, clip_fraction=0.4, rule="rule", extrapolated=extrapolated,
    )  # fmt: skip


def _validation(recommended: list[float], best: list[float]) -> Validation:
    rec = _recommendation()
    return Validation(
        "val/loss", "minimize", [1, 2], Arm("recommended", rec.config, recommended), Arm("best", rec.best.config, best)
    )


def test_export_choose_takes_the_supported_recommendation_unless_validation_says_otherwise() -> None:
    rec = _recommendation()
    choice = choose(rec, None, Which.auto)
    assert choice.which is Which.recommended and choice.clip == rec.clip and "not validated" in choice.reason
    assert choice.params == {"optim.lr": 0.05} and choice.trial.number == 5  # its own lr travels with it
    choice = choose(rec, _validation([0.01, 0.02], [0.02, 0.03]), Which.auto)
    assert choice.which is Which.recommended and "at least as good" in choice.reason
    choice = choose(rec, _validation([0.05, 0.06], [0.02, 0.03]), Which.auto)
    assert choice.which is Which.best and "validated worse" in choice.reason
    assert choice.clip == rec.best.clip and choice.params == {"optim.lr": 0.1}
    diverged = _validation([0.001, float("nan")], [0.02, 0.03])
    assert choose(rec, diverged, Which.auto).which is Which.best  # a diverged seed disqualifies it
    assert choose(_recommendation(extrapolated=True), None, Which.auto).which is Which.best  # unvalidated guess
    assert choose(rec, None, Which.recommended).clip == rec.clip
    alone = Validation("val/loss", "minimize", [1, 2], Arm("recommended", rec.config, [0.02, 0.04]),
                       Arm("best", rec.config, [0.02, 0.04]))  # fmt: skip
    assert choose(rec, alone, Which.auto).reason == (
        "the best trial is also the robust choice; validated: val/loss 0.03 over 2 fresh seeds"
    )
    assert choose(copy.deepcopy(rec), None, Which.best).clip == rec.best.clip


def test_export_run_command_names_each_config_dir_it_needs_once(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    mine, fixed = str(tmp_path / "mine"), ["model=small", "search=threshold", "clip.threshold=0.3"]
    assert run_command(fixed, mine) == "clipsweep run --config-dir mine model=small clip=best"
    assert (
        run_command(fixed, mine, Path("mine/clip/best.yaml")) == "clipsweep run --config-dir mine model=small clip=best"
    )
    assert run_command(fixed, mine, Path("conf/clip/ours.yaml")) == (
        "clipsweep run --config-dir mine 'hydra.searchpath=[file://conf]' model=small clip=ours"
    )
    assert run_command(fixed, str(tmp_path / "conf")) == "clipsweep run model=small clip=best"  # ./conf: found anyway
    assert run_command(fixed, None, Path("clip.yaml"), ["clip=norm", "clip.threshold=0.3"]) == (
        "clipsweep run model=small clip=norm clip.threshold=0.3"
    )
    # A config dir the sweep named on the search path stays there, after the one holding the clip file.
    searched = ["hydra.searchpath=[file://mine]", *fixed]
    assert run_command(searched, None, Path("conf/clip/ours.yaml")) == (
        "clipsweep run 'hydra.searchpath=[file://mine]' model=small clip=ours"
    )
    assert run_command(searched, None, Path("runs/clip/best.yaml")) == (
        "clipsweep run --config-dir runs 'hydra.searchpath=[file://mine]' model=small clip=best"
    )
    assert run_command(["hydra.searchpath=[file://mine]"], "/a", Path("runs/clip/best.yaml")) == (
        "clipsweep run --config-dir /a 'hydra.searchpath=[file://runs,file://mine]' clip=best"
    )
    odd = run_command([], None, Path("/my runs/x/clip/best.yaml"))  # outside the working directory, with a space
    assert odd == "clipsweep run --config-dir '/my runs/x' clip=best"
    assert run_command(["task.path=my file.csv"], "/my runs/x", Path("a,b/clip/c.yaml")) == (
        """clipsweep run --config-dir '/my runs/x' 'hydra.searchpath=["file://a,b"]' 'task.path=my file.csv' clip=c"""
    )
    # What the shell hands clipsweep composes with both dirs: the user's group and the clip file.
    (tmp_path / "my runs" / "model").mkdir(parents=True)
    (tmp_path / "my runs" / "model" / "small.yaml").write_text(
        "defaults:\n  - /schema/model@_here_: rnn\n  - _self_\ncell: gru\n"
    )
    (tmp_path / "a,b" / "clip").mkdir(parents=True)
    (tmp_path / "a,b" / "clip" / "c.yaml").write_text("# @package _global_\nclip:\n  method: norm\n  threshold: 0.25\n")
    command = run_command(fixed, str(tmp_path / "my runs"), Path("a,b/clip/c.yaml"))
    composed = compose(*split_hydra_args(shlex.split(command)[2:]))
    assert (composed.model.cell.value, composed.clip.threshold) == ("gru", 0.25)


def test_export_yaml_carries_the_co_searched_parameters_and_the_reproduce_command(tmp_path: Path) -> None:
    rec = _recommendation()
    choice = choose(rec, None, Which.auto)
    origin = source(rec, choice, "sqlite:///clipsweep.db")
    assert origin["reproduce"] == "clipsweep run train.steps=20 clip=best"  # the sweep's own choices stay out
    text = render(choice.clip, origin, ExportFormat.yaml, {**choice.params, "model": "gru"})
    assert "# uncertainty: thresholds 0.5..0.6" in text and "trial 5: val/loss=0.011" in text
    lone = source(_recommendation(), choice) | {"recommendation": {"interval": [0.6, 0.6]}}
    assert "# uncertainty: not bounded (a lone good trial at 0.6)" in render(choice.clip, lone, ExportFormat.yaml)
    assert "# note:" not in text
    rec.median_value = 0.0101  # the best trial 1% better than the median one: nothing was measured
    flat = render(choice.clip, source(rec, choice), ExportFormat.yaml)
    assert "# note: the best trial is within 2% of the median one (0.0101): the sweep measured no difference" in flat
    rec.unclipped = TrialNorms(7, 0.0101, {"clip": {"method": "none"}}, rec.histogram, 0, {"clip": "none"})
    plain = render(choice.clip, source(rec, choice), ExportFormat.yaml)
    assert "# note: clip=none (trial 7) scored 0.0101, within 2% of the best: clipping made no measurable" in plain
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "best.yaml").write_text(text)
    composed = compose(["clip=best"], config_dir=str(tmp_path))
    assert composed.clip.threshold == 0.6 and composed.optim.lr == 0.05 and composed.model.cell.value == "gru"
    assert compose(["clip=best", "optim.lr=0.3"], config_dir=str(tmp_path)).optim.lr == 0.3  # the command line wins
    data = json.loads(render(choice.clip, origin, ExportFormat.json, choice.params))
    assert data["params"] == {"optim.lr": 0.05} and data["source"]["trial"] == 5
