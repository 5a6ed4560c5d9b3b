"""Issue 4: is the recommended threshold as good as the sweep's best, and calibrate nearly so for less?

For each setting (task x cell, at a learning rate where clipping changes the outcome) this runs,
in this process, with tracking off:
  - an N-trial threshold sweep (``search=threshold``: the learning rate stays fixed, so every arm
    below trains at the same rate) with the default TPE sampler and median pruner;
  - the recommendation from it, validated against the best trial's config on seeds 1..K;
  - ``calibrate`` (one pilot at 0.3x the learning rate → p90 of its norms);
then retrains no clipping, the folk threshold 1.0 and the calibrated threshold on the same seeds.
It prints the mean objective over the K seeds and the optimizer steps each arm cost, and the
ratios behind the targets: recommendation within 2% of the best trial's config, calibrate within
5% at <= 1/10 of the sweep's steps, both better than 1.0 where 1.0 is not already optimal.

    python benchmarks/recommendation.py [--trials 12] [--seeds 3] [--settings adding-lstm digits-rnn ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import optuna
from optuna.trial import TrialState

from sweeper.calibrate import CalibrateSettings, calibrate
from sweeper.cli import compose, main
from sweeper.recommend import CONFIG_ATTR, RecommendSettings, recommend
from sweeper.tracking import NullTracker
from sweeper.validation import retrain, validate

SETTINGS: dict[str, list[str]] = {
    "adding-lstm": ["model=lstm", "task=adding", "optim=adam", "optim.lr=0.1", "train.steps=1000"],
    "adding-gru": ["model=gru", "task=adding", "optim=adam", "optim.lr=0.1", "train.steps=1000"],
    "digits-rnn": ["model=rnn", "task=digits", "optim=sgd", "optim.lr=0.2", "optim.momentum=0.9",
                   "train.batch_size=64", "train.steps=1200", "train.eval_every=200"],
    "digits-lstm": ["model=lstm", "task=digits", "optim=sgd", "optim.lr=0.2", "optim.momentum=0.9",
                    "train.batch_size=64", "train.steps=1200", "train.eval_every=200"],
}  # fmt: skip


def steps_trained(study: optuna.Study) -> int:
    total = 0
    for trial in study.get_trials():
        if trial.state == TrialState.COMPLETE:
            total += int(trial.user_attrs[CONFIG_ATTR]["train"]["steps"])
        elif trial.intermediate_values:
            total += max(trial.intermediate_values)
    return total


def mean_over_seeds(config: dict, clip: dict, seeds: list[int]) -> list[float]:
    values = []
    for seed in seeds:
        result = retrain(config, clip, seed, {"enabled": False}, "arm", {})
        values.append(result.val["val/loss"] if result.status == "finished" else float("nan"))
    return values


def run_setting(name: str, overrides: list[str], trials: int, seeds: int) -> dict[str, tuple[float, int, str]]:
    study_name = f"bench-{name}"
    started = time.perf_counter()
    sweep = ["sweep", *overrides, "search=threshold", f"hydra.sweeper.n_trials={trials}",
             f"hydra.sweeper.study_name={study_name}", "hydra.sweeper.seed=0", "tracking.enabled=false"]  # fmt: skip
    code = main(sweep)
    assert code == 0, f"the {name} sweep failed"
    study = optuna.load_study(study_name=study_name, storage="sqlite:///clipsweep.db")
    sweep_steps, sweep_seconds = steps_trained(study), time.perf_counter() - started
    recommendation = recommend(study, RecommendSettings())
    validation = validate(recommendation, seeds, {"enabled": False})
    config = recommendation.best.config
    steps = int(config["train"]["steps"])
    calibration = calibrate(compose(overrides), CalibrateSettings(), NullTracker())
    arms = {
        "no clipping": (mean_over_seeds(config, {"method": "none"}, validation.seeds), 0, ""),
        "threshold 1.0": (mean_over_seeds(config, {"method": "norm", "threshold": 1.0}, validation.seeds), 0, ""),
        "sweep best": (validation.best.values, sweep_steps, f"thr {recommendation.best_threshold:.4g}"),
        "recommended": (
            validation.recommended.values,
            sweep_steps + seeds * 2 * steps,
            f"thr {recommendation.threshold:.4g} (p{recommendation.percentile:.0f})",
        ),
        "calibrated": (
            mean_over_seeds(config, calibration.clip, validation.seeds),
            calibration.result.steps,
            f"thr {calibration.threshold:.4g}",
        ),
    }
    print(f"[{name}] sweep {sweep_seconds:.0f} s; {recommendation.describe()}", flush=True)
    return {arm: (_mean(values), cost, note) for arm, (values, cost, note) in arms.items()}


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v == v]
    return statistics.fmean(finite) if len(finite) == len(values) else float("nan")


def main_benchmark() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args()
    tables = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        for name in args.settings:
            tables[name] = run_setting(name, SETTINGS[name], args.trials, args.seeds)
    print(f"\nval/loss mean over seeds 1..{args.seeds}; steps = optimizer steps spent to choose the threshold")
    print("| setting | no clipping | threshold 1.0 | sweep best | recommended | calibrated | rec/best | cal/best | "
          "cal steps/sweep steps |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name, arms in tables.items():
        cells = [f"{arms[a][0]:.4g}" + (f" ({arms[a][2]}, {arms[a][1]} steps)" if arms[a][1] else "") for a in arms]
        best = arms["sweep best"][0]
        ratios = (arms["recommended"][0] / best, arms["calibrated"][0] / best)
        share = arms["calibrated"][1] / arms["sweep best"][1]
        print(f"| {name} | " + " | ".join(cells) + f" | {ratios[0]:.3f} | {ratios[1]:.3f} | {share:.3f} |")
    print("targets: rec/best <= 1.02, cal/best <= 1.05 with cal steps/sweep steps <= 0.1; both below threshold 1.0")


if __name__ == "__main__":
    main_benchmark()
