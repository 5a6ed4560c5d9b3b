"""Issue 3 (c): TPE vs random vs grid (and GP, QMC on request): trials to come within 2% of the best grid value.

The grid is 5 thresholds x 4 learning rates on the default task (log-spaced over the box below);
the other samplers search the same box continuously (log scale), with the same trial budget as the
grid. For each sampler the script prints the first trial whose validation loss is within 2% of the
best grid value (or that it never got there), and its best value. No pruner, tracking off.

    python benchmarks/samplers.py [--steps 300] [--seed 0] [--samplers tpe random gp qmc]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import optuna
from optuna.trial import TrialState

from clipsweep.cli import main

THRESHOLDS = (0.03, 0.1, 0.3, 1.0, 3.0)
LEARNING_RATES = (0.003, 0.01, 0.03, 0.1)


def run(name: str, sampler: str, space: list[str], trials: int, steps: int, seed: int) -> list[float]:
    code = main(["sweep", "search=none", *space, f"hydra/sweeper/sampler={sampler}", "hydra/sweeper/pruner=none",
                 f"hydra.sweeper.n_trials={trials}", f"hydra.sweeper.study_name={name}", f"hydra.sweeper.seed={seed}",
                 f"train.steps={steps}", "tracking.enabled=false"])  # fmt: skip
    assert code == 0, f"the {name} sweep failed"
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{Path.cwd() / 'clipsweep.db'}")
    return [t.value if t.state == TrialState.COMPLETE else float("inf") for t in study.get_trials()]


def main_benchmark() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samplers", nargs="+", default=["tpe", "random"], choices=["tpe", "random", "gp", "qmc"],
                        help="searched continuously beside the grid (hydra/sweeper/sampler=NAME)")  # fmt: skip
    args = parser.parse_args()
    budget = len(THRESHOLDS) * len(LEARNING_RATES)
    grid_space = [f"clip.threshold=choice({','.join(map(str, THRESHOLDS))})",
                  f"optim.lr=choice({','.join(map(str, LEARNING_RATES))})"]  # fmt: skip
    box = [f"clip.threshold=tag(log, interval({THRESHOLDS[0]}, {THRESHOLDS[-1]}))",
           f"optim.lr=tag(log, interval({LEARNING_RATES[0]}, {LEARNING_RATES[-1]}))"]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        values = {"grid": run("grid", "grid", grid_space, budget, args.steps, args.seed)}
        for sampler in args.samplers:
            values[sampler] = run(sampler, sampler, box, budget, args.steps, args.seed)
    target = min(values["grid"]) * 1.02
    print(f"{budget} trials each, {args.steps} steps a trial, seed {args.seed}; best grid value "
          f"{min(values['grid']):.5g}, target <= {target:.5g}:")  # fmt: skip
    for name, series in values.items():
        hit = next((i + 1 for i, v in enumerate(series) if v <= target), None)
        reached = f"trial {hit}" if hit else f"not within {budget} trials"
        print(f"  {name:6s} reaches the target at {reached:22s} best {min(series):.5g}")


if __name__ == "__main__":
    main_benchmark()
