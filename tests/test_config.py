"""Every default is written once: in a schema (what ``_target_`` builds) or, for clip methods, in the
method's constructor that the schema is made from; what the composed config says is what the built
object has."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
from hydra.utils import get_class
from omegaconf import MISSING, OmegaConf

from clipsweep.clipping import ClipMethod, clip_schema, make_clipper
from clipsweep.config import SCHEMAS
from clipsweep.plan import plan_sweep
from clipsweep.recommend import RecommendSettings
from clipsweep.sweep_config import RecommendConf, SweeperConf, sweeper_settings
from clipsweep.training import build
from clipsweep.usage import dataclasses_defaults

OURS = [(group, name) for group in ("model", "task") for name in SCHEMAS[group]]


def _fields(schema: type) -> dict[str, Any]:
    return {k: v for k, v in dataclasses_defaults(schema).items() if not k.startswith("_")}


@pytest.mark.parametrize(("group", "name"), OURS)
def test_config_schema_keys_are_constructor_parameters_without_defaults_of_their_own(group: str, name: str) -> None:
    schema = SCHEMAS[group][name]
    parameters = inspect.signature(get_class(schema._target_)).parameters
    for key in _fields(schema):
        assert key in parameters, f"{group}.{key} feeds no parameter of {schema._target_}"
        assert parameters[key].default is inspect.Parameter.empty, f"{schema._target_}({key}=...) restates a default"


@pytest.mark.parametrize("method", list(ClipMethod))
def test_config_clip_schema_is_its_methods_constructor(method: ClipMethod) -> None:
    schema = clip_schema(method)
    clipper = make_clipper({"method": method.value})  # the constructor's own defaults
    fields = _fields(schema)
    assert fields.pop("method") is method
    assert set(fields) == set(inspect.signature(type(clipper)).parameters)
    for key, default in fields.items():
        assert getattr(clipper, key) == default, key


@pytest.mark.parametrize("option", [f"{g}={n}" for g, n in OURS] + [f"clip={m.value}" for m in ClipMethod])
def test_config_composed_defaults_reach_the_built_object(config, tmp_path: Path, option: str) -> None:
    extra = [f"task.path={tmp_path / 'x.csv'}"] if option == "task=text_csv" else []
    if extra:
        (tmp_path / "x.csv").write_text("text,label\n" + "".join(f"word{i} other,{i % 2}\n" for i in range(20)))
    composed = config(option, *extra)
    setup = build(composed)
    group = option.split("=")[0]
    node = OmegaConf.to_container(composed[group], resolve=True, enum_to_str=True)
    if group == "model":
        rnn = setup.model.rnn
        assert (rnn.hidden_size, rnn.num_layers) == (node["hidden_size"], node["num_layers"])
        assert rnn.mode == {"rnn": "RNN_TANH", "gru": "GRU", "lstm": "LSTM"}[str(node["cell"])]
    elif group == "task":
        kept = {k: v for k, v in node.items() if k != "_target_" and hasattr(setup.task, k)}
        if "vocab_size" in kept:  # the setting is a cap; the task keeps the vocabulary it found under it
            assert setup.task.vocab_size <= kept.pop("vocab_size")
        assert {k: getattr(setup.task, k) for k in kept} == kept
    else:
        for key, value in node.items():
            if key != "method":
                assert getattr(setup.clipper, key) == value, key
    assert setup.optimizer.defaults["lr"] == composed.optim.lr


def test_config_sweeper_plan_from_nothing_equals_the_composed_defaults() -> None:
    from clipsweep.composition import compose

    composed = compose(["search=none"], return_hydra_config=True)
    settings = OmegaConf.to_container(composed.hydra.sweeper, resolve=True)
    arguments = ["clip.threshold=interval(0.1, 1)"]
    from_config, from_nothing = plan_sweep(settings, arguments), plan_sweep({}, arguments)
    schema = SweeperConf()
    for plan in (from_config, from_nothing):
        assert (plan.n_trials, plan.n_jobs, plan.heartbeat_interval, plan.grace_period, plan.max_retry) == (
            schema.n_trials, schema.n_jobs, schema.heartbeat_interval, schema.grace_period, schema.max_retry
        )  # fmt: skip
        assert plan.directions == [schema.direction] and plan.objectives == [schema.objective]
        assert plan.recommend == RecommendSettings()
    assert type(from_config.sampler) is type(from_nothing.sampler)
    assert type(from_config.pruner) is type(from_nothing.pruner)
    assert sweeper_settings({})["pruner"]["_target_"] == settings["pruner"]["_target_"] != MISSING


def test_config_recommend_settings_defaults_are_the_schemas() -> None:
    schema = RecommendConf()
    settings = RecommendSettings()
    for key in ("tolerance", "bandwidth", "transient", "percentile"):
        assert getattr(settings, key) == getattr(schema, key)
