"""``sweeper/plan.py``: what a sweep decided before its first trial, as its start line says it."""

from __future__ import annotations

from clipsweep.plan import plan_sweep

SPACE = ["clip.threshold=interval(0.1, 1)"]


def test_plan_pruning_says_where_pruning_is_decided_or_why_it_is_off() -> None:
    assert plan_sweep({}, SPACE).pruning == "pruner MedianPruner (asked after 33% of each trial's steps)"
    assert plan_sweep({"pruning_warmup": 0.5}, SPACE).pruning.endswith("(asked after 50% of each trial's steps)")
    assert plan_sweep({"pruner": {"_target_": "optuna.pruners.NopPruner"}}, SPACE).pruning == "no pruner"
    two = {"direction": ["minimize", "minimize"], "objective": ["val/loss", "train/loss"]}
    assert plan_sweep(two, SPACE).pruning == "pruner MedianPruner unused (Optuna cannot prune multi-objective trials)"
