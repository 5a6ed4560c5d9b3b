"""Trials per hour on one device: one trial at a time (a sequential sweep) vs K trials trained as one
batch (``hydra/launcher=batched``), for the default model (LSTM-64, adding T=50, batch 32, Adam).

Part 1, the step curve, in one process: for each K in ``--members``, a ``BatchedTrainer`` of K members
of the default config (thresholds, learning rates and seeds differ, as a sweep's do) against the lone
``Trainer`` of the same config, in alternating timed blocks. Prints trial-steps/s, the speed-up over
one trial at a time and the efficiency against linear (speed-up / K): the batch size where the
efficiency falls under 0.8 is where the device saturates. On CUDA the batch also runs one block
under ``torch.cuda.set_sync_debug_mode("error")`` (no host sync per step).

Part 2 (``--sweep N``), end to end: ``clipsweep sweep`` of N trials with the default (basic) launcher
and one trial per batch, then with ``hydra/launcher=batched hydra.sweeper.n_jobs=N``, each in a fresh
directory with the same sampler seed; prints wall times, trials per hour and both best values.

On a CPU the batch gains little (each step is compute-bound); the target is a GPU's (README).

    python benchmarks/batching.py [--members 1,4,16,64] [--steps 20] [--rounds 3] [--device auto]
                                  [--sweep 64 --sweep-steps 1000 --sweep-baseline 12]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import optuna
import torch

from clipsweep.batching import BatchedTrainer
from clipsweep.composition import compose
from clipsweep.telemetry import Telemetry
from clipsweep.training import Trainer, build


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _member(k: int, device: str) -> list[str]:
    """Member k of a batch: a threshold and learning rate from the default search ranges, its own seed."""
    return [
        f"clip.threshold={0.01 * 1000 ** ((k % 7) / 6):.4g}", f"optim.lr={0.001 * 300 ** ((k % 5) / 4):.4g}",
        f"train.seed={k}", f"train.device={device}", "tracking.enabled=false",
    ]  # fmt: skip


def _timed(block, device: torch.device, rounds: int) -> float:
    """Median seconds of ``rounds`` calls of ``block`` (after one warm-up call)."""
    block()
    times = []
    for _ in range(rounds):
        _sync(device)
        started = time.perf_counter()
        block()
        _sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


class _Steps:
    """A timed block: ``steps`` optimizer steps of a lone trainer or a batch, draining telemetry as
    training does."""

    def __init__(self, step, telemetries: list[Telemetry], steps: int) -> None:
        self.step, self.telemetries, self.steps, self.done = step, telemetries, steps, 0

    def __call__(self) -> None:
        for _ in range(self.steps):
            self.step(self.done)
            self.done += 1
            if self.telemetries[0].full:
                for telemetry in self.telemetries:
                    telemetry.drain()


def step_curve(members: list[int], steps: int, rounds: int, device_spec: str) -> None:
    lone = build(compose(_member(0, device_spec)))
    device = lone.device
    trainer = Trainer(lone, Telemetry(list(lone.model.named_parameters()), 50, device))
    lone_seconds = _timed(_Steps(trainer.step, [trainer.telemetry], steps), device, rounds)
    lone_rate = steps / lone_seconds
    print(f"device {device}: one trial at a time {lone_rate:.1f} trial-steps/s ({lone_seconds / steps * 1e3:.2f} ms)")
    print(f"{'K':>5} {'ms/step':>9} {'trial-steps/s':>14} {'speed-up':>9} {'efficiency':>11}")
    for k in members:
        batch = BatchedTrainer([build(compose(_member(i, device_spec))) for i in range(k)])
        telemetries = [Telemetry(named, 50, device) for named in batch.named]
        block = _Steps(partial(_batch_step, batch, list(range(k)), telemetries), telemetries, steps)
        seconds = _timed(block, device, rounds)
        if device.type == "cuda":  # steps only (a telemetry read is the one sync by design)
            quiet = [Telemetry(named, steps + 1, device) for named in batch.named]
            torch.cuda.set_sync_debug_mode("error")
            try:
                for step in range(steps):
                    batch.step(block.done + step, list(range(k)), quiet)  # raises on any host sync
            finally:
                torch.cuda.set_sync_debug_mode("default")
        rate = k * steps / seconds
        speedup = rate / lone_rate
        print(f"{k:>5} {seconds / steps * 1e3:>9.2f} {rate:>14.1f} {speedup:>9.2f} {speedup / k:>11.2f}")


def _batch_step(batch: BatchedTrainer, active: list[int], telemetries: list[Telemetry], step: int) -> None:
    batch.step(step, active, telemetries)


def _sweep(directory: Path, trials: int, steps: int, device: str, batched: bool) -> tuple[float, float]:
    command = [
        sys.executable, "-m", "clipsweep", "sweep", f"hydra.sweeper.n_trials={trials}", "hydra.sweeper.seed=0",
        "hydra.sweeper.study_name=bench", f"train.steps={steps}", f"train.device={device}",
    ]  # fmt: skip
    if batched:
        command += ["hydra/launcher=batched", f"hydra.sweeper.n_jobs={trials}"]
    started = time.perf_counter()
    subprocess.run(command, cwd=directory, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    study = optuna.load_study(study_name="bench", storage=f"sqlite:///{directory / 'clipsweep.db'}")
    return seconds, study.best_value


def sweep_comparison(trials: int, steps: int, device: str, baseline: int) -> None:
    """Trials per hour both ways; the one-at-a-time side may run fewer trials (``baseline``): its rate is
    per trial, and 64 sequential trials cost minutes of a lent GPU."""
    with tempfile.TemporaryDirectory() as root:
        rows = {}
        for name, n, batched in (("one trial at a time", baseline, False), (f"batched, n_jobs={trials}", trials, True)):
            directory = Path(root) / name.split(",")[0].replace(" ", "_")
            directory.mkdir()
            rows[name] = (n, *_sweep(directory, n, steps, device, batched))
    base_n, base_seconds, _ = rows["one trial at a time"]
    base_rate = base_n * 3600 / base_seconds
    print(f"\nsweeps of {steps} steps per trial, device {device}:")
    for name, (n, seconds, best) in rows.items():
        rate = n * 3600 / seconds
        print(f"  {name:<24} {n:4d} trials {seconds:8.1f} s  {rate:9.0f} trials/h  "
              f"x{rate / base_rate:5.2f}  best val/loss {best:.4g}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", default="1,4,16,64", help="batch sizes K, comma-separated")
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sweep", type=int, default=0, help="also time an N-trial sweep both ways (0: skip)")
    parser.add_argument("--sweep-steps", type=int, default=1000)
    parser.add_argument("--sweep-baseline", type=int, default=0, help="trials of the one-at-a-time sweep (0: --sweep)")
    args = parser.parse_args()
    step_curve([int(k) for k in args.members.split(",")], args.steps, args.rounds, args.device)
    if args.sweep:
        sweep_comparison(args.sweep, args.sweep_steps, args.device, args.sweep_baseline or args.sweep)


if __name__ == "__main__":
    main()
