"""Hydra's override grammar → Optuna distributions, case by case, and the conditional parameters."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from clipsweep.errors import ConfigError
from clipsweep.search_space import format_value, parse_search_space


def _only(grammar: str):
    space = parse_search_space({"x": grammar})
    assert [p.name for p in space.parameters] == ["x"]
    return space.parameters[0].distribution


@pytest.mark.parametrize(
    ("grammar", "expected"),
    [
        ("choice(a, b, c)", CategoricalDistribution(("a", "b", "c"))),
        ("1,2,3", CategoricalDistribution((1, 2, 3))),
        ("choice(0.5, true, abc)", CategoricalDistribution((0.5, True, "abc"))),
        ("range(1, 4)", IntDistribution(1, 3)),  # stop excluded, as in Hydra
        ("range(0, 10, 3)", IntDistribution(0, 9, step=3)),
        ("range(0, 10, 5)", IntDistribution(0, 5, step=5)),
        ("range(0.1, 0.5, 0.1)", FloatDistribution(0.1, 0.4, step=0.1)),
        ("interval(0.01, 10)", FloatDistribution(0.01, 10.0)),
        ("int(interval(1, 10))", IntDistribution(1, 10)),
        ("tag(log, interval(0.001, 1))", FloatDistribution(0.001, 1.0, log=True)),
        ("tag(log, range(1, 100))", IntDistribution(1, 99, log=True)),
        ("tag(log, int(interval(2, 64)))", IntDistribution(2, 64, log=True)),
    ],
)
def test_parse_search_space_maps_each_grammar_form(grammar: str, expected) -> None:
    assert _only(grammar) == expected


def test_parse_search_space_range_values_match_hydra_basic_sweeper() -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    override = OverridesParser.create().parse_overrides(["x=range(2, 11, 3)"])[0]
    hydra_values = list(override.sweep_iterator())
    grid = parse_search_space({"x": "range(2, 11, 3)"}).grid()
    assert grid["x"] == hydra_values == [2, 5, 8]


def test_parse_search_space_keeps_fixed_values_and_lets_command_line_win() -> None:
    space = parse_search_space(
        {"clip.threshold": "interval(0.1, 1)", "optim.lr": 0.05, "model.cell": "gru"},
        ["optim.lr=interval(0.001, 0.1)", "train.steps=10", "~tracking.run_name", "+extra=1", "model.cell=lstm"],
    )
    assert [p.name for p in space.parameters] == ["clip.threshold", "optim.lr"]
    assert space.parameters[1].distribution == FloatDistribution(0.001, 0.1)
    assert space.fixed == ("train.steps=10", "~tracking.run_name", "+extra=1", "model.cell=lstm")
    assert space.overrides({"clip.threshold": 0.5, "optim.lr": 0.01}) == [
        *space.fixed,
        "clip.threshold=0.5",
        "optim.lr=0.01",
    ]


def test_parse_search_space_conditional_parameters_only_where_they_apply() -> None:
    space = parse_search_space(
        {"clip": "choice(norm, percentile)"},
        conditional={
            "clip.threshold": {"when": {"clip": ["norm"]}, "space": "interval(0.1, 1)"},
            "clip.percentile": {"when": {"clip": "percentile"}, "space": "interval(1, 50)"},
        },
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(20):
        trial = study.ask()
        values = space.suggest(trial)
        expected = {"clip", "clip.threshold"} if values["clip"] == "norm" else {"clip", "clip.percentile"}
        assert set(values) == expected
        seen.add(values["clip"])
        study.tell(trial, 0.0)
    assert seen == {"norm", "percentile"}


@pytest.mark.parametrize(
    ("params", "arguments", "key", "fragment"),
    [
        ({"x": "interval(5, 1)"}, [], "hydra.sweeper.params.x", "low <= high"),
        ({"x": "tag(log, interval(0, 1))"}, [], "hydra.sweeper.params.x", "low > 0"),
        ({"x": "tag(log, range(0, 10))"}, [], "hydra.sweeper.params.x", "start > 0"),
        ({"x": "range(5, 5)"}, [], "hydra.sweeper.params.x", "at least one value"),
        ({"x": "choice()"}, [], "hydra.sweeper.params.x", "grammar"),
        ({"x": "interval(1,"}, [], "hydra.sweeper.params.x", "grammar"),
        ({}, [], "hydra.sweeper.params", "at least one searched parameter"),
        ({"x": 3}, ["train.steps=5"], "hydra.sweeper.params", "at least one searched parameter"),
        ({}, ["clip.threshold=interval(2, 1)"], "clip.threshold=interval(2, 1)", "low <= high"),
    ],
)
def test_parse_search_space_rejects_bad_spaces(params, arguments, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_search_space(params, arguments)
    assert info.value.key == key
    assert fragment in str(info.value)


def test_parse_search_space_rejects_conditions_on_unknown_parameters() -> None:
    with pytest.raises(ConfigError, match="conditions on searched parameters"):
        parse_search_space(
            {"x": "interval(0, 1)"}, conditional={"y": {"when": {"clip": ["norm"]}, "space": "interval(0, 1)"}}
        )


def test_search_space_grid_refuses_continuous_parameters() -> None:
    with pytest.raises(ConfigError, match="choice"):
        parse_search_space({"x": "interval(0, 1)"}).grid()


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.1, "0.1"), (3, "3"), (True, "true"), (None, "null"), ("norm", "norm"), ("a b", "'a b'"), ("null", "'null'")],
)
def test_format_value_reads_back_through_hydra(value, text: str) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    assert format_value(value) == text
    assert OverridesParser.create().parse_overrides([f"k={text}"])[0].value() == value
