"""Running a sweep's jobs wherever Hydra's launcher puts them: this process, a local pool, a Ray
cluster, a submitit (SLURM) job.

The in-process and joblib launchers share the sweep's machine, working directory and environment,
and return a batch of jobs together. Ray and submitit run each job in a process they start, on a node
they choose, in a working directory of their own, and gather the batch in one call that fails as a
whole when one job is lost (a worker killed, a job past its time limit). Two rules keep a sweep
correct on all of them:

- A job finds its output directory, study storage and MLflow store from what travels with it (its
  overrides, absolute), never from the sweep's working directory or environment. Credentials are
  the exception: a URL holding a password stays in the environment, so each node needs it there.
- A job its engine loses fails only its own trial (``LostJob``): the others' results still arrive,
  and the sweep retries the lost trial like one whose worker stopped beating.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, OmegaConf, open_dict

from clipsweep.errors import ConfigError
from clipsweep.job import outlived_by_this_process
from clipsweep.names import STORAGE_ENV, TRACKING_PIN_ENV
from clipsweep.storage import absolute_url, mask_url

_CONNECT_SECONDS = 5.0
_BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher"  # Hydra's in-process launcher
_log = logging.getLogger("hydra")  # the per-job line Hydra's launchers print


class LostJob(Exception):
    """The launcher's engine lost a job (worker killed, time limit, node gone): no result came back."""


def prepare(launcher: Launcher) -> None:
    """Engine settings the sweep relies on, where the user has not set them.

    Ray: a task whose worker dies is not re-run by Ray (``max_retries=0``): it would reuse the failed
    trial and leave the first MLflow run open, while the sweep retries it as a fresh trial; and
    connecting to a running cluster (``init.address``) must not pass the object-store size that
    hydra-ray-launcher sets for a cluster it starts itself. submitit: a job past its time limit is
    not requeued (``max_num_timeout=0``, the SLURM config's own default; the local executor's is 3):
    the job has no checkpoint to resume from, so a requeue would rerun the same trial from step 0.
    """
    if _is_submitit(launcher):
        launcher.params.setdefault("max_num_timeout", 0)  # type: ignore[attr-defined]
    ray_cfg = getattr(launcher, "ray_cfg", None)
    if ray_cfg is None:
        return
    with open_dict(ray_cfg):
        if ray_cfg.get("remote") is None:
            ray_cfg.remote = {}
        ray_cfg.remote.setdefault("max_retries", 0)
        if ray_cfg.init.get("address"):
            ray_cfg.init.setdefault("object_store_memory", None)
        else:  # what hydra-ray-launcher gives a cluster it starts (enough for CI machines)
            ray_cfg.init.setdefault("object_store_memory", 78643200)


def start(launcher: Launcher) -> None:
    """Join the engine before the sweep writes anything, once for every job to share (a cluster at an
    address was joined by the command line's preflight already: ``require_joinable``)."""
    ray_cfg = getattr(launcher, "ray_cfg", None)
    if ray_cfg is not None:
        _join_ray(OmegaConf.to_container(ray_cfg.init, resolve=True))  # type: ignore[arg-type]


def require_joinable(launcher: Mapping[str, Any]) -> None:
    """The engine at the address the config names (``hydra.launcher``, as composed) answers and lets
    this machine in: checked before any store is opened, so a bad address or a missing token writes
    nothing. A local cluster (no address) is started by the sweep itself."""
    ray_cfg = launcher.get("ray")
    if not isinstance(ray_cfg, Mapping):
        return
    init = dict(ray_cfg.get("init") or {})
    if init.get("address"):
        _join_ray({**init, "object_store_memory": init.get("object_store_memory")})


def _join_ray(init: Mapping[str, Any]) -> None:
    """``ray.init(**init)`` unless joined; a ``ConfigError`` naming the address when it fails."""
    import ray

    if ray.is_initialized():
        return
    _reachable(init.get("address"))
    try:
        ray.init(**init)
    except Exception as err:
        causes = _causes(err)
        if "InvalidAuthToken" in causes or "authentication token" in causes.lower():
            allowed = (
                "a cluster whose token this machine has: RAY_AUTH_MODE=token and the cluster's token "
                "(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"
            )
        else:
            allowed = f"a Ray cluster this machine can join ({_reason(err)})"
        raise ConfigError("hydra.launcher.ray.init.address", init.get("address"), allowed) from None


