"""Calibration: a norm-clipping threshold for the configured run at a fraction of a sweep's compute.

One pilot cannot do it alone: the threshold that trains best depends on the learning rate in ways
the pilot's norm statistics do not show (a stuck tanh RNN has large norms and no NaN; a GRU's best
thresholds sit above every steady-state norm). So the pilot only anchors the scale, and a budgeted
multi-fidelity search decides:

1. **Pilot** (``pilot_share`` of the budget): the configured model, task and learning rate with
   only a safety ``cap``; its steady-state norm median ``m`` anchors the grid.
2. **Grid**: ``grid`` thresholds log-spaced over ``spread`` decades, centred ``shift`` decades below
   ``m``. Where the good thresholds sit against ``m`` was measured on the benchmark's six settings:
   from m/140 (a tanh RNN with SGD at lr 0.5, whose pilot explodes) to about 10 m (a GRU with Adam on
   the adding task, which wants almost no clipping); 3.5 decades centred 0.75 below ``m`` cover
   m/320 .. 10 m. The old grid (3 decades centred on ``m``) missed the first band altogether.
3. **Successive halving**: every threshold trains a short run; the better ``1/eta`` train on until
   their runs are ``eta`` times longer, until two are compared. Runs continue rather than restart (as
   Hyperband's implementations do), so the last rung sees the longest runs the budget allows; rung
   lengths are set so the whole search spends the ``budget`` (a multiple of ``train.steps``; 0.8 is
   under a tenth of a 20-trial sweep's steps, pruned trials included). Arms are ranked by a
   **forecast**: the objective's curve over each arm's last doubling of steps, extrapolated as a power
   law to ``train.steps`` (``Arm.forecast``), because the arm that leads after 200 steps is often one
   that stalls by 1000.

The winner is the threshold; the cost is printed and logged. Short runs still see only the start of
training: where a task separates good from bad thresholds late, or its curves jump (a run learns the
adding task suddenly, at a step that depends on the seed), the forecast is a guess; the benchmark's
table says where it missed.
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
    spread: float = _setting(3.5, "decades the grid spans")
    shift: float = _setting(0.75, "decades the grid's centre sits below the pilot's median norm")
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
    curve: list[tuple[int, float]] = field(default_factory=list)
    """(steps, objective) at each rung's middle and end: the learning curve the ranking extrapolates."""
    trainer: Trainer | None = None

    def advance(self, base: Mapping[str, Any], to_step: int, total: int) -> None:
        """Train on to ``to_step`` optimizer steps (building the run first), scoring it halfway and there."""
        if self.trainer is None:
            setup = build(_with(base, _norm_clip(self.threshold), total))
            telemetry = Telemetry(list(setup.model.named_parameters()), 100, setup.device, total_steps=total)
            self.trainer = Trainer(setup, telemetry)
        done = self.scores[-1][0] if self.scores else 0
        middle = (done + to_step) // 2
        for step in range(done, to_step):
            self.trainer.step(step)
            if self.trainer.telemetry.full:
                self.trainer.telemetry.drain()
            if step + 1 == middle and done < middle < to_step:
                self.curve.append((middle, _value(self.trainer.evaluate(), self.objective)))
        self.scores.append((to_step, _value(self.trainer.evaluate(), self.objective)))
        self.curve.append(self.scores[-1])

    def forecast(self, horizon: int) -> float:
        """The objective's badness extrapolated to ``horizon`` steps (lower is better; inf when diverged).

        Short runs favour large steps: a threshold that learns fastest in 200 steps is often one that
        stalls or turns unstable by 1000 (on a tanh RNN with SGD at lr 0.5, 0.25 led at 204 steps and
        ended at 0.7 error where 0.056 ended at 0.14). So arms are ranked by where their curve is
        heading, not where it is: badness (loss, or 1 - accuracy) as a power law in steps, fitted by
        least squares through the curve's points over its last doubling, read at the run's
        full length. An arm with fewer than three such points (the first rung: its middle and
        end) is ranked by its last value.
        """
        last_step, last = self.curve[-1]
        if not math.isfinite(_badness(last, self.objective)):
            return math.inf
        points = [(t, _badness(v, self.objective)) for t, v in self.curve if t >= last_step / 2 and math.isfinite(v)]
        if len(points) < 3 or horizon <= last_step:  # two points are one noisy difference: no trend
            return _badness(last, self.objective)
        x = np.log([t for t, _ in points])
        y = np.log(np.maximum([b for _, b in points], _FLOOR))
        slope, intercept = np.polyfit(x, y, 1)
        return float(np.exp(intercept + slope * math.log(horizon)))


