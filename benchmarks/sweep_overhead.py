"""Issue 3 (a): wall time of an N-trial sweep vs the sum of the same trials trained in one process.

Both sides run in this process with imports warm: first ``clipsweep sweep`` (TPE, no pruner, the
default model with ``--steps`` steps, MLflow on), then every trial of the resulting study again
through ``build`` + ``train`` with the same overrides and the same tracking. The ratio is the
sweep's own cost: Optuna ask/tell, Hydra composition and launching, heartbeats, the MLflow parent
run and its plots. Target: <= 1.10.

    python benchmarks/sweep_overhead.py [--trials 8] [--steps 300]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import optuna

from clipsweep.cli import main
from clipsweep.composition import compose
from clipsweep.search_space import format_value
from clipsweep.tracking import make_tracker
from clipsweep.training import build, train


def main_benchmark() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    common = [f"train.steps={args.steps}", "train.eval_every=100"]
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        warm = build(compose(common))  # imports, oneDNN kernels
        train(warm, make_tracker("sqlite:///warm.db", "warm", True))
        start = time.perf_counter()
        code = main(["sweep", *common, "hydra/sweeper/pruner=none", f"hydra.sweeper.n_trials={args.trials}",
                     "hydra.sweeper.study_name=bench", "hydra.sweeper.seed=0"])  # fmt: skip
        sweep_seconds = time.perf_counter() - start
        assert code == 0, "the sweep failed"
        study = optuna.load_study(study_name="bench", storage=f"sqlite:///{Path(tmp) / 'clipsweep.db'}")
        direct = 0.0
        for trial in study.get_trials():
            overrides = [*common, *(f"{k}={format_value(v)}" for k, v in trial.params.items())]
            config = compose(overrides)
            start = time.perf_counter()
            setup = build(config)
            tracker = make_tracker(config.tracking.uri, config.tracking.experiment, True)
            train(setup, tracker)
            tracker.flush()
            direct += time.perf_counter() - start
    print(f"{args.trials} trials x {args.steps} steps (default model, TPE, no pruner, MLflow on):")
    print(f"  sweep wall time:                  {sweep_seconds:7.2f} s")
    print(f"  same trials, trained one by one:  {direct:7.2f} s")
    print(f"  ratio: {sweep_seconds / direct:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main_benchmark()
