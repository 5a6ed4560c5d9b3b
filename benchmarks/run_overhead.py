"""Issue 13 (3): a default run's steps as a share of its wall time, and where the rest goes.

Measured in one invocation, side by side:
- the whole ``clipsweep run train.device=DEVICE`` as a user starts it (a fresh process, tracking on to
  a local store in a temporary directory), its wall time;
- the same run's optimizer steps alone, in this process (built from the same config, telemetry
  drained as training drains it, the device synchronised around the block);
- the fixed costs a fresh process pays before any step: interpreter + imports, and the device's
  initialisation.
With ``--profile``, the run is repeated under cProfile and the functions with the largest cumulative
time are printed (the profile file is kept where ``--profile`` says). Target on a GPU: steps >= 70%
of wall time at the default 1000 steps.

    python benchmarks/run_overhead.py [--device auto] [--steps 1000] [--profile run.prof]
"""

from __future__ import annotations

import argparse
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from clipsweep.composition import compose
from clipsweep.telemetry import Telemetry
from clipsweep.training import Trainer, build


def _wall(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True)
    return time.perf_counter() - started


def _steps_seconds(overrides: list[str], steps: int) -> tuple[float, str]:
    built = build(compose([*overrides, "tracking.enabled=false"]))
    telemetry = Telemetry(list(built.model.named_parameters()), int(built.config.tracking.log_every), built.device)
    trainer = Trainer(built, telemetry)
    sync = torch.cuda.synchronize if built.device.type == "cuda" else (lambda: None)
    for step in range(10):  # warm-up: allocator, cuDNN/oneDNN plans
        trainer.step(step)
    telemetry.drain()
    sync()
    started = time.perf_counter()
    for step in range(steps):
        trainer.step(step)
        if telemetry.full:
            telemetry.drain()
    sync()
    return time.perf_counter() - started, str(built.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--profile", type=Path, help="also profile the run; keep the profile here")
    args = parser.parse_args()
    overrides = [f"train.device={args.device}", f"train.steps={args.steps}"]
    run = [sys.executable, "-m", "clipsweep", "run", *overrides]
    with tempfile.TemporaryDirectory() as root:
        wall = _wall(run, Path(root))
        imports = _wall([sys.executable, "-c", "import clipsweep.cli, torch, mlflow, hydra"], Path(root))
        init = (
            _wall([sys.executable, "-c", "import torch; torch.zeros(1, device='cuda')"], Path(root))
            - _wall([sys.executable, "-c", "import torch"], Path(root))
            if torch.cuda.is_available() and args.device in ("auto", "cuda")
            else 0.0
        )
        steps, device = _steps_seconds(overrides, args.steps)
        print(f"device {device}, {args.steps} steps, default model")
        print(f"  clipsweep run, wall          {wall:7.2f} s")
        print(f"  its steps alone              {steps:7.2f} s  ({steps / args.steps * 1e3:.2f} ms/step)")
        print(f"  interpreter + imports        {imports:7.2f} s")
        print(f"  device initialisation        {init:7.2f} s")
        print(f"steps' share of the run's wall time: {steps / wall:.2f} (target >= 0.70 on a GPU)")
        if args.profile:
            profiled = [sys.executable, "-m", "cProfile", "-o", str(args.profile.resolve()), *run[1:]]
            _wall(profiled, Path(root))
            print(f"\nprofile of the run ({args.profile}), by cumulative time:")
            pstats.Stats(str(args.profile)).sort_stats("cumulative").print_stats(30)


if __name__ == "__main__":
    main()
