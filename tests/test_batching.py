"""``sweeper/batching.py``: a member of a batch trains exactly as the same run alone, step by step
(losses, pre- and post-clip norms, thresholds, weights, evaluations), and what ends one member
(pruning, its own failure, its shorter schedule) leaves the others untouched."""

from __future__ import annotations

import pytest
import torch

from clipsweep.batching import BatchedTrainer, batch_key, obstacle, train_batch
from clipsweep.telemetry import Telemetry
from clipsweep.tracker import NullTracker
from clipsweep.training import Trainer, build, train

SHAPE = ("model.hidden_size=8", "task.seq_len=10", "task.val_size=40", "train.batch_size=8", "train.accumulate=2")
MEMBERS = [  # what a sweep varies: clip method and knobs, threshold, optimizer, learning rate, seed
    ("clip=norm", "clip.threshold=0.05", "optim=adam", "optim.lr=0.01", "train.seed=0"),
    ("clip=zclip", "optim=sgd", "optim.lr=0.3", "train.seed=1"),
    ("clip=percentile", "clip.percentile=50", "optim=sgd", "optim.lr=0.05", "train.seed=2"),
    ("clip=agc", "optim=adam", "optim.lr=0.003", "train.seed=3"),
]


def _configs(config, *extra: str) -> list:
    return [config(*SHAPE, *member, *extra) for member in MEMBERS]


@pytest.mark.parametrize("model", ["lstm", "gru", "rnn"])
def test_batched_trainer_member_matches_a_lone_trainer_step_by_step(config, model: str) -> None:
    configs = _configs(config, f"model={model}", "tracking.log_every=12")
    lone = [build(c) for c in configs]
    batch = BatchedTrainer([build(c) for c in configs])
    telemetries = [Telemetry(named, 12, torch.device("cpu")) for named in batch.named]
    lone_telemetries = [Telemetry(list(s.model.named_parameters()), 12, torch.device("cpu")) for s in lone]
    trainers = [Trainer(s, t) for s, t in zip(lone, lone_telemetries)]
    for step in range(12):
        batch.step(step, range(len(configs)), telemetries)
        for trainer in trainers:
            trainer.step(step)
    evaluations = batch.evaluate(chunk=16)
    for k, (setup, trainer) in enumerate(zip(lone, trainers)):
        ours, theirs = telemetries[k].drain(), lone_telemetries[k].drain()
        for name, column in theirs.values.items():
            torch.testing.assert_close(ours.values[name], column, rtol=2e-4, atol=1e-7, msg=f"member {k}: {name}")
        if k in (0, 3):  # norm at 0.05 and AGC: the clip acts on the compared steps
            assert ours.values["grad/clipped"].sum() > 0
        assert ours.layer_norms.keys() == theirs.layer_norms.keys()
        for (name, param), view in zip(setup.model.named_parameters(), batch.views[k]):
            torch.testing.assert_close(view, param.detach(), rtol=2e-4, atol=1e-6, msg=f"member {k}: {name}")
        expected = trainer.evaluate(chunk=16)
        assert evaluations[k].keys() == expected.keys()
        for name, value in expected.items():
            assert evaluations[k][name] == pytest.approx(value, rel=1e-4), (k, name)


class _PruneAt:
    """An eval callback that stops its run at ``step`` (what Optuna's pruner answers)."""

    def __init__(self, step: int) -> None:
        self.step, self.calls = step, []

    def __call__(self, step: int, metrics) -> bool:
        self.calls.append(step)
        return step >= self.step


def test_train_batch_runs_end_as_lone_runs_end_and_a_pruned_member_leaves_the_others_alone(config) -> None:
    configs = _configs(config, "train.steps=20", "train.eval_every=5", "tracking.log_every=5")
    configs[3].train.steps = 10  # a shorter schedule ends that member early
    arguments = [{}, {"on_eval": _PruneAt(5)}, {}, {}]
    ours = train_batch([build(c) for c in configs], [NullTracker() for _ in configs], arguments)
    lone_arguments = [{}, {"on_eval": _PruneAt(5)}, {}, {}]
    for k, (c, args) in enumerate(zip(configs, lone_arguments)):
        theirs = train(build(c), NullTracker(), **args)
        assert (ours[k].status, ours[k].steps) == (theirs.status, theirs.steps), k
        assert ours[k].val == pytest.approx(theirs.val, rel=2e-4), k
        assert ours[k].train_loss == pytest.approx(theirs.train_loss, rel=2e-4), k
        assert ours[k].summary.steps == theirs.summary.steps
    assert [r.status for r in ours] == ["finished", "stopped", "finished", "finished"]
    assert [r.steps for r in ours] == [20, 5, 20, 10]
    assert arguments[1]["on_eval"].calls == [5]  # asked once, then never again


