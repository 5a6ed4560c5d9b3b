"""E independent ``RNNModel``s trained as one: every weight gains a leading member axis.

One small RNN per process leaves a GPU idle (each time step is a few tiny kernels, launch-bound);
stacking E members turns each step into one batched matmul for all of them. Members never mix: each
reads only its own slice of every weight and of the input, so the gradient of the summed losses with
respect to a member's slice is that member's own gradient, and its clipping, optimizer and pruning
stay its own (``clipsweep.batching``).

The recurrences are written out with the gate layouts of ``torch.nn.RNN``/``GRU``/``LSTM`` (the
weights are copied from those modules unchanged), so member k computes what ``RNNModel`` computes,
to float rounding: the tests hold it to torch's own modules.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from clipsweep.models.rnn import Cell, RNNModel

_MODES = {"RNN_TANH": Cell.rnn, "GRU": Cell.gru, "LSTM": Cell.lstm}


def batching_obstacle(model: nn.Module) -> str | None:
    """Why ``model`` cannot join a batch (None: it can): only the built-in model, without the
    between-layer dropout whose random masks a batch could not draw as E separate runs do."""
    if type(model) is not RNNModel:
        return f"{type(model).__module__}.{type(model).__qualname__} has no batched implementation"
    rnn = model.rnn
    if rnn.mode not in _MODES:
        return f"cell {rnn.mode} has no batched implementation"
    if rnn.dropout > 0 and rnn.num_layers > 1:
        return f"dropout={rnn.dropout} between layers draws random masks per run"
    return None


class BatchedRNN(nn.Module):
    """``len(models)`` copies of one ``RNNModel`` architecture, each with its own weights.

    ``names`` are the single model's parameter names, in its order: member k's parameters
    (``member_parameters``) line up with ``RNNModel.named_parameters()``, so per-layer telemetry and
    clipping see the same tensors a lone run would.
    """

    def __init__(self, models: Sequence[RNNModel]) -> None:
        super().__init__()
        if not models:
            raise ValueError("models is empty: a batch needs at least one member")
        for model in models:
            obstacle = batching_obstacle(model)
            if obstacle is not None:
                raise ValueError(f"cannot batch this model: {obstacle}")
        first = models[0]
        shapes = [[(n, p.shape) for n, p in m.named_parameters()] for m in models]
        if any(s != shapes[0] for s in shapes) or any(m.rnn.mode != first.rnn.mode for m in models):
            raise ValueError("every member of a batch must have the same architecture")
        self.cell = _MODES[first.rnn.mode]
        self.num_layers = first.rnn.num_layers
        self.sequence_output = first.sequence_output
        self.has_embedding = first.embedding is not None
        self.names = [name for name, _ in first.named_parameters()]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([dict(m.named_parameters())[name].detach() for m in models]))
            for name in self.names
        )

    @property
    def members(self) -> int:
        return self.weights[0].shape[0]

    def member_parameters(self, k: int) -> list[tuple[str, Tensor]]:
        """Member k's parameters as (name, tensor) like ``RNNModel.named_parameters()``: leaf views
        sharing storage with the batch, so an optimizer stepping them updates the batch in place.
        Their ``.grad`` is set by ``attach_grads`` after each backward."""
        return [(name, w.detach()[k]) for name, w in zip(self.names, self.weights)]

    def attach_grads(self, k: int, views: Sequence[Tensor]) -> None:
        """Point member k's views' ``.grad`` at its slices of the batch's gradients (no copy: clipping
        them in place clips the batch's)."""
        for view, weight in zip(views, self.weights):
            view.grad = None if weight.grad is None else weight.grad[k]

    def forward(self, x: Tensor, members: Tensor | None = None) -> Tensor:
        """``x``: (E, B, T, input_size), or (E, B, T) token ids; returns (E, B[, T], output_size).

        ``members`` (indices on the weights' device): compute only those members, ``x`` holding
        theirs in that order; the others' weights get zero gradients. A batch whose runs stop one by
        one (pruned, diverged, done) stops paying for them.
        """
        if members is None:
            weights = dict(zip(self.names, self.weights))
        else:
            weights = {name: w.index_select(0, members) for name, w in zip(self.names, self.weights)}
        if self.has_embedding:
            table = weights["embedding.weight"]
            members = torch.arange(table.shape[0], device=x.device)[:, None, None]
            # Padding (id 0) contributes nothing and gets no gradient, as nn.Embedding(padding_idx=0).
            x = table[members, x] * (x != 0).unsqueeze(-1).to(table.dtype)
        for layer in range(self.num_layers):
            x = self._layer(x, layer, weights)
        if not self.sequence_output:
            x = x[:, :, -1]
        weight, bias = weights["head.weight"], weights["head.bias"]
        flat = x.reshape(x.shape[0], -1, x.shape[-1])
        out = torch.baddbmm(bias.unsqueeze(1), flat, weight.transpose(1, 2))
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def _layer(self, x: Tensor, layer: int, weights: dict[str, Tensor]) -> Tensor:
        w_ih, w_hh = weights[f"rnn.weight_ih_l{layer}"], weights[f"rnn.weight_hh_l{layer}"]
        b_ih, b_hh = weights[f"rnn.bias_ih_l{layer}"], weights[f"rnn.bias_hh_l{layer}"]
        members, batch, steps, features = x.shape
        hidden = w_hh.shape[-1]
        gru = self.cell is Cell.gru
        # The input projection of every time step at once; only the recurrence is sequential. GRU
        # keeps b_hh apart (its reset gate multiplies W_hn h + b_hn); the others add both biases here.
        bias = b_ih if gru else b_ih + b_hh
        projected = torch.baddbmm(bias.unsqueeze(1), x.reshape(members, batch * steps, features), w_ih.transpose(1, 2))
        # unbind, not projected[:, :, t]: a slice's backward writes a zero tensor of the whole
        # projection per time step (quadratic in T); unbind's backward stacks the steps once.
        projected = projected.reshape(members, batch, steps, -1).unbind(dim=2)
        w_hh_t = w_hh.transpose(1, 2)
        h = x.new_zeros(members, batch, hidden, dtype=projected[0].dtype)
        c = h
        outputs = []
        for gates_x in projected:
            if gru:
                x_r, x_z, x_n = gates_x.chunk(3, dim=-1)
                h_r, h_z, h_n = torch.baddbmm(b_hh.unsqueeze(1), h, w_hh_t).chunk(3, dim=-1)
                r = torch.sigmoid(x_r + h_r)
                z = torch.sigmoid(x_z + h_z)
                n = torch.tanh(x_n + r * h_n)
                h = (1 - z) * n + z * h
            elif self.cell is Cell.lstm:
                i, f, g, o = torch.baddbmm(gates_x, h, w_hh_t).chunk(4, dim=-1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
            else:
                h = torch.tanh(torch.baddbmm(gates_x, h, w_hh_t))
            outputs.append(h)
        return torch.stack(outputs, dim=2)
