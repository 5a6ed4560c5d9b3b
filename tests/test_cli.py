"""``clipsweep run`` end to end: real Hydra composition, real training, a real MLflow SQLite store."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SWEPT_STUDY, free_port
from mlflow.tracking import MlflowClient

from clipsweep.cli import main
from clipsweep.composition import conf_dir

FAST = ("model.hidden_size=16", "task.seq_len=12", "task.val_size=64", "train.batch_size=8", "train.device=cpu")


def _clipsweep(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clipsweep", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def _only_run(store: Path):
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("clipsweep")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


@pytest.mark.slow
def test_cli_run_multirun_with_the_basic_sweeper_runs_hydras_grid(tmp_path: Path) -> None:
    """Hydra's own grid: one plain run per value, no study; the default search preset is left out."""
    done = _clipsweep(tmp_path, "run", "--multirun", *FAST, "train.steps=10", "clip.threshold=0.1,0.3",
                      "hydra/sweeper=basic")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("status: finished after 10 steps") == 2
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("clipsweep").experiment_id])
    assert sorted(r.data.params["clip.threshold"] for r in runs) == ["0.1", "0.3"]
    assert not (tmp_path / "clipsweep.db").exists()


def test_cli_run_records_metrics_params_and_artifacts_in_mlflow(tmp_path: Path) -> None:
    args = (*FAST, "train.steps=60", "train.eval_every=30", "tracking.log_every=20", "clip.threshold=0.05")
    done = _clipsweep(tmp_path, "run", *args)
    assert done.returncode == 0, done.stderr
    assert "status: finished after 60 steps" in done.stdout
    assert "grad norm: p50" in done.stdout and "tracking: MLflow run" in done.stdout
    progress = [line for line in done.stdout.splitlines() if line.startswith("[run] step ")]
    assert [p.split(" | ")[0] for p in progress] == ["[run] step 30/60", "[run] step 60/60"]  # live, one per eval
    assert all("val/loss" in p and "ETA" in p for p in progress)

    client, run = _only_run(tmp_path / "mlflow.db")
    assert run.info.status == "FINISHED"
    # The UI opens the experiment on its runs table (model training), not on MLflow 3's GenAI view.
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.data.tags["clipsweep.status"] == "finished"
    assert run.data.params["clip.threshold"] == "0.05" and run.data.params["model.cell"] == "lstm"
    steps_file = Path(client.download_artifacts(run.info.run_id, "telemetry/steps.csv", str(tmp_path)))
    table = np.genfromtxt(steps_file, delimiter=",", names=True, deletechars="")
    np.testing.assert_array_equal(table["step"], np.arange(60))
    norms, clipped = table["grad/norm"], table["grad/clipped"]
    np.testing.assert_allclose(table["grad/threshold"], 0.05, rtol=1e-6)
    np.testing.assert_array_equal(clipped, norms > 0.05)
    np.testing.assert_allclose(table["grad/norm_clipped"], np.minimum(norms, 0.05), rtol=1e-6)

    def history(key: str) -> dict[int, float]:
        return {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}

    # Window statistics every log_every (20) steps, stamped with the window's last step.
    assert list(history("grad/norm")) == [19, 39, 59]
    for end in (19, 39, 59):
        window = slice(end - 19, end + 1)
        assert history("grad/norm")[end] == pytest.approx(norms[window].mean(), rel=1e-6)
        assert history("grad/norm_peak")[end] == pytest.approx(norms[window].max(), rel=1e-6)
        assert history("grad/clipped")[end] == pytest.approx(clipped[window].mean())
        assert history("train/loss")[end] == pytest.approx(table["train/loss"][window].mean(), rel=1e-6)
        assert history("grad/nonfinite")[end] == 0
    assert list(history("val/loss")) == [30, 60]
    for layer in ("rnn.l0", "head"):
        assert list(history(f"grad/norm/{layer}")) == [0, 20, 40]

    summary = run.data.metrics
    relative_error = 10 ** (0.5 / 100) - 1
    for q in (50, 90, 99):
        assert summary[f"grad/norm_p{q}"] == pytest.approx(np.percentile(norms, q), rel=relative_error * 1.0001)
    assert summary["grad/norm_max"] == pytest.approx(norms.max(), rel=1e-6)
    assert summary["grad/clip_fraction"] == pytest.approx(clipped.mean())
    assert summary["grad/nonfinite_steps"] == 0

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "telemetry"} <= artifacts
    local = Path(client.download_artifacts(run.info.run_id, "telemetry/grad_norm_histogram.json", str(tmp_path)))
    assert json.loads(local.read_text())["count"] == 60
    png = Path(client.download_artifacts(run.info.run_id, "telemetry/grad_norm_histogram.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_console_script_trains_a_classification_task(tmp_path: Path) -> None:
    script = shutil.which("clipsweep") or str(Path(sys.executable).with_name("clipsweep"))
    done = subprocess.run(
        [script, "run", "task=digits", "model=gru", "clip=value", "clip.threshold=0.5", "optim=sgd", "train.steps=30",
         "train.eval_every=30", "model.hidden_size=16", "tracking.enabled=false"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "val/accuracy" in done.stdout and "tracking disabled" in done.stdout
    assert not (tmp_path / "mlflow.db").exists()


def test_cli_user_model_and_text_csv_from_config_dir(tmp_path: Path, text_csv: Path) -> None:
    (tmp_path / "mine" / "model").mkdir(parents=True)
    # The user's own package is called `models`, as clipsweep's source directory is: the install puts
    # clipsweep's under `clipsweep.models`, so `_target_: models.tiny.TinyModel` is the user's.
    (tmp_path / "mine" / "model" / "tiny.yaml").write_text("_target_: models.tiny.TinyModel\nwidth: 8\n")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("")
    (tmp_path / "models" / "tiny.py").write_text(
        "import torch\n"
        "class TinyModel(torch.nn.Module):\n"
        "    def __init__(self, input_size, output_size, sequence_output, vocab_size, width):\n"
        "        super().__init__()\n"
        "        self.embed = torch.nn.EmbeddingBag(vocab_size, width)\n"
        "        self.head = torch.nn.Linear(width, output_size)\n"
        "    def forward(self, x):\n"
        "        return self.head(self.embed(x))\n"
    )
    args = ("--config-dir", "mine", "model=tiny", "task=text_csv", f"task.path={text_csv}",
            "task.text_column=comment_text", "task.label_column=toxic",
            "train.steps=20", "train.eval_every=10")  # fmt: skip
    # The console script, no PYTHONPATH: the working directory's modules import as with `python -m`.
    script = shutil.which("clipsweep") or str(Path(sys.executable).with_name("clipsweep"))
    done = subprocess.run([script, "run", *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    _, run = _only_run(tmp_path / "mlflow.db")
    assert run.data.params["model._target_"] == "models.tiny.TinyModel"
    assert 0.0 <= run.data.metrics["val/accuracy"] <= 1.0


def test_cli_diverged_run_exits_0_and_is_recorded(tmp_path: Path) -> None:
    done = _clipsweep(tmp_path, "run", "optim=sgd", "optim.lr=1.0", "clip=none", "train.steps=400")
    assert done.returncode == 0, done.stderr
    assert "DIVERGED" in done.stdout
    _, run = _only_run(tmp_path / "mlflow.db")
    assert run.data.tags["clipsweep.status"] == "diverged"
    assert run.info.status == "FAILED"  # not the green "Finished" of a run that trained
    assert run.data.metrics["grad/nonfinite_steps"] > 0


def _stored(*args: str, named: str) -> Any:
    """A case that runs beside a copy of a finished sweep's stores (study ``cmd``) and a file ``taken.yaml``."""
    return pytest.param(list(args), named, True, id=" ".join(args))


def _fresh(*args: str, named: str) -> Any:
    return pytest.param(list(args), named, False, id=" ".join(args))


# Every command's bad input: (command line, what its one line must name, whether it needs stored results).
BAD_INPUT = [
    # run: a bad group, key or value, found by composition, by the typed schema or by a constructor
    _fresh("run", "model=transformer", named="model/transformer"),
    _fresh("run", "task=mnist", named="task/mnist"),
    _fresh("run", "clip=clipx", named="clip/clipx"),
    _fresh("run", "train.stpes=10", named="train.stpes"),
    _fresh("run", "clip.threshold=0", named="clip.threshold=0.0"),
    _fresh("run", "clip.threshold=-1", named="clip.threshold=-1.0"),
    _fresh("run", "clip=percentile", "clip.percentile=0", named="clip.percentile=0.0"),
    _fresh("run", "clip=percentile", "clip.percentile=100.5", named="clip.percentile=100.5"),
    _fresh("run", "optim.lr=-0.1", named="optim.lr=-0.1"),
    _fresh("run", "train.steps=0", named="train.steps=0"),
    _fresh("run", "task=text_csv", "task.path=missing.csv", named="task.path='missing.csv'"),
    _fresh("run", "train.precision=bf15", named="train.precision='bf15'"),
    _fresh("run", "train.precision=16", "train.device=cpu", named="train.precision='16'"),
    _fresh("run", "train.device=tpu", named="train.device='tpu'"),
    _fresh("run", "tracking.uri=http://127.0.0.1:{port}", named="tracking.uri="),
    _fresh("run", "tracking.uri=sqlite:///no/such/dir/mlflow.db", named="tracking.uri="),
    # sweep: the whole plan (search space, sampler, pruner, objective, storage, output) before the first trial
    _fresh("sweep", "hydra/sweeper/sampler=annealing", named="hydra/sweeper/sampler/annealing"),
    _fresh("sweep", "hydra/sweeper/pruner=patient", named="hydra/sweeper/pruner/patient"),
    _fresh("sweep", "search=none", named="hydra.sweeper.params"),
    _fresh("sweep", "clip.threshold=interval(5, 1)", named="low <= high"),
    _fresh("sweep", "clip.threshold=tag(log, interval(0, 1))", named="low > 0"),
    _fresh("sweep", "hydra.sweeper.direction=up", named="hydra.sweeper.direction='up'"),
    _fresh("sweep", "hydra.sweeper.direction=[minimize,maximize]", named="hydra.sweeper.objective"),
    _fresh("sweep", "hydra.sweeper.n_trials=0", named="hydra.sweeper.n_trials=0"),
    _fresh("sweep", "hydra.sweeper.max_failure_rate=2", named="hydra.sweeper.max_failure_rate"),
    _fresh("sweep", "hydra.sweeper.pruning_warmup=1.5", named="hydra.sweeper.pruning_warmup=1.5"),
    _fresh(
        "sweep", "hydra.sweeper.storage=postgresql://clipsweep:secret@127.0.0.1:1/none", named="hydra.sweeper.storage="
    ),
    _fresh("sweep", "hydra.sweeper.storage=sqlite:///no/such/dir/x.db", named="hydra.sweeper.storage="),
    _stored(
        "sweep",
        f"hydra.sweeper.study_name={SWEPT_STUDY}",
        "hydra.sweeper.direction=maximize",
        named="hydra.sweeper.direction=['maximize'] is not allowed",
    ),
    _stored(
        "sweep",
        f"hydra.sweeper.study_name={SWEPT_STUDY}",
        "hydra.sweeper.objective=train/loss",
        named="hydra.sweeper.objective=['train/loss'] is not allowed: the stored study 'cmd''s objective ['val/loss']",
    ),
    _fresh("sweep", "hydra/sweeper/sampler=grid", named="hydra.sweeper.sampler='grid'"),
    _fresh(
        "sweep", "clip.threshold=-1", "search=threshold", "optim.lr=interval(0.01, 0.1)", named="clip.threshold=-1.0"
    ),
    # a searched key the composed config lacks would fail every trial that samples it
    _fresh("sweep", "clip=none", "optim.lr=interval(500, 5000)", named="hydra.sweeper.params.clip.threshold="),
    _fresh(
        "sweep",
        "search=none",
        "clip=choice(norm,value,percentile)",
        "clip.threshold=interval(0.1, 1)",
        named="a key of the config with clip=percentile",
    ),
    _fresh(
        "sweep",
        "search=none",
        "model=choice(lstm,transformer)",
        "optim.lr=interval(0.01, 0.1)",
        named="model=transformer",
    ),
    _fresh("sweep", "hydra.sweep.dir=/proc/nope", named="hydra.sweep.dir='/proc/nope'"),
    _fresh(  # nothing answers on port 9 here: Ray itself would retry it for minutes
        "sweep",
        "hydra/launcher=ray",
        "+hydra.launcher.ray.init.address=127.0.0.1:9",
        named="hydra.launcher.ray.init.address='127.0.0.1:9'",
    ),
    _fresh(
        "sweep", "hydra.sweeper.objective=val/acc", named="a metric the job reports: one of ["
    ),  # adding: no accuracy
    pytest.param(
        ["sweep", "hydra/sweeper/sampler=cmaes"],
        "(pip install cmaes)",
        False,
        marks=pytest.mark.skipif(importlib.util.find_spec("cmaes") is not None, reason="cmaes is installed"),
    ),
    # init: what sweep checks, and a name the workers share
    _fresh("init", named="hydra.sweeper.study_name=None"),
    _fresh("init", "hydra.sweeper.study_name=big", "hydra.sweeper.n_trials=-3", named="hydra.sweeper.n_trials=-3"),
    _fresh("init", "hydra.sweeper.study_name=big", "hydra/sweeper/sampler=grid", named="hydra.sweeper.sampler='grid'"),
    _stored(
        "init",
        f"hydra.sweeper.study_name={SWEPT_STUDY}",
        "hydra.sweeper.direction=maximize",
        named="hydra.sweeper.direction=['maximize'] is not allowed",
    ),
    # recommend / export / report / trials: a stored study, and the flags that shape what they derive
    _stored(
        "recommend", "--study", "nope", named="--study='nope' is not allowed: a study in sqlite:///clipsweep.db: one of"
    ),
    _fresh("recommend", named="--storage='sqlite:///clipsweep.db' is not allowed: an existing storage: no such file"),
    _stored("recommend", "--study", SWEPT_STUDY, "--tolerance", "1.5", named="--tolerance=1.5"),
    _stored("recommend", "--study", SWEPT_STUDY, "--bandwidth", "0", named="--bandwidth=0.0"),
    _stored("recommend", "--study", SWEPT_STUDY, "--percentile", "0", named="--percentile=0.0"),
    _stored("recommend", "--study", SWEPT_STUDY, "--validate", "-1", named="--validate=-1"),
    _stored("recommend", "--study", SWEPT_STUDY, "--objective", "val/acc", named="--objective='val/acc'"),
    _stored(
        "recommend", "--study", SWEPT_STUDY, "--validate", "two", named="argument --validate: invalid int value: 'two'"
    ),
    _stored("export", "--study", SWEPT_STUDY, "--out", "taken.yaml", named="--out='taken.yaml' is not allowed"),
    _stored("export", "--run-id", "0123456789abcdef", named="--run-id='0123456789abcdef' is not allowed"),
    _stored("export", "--study", SWEPT_STUDY, "--format", "toml", named="argument --format: invalid choice: 'toml'"),
    _stored("export", "--study", SWEPT_STUDY, "--which", "median", named="argument --which: invalid choice: 'median'"),
    _stored("export", "--study", SWEPT_STUDY, "--out", "taken.yaml/best.yaml", named="taken.yaml is not a directory"),
    _stored("export", "--study", SWEPT_STUDY, "--out", "/proc/clip/best.yaml", named="--out='/proc/clip/best.yaml'"),
    _stored(
        "report",
        "--study",
        SWEPT_STUDY,
        "--storage",
        "sqlite:///missing.db",
        named="no such file (run clipsweep sweep first)",
    ),
    _stored(
        "report", "--study", SWEPT_STUDY, "--png", "taken.yaml/f.png", named="--png='taken.yaml/f.png' is not allowed"
    ),
    _stored("report", "--study", SWEPT_STUDY, "--top", "0", named="--top=0"),
    _stored("trials", "--study", "nope", named="--study='nope' is not allowed"),
    _stored("trials", "--study", SWEPT_STUDY, "--format", "xml", named="argument --format: invalid choice: 'xml'"),
    # ui / dashboard: a store that is not there is not created (a wrong directory is not "no results")
    # The store given: were the environment's MLFLOW_TRACKING_URI a server, `ui` would exec in place of pytest.
    _fresh("ui", "--tracking-uri", "sqlite:///mlflow.db", named="--tracking-uri='sqlite:///mlflow.db' is not allowed"),
    _fresh("dashboard", "--storage", "journal:j.log", named="--storage='journal:j.log' is not allowed: an existing"),
    # calibrate: its own settings, and the run's config as run checks it
    _fresh("calibrate", "--budget", "0", named="--budget=0.0"),
    _fresh("calibrate", "--grid", "1", named="--grid=1"),
    _fresh("calibrate", "--eta", "1", named="--eta=1"),
    _fresh("calibrate", "--pilot-share", "1.5", named="--pilot-share=1.5"),
    _fresh("calibrate", "--objective", "val/acc", named="--objective='val/acc'"),
    _fresh("calibrate", "model=transformer", named="model/transformer"),
    _fresh("calibrate", "train.steps=0", named="train.steps=0"),
    _stored("calibrate", "--out", "taken.yaml", named="--out='taken.yaml' is not allowed"),
    # the command itself
    _fresh("sweeep", named="command='sweeep'"),
]


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("args", "named", "stored"), BAD_INPUT)
def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
    args: list[str],
    named: str,
    stored: bool,
) -> None:
    """Exit code 2, one line that names the key and the bad value (and what is allowed), and not one
    file created or changed: no MLflow store, no Optuna storage, no Hydra output directory."""
    if stored:
        swept = request.getfixturevalue("swept")
        for store in ("clipsweep.db", "mlflow.db"):
            shutil.copy(swept / store, tmp_path / store)
        (tmp_path / "taken.yaml").write_text("keep")
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    assert main([a.format(port=free_port()) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clipsweep: error:") and "\n" not in err, err
    assert named in err, err
    assert "secret" not in err
    assert _snapshot(tmp_path) == before


def test_cli_init_help_prints_its_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", "--help"]) == 0
    assert "hydra.sweeper.study_name=NAME" in capsys.readouterr().out


def test_conf_dir_is_found_from_an_installed_wheel(tmp_path: Path) -> None:
    """Build the wheel, install it alone into a directory and compose from there, not the checkout."""
    repo = Path(__file__).resolve().parent.parent
    source = tmp_path / "src"  # a copy: a checkout's stale build/ directory would end up in the wheel
    source.mkdir()
    for part in ("pyproject.toml", "README.md", "sweeper", "models", "conf", "hydra_plugins"):
        if (repo / part).is_dir():
            shutil.copytree(repo / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(repo / part, source / part)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    wheel = next((tmp_path / "dist").glob("clipsweep-*.whl"))
    target = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    probe = (
        "import clipsweep.composition as c; from clipsweep.composition import compose, conf_dir; "
        "print(c.__file__); print(conf_dir()); print(compose(['model=gru', 'clip=zclip']).clip.method.value)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(target)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    module_file, found_conf, method = done.stdout.split()
    # Nothing but the distribution's own package and Hydra's plugin namespace at the top level.
    top = {p.name for p in target.iterdir() if not p.name.endswith(".dist-info") and p.name != "bin"}
    assert top == {"clipsweep", "hydra_plugins"}
    assert Path(module_file).is_relative_to(target) and Path(found_conf).is_relative_to(target)
    assert (Path(found_conf) / "clip" / "zclip.yaml").is_file() and method == "zclip"
    assert conf_dir() != Path(found_conf)


def _served(args: list[str], cwd: Path, path: str) -> tuple[bytes, str]:
    """Start ``clipsweep <args> --port P``, wait (up to 120 s) until 127.0.0.1:P answers ``path``,
    stop the server; the answer and what the server printed."""
    import time
    import urllib.request

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "clipsweep", *args, "--port", str(port)],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    body = None
    try:
        deadline = time.time() + 120
        while body is None and time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
                    body = response.read()
            except OSError:
                assert server.poll() is None, server.stdout.read()
                time.sleep(0.5)
        time.sleep(1)  # the workers' start-up lines
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert body is not None, f"clipsweep {args[0]} did not answer {path} within 120 s"
    return body, output


def test_cli_ui_serves_the_tracking_store_on_loopback(swept: Path, tmp_path: Path) -> None:
    body, output = _served(["ui", "--tracking-uri", f"sqlite:///{swept / 'mlflow.db'}"], tmp_path, "/health")
    assert "OK" in body.decode()
    assert "DeprecationWarning" not in output and "Uvicorn running on http://127.0.0.1:" in output


def test_cli_dashboard_serves_the_study_storage_on_loopback(swept: Path, tmp_path: Path) -> None:
    body, _ = _served(["dashboard", "--storage", f"sqlite:///{swept / 'clipsweep.db'}"], tmp_path, "/api/studies")
    assert [s["study_name"] for s in json.loads(body)["study_summaries"]] == [SWEPT_STUDY]
