"""``sweeper/batched_updates.py``: the fused clip-and-step of a batch does what each member's own
``NormClip`` and torch optimizer do: held to torch's ``clip_grad_norm_`` and ``torch.optim`` on lone
copies of each member, step by step, and a non-finite member is zeroed alone."""

from __future__ import annotations

import pytest
import torch

from clipsweep.batched_updates import FusedUpdate
from clipsweep.batching import BatchedTrainer
from clipsweep.clipping import make_clipper
from clipsweep.telemetry import Telemetry
from clipsweep.training import Trainer, build

SHAPE = ("model.hidden_size=8", "task.seq_len=10", "task.val_size=40", "train.batch_size=8", "clip=norm")
OPTIMIZERS = {
    "adam": ("optim=adam",),
    "adam-l2": ("optim=adam", "optim.weight_decay=0.01"),
    "sgd": ("optim=sgd",),
    "sgd-momentum-l2": ("optim=sgd", "optim.momentum=0.9", "optim.weight_decay=0.01"),
}


@pytest.mark.parametrize("optim", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_fused_update_trains_each_member_as_its_lone_run(config, optim: tuple[str, ...]) -> None:
    members = [  # thresholds that clip every step, some steps, never; learning rates a decade apart
        ("clip.threshold=0.05", "optim.lr=0.01", "train.seed=0"),
        ("clip.threshold=1.5", "optim.lr=0.1", "train.seed=1"),
        ("clip.threshold=50", "optim.lr=0.001", "train.seed=2"),
    ]
    configs = [config(*SHAPE, *optim, *member, "tracking.log_every=10") for member in members]
    batch = BatchedTrainer([build(c) for c in configs])
    assert batch.fused is not None
    lone = [build(c) for c in configs]
    trainers = [Trainer(s, Telemetry(list(s.model.named_parameters()), 10, torch.device("cpu"))) for s in lone]
    telemetries = [Telemetry(named, 10, torch.device("cpu")) for named in batch.named]
    for step in range(10):
        batch.step(step, [0, 1, 2], telemetries)
        for trainer in trainers:
            trainer.step(step)
    clipped = []
    for k, (setup, trainer) in enumerate(zip(lone, trainers)):
        ours, theirs = telemetries[k].drain(), trainer.telemetry.drain()
        for name, column in theirs.values.items():
            torch.testing.assert_close(ours.values[name], column, rtol=2e-4, atol=1e-7, msg=f"member {k}: {name}")
        for (name, param), view in zip(setup.model.named_parameters(), batch.views[k]):
            torch.testing.assert_close(view, param.detach(), rtol=2e-4, atol=1e-6, msg=f"member {k}: {name}")
        clipped.append(ours.values["grad/clipped"].mean())
    assert clipped[0] == 1.0 and clipped[2] == 0.0  # the compared steps include clipped and unclipped ones


def test_fused_update_stopped_members_keep_their_weights(config) -> None:
    configs = [config(*SHAPE, "optim=adam", f"train.seed={k}") for k in range(3)]
    batch = BatchedTrainer([build(c) for c in configs])
    telemetries = [Telemetry(named, 5, torch.device("cpu")) for named in batch.named]
    batch.step(0, [0, 1, 2], telemetries)
    frozen = [w[1].clone() for w in batch.model.weights]
    moving = [w[0].clone() for w in batch.model.weights]
    for step in range(1, 4):
        batch.step(step, [0, 2], telemetries)
    assert all(torch.equal(w[1], before) for w, before in zip(batch.model.weights, frozen))
    assert not all(torch.equal(w[0], before) for w, before in zip(batch.model.weights, moving))


def test_fused_update_clip_zeroes_a_non_finite_member_alone_and_matches_norm_clip() -> None:
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(3, 4, 5, generator=generator), torch.randn(3, 7, generator=generator)]
    for w in weights:
        w.grad = torch.randn(w.shape, generator=generator) * 3
    weights[1].grad[1, 2] = float("inf")
    expected = []  # each member's gradients on lone parameters, for torch's clip_grad_norm_
    for k in range(3):
        lone = [torch.zeros_like(w[k]) for w in weights]
        for param, w in zip(lone, weights):
            param.grad = w.grad[k].clone()
        expected.append(lone)
    thresholds = [0.5, 0.5, 100.0]
    optimizers = [torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1) for _ in thresholds]
    clippers = [make_clipper({"method": "norm", "threshold": t}) for t in thresholds]
    fused = FusedUpdate.for_members(weights, clippers, optimizers)
    stats = fused.clip()
    for k, grads in enumerate(expected):
        norm = torch.nn.utils.clip_grad_norm_(grads, thresholds[k]) if k != 1 else None
        for w, g in zip(weights, grads):
            torch.testing.assert_close(w.grad[k], torch.zeros_like(g) if k == 1 else g.grad)
        if norm is not None:
            assert stats[k].norm.item() == pytest.approx(norm.item(), rel=1e-6) and bool(stats[k].finite)
    assert not bool(stats[1].finite)


def test_fused_update_declines_mixes_it_does_not_cover(config) -> None:
    def fused(*overrides_per_member: tuple[str, ...]) -> FusedUpdate | None:
        return BatchedTrainer([build(config(*SHAPE, *o)) for o in overrides_per_member]).fused

    assert fused(("optim=adam", "optim.lr=0.1"), ("optim=adam", "optim.lr=0.01")) is not None
    assert fused(("optim=adam",), ("optim=sgd",)) is None  # two optimizers
    assert fused(("optim=adam",), ("clip=zclip", "optim=adam")) is None  # another clip method
    assert fused(("optim=sgd", "optim.momentum=0.9"), ("optim=sgd",)) is None  # shared option differs