_FLOOR = 1e-12
"""Badness below this is taken as this in the forecast's logarithms (a perfect score is not a ratio)."""


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
    horizon: int
    """The run length the threshold is for (train.steps): the rungs' forecasts read the curves there."""

    @property
    def clip(self) -> dict[str, Any]:
        return _norm_clip(self.threshold)

    def describe(self, sweep_steps: int) -> str:
        share = self.steps / sweep_steps if sweep_steps else math.nan
        h = self.histogram
        rungs = sorted({s for a in self.arms for s, _ in a.scores})
        table = [
            f"    {a.threshold:<9.3g}"
            + "".join(f"{dict(a.scores).get(s, math.nan):>12.4g}" for s in rungs)
            + f"{a.forecast(self.horizon):>14.4g}"
            for a in sorted(self.arms, key=lambda a: a.threshold)
        ]
        return "\n".join(
            [
                f"calibrated: clip=norm clip.threshold={self.threshold:.4g} for optim.lr={self.lr:.4g}",
                f"  pilot: {self.pilot.steps} steps; steady-state norms p50 {h.percentile(50):.3g}, "
                f"p90 {h.percentile(90):.3g} ({h.nonfinite} non-finite steps excluded)",
                f"  successive halving over {len(self.arms)} thresholds, {self.objective} after "
                + ", ".join(f"{s} steps" for s in rungs)
                + f"; each rung keeps the best forecast at {self.horizon} steps (badness, last column):",
                *table,
                f"  cost: {self.steps} optimizer steps, {self.seconds:.1f} s; {share:.1%} of the steps of a sweep "
                f"with {sweep_steps} trial-steps",
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


def _badness(value: float, objective: str) -> float:
    """Lower is better: the objective itself, or 1 - accuracy."""
    return 1.0 - value if objective.endswith("accuracy") else value


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
    grid = centre * np.logspace(-settings.spread / 2, settings.spread / 2, settings.grid) / 10**settings.shift
    arms = [Arm(float(f"{t:.3g}"), objective=settings.objective) for t in grid]
    rungs = settings.rungs()
    base = OmegaConf.to_container(config, resolve=True, enum_to_str=True)
    horizon = int(base["train"]["steps"])
    remaining = settings.budget * horizon - result.steps
    # Rung k brings rungs[k] arms to r * eta**k steps, continuing their runs: the budget fixes r.
    reached = [settings.eta**k for k in range(len(rungs))]
    added = sum(n * (reached[k] - (reached[k - 1] if k else 0)) for k, n in enumerate(rungs))
    unit = max(1, int(remaining / added))
    total = unit * reached[-1]
    alive = arms
    for k in range(len(rungs)):
        for arm in alive:
            arm.advance(base, unit * reached[k], total)
        alive = sorted(alive, key=lambda a: a.forecast(horizon))[: max(1, math.ceil(len(alive) / settings.eta))]
    spent = result.steps + sum(a.scores[-1][0] for a in arms)
    for arm in arms:
        arm.trainer = None  # the runs are done: free them
    return Calibration(
        alive[0].threshold, result, histogram, float(config.optim.lr), arms, spent, time.perf_counter() - started,
        settings.objective, horizon,
    )  # fmt: skip
