"""The training step's order, accumulation, AMP, non-finite handling and validation of its config."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from clipsweep.errors import ConfigError
from clipsweep.tasks import AddingTask
from clipsweep.telemetry import Telemetry
from clipsweep.tracker import NullTracker
from clipsweep.training import Trainer, build, train

SMALL = ("model.hidden_size=16", "task.seq_len=12", "task.val_size=64", "train.batch_size=8")


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def _trainer(setup) -> Trainer:
    return Trainer(setup, Telemetry(list(setup.model.named_parameters()), 100, setup.device))


def test_trainer_sgd_update_never_exceeds_lr_times_threshold(config) -> None:
    lr, threshold = 0.5, 0.05
    setup = build(config(*SMALL, "optim=sgd", f"optim.lr={lr}", f"clip.threshold={threshold}"))
    trainer = _trainer(setup)
    clipped = 0
    for step in range(30):
        before = _flat(setup.model)
        stats = trainer.step(step)
        update = torch.linalg.vector_norm(_flat(setup.model) - before).item()
        assert update <= lr * threshold * (1 + 1e-5)
        clipped += int(stats.norm.item() > threshold)
    assert clipped >= 20  # the bound was exercised, not satisfied by small gradients


def test_trainer_accumulation_clips_once_on_summed_gradients(config) -> None:
    overrides = (*SMALL, "optim=sgd", "optim.lr=0.1", "clip.threshold=0.05", "train.accumulate=3")
    ours, reference = build(config(*overrides)), build(config(*overrides))
    stats = _trainer(ours).step(0)

    generator = torch.Generator().manual_seed(0)
    model = reference.model
    for _ in range(3):
        x, y = reference.task.sample(8, generator)
        (reference.task.loss(model(x), y) / 3).backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
    reference.optimizer.step()

    assert stats.norm.item() == pytest.approx(norm.item(), rel=1e-6)
    assert norm.item() > 0.05
    torch.testing.assert_close(_flat(ours.model), _flat(model))


def test_train_accumulation_records_one_row_per_optimizer_step(config) -> None:
    setup = build(config(*SMALL, "train.accumulate=4", "train.steps=6", "train.eval_every=3"))
    result = train(setup, NullTracker())
    assert result.summary.steps == 6
    assert result.summary.histogram.count == 6


def test_trainer_amp_fp16_unscales_before_clipping(config) -> None:
    common = (*SMALL, "model=rnn", "optim=sgd", "clip.threshold=0.01")
    amp, fp32 = build(config(*common, "train.precision=16")), build(config(*common))
    assert isinstance(amp.scaler, torch.amp.GradScaler)
    # The default initial scale (65536) overflows fp16 on the first step, which GradScaler skips by
    # design; start lower so this step is a real one.
    amp.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    amp_stats, fp32_stats = _trainer(amp).step(0), _trainer(fp32).step(0)
    # Clipping saw unscaled gradients: the same norm as fp32 up to half-precision rounding,
    # not the loss scale (65536) times it.
    assert amp_stats.norm.item() == pytest.approx(fp32_stats.norm.item(), rel=0.02)
    assert amp_stats.resolved()[1].item() == 1.0
    assert amp_stats.resolved()[0].item() <= 0.01 * (1 + 1e-4)


class _PoisonedAdding(AddingTask):
    """The adding problem with NaN inputs in the training batches listed in ``poison``."""

    def __init__(self, poison: set[int], **kwargs) -> None:
        super().__init__(**kwargs)
        self.poison, self.calls = poison, 0

    def sample(self, batch_size, generator):
        x, y = super().sample(batch_size, generator)
        if self.calls in self.poison:
            x[0, 0, 0] = math.nan
        self.calls += 1
        return x, y


def test_train_skips_nonfinite_steps_counts_them_and_goes_on(config) -> None:
    setup = build(config(*SMALL, "train.steps=20", "train.eval_every=10", "tracking.log_every=5"))
    setup.task = _PoisonedAdding({3, 11}, seq_len=12, val_size=64, val_seed=0)
    result = train(setup, NullTracker())
    assert result.status == "finished" and result.steps == 20
    assert result.summary.histogram.nonfinite == 2
    assert result.summary.metrics()["grad/nonfinite_steps"] == 2.0
    assert torch.isfinite(_flat(setup.model)).all()
    assert math.isfinite(result.val["val/loss"])


def test_train_fail_policy_stops_as_diverged_at_next_read(config) -> None:
    setup = build(config(*SMALL, "train.steps=20", "train.nonfinite=fail", "tracking.log_every=5"))
    setup.task = _PoisonedAdding({6}, seq_len=12, val_size=64, val_seed=0)
    result = train(setup, NullTracker())
    assert result.diverged and result.steps == 10


def test_train_unclipped_high_learning_rate_is_recorded_as_diverged(config) -> None:
    setup = build(config("optim=sgd", "optim.lr=1.0", "clip=none", "train.steps=400", "tracking.log_every=20"))
    result = train(setup, NullTracker())
    assert result.diverged and result.steps < 400
    assert result.summary.histogram.nonfinite > 0


def test_train_clipping_rescues_the_same_learning_rate(config) -> None:
    setup = build(config("optim=sgd", "optim.lr=1.0", "clip.threshold=1.0", "train.steps=150", "tracking.log_every=50"))
    result = train(setup, NullTracker())
    assert result.status == "finished" and result.summary.histogram.nonfinite == 0


def test_train_stops_when_eval_callback_says_so(config) -> None:
    setup = build(config(*SMALL, "train.steps=50", "train.eval_every=10"))
    seen: list[int] = []
    result = train(setup, NullTracker(), on_eval=lambda step, metrics: seen.append(step) or step >= 20)
    assert result.status == "stopped" and result.steps == 20 and seen == [10, 20]


def _cpu_runs(cell: str, dtype: torch.dtype) -> bool:
    """Independent probe: does this CPU's torch run a recurrent layer forward and backward under autocast?

    Which kernels exist depends on the CPU (oneDNN's bf16 LSTM needs AVX-512, its fp16 one more),
    so the tests ask the machine instead of assuming.
    """
    layer = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell](2, 4, batch_first=True)
    try:
        with torch.autocast("cpu", dtype=dtype):
            out, _ = layer(torch.randn(2, 3, 2))
        out.float().sum().backward()
    except RuntimeError:
        return False
    return True


BF16_CELL = next((cell for cell in ("lstm", "gru", "rnn") if _cpu_runs(cell, torch.bfloat16)), None)
"""A built-in cell this CPU runs in bf16, or None where it runs none."""


@pytest.mark.parametrize(("precision", "dtype"), [("16", torch.float16), ("bf16", torch.bfloat16)])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_build_accepts_a_precision_exactly_when_the_cpu_runs_it(config, cell, precision, dtype) -> None:
    # A missing kernel is found by build's probe, before anything trains, not mid-run.
    overrides = (*SMALL, f"model={cell}", f"train.precision={precision}")
    if _cpu_runs(cell, dtype):
        assert build(config(*overrides)).autocast_dtype is dtype
    else:
        with pytest.raises(ConfigError, match=rf"train\.precision='{precision}'"):
            build(config(*overrides))


def test_build_rejects_bf16_on_a_device_without_it(config, monkeypatch) -> None:
    # No pre-Ampere GPU exists here: fake only the device capability.
    monkeypatch.setattr("clipsweep.training.bf16_supported", lambda device: False)
    with pytest.raises(ConfigError) as info:
        build(config(*SMALL, "train.precision=bf16"))
    assert info.value.key == "train.precision" and "bfloat16" in str(info.value)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.steps=0", "train.steps"),
        ("train.accumulate=0", "train.accumulate"),
        ("tracking.log_every=0", "tracking.log_every"),
        ("train.precision=8", "train.precision"),
        ("train.device=tpu", "train.device"),
        ("task.seq_len=1", "task.seq_len"),
        ("task=text_csv", "task.path"),
        ("model._target_=models.NoSuchModel", "model._target_"),
        ("model.hidden_size=0", "model.hidden_size"),  # the constructor's message names the key
        ("optim.lr=-0.1", "optim.lr"),  # torch's names the value: the key that holds it
        ("optim=sgd optim.momentum=-1", "optim.momentum"),
    ],
)
def test_build_rejects_bad_values_with_their_key(config, override: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build(config("model.hidden_size=16", *override.split()))
    assert info.value.key == key


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_build_rejects_cuda_without_a_gpu(config) -> None:
    with pytest.raises(ConfigError, match="CUDA is not available"):
        build(config(*SMALL, "train.device=cuda"))


class _HostReads(TorchDispatchMode):
    """Records the ops that make a CUDA host wait for the device: scalar reads and data-dependent shapes.

    ``.item()``, ``float(t)``, ``bool(t)`` and ``if t > x`` all dispatch ``_local_scalar_dense``;
    ``nonzero``/``masked_select`` (boolean indexing) must read the data to know their output size.
    Recorded on CPU, this is the same check ``set_sync_debug_mode("error")`` makes on a GPU.
    """

    SYNCING = frozenset({"_local_scalar_dense", "nonzero", "is_nonzero", "masked_select", "equal", "unique"})

    def __init__(self, host_resident: set[int]) -> None:
        super().__init__()
        self.host_resident = host_resident
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name.rstrip("_") in self.SYNCING and not (args and args[0].data_ptr() in self.host_resident):
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    "overrides",
    [
        ("clip=norm",),
        ("clip=value",),
        ("clip=none",),
        ("clip=percentile",),
        ("clip=zclip",),
        ("clip=agc",),
        ("clip=norm", "train.accumulate=2"),
        pytest.param(
            ("clip=norm", "train.precision=bf16", f"model={BF16_CELL}"),
            marks=pytest.mark.skipif(BF16_CELL is None, reason="this CPU runs no built-in cell in bf16"),
        ),
        ("clip=norm", "optim=sgd"),
    ],
    ids=lambda overrides: "-".join(o.split("=")[-1] for o in overrides[:2]),
)
def test_trainer_step_reads_nothing_back_from_the_device(config, overrides: tuple[str, ...]) -> None:
    setup = build(config(*SMALL, *overrides))
    telemetry = Telemetry(list(setup.model.named_parameters()), 12, setup.device)
    trainer = Trainer(setup, telemetry)
    trainer.step(0)  # first-step setup (optimizer state, history buffers) is allowed to differ
    # Adam reads its step counters with .item(); they stay on the CPU even when training on CUDA
    # (unless capturable or fused), so that read is no device sync and is left out.
    counters = {state["step"].data_ptr() for state in setup.optimizer.state.values() if "step" in state}
    with _HostReads(counters) as reads:
        for step in range(1, 11):  # a window without its drain, layer norms measured at step 0 only
            trainer.step(step)
    assert reads.seen == []
    assert telemetry.drain() is not None  # the one place the host reads, once per window


def test_build_uses_one_torch_thread_unless_train_threads_says_otherwise(config) -> None:
    # torch's default takes every core, which collapses under any concurrent run (README, train table).
    torch.set_num_threads(2)
    build(config(*SMALL))
    assert torch.get_num_threads() == 1
    build(config(*SMALL, "train.threads=2"))
    assert torch.get_num_threads() == 2
    with pytest.raises(ConfigError, match=r"train\.threads=0"):
        build(config(*SMALL, "train.threads=0"))
    torch.set_num_threads(1)