def test_train_batch_a_member_whose_recording_fails_fails_alone(config) -> None:
    configs = _configs(config, "train.steps=10", "train.eval_every=5")[:3]

    def broken(step: int, metrics) -> bool:
        raise RuntimeError("the trial's storage went away")

    results = train_batch([build(c) for c in configs], [NullTracker() for _ in configs], [{}, {"on_eval": broken}, {}])
    assert isinstance(results[1], RuntimeError)
    for k in (0, 2):
        assert results[k].status == "finished" and results[k].steps == 10
        assert results[k].val == pytest.approx(train(build(configs[k]), NullTracker()).val, rel=2e-4)


def test_batch_key_and_obstacle_say_which_runs_can_share_a_batch(config) -> None:
    a, b = config(*SHAPE, "clip.threshold=0.1", "optim.lr=0.3", "train.seed=4"), config(*SHAPE, "train.steps=7")
    assert batch_key(a) == batch_key(b)  # threshold, learning rate, seed and steps stay per run
    assert batch_key(a) != batch_key(config(*SHAPE, "model.hidden_size=9"))
    assert batch_key(a) != batch_key(config(*SHAPE, "train.batch_size=9"))
    assert obstacle(build(a)) is None
    assert "GradScaler" in str(obstacle(build(config(*SHAPE, "model=rnn", "train.precision=16"))))
    assert "dropout" in str(obstacle(build(config(*SHAPE, "model.num_layers=2", "model.dropout=0.2"))))
    with pytest.raises(ValueError, match="must share model, task"):
        BatchedTrainer([build(a), build(config(*SHAPE, "model.hidden_size=9"))])


FUSED = [("clip=norm", f"clip.threshold={t}", "optim=adam", f"optim.lr={lr}", f"train.seed={k}")
         for k, (t, lr) in enumerate([(0.05, 0.01), (0.5, 0.003), (5.0, 0.03), (0.2, 0.001)])]  # fmt: skip


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run by the device benchmark)")
@pytest.mark.parametrize("members", [FUSED, MEMBERS], ids=["fused", "per-member"])
def test_batched_trainer_on_cuda_steps_without_host_sync_and_matches_the_cpu_batch(config, members) -> None:
    def batch(device: str) -> BatchedTrainer:
        return BatchedTrainer([build(config(*SHAPE, *member, f"train.device={device}")) for member in members])

    on_cuda, on_cpu = batch("cuda"), batch("cpu")
    assert (on_cuda.fused is not None) == (members is FUSED)
    quiet = [Telemetry(named, 100, torch.device("cuda")) for named in on_cuda.named]
    cpu_telemetry = [Telemetry(named, 100, torch.device("cpu")) for named in on_cpu.named]
    on_cuda.step(0, range(4), quiet)  # the first step allocates optimizer state
    on_cpu.step(0, range(4), cpu_telemetry)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(1, 5):
            on_cuda.step(step, range(4), quiet)  # raises on any host synchronisation
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for step in range(1, 5):
        on_cpu.step(step, range(4), cpu_telemetry)
    for theirs, ours in zip(on_cpu.model.weights, on_cuda.model.weights):
        torch.testing.assert_close(ours.detach().cpu(), theirs.detach(), rtol=1e-3, atol=1e-5)


def test_batched_trainer_evaluates_large_batches_in_smaller_chunks_with_the_same_result(config) -> None:
    # 80 members: the chunk shrinks from 512 to 409 examples (members x chunk bounded); the weighted
    # chunks give the same metrics as one pass over the set.
    configs = [config(*SHAPE, "task.val_size=600", f"train.seed={k}") for k in range(80)]
    batch = BatchedTrainer([build(c) for c in configs])
    seen, forward = [], batch.model.forward
    batch.model.forward = lambda x, members=None: seen.append(x.shape[:2]) or forward(x, members)
    bounded, whole = batch.evaluate([0, 41, 79]), batch.evaluate(list(range(80)))
    assert seen[0] == (3, 512) and set(seen[2:]) <= {(80, 409), (80, 600 - 409)}  # 80 x 409 <= 64 x 512
    single = batch.evaluate([0, 41, 79], chunk=600)
    for k in (0, 41, 79):
        assert whole[k] == pytest.approx(single[k], rel=1e-5) and bounded[k] == pytest.approx(single[k], rel=1e-5)
