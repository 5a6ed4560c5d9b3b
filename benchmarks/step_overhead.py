"""(a) A training step with clipsweep's full telemetry vs a bare loop calling clip_grad_norm_.

Both loops train the same model (the default run: LSTM-64, adding T=50, batch 32, Adam) from the
same initial weights, measured in alternating blocks in one process; the ratio of their median
block times is printed. Target: <= 1.05. On a CUDA device the telemetry loop also runs once under
``torch.cuda.set_sync_debug_mode("error")``, which raises on any host synchronisation.

    python benchmarks/step_overhead.py [--steps 100] [--rounds 7] [--method norm] [--device auto]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from clipsweep.composition import compose
from clipsweep.telemetry import Telemetry
from clipsweep.training import Trainer, build


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--method", default="norm", help="clip config group option for the telemetry loop")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--log-every", type=int, default=50)
    args = parser.parse_args()

    config = compose(
        [f"clip={args.method}", f"train.device={args.device}", f"tracking.log_every={args.log_every}",
         "tracking.enabled=false"]
    )  # fmt: skip
    ours = build(config)
    device = ours.device
    bare_model = copy.deepcopy(ours.model)
    bare_optimizer = torch.optim.Adam(bare_model.parameters(), lr=float(config.optim.lr))
    bare_generator = torch.Generator().manual_seed(0)
    telemetry = Telemetry(list(ours.model.named_parameters()), args.log_every, device)
    trainer = Trainer(ours, telemetry)
    threshold = float(config.clip.get("threshold", 1.0))
    batch = int(config.train.batch_size)
    step_counter = [0]

    def bare_block() -> None:
        for _ in range(args.steps):
            bare_optimizer.zero_grad(set_to_none=True)
            x, y = ours.task.sample(batch, bare_generator)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = ours.task.loss(bare_model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(bare_model.parameters(), threshold)
            bare_optimizer.step()

    def telemetry_block() -> None:
        for _ in range(args.steps):
            trainer.step(step_counter[0])
            step_counter[0] += 1
            if telemetry.full:
                telemetry.drain()

    def timed(block) -> float:
        _sync(device)
        start = time.perf_counter()
        block()
        _sync(device)
        return time.perf_counter() - start

    timed(bare_block), timed(telemetry_block)  # warm-up: allocator, oneDNN/cuDNN plans
    bare, full = [], []
    for _ in range(args.rounds):
        bare.append(timed(bare_block))
        full.append(timed(telemetry_block))
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(args.log_every - 1):  # a window without its drain: no sync allowed
                if telemetry.full:
                    break
                trainer.step(step_counter[0])
                step_counter[0] += 1
            print("no host sync in telemetry steps under set_sync_debug_mode('error'): OK")
        finally:
            torch.cuda.set_sync_debug_mode("default")
    b, f = statistics.median(bare), statistics.median(full)
    # Blocks run back to back, so per-round ratios cancel the drift of a shared machine.
    ratio = statistics.median(x / y for x, y in zip(full, bare))
    print(f"device {device}, clip={args.method}, {args.steps} steps x {args.rounds} rounds")
    print(f"bare loop with clip_grad_norm_: {b / args.steps * 1e3:.3f} ms/step")
    print(f"clipsweep step + telemetry:     {f / args.steps * 1e3:.3f} ms/step")
    print(f"median paired ratio: {ratio:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