def _reachable(address: str | None) -> None:
    """Ray retries an address where nothing answers for minutes: a plain TCP connect decides first."""
    if not address or address == "auto":
        return
    host, _, port = str(address).removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=_CONNECT_SECONDS).close()
    except (OSError, ValueError) as err:
        raise ConfigError(
            "hydra.launcher.ray.init.address", address, f"the host:port of a running Ray cluster ({err})"
        ) from None


def stop(launcher: Launcher) -> None:
    """Leave the engine when the sweep ends: on Ray, the driver's unfinished tasks (an interrupted
    sweep's) are cancelled by the cluster rather than left training for trials already given back."""
    if not _is_ray(launcher):
        return
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _causes(err: BaseException) -> str:
    texts = []
    while err is not None and len(texts) < 8:
        texts.append(str(err))
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    return "\n".join(texts)


def job_locations(sweep_dir: str | Path, storage: str, tracking_uri: str, cwd: str | Path) -> dict[str, str]:
    """Overrides that pin where a job writes, whatever its working directory: its output directory,
    and (for URLs without a password) the study storage and the MLflow store, made absolute.

    Keys are Hydra override keys; environment variables go through ``hydra.job.env_set``, which a
    job applies before its config is resolved, and which the per-job console line leaves out.
    """
    pinned = {"hydra.sweep.dir": absolute_url(str(sweep_dir), cwd)}
    for variable, url in ((STORAGE_ENV, storage), (TRACKING_PIN_ENV, tracking_uri)):
        if mask_url(url) == url:  # a password stays in the environment, out of every file
            pinned[f"hydra.job.env_set.{variable}"] = absolute_url(url, cwd)
    return pinned


def launch(
    launcher: Launcher,
    batch: Sequence[Sequence[str]],
    initial_job_idx: int,
    composed: Sequence[DictConfig] | None = None,
) -> list[JobReturn]:
    """Launch a batch; a job the engine loses comes back as a failed JobReturn holding a ``LostJob``.

    ``composed``: each job's config as the sweep composed it already (checking that it composes);
    launchers in this process reuse it instead of composing again. Ray's tasks and submitit's jobs
    go through each plugin's own job function, are gathered one by one and cancelled if the sweep
    stops waiting. Any other launcher (joblib, a plugin's own) gets the batch in one call, as Hydra
    gives it: it runs on this machine and returns a failing job as a failed JobReturn itself.
    """
    if _is_ray(launcher):
        return _launch_on_ray(launcher, batch, initial_job_idx)
    if _is_submitit(launcher):
        return _launch_on_submitit(launcher, batch, initial_job_idx)
    if composed is not None and type(launcher).__module__ == _BASIC_LAUNCHER:
        return _launch_in_process(launcher, batch, initial_job_idx, composed)
    if composed is not None and hasattr(launcher, "launch_composed"):  # hydra/launcher=batched
        return list(launcher.launch_composed(batch, initial_job_idx, composed))
    return list(launcher.launch(batch, initial_job_idx=initial_job_idx))


