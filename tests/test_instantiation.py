"""Building user-written config nodes: every failure is one ConfigError naming the key to fix."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from clipsweep.errors import ConfigError
from clipsweep.instantiation import instantiate_node


def test_instantiate_node_builds_the_target_with_extra_arguments() -> None:
    node = OmegaConf.create({"_target_": "torch.nn.Linear", "in_features": 3})
    layer = instantiate_node("model", node, out_features=2)
    assert tuple(layer.weight.shape) == (2, 3)


@pytest.mark.parametrize(
    ("node", "key", "value"),
    [
        ({"_target_": "no_such_module.Thing"}, "model._target_", "no_such_module.Thing"),
        ({"_target_": "torch.optim.SGD", "lr": -0.5}, "optim.lr", -0.5),  # "Invalid learning rate: -0.5"
        ({"_target_": "torch.nn.Linear", "in_features": 3, "out_features": 2, "bogus": 7}, "model", None),
    ],
)
def test_instantiate_node_names_the_key_a_user_can_fix(node: dict, key: str, value: object) -> None:
    import torch

    group = key.split(".")[0]
    extra = {"params": [torch.nn.Parameter(torch.zeros(1))]} if group == "optim" and "lr" in node else {}
    with pytest.raises(ConfigError) as raised:
        instantiate_node(group, OmegaConf.create(node), **extra)
    assert raised.value.key == key
    if value is not None:
        assert raised.value.value == value
