"""Tasks: where the data, the loss and the validation metric of a run come from.

Every task is built from the ``task`` config group with ``_target_``; a user's own task is any
class with the same attributes and methods (see README). Validation sets are fixed by
``val_seed``/``split_seed``, independent of ``train.seed``, so that trials are compared on the same data.
"""

from __future__ import annotations

import csv
import re
from abc import ABC, abstractmethod
from collections import Counter
from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F

from clipsweep.errors import ConfigError


class Task(ABC):
    """Data source + loss + metrics for one kind of sequence problem."""

    input_size: int
    output_size: int
    sequence_output: bool = False
    vocab_size: int | None = None

    @abstractmethod
    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """A training batch (on the CPU) drawn with ``generator``."""

    @abstractmethod
    def validation(self) -> tuple[Tensor, Tensor]:
        """The whole validation set (on the CPU); the same for every seed."""

    @abstractmethod
    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """Mean loss of a batch: what is optimised and reported as ``train/loss`` and ``val/loss``."""

    def metrics(self, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Extra validation metrics beyond the loss (``accuracy`` for classification)."""
        return {}


_REQUIRED = ("input_size", "output_size", "sample", "validation", "loss")


def model_kwargs(task: object) -> dict[str, object]:
    """The arguments every model constructor receives from the task (the model contract).

    Read from the task contract's attributes, so that any class with them works (no base class
    needed); ``sequence_output`` and ``vocab_size`` are optional (False, None).
    """
    missing = [name for name in _REQUIRED if not hasattr(task, name)]
    if missing:
        raise ConfigError(
            "task._target_", f"{type(task).__module__}.{type(task).__qualname__}",
            f"a task with {', '.join(_REQUIRED)} (README, task contract); it lacks {', '.join(missing)}",
        )  # fmt: skip
    return {
        "input_size": task.input_size,
        "output_size": task.output_size,
        "sequence_output": getattr(task, "sequence_output", False),
        "vocab_size": getattr(task, "vocab_size", None),
    }


def metrics(task: object, output: Tensor, target: Tensor) -> dict[str, Tensor]:
    """The task's extra validation metrics; ``metrics`` is optional in the contract."""
    method = getattr(task, "metrics", None)
    return dict(method(output, target)) if method is not None else {}


def _check_int(key: str, value: int, minimum: int) -> int:
    if int(value) != value or value < minimum:
        raise ConfigError(f"task.{key}", value, f"must be an integer >= {minimum}")
    return int(value)


