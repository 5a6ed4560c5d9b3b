"""Calibration: a norm-clipping threshold for the configured run at a fraction of a sweep's compute.

One pilot cannot do it alone: the threshold that trains best depends on the learning rate in ways
the pilot's norm statistics do not show (a stuck tanh RNN has large norms and no NaN; a GRU's best
thresholds sit above every steady-state norm). So the pilot only anchors the scale, and a budgeted
multi-fidelity search decides:

1. **Pilot** (``pilot_share`` of the budget): the configured model, task and learning rate with
   only a safety ``cap``; its steady-state norm median ``m`` anchors the grid.
2. **Grid**: ``grid`` thresholds log-spaced over ``spread`` decades centred on ``m``.
3. **Successive halving**: every threshold trains a short run; the better ``1/eta`` (by the
   objective on the validation set) train on until their runs are ``eta`` times longer, until two
   are compared. Runs continue rather than restart (as Hyperband's implementations do), so the
   last rung sees the longest runs the budget allows; rung lengths are set so the whole search
   spends the ``budget`` (a multiple of ``train.steps``; the default 0.8 is under a tenth of a
   12-trial sweep's steps).

The winner is the threshold; the cost is printed and logged. Short runs rank thresholds by how
fast they learn and whether they stay stable, which is what clipping changes; a task that only
separates good from bad thresholds late needs a larger ``budget`` (the benchmark's table says
where).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from clipsweep.errors import ConfigError
from clipsweep.histogram import NormHistogram
from clipsweep.names import ROLE_TAG
from clipsweep.recording import RunResult
from clipsweep.telemetry import Telemetry
from clipsweep.tracker import Tracker
from clipsweep.training import Trainer, build, train


def _setting(default: Any, help: str) -> Any:
    """A setting with its help text, which ``clipsweep calibrate --help`` prints beside the default."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class CalibrateSettings:
    budget: float = _setting(0.8, "optimizer steps the whole calibration may spend, as a multiple of train.steps")
    pilot_share: float = _setting(0.15, "share of the budget spent on the pilot that anchors the grid")
    grid: int = _setting(8, "thresholds in the first rung")
    spread: float = _setting(3.0, "decades the grid spans, centred on the pilot's median norm")
    eta: int = _setting(2, "each rung keeps the best 1/eta and trains them eta times longer")
    cap: float = _setting(10.0, "safety norm cap of the pilot (far above typical norms: it only stops a blow-up)")
    transient: float = _setting(0.1, "fraction of the pilot's steps left out of its norm statistics")
    objective: str = _setting("val/loss", "validation metric that ranks thresholds (val/accuracy is maximised)")

    def __post_init__(self) -> None:
        checks = (
            ("--budget", self.budget, self.budget > 0, "a multiple of train.steps > 0"),
            ("--pilot-share", self.pilot_share, 0 < self.pilot_share < 1, "a fraction in (0, 1)"),
            ("--grid", self.grid, self.grid >= 2, "an integer >= 2"),
            ("--spread", self.spread, self.spread > 0, "decades > 0"),
            ("--eta", self.eta, self.eta >= 2, "an integer >= 2"),
            ("--cap", self.cap, self.cap > 0, "a norm > 0"),
            ("--transient", self.transient, 0 <= self.transient < 1, "a fraction in [0, 1)"),
        )
        for key, value, ok, allowed in checks:
            if not ok:
                raise ConfigError(key, value, allowed)

    def rungs(self) -> list[int]:
        """Arms per rung: grid, grid/eta, ... down to 2 (the last comparison)."""
        arms, counts = self.grid, []
        while arms >= 2:
            counts.append(arms)
            arms = math.ceil(arms / self.eta) if arms > 2 else 1
        return counts


@dataclass
class Arm:
    """One threshold of the grid: its run goes on from rung to rung (successive halving with continuation)."""

    threshold: float
    objective: str = "val/loss"
    scores: list[tuple[int, float]] = field(default_factory=list)
    """(steps trained so far, objective) at the end of each rung it reached."""
    trainer: Trainer | None = None

    def advance(self, base: Mapping[str, Any], to_step: int, total: int) -> None:
        """Train on to ``to_step`` optimizer steps (building the run first) and score it there."""
        if self.trainer is None:
            setup = build(_with(base, _norm_clip(self.threshold), total))
            telemetry = Telemetry(list(setup.model.named_parameters()), 100, setup.device, total_steps=total)
            self.trainer = Trainer(setup, telemetry)
        done = self.scores[-1][0] if self.scores else 0
        for step in range(done, to_step):
            self.trainer.step(step)
            if self.trainer.telemetry.full:
                self.trainer.telemetry.drain()
        self.scores.append((to_step, _value(self.trainer.evaluate(), self.objective)))


