"""Tasks produce the data their docstrings promise, with fixed validation sets."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from clipsweep.config import AddingConf, CopyMemoryConf, DigitsConf, TextCSVConf
from clipsweep.errors import ConfigError
from clipsweep.tasks import AddingTask, CopyMemoryTask, DigitsTask, TextCSVTask
from clipsweep.tracker import NullTracker
from clipsweep.training import build, train


def _task(cls: type, schema: type, **given: Any) -> Any:
    """``cls`` built from its schema's defaults (the constructor has none of its own) with ``given`` over them."""
    defaults = {f.name: f.default for f in dataclasses.fields(schema) if f.name != "_target_"}
    assert schema._target_.endswith(cls.__name__)
    return cls(**{**defaults, **given})


def test_adding_task_target_is_sum_of_marked_values() -> None:
    task = _task(AddingTask, AddingConf, seq_len=20, val_size=50)
    x, y = task.sample(64, torch.Generator().manual_seed(1))
    assert x.shape == (64, 20, 2) and y.shape == (64, 1)
    markers = x[..., 1]
    assert torch.equal(markers.sum(1), torch.full((64,), 2.0))
    assert markers[:, :10].sum(1).eq(1).all() and markers[:, 10:].sum(1).eq(1).all()
    torch.testing.assert_close(y[:, 0], (x[..., 0] * markers).sum(1))
    # Predicting the mean sum (1.0) gives the MSE of the sum of two U[0,1): 2/12.
    baseline = task.loss(torch.ones_like(task.validation()[1]), task.validation()[1]).item()
    assert baseline == pytest.approx(1 / 6, abs=0.03)


def test_adding_task_validation_set_is_independent_of_training_seed() -> None:
    a, b = (_task(AddingTask, AddingConf, seq_len=10, val_size=5) for _ in range(2))
    assert torch.equal(a.validation()[0], b.validation()[0])


def test_copy_memory_task_layout_and_memoryless_baseline() -> None:
    task = _task(CopyMemoryTask, CopyMemoryConf, delay=30, n_symbols=8, copy_len=10, val_size=400)
    x, y = task.sample(8, torch.Generator().manual_seed(0))
    assert x.shape == (8, 50, 10) and y.shape == (8, 50)
    tokens = x.argmax(-1)
    assert torch.equal(y[:, -10:], tokens[:, :10])
    assert tokens[:, 39].eq(9).all()  # the marker, right before the 10 output steps
    assert y[:, :-10].eq(0).all()
    # A memoryless model: blank everywhere it is certain, uniform over the 8 symbols at the end.
    logits = torch.full((400, 50, 9), -1e4)
    logits[:, :-10, 0] = 0
    logits[:, -10:, 1:] = 0
    baseline = task.loss(logits, task.validation()[1]).item()
    assert baseline == pytest.approx(10 * math.log(8) / 50, rel=1e-4)


def test_digits_task_reads_real_images_as_sequences() -> None:
    task = _task(DigitsTask, DigitsConf, val_fraction=0.2)
    x_val, y_val = task.validation()
    assert x_val.shape[1:] == (64, 1) and len(y_val) == round(1797 * 0.2)
    assert 0.0 <= float(x_val.min()) and float(x_val.max()) <= 1.0
    x, y = task.sample(16, torch.Generator().manual_seed(0))
    assert x.shape == (16, 64, 1) and y.dtype == torch.long and int(y.max()) <= 9


def test_text_csv_task_tokenises_left_pads_and_splits(text_csv: Path) -> None:
    task = _task(
        TextCSVTask,
        TextCSVConf,
        path=str(text_csv),
        text_column="comment_text",
        label_column="toxic",
        max_len=16,
        val_fraction=0.25,
    )
    assert task.output_size == 2 and task.classes == ["0", "1"]
    x_val, y_val = task.validation()
    assert x_val.shape == (50, 16) and len(y_val) == 50
    assert x_val[:, -1].ne(0).all()  # left padding: the last step is always a real token
    assert x_val[:, 0].eq(0).any()
    assert task.vocab_size == len(task.vocab) + 2 and min(task.vocab.values()) == 2


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"path": "missing.csv"}, "task.path"),
        ({"text_column": "body"}, "task.text_column"),
        ({"label_column": "nope"}, "task.label_column"),
        ({"val_fraction": 1.5}, "task.val_fraction"),
    ],
)
def test_text_csv_task_rejects_bad_input(text_csv: Path, kwargs: dict, key: str) -> None:
    arguments = {"path": str(text_csv), "text_column": "comment_text", "label_column": "toxic", **kwargs}
    with pytest.raises(ConfigError) as info:
        _task(TextCSVTask, TextCSVConf, **arguments)
    assert info.value.key == key


class PlainTask:
    """README's task contract read literally: a plain class, no base, no ``metrics``."""

    input_size, output_size = 2, 1

    def __init__(self, seq_len: int, val_size: int, val_seed: int) -> None:
        self.seq_len = seq_len
        self.val = self.sample(val_size, torch.Generator().manual_seed(val_seed))

    def sample(self, batch_size, generator):
        x = torch.rand(batch_size, self.seq_len, 2, generator=generator)
        return x, x[:, :, 0].sum(dim=1, keepdim=True)

    def validation(self):
        return self.val

    def loss(self, output, target):
        return torch.nn.functional.mse_loss(output, target)


class NoLoss:
    """Forgets ``loss``: refused when the run is built, not mid-run."""

    input_size, output_size = 2, 1

    def __init__(self, **kwargs) -> None:
        pass

    def sample(self, batch_size, generator):
        return torch.zeros(batch_size, 5, 2), torch.zeros(batch_size, 1)

    def validation(self):
        return self.sample(4, None)


def test_task_contract_is_met_by_a_plain_class(config) -> None:
    overrides = ("task.seq_len=5", "task.val_size=16", "model.hidden_size=8", "train.steps=4", "train.eval_every=2")
    result = train(build(config("task._target_=test_tasks.PlainTask", *overrides)), NullTracker())
    assert result.status == "finished" and set(result.val) == {"val/loss"}  # no metrics method: the loss alone
    with pytest.raises(ConfigError, match=r"task\._target_=.*it lacks loss"):
        build(config("task._target_=test_tasks.NoLoss", *overrides))
