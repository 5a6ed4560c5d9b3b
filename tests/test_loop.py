"""The library clipper in a plain loop gives the trainer's gradients, norms and summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from clipsweep import GradClipper
from clipsweep.export import ExportFormat, render
from clipsweep.telemetry import Telemetry
from clipsweep.training import Trainer, build

SMALL = ("model.hidden_size=16", "task.seq_len=12", "task.val_size=64", "train.batch_size=8", "optim=sgd")


@pytest.mark.parametrize(
    "clip",
    [
        ("clip=norm", "clip.threshold=0.05"),
        ("clip=percentile", "clip.percentile=50", "clip.history=8"),
        ("clip=zclip", "clip.warmup_steps=3"),
    ],
    ids=lambda c: c[0],
)
def test_grad_clipper_in_a_plain_loop_matches_the_trainer(config, clip: tuple[str, ...]) -> None:
    overrides = (*SMALL, "optim.lr=0.5", *clip)
    ours, theirs = build(config(*overrides)), build(config(*overrides))
    trainer = Trainer(ours, Telemetry(list(ours.model.named_parameters()), 100, ours.device))
    clipper = GradClipper.from_config(dict(theirs.config.clip), log_every=7)
    generator = torch.Generator().manual_seed(int(theirs.config.train.seed))
    trainer_norms, loop_norms = [], []
    for step in range(20):
        trainer_norms.append(trainer.step(step).norm.item())
        theirs.optimizer.zero_grad(set_to_none=True)
        x, y = theirs.task.sample(8, generator)
        theirs.task.loss(theirs.model(x), y).backward()
        loop_norms.append(clipper(theirs.model.parameters()).item())
        theirs.optimizer.step()
    assert loop_norms == trainer_norms
    for a, b in zip(ours.model.parameters(), theirs.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    summary = clipper.summary()
    assert summary["grad/norm_p50"] == pytest.approx(
        np.percentile(loop_norms, 50), rel=clipper.histogram.relative_error
    )
    assert clipper.histogram.count == 20


def test_grad_clipper_from_an_exported_file(tmp_path: Path) -> None:
    path = tmp_path / "best.yaml"
    origin = {"study": "s", "trial": 1, "objective": "val/loss", "direction": "minimize", "value": 0.1,
              "which": "best", "reason": "r", "optim": {"lr": 0.1}, "date": "d"}  # fmt: skip
    path.write_text(render({"method": "norm", "threshold": 0.01, "norm_type": 2.0}, origin, ExportFormat.yaml))
    clipper = GradClipper.from_file(path)
    model = torch.nn.Linear(4, 2)
    model(torch.randn(3, 4)).sum().backward()
    expected = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    assert torch.equal(clipper(model.parameters()), expected)
    clipped = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    assert clipped.item() == pytest.approx(0.01, rel=1e-4)