def _launch_in_process(
    launcher: Any, batch: Sequence[Sequence[str]], initial_job_idx: int, composed: Sequence[DictConfig]
) -> list[JobReturn]:
    """Hydra's ``BasicLauncher.launch``, line for line, with the sweep's composed configs."""
    from hydra.core.utils import configure_log, setup_globals

    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    Path(str(launcher.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    _log.info(f"Launching {len(batch)} jobs locally")
    runs = []
    for (idx, _), config in zip(announce(batch, initial_job_idx), composed):
        number(config, idx)
        runs.append(run_here(launcher.hydra_context, launcher.task_function, config))
        configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    return runs


def number(config: DictConfig, idx: int) -> None:
    """The job's number in the sweep (``hydra.job.id`` and ``num``), as Hydra's launchers set it."""
    with open_dict(config):
        config.hydra.job.id = idx
        config.hydra.job.num = idx


def run_here(hydra_context: Any, task_function: Any, config: DictConfig) -> JobReturn:
    """Hydra's ``run_job`` for a sweep's job in this process: its output directory under the sweep
    directory, its ``.hydra`` files, its ``env_set``; a raising task is a failed JobReturn."""
    from hydra.core.utils import run_job

    with outlived_by_this_process():
        return run_job(
            hydra_context=hydra_context,
            task_function=task_function,
            config=config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )


def _launch_on_ray(launcher: Any, batch: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    """hydra-ray-launcher's launch, through the plugin's own remote job function (a job on Ray is
    exactly what ``hydra/launcher=ray`` runs); its own ``launch`` gathers the batch in one list that
    one lost task fails as a whole."""
    import ray
    from hydra.core.singleton import Singleton
    from hydra_plugins.hydra_ray_launcher._launcher_util import launch_job_on_ray

    refs = []
    for idx, overrides in announce(batch, initial_job_idx):
        sweep_config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = f"job_id_for_{idx}"
            sweep_config.hydra.job.num = idx
        remote = launcher.ray_cfg.remote
        state = Singleton.get_state()
        refs.append(launch_job_on_ray(launcher.hydra_context, remote, sweep_config, launcher.task_function, state))
    # RayError: the worker died, the node left, the task was cancelled.
    return _gather(refs, ray.get, lambda ref: ray.cancel(ref, force=True), ray.exceptions.RayError)


def _launch_on_submitit(launcher: Any, batch: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    """hydra-submitit-launcher's launch (the same executor, parameters and job function: the
    launcher itself), whose own ``launch`` also gathers the batch in one list; a cancelled job is
    ``scancel``-ed on SLURM, signalled locally."""
    import submitit
    from hydra.core.singleton import Singleton
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    params = dict(launcher.params)
    cluster = launcher._EXECUTOR
    executor = submitit.AutoExecutor(
        folder=params.pop("submitit_folder"),
        cluster=cluster,
        **{f"{cluster}_max_num_timeout": params.pop("max_num_timeout")} if "max_num_timeout" in params else {},
    )
    generic = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in generic else f"{cluster}_{k}": v for k, v in params.items()})
    arguments = [
        (list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state())
        for idx, overrides in announce(batch, initial_job_idx)
    ]
    jobs = executor.map_array(launcher, *zip(*arguments))
    # Any error here is outside the task (time limit, node failure): run_job returns the task's own.
    return _gather(jobs, lambda job: job.results()[0], lambda job: job.cancel(check=False), Exception)


def announce(batch: Sequence[Sequence[str]], initial_job_idx: int) -> list[tuple[int, Sequence[str]]]:
    """Each job's number and overrides, printed as Hydra's launchers print them."""
    from hydra.core.utils import filter_overrides

    numbered = [(initial_job_idx + offset, overrides) for offset, overrides in enumerate(batch)]
    for idx, overrides in numbered:
        _log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
    return numbered


def _gather(
    handles: Sequence[Any],
    wait: Callable[[Any], JobReturn],
    cancel: Callable[[Any], object],
    lost_on: type[BaseException] | tuple[type[BaseException], ...],
) -> list[JobReturn]:
    """Each job's JobReturn, waited for one by one; an engine error (``lost_on``) is that job's loss
    only. When the sweep stops waiting (Ctrl-C, SIGTERM) every job of the batch is cancelled, so none
    keeps training for a trial the sweep gives back."""
    results = []
    try:
        for handle in handles:
            try:
                results.append(wait(handle))
            except lost_on as err:
                results.append(_lost(_reason(err)))
    except BaseException:
        for handle in handles:
            with contextlib.suppress(Exception):
                cancel(handle)
        raise
    return results


def _is_ray(launcher: Launcher) -> bool:
    return getattr(launcher, "ray_cfg", None) is not None


def _is_submitit(launcher: Launcher) -> bool:
    return type(launcher).__module__.startswith("hydra_plugins.hydra_submitit_launcher")


def _lost(reason: str) -> JobReturn:
    return JobReturn(status=JobStatus.FAILED, _return_value=LostJob(reason))


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}".rstrip(": ")