class _Classification(Task):
    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output.float(), target)

    def metrics(self, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        return {"accuracy": (output.argmax(-1) == target).float().mean()}


class AddingTask(Task):
    """The adding problem: sum the two marked values of a sequence (predicting 1 gives MSE ≈ 0.167).

    Channel 0 holds U[0, 1) values, channel 1 marks one position in each half of the sequence.
    """

    input_size = 2
    output_size = 1

    def __init__(self, seq_len: int, val_size: int, val_seed: int) -> None:
        self.seq_len = _check_int("seq_len", seq_len, 2)
        self.val_size = _check_int("val_size", val_size, 1)
        self._val = self._make(self.val_size, torch.Generator().manual_seed(val_seed))

    def _make(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        half = self.seq_len // 2
        values = torch.rand(n, self.seq_len, generator=generator)
        first = torch.randint(0, half, (n,), generator=generator)
        second = torch.randint(half, self.seq_len, (n,), generator=generator)
        markers = torch.zeros(n, self.seq_len)
        rows = torch.arange(n)
        markers[rows, first] = 1.0
        markers[rows, second] = 1.0
        target = (values * markers).sum(1, keepdim=True)
        return torch.stack([values, markers], dim=-1), target

    def sample(self, batch_size, generator):
        return self._make(batch_size, generator)

    def validation(self):
        return self._val

    def loss(self, output, target):
        return F.mse_loss(output.float(), target)


class CopyMemoryTask(_Classification):
    """Copy memory: read ``copy_len`` symbols, wait ``delay`` steps, write them back after a marker.

    Inputs are one-hot (0 blank, 1..n_symbols symbols, n_symbols+1 marker) over a sequence of
    ``delay + 2 * copy_len`` steps; a memoryless model reaches ``copy_len·ln(n_symbols)/(delay+2·copy_len)``
    cross-entropy. Accuracy counts only the copied positions.
    """

    sequence_output = True

    def __init__(self, delay: int, n_symbols: int, copy_len: int, val_size: int, val_seed: int) -> None:
        self.delay = _check_int("delay", delay, 1)
        self.n_symbols = _check_int("n_symbols", n_symbols, 2)
        self.copy_len = _check_int("copy_len", copy_len, 1)
        self.val_size = _check_int("val_size", val_size, 1)
        self.input_size = self.n_symbols + 2
        self.output_size = self.n_symbols + 1
        self._val = self._make(self.val_size, torch.Generator().manual_seed(val_seed))

    def _make(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        length = self.delay + 2 * self.copy_len
        symbols = torch.randint(1, self.n_symbols + 1, (n, self.copy_len), generator=generator)
        tokens = torch.zeros(n, length, dtype=torch.long)
        tokens[:, : self.copy_len] = symbols
        tokens[:, self.delay + self.copy_len - 1] = self.n_symbols + 1
        target = torch.zeros(n, length, dtype=torch.long)
        target[:, -self.copy_len :] = symbols
        return F.one_hot(tokens, self.input_size).float(), target

    def sample(self, batch_size, generator):
        return self._make(batch_size, generator)

    def validation(self):
        return self._val

    def loss(self, output, target):
        return F.cross_entropy(output.float().flatten(0, 1), target.flatten())

    def metrics(self, output, target):
        copied = slice(-self.copy_len, None)
        return {"accuracy": (output[:, copied].argmax(-1) == target[:, copied]).float().mean()}


class _IndexedDataset(Task):
    """A fixed dataset split once into train/validation; training batches drawn with replacement."""

    def _split(self, inputs: Tensor, labels: Tensor, val_fraction: float, split_seed: int) -> None:
        if not 0 < val_fraction < 1:
            raise ConfigError("task.val_fraction", val_fraction, "must be in (0, 1)")
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(split_seed))
        n_val = max(1, round(len(labels) * val_fraction))
        val, train = order[:n_val], order[n_val:]
        if len(train) == 0:
            raise ConfigError("task.val_fraction", val_fraction, "must leave at least one training example")
        self._train = (inputs[train], labels[train])
        self._val = (inputs[val], labels[val])

    def sample(self, batch_size, generator):
        index = torch.randint(0, len(self._train[1]), (batch_size,), generator=generator)
        return self._train[0][index], self._train[1][index]

    def validation(self):
        return self._val


class DigitsTask(_IndexedDataset, _Classification):
    """scikit-learn's bundled 8x8 digits read pixel by pixel: 64 steps of one feature, 10 classes.

    Real data that ships with scikit-learn, so it works offline.
    """

    input_size = 1
    output_size = 10

    def __init__(self, val_fraction: float, split_seed: int) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        pixels = torch.tensor(digits.data, dtype=torch.float32) / 16.0
        self._split(pixels.unsqueeze(-1), torch.tensor(digits.target), val_fraction, split_seed)


_TOKEN = re.compile(r"[\w']+")
PAD, UNKNOWN = 0, 1


class TextCSVTask(_IndexedDataset, _Classification):
    """Text classification from a CSV with a text and a label column (e.g. toxic-comment detection).

    Tokens are lower-cased word pieces; the vocabulary is the ``vocab_size - 2`` most frequent
    training tokens (0 is padding, 1 unknown). Sequences are left-padded so that the last step,
    which the model reads, is the last real token.
    """

    def __init__(
        self,
        path: str,
        text_column: str,
        label_column: str,
        max_len: int,
        vocab_size: int,
        val_fraction: float,
        split_seed: int,
    ) -> None:
        self.max_len = _check_int("max_len", max_len, 1)
        vocab_size = _check_int("vocab_size", vocab_size, 3)
        file = Path(path)
        if not file.is_file():
            raise ConfigError("task.path", path, f"an existing CSV file (looked in {file.resolve().parent})")
        with file.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            for key, column in (("text_column", text_column), ("label_column", label_column)):
                if column not in columns:
                    raise ConfigError(f"task.{key}", column, f"one of the CSV's columns {columns}")
            rows = [(row[text_column] or "", row[label_column]) for row in reader]
        classes = sorted({label for _, label in rows})
        if len(classes) < 2:
            raise ConfigError("task.label_column", label_column, f"a column with >= 2 distinct labels, found {classes}")
        self.classes = classes
        self.output_size = len(classes)
        tokens = [_TOKEN.findall(text.lower())[: self.max_len] for text, _ in rows]
        labels = torch.tensor([classes.index(label) for _, label in rows])
        # The vocabulary must come from the training split only; split indices first, then count.
        self._split(torch.arange(len(rows)), labels, val_fraction, split_seed)
        counts = Counter(t for i in self._train[0].tolist() for t in tokens[i])
        self.vocab = {word: i + 2 for i, (word, _) in enumerate(counts.most_common(vocab_size - 2))}
        self.vocab_size = len(self.vocab) + 2
        self.input_size = self.vocab_size
        encoded = torch.full((len(rows), self.max_len), PAD, dtype=torch.long)
        for i, words in enumerate(tokens):
            ids = [self.vocab.get(w, UNKNOWN) for w in words]
            if ids:
                encoded[i, -len(ids) :] = torch.tensor(ids)
        self._train = (encoded[self._train[0]], self._train[1])
        self._val = (encoded[self._val[0]], self._val[1])
