"""Real sweeps: a SQLite Optuna storage, a local MLflow store, the real conf/, the CLI as users run it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from conftest import TINY, load_study, mlflow_runs, run_sweep, with_pythonpath
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from clipsweep.names import CONFIG_ATTR, NORMS_ATTR, PARENT_RUN_ATTR, REPEAT_OF_ATTR
from clipsweep.recommend import recommend
from clipsweep.trials import rows

pytestmark = pytest.mark.slow

FAULTY_MODEL = """
import torch
from clipsweep.models import RNNModel


class FaultyModel(RNNModel):
    '''An RNNModel that fails on purpose: mode raise (an exception), nans (NaN outputs).'''

    def __init__(self, mode="ok", **kwargs):
        super().__init__(**kwargs)
        self.mode = mode

    def forward(self, x):
        if self.mode == "raise":
            raise RuntimeError("boom from the model")
        out = super().forward(x)
        return out * float("nan") if self.mode == "nans" else out
"""


def _faulty_setup(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "faulty_model.py").write_text(FAULTY_MODEL)
    (tmp_path / "mine" / "model").mkdir(parents=True)
    (tmp_path / "mine" / "model" / "faulty.yaml").write_text(
        "_target_: faulty_model.FaultyModel\nmode: ok\ncell: lstm\nhidden_size: 8\nnum_layers: 1\ndropout: 0.0\n"
    )
    return with_pythonpath(tmp_path)


def test_sweep_repeat_of_a_completed_trial_is_told_its_values_and_trains_nothing(tmp_path: Path) -> None:
    # A one-point space: the random sampler asks for the same config three times; one run trains it.
    done = run_sweep(tmp_path, "search=none", "clip.threshold=choice(0.5)", "hydra/sweeper/sampler=random",
                     "hydra.sweeper.n_trials=3", "hydra.sweeper.study_name=rep")  # fmt: skip
    assert "trial 1 repeats trial 0: told its values" in done.stdout and "trial 2 repeats trial 0" in done.stdout
    assert "top 1 of 1 completed trials (2 repeats left out):" in done.stdout
    trials = load_study(tmp_path, "rep").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 and len({t.value for t in trials}) == 1
    assert [t.user_attrs.get(REPEAT_OF_ATTR) for t in trials] == [None, 0, 0]
    assert CONFIG_ATTR in trials[0].user_attrs and all(CONFIG_ATTR not in t.user_attrs for t in trials[1:])
    listed = rows(load_study(tmp_path, "rep"), ["value"])  # clipsweep trials
    assert [(r["outcome"], r["reason"]) for r in listed] == [("completed", "")] + [
        ("repeat (not trained)", "repeats trial 0")
    ] * 2
    _, runs = mlflow_runs(tmp_path)
    trial_runs = [r for r in runs if r.data.tags.get("clipsweep.role") != "sweep"]
    assert [r.data.tags["clipsweep.trial_number"] for r in trial_runs] == ["0"] and len(runs) == 2


def test_sweep_records_study_parent_and_child_runs_and_results(tmp_path: Path) -> None:
    done = run_sweep(tmp_path, "hydra.sweeper.n_trials=4", "hydra.sweeper.study_name=s1", "hydra.sweeper.seed=1")
    assert "[clipsweep] trials 4/4 done" in done.stdout and "top 4 of 4 completed trials" in done.stdout
    assert "pruner MedianPruner (asked after 33% of each trial's steps)" in done.stdout
    assert "#3 : " in done.stdout + done.stderr and "env_set" not in done.stdout + done.stderr  # no plumbing echoed

    study = load_study(tmp_path, "s1")
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert all(set(t.params) == {"clip.threshold", "optim.lr"} for t in trials)
    assert all(0.01 <= t.params["clip.threshold"] <= 10 for t in trials)

    client, runs = mlflow_runs(tmp_path)
    parents = [r for r in runs if r.data.tags.get("clipsweep.role") == "sweep"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.tags["clipsweep.study"] == "s1"
    assert parent.info.run_name.startswith("sweep-s1-") and "-p" in parent.info.run_name  # workers differ
    assert parent.data.tags["clipsweep.sampler"] == "TPESampler"
    assert parent.data.tags["clipsweep.pruner"] == "MedianPruner"
    assert "search.clip.threshold" in parent.data.params
    assert parent.data.params["pruning_warmup"] == "0.33"  # what decided the pruned trials, beside them
    assert parent.data.metrics["best/value"] == pytest.approx(study.best_value)
    assert parent.data.tags["clipsweep.best_trial_number"] == str(study.best_trial.number)
    assert float(parent.data.params["best.clip.threshold"]) == pytest.approx(study.best_params["clip.threshold"])
    assert "plots" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {
        "plots/optimization_history.png",
        "plots/objective_vs_threshold.png",
        "plots/param_importances.png",
        "plots/parallel_coordinate.png",
    } <= plots

    children = {r.info.run_id: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert len(children) == 4
    for trial in trials:
        child = children[trial.user_attrs["mlflow_run_id"]]
        assert child.info.run_name == f"trial-{trial.number}"
        assert child.data.tags["clipsweep.trial_number"] == str(trial.number)
        assert child.data.tags["clipsweep.trial_state"] == "COMPLETE"
        assert child.data.params["train.steps"] == "20"  # fixed overrides reach every trial
        assert float(child.data.params["clip.threshold"]) == pytest.approx(trial.params["clip.threshold"])
        assert child.data.metrics["val/loss"] == pytest.approx(trial.value)
        assert sorted(trial.intermediate_values) == [5, 10, 15, 20]

    results_file = next(tmp_path.glob("multirun/*/*/optimization_results.yaml"))
    results = yaml.safe_load(results_file.read_text())
    assert results["study_name"] == "s1" and results["best_trial_number"] == study.best_trial.number
    assert results["best_value"] == pytest.approx(study.best_value)
    assert results["best_config"]["clip"]["threshold"] == pytest.approx(study.best_params["clip.threshold"])
    assert results["best_config"]["train"]["steps"] == 20
    assert results["best_config"]["tracking"]["uri"] == "sqlite:///mlflow.db"  # resolved, not ${oc.env:...}

    # The sweep ends with a recommendation over the stored norms and an exported clip group file.
    assert all(NORMS_ATTR in t.user_attrs and t.user_attrs[CONFIG_ATTR]["train"]["steps"] == 20 for t in trials)
    assert "[clipsweep] recommended: clip=norm clip.threshold=" in done.stdout
    exported = results_file.parent / "clip" / "best.yaml"
    assert "exported the recommended config" in done.stdout and str(exported.relative_to(tmp_path)) in done.stdout
    recommendation = recommend(study)
    assert yaml.safe_load(exported.read_text())["clip"] == recommendation.clip
    # The file's own reproduce line is the command the sweep printed: it finds the file where it lies.
    printed = done.stdout.split("train with it: ")[1].splitlines()[0]
    assert f"# reproduce: {printed}\n" in exported.read_text() and "--config-dir multirun/" in printed
    assert parent.data.metrics["recommend/threshold"] > 0
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "recommendation")}
    assert logged == {"recommendation/recommendation.json", "recommendation/grad_norms.png"}
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "export")] == ["export/best.yaml"]
    assert load_study(tmp_path, "s1").user_attrs[PARENT_RUN_ATTR] == parent.info.run_id


def test_sweep_multi_objective_keeps_each_objective_and_reports_its_pareto_front(tmp_path: Path) -> None:
    done = run_sweep(
        tmp_path, "hydra.sweeper.study_name=mo", "hydra.sweeper.n_trials=3", "search=threshold",
        "hydra.sweeper.direction=[minimize,maximize]", "hydra.sweeper.objective=[val/loss,train/loss]",
    )  # fmt: skip
    assert "pruner MedianPruner unused (Optuna cannot prune multi-objective trials)" in done.stdout
    study = load_study(tmp_path, "mo")
    assert [d.name for d in study.directions] == ["MINIMIZE", "MAXIMIZE"] and study.metric_names == [
        "val/loss", "train/loss",
    ]  # fmt: skip
    client, _ = mlflow_runs(tmp_path)
    for trial in study.trials:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert trial.values == pytest.approx([run.data.metrics["val/loss"], run.data.metrics["train/loss"]])
    front = sorted(t.number for t in study.best_trials)
    assert f"multi-objective: no single recommendation; the Pareto front is trials {front}" in done.stdout
    results = yaml.safe_load(next(tmp_path.glob("multirun/*/*/optimization_results.yaml")).read_text())
    assert sorted(s["number"] for s in results["solutions"]) == front
    assert not list(tmp_path.glob("multirun/*/*/clip/best.yaml"))  # nothing exported as if it were one best


def test_sweep_resume_reaches_exactly_n_trials(tmp_path: Path) -> None:
    common = ("hydra.sweeper.study_name=resume", "tracking.enabled=false", "search=threshold")
    run_sweep(tmp_path, "hydra.sweeper.n_trials=2", *common)
    done = run_sweep(tmp_path, "hydra.sweeper.n_trials=5", *common)
    assert "2/5 trials already there" in done.stdout
    assert "recommended: clip=norm" in done.stdout  # over 5 trials now, not the 2 concluded before
    again = run_sweep(tmp_path, "hydra.sweeper.n_trials=5", *common)  # already full: runs nothing
    assert "recommendation over these 5 trials already made\n" in again.stdout
    assert "recommended:" not in again.stdout
    trials = load_study(tmp_path, "resume").get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert all(t.state == TrialState.COMPLETE for t in trials)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run by the device benchmark)")
def test_sweep_on_a_cuda_device_completes_and_records_its_trials(tmp_path: Path) -> None:
    """The sweeps above run on the CPU wherever the suite runs (TINY); this one is the device path end to
    end: trials train on CUDA, report, record their norms and MLflow runs, and the sweep recommends."""
    done = run_sweep(tmp_path, "hydra.sweeper.n_trials=2", "hydra.sweeper.study_name=gpu", "train.device=cuda")
    trials = load_study(tmp_path, "gpu").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert all(t.user_attrs[CONFIG_ATTR]["train"]["device"] == "cuda" and t.user_attrs[NORMS_ATTR] for t in trials)
    _, runs = mlflow_runs(tmp_path)
    children = [r for r in runs if "clipsweep.trial_number" in r.data.tags]
    assert len(children) == 2 and all(r.data.params["train.device"] == "cuda" for r in children)
    assert "recommended: clip=norm" in done.stdout


def test_sweep_prunes_hopeless_trials_from_their_intermediate_values(tmp_path: Path) -> None:
    args = (
        "hydra.sweeper.study_name=prune", "search=threshold", "optim.lr=choice(0.05,0.00001)",
        "hydra.sweeper.n_trials=2", "clip.threshold=choice(1.0)", "hydra.sweeper.pruner.n_startup_trials=1",
        "hydra.sweeper.enqueue=[{optim.lr:0.05},{optim.lr:0.00001}]",
    )  # fmt: skip
    run_sweep(tmp_path, *args)
    trials = load_study(tmp_path, "prune").get_trials()
    assert [t.params["optim.lr"] for t in trials] == [0.05, 0.00001]
    assert trials[0].state == TrialState.COMPLETE
    pruned = trials[1]
    assert pruned.state == TrialState.PRUNED
    assert sorted(pruned.intermediate_values) == [5, 10]  # asked from 10 on: pruning_warmup 0.33 x 20 steps
    assert pruned.user_attrs["clipsweep.status"] == "stopped"
    client, _ = mlflow_runs(tmp_path)
    run = client.get_run(pruned.user_attrs["mlflow_run_id"])
    assert run.data.tags["clipsweep.trial_state"] == "PRUNED" and run.info.status == "KILLED"  # not "Finished"
    assert run.data.tags["clipsweep.status"] == "stopped"


def test_sweep_prunes_across_processes_with_the_joblib_launcher(tmp_path: Path) -> None:
    # ThresholdPruner(upper=0) prunes any trial the first time it is asked: deterministic, so what this
    # checks is that reports, the warm-up and the pruner's answer cross from the joblib worker processes.
    args = (
        "hydra/launcher=joblib", "hydra.sweeper.n_jobs=2", "hydra.sweeper.study_name=jl", "search=threshold",
        "hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.upper=0.0", "hydra.sweeper.n_trials=2",
    )  # fmt: skip
    run_sweep(tmp_path, *args)
    trials = load_study(tmp_path, "jl").get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    client, _ = mlflow_runs(tmp_path)
    for trial in trials:
        # Reported from a worker process at 5 (inside pruning_warmup: a third of 20 steps), stopped at 10.
        assert list(trial.intermediate_values) == [5, 10]
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.tags["clipsweep.trial_state"] == "PRUNED"
        assert run.data.tags["clipsweep.steps_done"] == "10"


def test_sweep_survives_raising_nan_and_diverging_trials(tmp_path: Path) -> None:
    env = _faulty_setup(tmp_path)
    done = run_sweep(
        tmp_path, "--config-dir", "mine", "model=faulty", "hydra.sweeper.study_name=faults",
        "hydra/sweeper/pruner=none", "search=none", "model.mode=choice(ok,raise,nans)",
        "hydra.sweeper.enqueue=[{model.mode:ok},{model.mode:raise},{model.mode:nans}]",
        "hydra.sweeper.n_trials=3", "hydra.sweeper.max_failure_rate=1.0",  # a retry of the raising one may fail too
        "hydra.sweeper.seed=0",  # which modes TPE draws after the enqueued three (failures are redrawn) is fixed
        env=env,
    )  # fmt: skip
    by_mode = {t.params["model.mode"]: t for t in load_study(tmp_path, "faults").get_trials()}
    assert by_mode["ok"].state == TrialState.COMPLETE
    assert by_mode["raise"].state == TrialState.FAIL
    assert "RuntimeError: boom from the model" in by_mode["raise"].user_attrs["clipsweep.fail_reason"]
    assert by_mode["nans"].state == TrialState.PRUNED  # diverged: never told as a number
    assert by_mode["nans"].user_attrs["clipsweep.status"] == "diverged"
    assert "failed 1" in done.stdout

    client, _ = mlflow_runs(tmp_path)
    failed_run = client.get_run(by_mode["raise"].user_attrs["mlflow_run_id"])
    assert failed_run.info.status == "FAILED"


def test_sweep_diverging_learning_rate_is_pruned_not_a_number(tmp_path: Path) -> None:
    args = ("hydra.sweeper.study_name=div", "hydra/sweeper/sampler=grid", "search=none", "clip=none",
            "optim=sgd", "optim.lr=choice(1e4)", "model.hidden_size=16", "hydra.sweeper.n_trials=1",
            "tracking.enabled=false")  # fmt: skip
    run_sweep(tmp_path, *args)
    (trial,) = load_study(tmp_path, "div").get_trials()
    assert trial.state == TrialState.PRUNED and trial.user_attrs["clipsweep.status"] == "diverged"


def test_sweep_stops_at_max_failure_rate_with_a_message(tmp_path: Path) -> None:
    env = _faulty_setup(tmp_path)
    done = run_sweep(
        tmp_path, "--config-dir", "mine", "model=faulty", "model.mode=raise", "hydra.sweeper.study_name=allfail",
        "hydra.sweeper.n_trials=8", "hydra.sweeper.max_failure_rate=0.25", "tracking.enabled=false",
        env=env, returncode=1,
    )  # fmt: skip
    assert "sweep failed: 3 failed trials exceed max_failure_rate (2 of n_trials=8)" in done.stdout
    assert "no completed trial yet" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    # Exit code 1 and the reason, so a pipeline can tell a failed sweep from a good one.
    assert "3 trial(s): RuntimeError" in done.stderr
    assert len(load_study(tmp_path, "allfail").get_trials()) == 3


def test_sweep_conditional_preset_searches_each_method_parameter_only_where_it_applies(tmp_path: Path) -> None:
    run_sweep(tmp_path, "search=method_threshold", "hydra/sweeper/sampler=random", "hydra.sweeper.seed=3",
           "hydra/sweeper/pruner=none",
           "hydra.sweeper.n_trials=6", "hydra.sweeper.study_name=cond", "tracking.enabled=false")  # fmt: skip
    own = {"norm": {"clip.threshold"}, "value": {"clip.threshold"}, "percentile": {"clip.percentile"},
           "zclip": {"clip.z_threshold"}, "none": set()}  # fmt: skip
    trials = load_study(tmp_path, "cond").get_trials()
    assert len(trials) == 6 and len({t.params["clip"] for t in trials}) >= 3
    for trial in trials:
        assert trial.state == TrialState.COMPLETE, trial.user_attrs
        assert set(trial.params) == {"clip"} | own[trial.params["clip"]]


def test_run_multirun_spelling_uses_the_sweeper(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "clipsweep", "run", "--multirun", *TINY, "search=threshold",
         "hydra/sweeper/sampler=grid", "clip.threshold=0.5,2.0", "hydra.sweeper.n_trials=2",
         "hydra.sweeper.study_name=m"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(t.params["clip.threshold"] for t in load_study(tmp_path, "m").get_trials()) == [0.5, 2.0]


def test_two_sweep_processes_on_one_storage_finish_exactly_n_trials(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "clipsweep", "sweep", *TINY, "hydra.sweeper.study_name=shared",
               "hydra.sweeper.n_trials=8", "tracking.enabled=false", "search=threshold",
               "hydra/sweeper/pruner=none"]  # fmt: skip
    workers = [
        subprocess.Popen([*command, f"hydra.sweep.dir=multirun/w{i}"], cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]  # fmt: skip
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    assert "database is locked" not in "".join(outputs)
    trials = load_study(tmp_path, "shared").get_trials()
    real = [t for t in trials if not t.user_attrs.get("clipsweep.surplus")]
    assert len(real) == 8 and all(t.state == TrialState.COMPLETE for t in real)
    assert len({t.number for t in trials}) == len(trials)
    assert all(t.state == TrialState.FAIL for t in trials if t.user_attrs.get("clipsweep.surplus"))


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_sweep_killed_mid_trial_is_failed_by_heartbeat_and_retried(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    env: dict[str, str] = {}
    storage, client = f"sqlite:///{tmp_path / 'clipsweep.db'}", None
    if backend == "postgres":  # the stack: PostgreSQL storage and an MLflow server read over HTTP
        storage = request.getfixturevalue("postgres_url")
        server = request.getfixturevalue("mlflow_server")
        env = {"CLIPSWEEP_STORAGE": storage, "MLFLOW_TRACKING_URI": server}
        client = MlflowClient(tracking_uri=server)
    common = (f"hydra.sweeper.study_name=killed-{backend}", "search=threshold", "hydra/sweeper/pruner=none",
              "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3",
              "hydra.sweeper.n_trials=2")  # fmt: skip
    victim = subprocess.Popen(
        [sys.executable, "-m", "clipsweep", "sweep", *TINY, *common, "train.steps=1000000", "train.eval_every=1000000"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, **env},
    )  # fmt: skip
    deadline, running = time.time() + 120, None
    while time.time() < deadline and running is None:
        time.sleep(0.5)
        try:
            trials = optuna.load_study(study_name=f"killed-{backend}", storage=storage).get_trials()
        except KeyError:
            continue
        if trials and trials[0].state == TrialState.RUNNING and "mlflow_run_id" in trials[0].user_attrs:
            running = trials[0]
    assert running is not None, "the first trial never started"
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)

    done = run_sweep(tmp_path, *common, env=env)
    trials = optuna.load_study(study_name=f"killed-{backend}", storage=storage).get_trials()
    assert trials[0].state == TrialState.FAIL
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 2, done.stdout[-2000:]
    assert [t.system_attrs.get("failed_trial") for t in complete].count(0) == 1  # trial 0, retried
    client = client or mlflow_runs(tmp_path)[0]
    dead_run = client.get_run(running.user_attrs["mlflow_run_id"])
    assert dead_run.info.status == "KILLED"
    assert dead_run.data.tags["clipsweep.trial_state"] == "FAIL (stale heartbeat)"


def test_hydra_plugin_module_imports_no_heavy_package() -> None:
    # Hydra imports every hydra_plugins module at the start of any Hydra app installed beside clipsweep.
    code = (
        "import sys, hydra_plugins.clipsweep_sweeper.clipsweep_sweeper, "
        "hydra_plugins.clipsweep_sweeper.clipsweep_batched_launcher; "
        "print(sorted({'torch', 'optuna', 'mlflow'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
