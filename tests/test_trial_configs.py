"""``sweeper/trial_configs.py``: a trial's config from the short path is Hydra's own composition of
the same overrides, field for field (the real ``conf/``, Hydra's real config loader)."""

from __future__ import annotations

import pytest
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import create_config_search_path
from hydra.types import RunMode
from omegaconf import OmegaConf

from clipsweep.composition import conf_dir
from clipsweep.config import register_schemas
from clipsweep.trial_configs import TrialComposer


@pytest.fixture
def loader_and_master():
    register_schemas()
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(conf_dir())))
    master = loader.load_configuration(
        "config", overrides=["hydra/launcher=batched", "hydra.sweeper.n_jobs=4"], run_mode=RunMode.MULTIRUN
    )
    return loader, master


def _trial(threshold: float, lr: float, number: int, *extra: str) -> list[str]:
    """Overrides as the sweep writes them: searched values, the trial's plumbing, the threads."""
    return [
        *extra, f"clip.threshold={threshold}", f"optim.lr={lr}",
        f"hydra.job.env_set.CLIPSWEEP_TRIAL_ID={number}", f"++hydra.job.env_set.CLIPSWEEP_EXTRA={number}",
        f"hydra.sweep.dir=/tmp/sweep-{number}", "train.threads=1",
    ]  # fmt: skip


def test_trial_configs_short_path_equals_hydras_composition(loader_and_master) -> None:
    loader, master = loader_and_master
    composer = TrialComposer(loader, master)
    trials = [
        _trial(0.5, 0.01, 0),
        _trial(2.0, 0.3, 1),  # same structure: the short path
        ["clip=zclip", "clip.alpha=0.9", "optim.lr=0.1", "hydra.sweep.dir=/tmp/z0"],  # a new group choice
        ["clip=zclip", "clip.alpha=0.8", "optim.lr=0.2", "hydra.sweep.dir=/tmp/z1"],  # short path again
        _trial(0.05, 0.001, 2, "model=gru"),
        _trial(0.07, 0.002, 3, "model=gru"),
        _trial(7.0, 0.02, 4),  # back to the first structure
    ]
    for overrides in trials:
        ours, hydras = composer(overrides), loader.load_sweep_config(master, list(overrides))
        assert OmegaConf.to_container(ours, resolve=False) == OmegaConf.to_container(hydras, resolve=False)
        assert OmegaConf.is_struct(ours) and OmegaConf.is_struct(hydras)
    assert len(composer._bases) == 3  # three structures composed by Hydra, four trials copied


def test_trial_configs_other_overrides_go_to_hydra(loader_and_master) -> None:
    loader, master = loader_and_master
    composer = TrialComposer(loader, master)
    others = (["train.steps=5", "+train.extra=1"], ["train.steps=5", "+train.extra=2"], ["++train.extra={a: 1}"])
    for overrides in others:  # an added key, and a dict value: Hydra composes them every time
        assert composer._structure(composer._parser.parse_overrides(overrides)) is None  # composed by Hydra
        ours, hydras = composer(overrides), loader.load_sweep_config(master, list(overrides))
        assert OmegaConf.to_container(ours, resolve=False) == OmegaConf.to_container(hydras, resolve=False)
    assert composer._bases == {}
