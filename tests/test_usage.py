"""``clipsweep sweep --help`` lists every key of the sweeper's schema with the schema's default."""

from __future__ import annotations

import pytest

from clipsweep.cli import main
from clipsweep.sweep_config import RecommendConf, SweeperConf
from clipsweep.usage import dataclasses_defaults


def test_usage_sweep_help_lists_every_sweeper_key_with_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "--help"]) == 0
    shown = capsys.readouterr().out
    for key, default in dataclasses_defaults(SweeperConf).items():
        if key not in ("_target_", "_recursive_", "defaults", "sampler", "pruner", "recommend"):
            assert f"hydra.sweeper.{key} ({default!r}): " in shown, key
    for key, default in dataclasses_defaults(RecommendConf).items():
        assert f"hydra.sweeper.recommend.{key} ({default!r}): " in shown, key
    assert "hydra/sweeper/sampler=NAME ('tpe'): one of " in shown and "hydra/sweeper/pruner=NAME ('median')" in shown
    assert "hydra/launcher=NAME ('basic'): " in shown and "batched (n_jobs trials as one model" in shown


def test_usage_run_help_lists_user_groups_and_keys_not_internal_schemas(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--help"]) == 0
    shown = capsys.readouterr().out
    for group in ("model: gru, lstm, rnn", "task: adding, copy_memory, digits, text_csv", "optim: adam, sgd"):
        assert f"  {group}" in shown
    assert "      norm: threshold=1.0, norm_type=2.0" in shown and "rnn: cell='lstm', hidden_size=64" in shown
    assert "train.steps (1000): Optimizer steps" in shown and "tracking.log_every (50)" in shown
    assert "schema" not in shown
