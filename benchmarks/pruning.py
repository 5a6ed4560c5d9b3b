"""Issue 3 (b): the median pruner vs none, same seed and n_trials: steps trained and best value.

Two sweeps of the default configuration (TPE with the same seed over threshold and learning rate)
run in this process, one with ``hydra/sweeper/pruner=median``, one with ``none``. Steps trained
are read back from the studies (a pruned trial trained up to its last reported evaluation).
Targets: <= 0.5x the steps, best value within 5%. TPE sees different histories once trials are
pruned, so the two sweeps sample different points after the first pruning.

    python benchmarks/pruning.py [--trials 16] [--steps 1000] [--sampler tpe|random]

With ``--sampler random`` both sweeps evaluate the same seeded points, so the difference in best
value is only what pruning cut (a pruned trial that would have been the best).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from clipsweep.cli import main


def steps_trained(study: optuna.Study, steps: int) -> int:
    total = 0
    for trial in study.get_trials():
        if trial.state == TrialState.COMPLETE:
            total += steps
        elif trial.intermediate_values:
            total += max(trial.intermediate_values)
    return total


def main_benchmark() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sampler", choices=["tpe", "random"], default="tpe",
        help="random: both sweeps evaluate the same points, so only pruning differs",
    )  # fmt: skip
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        for pruner in ("none", "median"):
            start = time.perf_counter()
            code = main(["sweep", f"hydra/sweeper/pruner={pruner}", f"hydra.sweeper.n_trials={args.trials}",
                         f"hydra.sweeper.study_name={pruner}", f"hydra.sweeper.seed={args.seed}",
                         f"hydra/sweeper/sampler={args.sampler}",
                         f"train.steps={args.steps}", "tracking.enabled=false"])  # fmt: skip
            assert code == 0, f"the {pruner} sweep failed"
            study = optuna.load_study(study_name=pruner, storage=f"sqlite:///{Path(tmp) / 'clipsweep.db'}")
            results[pruner] = (steps_trained(study, args.steps), study.best_value, time.perf_counter() - start)
    (base_steps, base_best, base_time), (steps, best, seconds) = results["none"], results["median"]
    print(f"{args.trials} trials x {args.steps} steps, {args.sampler} sampler seed {args.seed}, default task:")
    print(f"  no pruner:     {base_steps:7d} steps  best val/loss {base_best:.5g}  {base_time:6.1f} s")
    print(f"  median pruner: {steps:7d} steps  best val/loss {best:.5g}  {seconds:6.1f} s")
    print(f"  steps ratio {steps / base_steps:.3f} (target <= 0.5); best value ratio {best / base_best:.3f}"
          " (target within 5%, i.e. <= 1.05)")  # fmt: skip


if __name__ == "__main__":
    main_benchmark()
