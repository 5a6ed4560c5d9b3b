"""``models/batched.py``: member k of a ``BatchedRNN`` computes what its own ``RNNModel`` (torch's
RNN/GRU/LSTM modules) computes, forward and backward."""

from __future__ import annotations

import pytest
import torch

from clipsweep.models import RNNModel
from clipsweep.models.batched import BatchedRNN, batching_obstacle


def _members(n: int, **kwargs: object) -> list[RNNModel]:
    models = []
    for seed in range(n):
        torch.manual_seed(seed)
        models.append(RNNModel(**kwargs))  # type: ignore[arg-type]
    return models


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize(
    "shape",
    [
        {"input_size": 3, "output_size": 2, "num_layers": 2},
        {"input_size": 1, "output_size": 5, "num_layers": 1, "sequence_output": True, "vocab_size": 7},
    ],
    ids=["features-2layers", "tokens-sequence"],
)
def test_batched_rnn_member_matches_its_own_model_forward_and_gradients(cell: str, shape: dict) -> None:
    models = _members(3, cell=cell, hidden_size=8, dropout=0.0, **shape)
    batched = BatchedRNN(models)
    generator = torch.Generator().manual_seed(0)
    if shape.get("vocab_size"):
        x = torch.randint(0, 7, (3, 4, 6), generator=generator)  # id 0 is padding
    else:
        x = torch.randn(3, 4, 6, 3, generator=generator, dtype=torch.float32)
    out = batched(x)
    weights = torch.randn(out.shape, generator=generator)
    (out * weights).sum().backward()
    for k, model in enumerate(models):
        expected = model(x[k])
        torch.testing.assert_close(out[k], expected, rtol=1e-5, atol=1e-6)
        (expected * weights[k]).sum().backward()
        views = [v for _, v in batched.member_parameters(k)]
        batched.attach_grads(k, views)
        for (name, param), view in zip(model.named_parameters(), views):
            torch.testing.assert_close(view.grad, param.grad, rtol=1e-5, atol=1e-6, msg=f"{cell} {name}")


def test_batched_rnn_member_views_share_storage_with_the_batch() -> None:
    models = _members(2, input_size=2, output_size=1, cell="lstm", hidden_size=4, num_layers=1, dropout=0.0)
    batched = BatchedRNN(models)
    name, view = batched.member_parameters(1)[0]
    with torch.no_grad():
        view.add_(1.0)
    assert name == "rnn.weight_ih_l0"
    torch.testing.assert_close(batched.weights[0][1], models[1].rnn.weight_ih_l0 + 1.0)
    torch.testing.assert_close(batched.weights[0][0], models[0].rnn.weight_ih_l0)


def test_batching_obstacle_names_dropout_between_layers_and_foreign_models() -> None:
    dropout = RNNModel(2, 1, cell="gru", hidden_size=4, num_layers=2, dropout=0.3)
    assert "dropout=0.3" in str(batching_obstacle(dropout))
    assert "has no batched implementation" in str(batching_obstacle(torch.nn.Linear(2, 1)))
    assert batching_obstacle(RNNModel(2, 1, cell="gru", hidden_size=4, num_layers=1, dropout=0.3)) is None
    with pytest.raises(ValueError, match="same architecture"):
        BatchedRNN(
            [
                *_members(1, input_size=2, output_size=1, cell="gru", hidden_size=4, num_layers=1, dropout=0.0),
                *_members(1, input_size=2, output_size=1, cell="gru", hidden_size=5, num_layers=1, dropout=0.0),
            ]
        )


def test_batched_rnn_subset_of_members_computes_theirs_and_leaves_the_others_untouched() -> None:
    batched = BatchedRNN(
        _members(3, input_size=2, output_size=1, cell="lstm", hidden_size=4, num_layers=1, dropout=0.0)
    )
    x = torch.randn(3, 5, 6, 2, generator=torch.Generator().manual_seed(0))
    full = batched(x)
    subset = batched(x[[2, 0]], torch.tensor([2, 0]))
    torch.testing.assert_close(subset, full[[2, 0]])
    subset.sum().backward()
    for weight in batched.weights:
        assert torch.count_nonzero(weight.grad[1]) == 0  # member 1 was not computed
        assert torch.count_nonzero(weight.grad[0]) > 0 and torch.count_nonzero(weight.grad[2]) > 0
