"""The built-in recurrent model: one class for tanh RNN, GRU and LSTM cells.

The constructor contract (shared by any user model plugged in with ``model._target_``) is four
keyword arguments that the task supplies, followed by the model's own config keys:

- ``input_size``: features per time step (ignored when ``vocab_size`` is set),
- ``output_size``: classes, or regression outputs,
- ``sequence_output``: return a prediction for every step (``(B, T, output_size)``) instead of
  only for the last one (``(B, output_size)``),
- ``vocab_size``: when not None the input is ``(B, T)`` token ids (0 = padding) to embed.
"""

from __future__ import annotations

from enum import Enum

import torch
from torch import nn


class Cell(str, Enum):
    """Recurrent cell types; member names are what configs spell (``model.cell=gru``)."""

    rnn = "rnn"
    gru = "gru"
    lstm = "lstm"


_CELLS: dict[Cell, type[nn.RNNBase]] = {Cell.rnn: nn.RNN, Cell.gru: nn.GRU, Cell.lstm: nn.LSTM}


class RNNModel(nn.Module):
    """A stacked recurrent layer followed by a linear head."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        *,
        cell: Cell | str,
        hidden_size: int,
        num_layers: int,
        dropout: float,
        sequence_output: bool = False,
        vocab_size: int | None = None,
    ) -> None:
        super().__init__()
        cell = Cell(cell.value if isinstance(cell, Enum) else cell)
        if hidden_size < 1:
            raise ValueError(f"hidden_size={hidden_size!r} must be >= 1")
        if num_layers < 1:
            raise ValueError(f"num_layers={num_layers!r} must be >= 1")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout!r} must be in [0, 1)")
        self.sequence_output = sequence_output
        self.embedding = None
        if vocab_size is not None:
            self.embedding = nn.Embedding(vocab_size, hidden_size, padding_idx=0)
            input_size = hidden_size
        # PyTorch warns when dropout is set on a single layer, where it would do nothing.
        self.rnn = _CELLS[cell](
            input_size,
            hidden_size,
            num_layers=num_layers,
            dropout=dropout if num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.head = nn.Linear(hidden_size, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embedding is not None:
            x = self.embedding(x)
        out, _ = self.rnn(x)
        if not self.sequence_output:
            out = out[:, -1]
        return self.head(out)