@dataclass
class Calibration:
    threshold: float
    pilot: RunResult
    histogram: NormHistogram
    lr: float
    arms: list[Arm]
    steps: int
    """Optimizer steps spent in all, pilot included."""
    seconds: float
    objective: str

    @property
    def clip(self) -> dict[str, Any]:
        return _norm_clip(self.threshold)

    def describe(self, sweep_steps: int) -> str:
        share = self.steps / sweep_steps if sweep_steps else math.nan
        h = self.histogram
        rungs = sorted({s for a in self.arms for s, _ in a.scores})
        table = [
            f"    {a.threshold:<9.3g}" + "".join(f"{dict(a.scores).get(s, math.nan):>12.4g}" for s in rungs)
            for a in sorted(self.arms, key=lambda a: a.threshold)
        ]
        return "\n".join(
            [
                f"calibrated: clip=norm clip.threshold={self.threshold:.4g} for optim.lr={self.lr:.4g}",
                f"  pilot: {self.pilot.steps} steps; steady-state norms p50 {h.percentile(50):.3g}, "
                f"p90 {h.percentile(90):.3g} ({h.nonfinite} non-finite steps excluded)",
                f"  successive halving over {len(self.arms)} thresholds, {self.objective} after "
                + ", ".join(f"{s} steps" for s in rungs)
                + ":",
                *table,
                f"  cost: {self.steps} optimizer steps, {self.seconds:.1f} s; {share:.1%} of the steps of a sweep "
                f"with {sweep_steps} trial-steps",
                f"  train with it: clipsweep run clip=norm clip.threshold={self.threshold:.4g}",
            ]
        )

    def metrics(self) -> dict[str, float]:
        return {
            "calibrate/threshold": self.threshold,
            "calibrate/steps": float(self.steps),
            "calibrate/seconds": self.seconds,
            "calibrate/pilot_norm_p50": self.histogram.percentile(50),
        }


def _norm_clip(threshold: float) -> dict[str, Any]:
    return {"method": "norm", "threshold": threshold, "norm_type": 2.0}


def _with(config: Mapping[str, Any], clip: Mapping[str, Any], steps: int) -> DictConfig:
    resolved = copy.deepcopy(dict(config))
    resolved["clip"] = dict(clip)
    resolved["train"] = {**resolved["train"], "steps": steps, "eval_every": steps}
    return OmegaConf.create(resolved)


def pilot_config(config: DictConfig, settings: CalibrateSettings) -> DictConfig:
    resolved = OmegaConf.to_container(config, resolve=True, enum_to_str=True)
    budget = settings.budget * int(resolved["train"]["steps"])
    steps = max(10, round(budget * settings.pilot_share))
    return _with(resolved, _norm_clip(settings.cap), steps)


def _value(val: Mapping[str, float], objective: str) -> float:
    value = val.get(objective, math.nan)
    return value if math.isfinite(value) else math.nan


def _rank(arm: Arm, objective: str) -> float:
    """Lower is better; a diverged arm (non-finite objective) is worst."""
    value = arm.scores[-1][1]
    if not math.isfinite(value):
        return math.inf
    return -value if objective.endswith("accuracy") else value


def calibrate(config: DictConfig, settings: CalibrateSettings, tracker: Tracker) -> Calibration:
    """Pilot, grid, successive halving; ValueError when the pilot gives no norm to anchor on."""
    started = time.perf_counter()
    pilot = pilot_config(config, settings)
    result = train(build(pilot), tracker, run_name="calibrate", tags={ROLE_TAG: "calibrate"})
    histogram, _ = result.summary.segments.steady(settings.transient)
    if histogram.count == 0:
        raise ValueError(
            f"the pilot ({result.steps} steps at lr {float(pilot.optim.lr):.4g}, cap {settings.cap:g}) recorded no "
            "finite gradient norm: lower the learning rate or --cap"
        )
    centre = max(histogram.percentile(50), 1e-12)
    grid = centre * np.logspace(-settings.spread / 2, settings.spread / 2, settings.grid)
    arms = [Arm(float(f"{t:.3g}"), objective=settings.objective) for t in grid]
    rungs = settings.rungs()
    base = OmegaConf.to_container(config, resolve=True, enum_to_str=True)
    remaining = settings.budget * int(base["train"]["steps"]) - result.steps
    # Rung k brings rungs[k] arms to r * eta**k steps, continuing their runs: the budget fixes r.
    reached = [settings.eta**k for k in range(len(rungs))]
    added = sum(n * (reached[k] - (reached[k - 1] if k else 0)) for k, n in enumerate(rungs))
    unit = max(1, int(remaining / added))
    total = unit * reached[-1]
    alive = arms
    for k in range(len(rungs)):
        for arm in alive:
            arm.advance(base, unit * reached[k], total)
        alive = sorted(alive, key=lambda a: _rank(a, settings.objective))[
            : max(1, math.ceil(len(alive) / settings.eta))
        ]
    spent = result.steps + sum(a.scores[-1][0] for a in arms)
    for arm in arms:
        arm.trainer = None  # the runs are done: free them
    return Calibration(
        alive[0].threshold, result, histogram, float(config.optim.lr), arms, spent, time.perf_counter() - started,
        settings.objective,
    )  # fmt: skip
