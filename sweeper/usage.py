"""Help text read from the typed schemas: each key with its default and the docstring written under
it, so the help never restates a default or drifts from the schema."""

from __future__ import annotations

import dataclasses
from enum import Enum
from pathlib import Path
from typing import Any

from clipsweep.config import SCHEMAS, TrackingConf, TrainConf
from clipsweep.sweep_config import SWEEPER_SCHEMAS, RecommendConf, SweeperConf


def field_docs(schema: type) -> dict[str, str]:
    """Each field's docstring (the string literal under it in the class body): the help text of the
    key, written once beside its default."""
    import ast
    import inspect
    import itertools
    import textwrap

    body = ast.parse(textwrap.dedent(inspect.getsource(schema))).body[0].body
    docs = {}
    for node, following in itertools.pairwise(body):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
                docs[node.target.id] = " ".join(str(following.value.value).replace("``", "").split())
    return docs


def sweeper_help() -> str:
    """``clipsweep sweep --help``: every ``hydra.sweeper`` key with its default and meaning."""
    groups = {
        group.rsplit("/", 1)[1]: sorted(nodes) for group, nodes in SWEEPER_SCHEMAS.items() if group.count("/") == 2
    }
    lines = [
        "usage: clipsweep sweep [hydra.sweeper.KEY=VALUE ...] [config overrides and searched ranges]",
        "",
        "A sweep is `clipsweep run --multirun` with the clipsweep Optuna sweeper. Its keys (default):",
    ]
    for schema, prefix in ((SweeperConf, "hydra.sweeper."), (RecommendConf, "hydra.sweeper.recommend.")):
        docs, defaults = field_docs(schema), dataclasses_defaults(schema)
        for key, doc in docs.items():
            if key in ("recommend",):
                continue
            lines.append(f"  {prefix}{key} ({defaults[key]!r}): {doc}")
    for group, names in groups.items():
        default = next(d[group] for d in SweeperConf().defaults if group in d)
        lines.append(f"  hydra/sweeper/{group}=NAME ({default!r}): one of {', '.join(names)}")
    lines.append(
        "  hydra/launcher=NAME ('basic'): basic (in this process, one trial after another), joblib (local "
        "processes), batched (n_jobs trials as one model on one device: for GPUs), ray, submitit_local, "
        "submitit_slurm (with the extras 'ray' / 'slurm')"
    )
    lines += ["", "Config groups and training keys: clipsweep run --help (search presets: search=NAME)."]
    return "\n".join(lines)


def dataclasses_defaults(schema: type) -> dict[str, Any]:
    instance = schema()
    return {f.name: getattr(instance, f.name) for f in dataclasses.fields(schema)}


def run_help(conf: Path) -> str:
    """``clipsweep run --help``: the user-facing config groups (the directories of ``conf``, not the
    internal ``schema/*`` ones Hydra's own help lists), each group option's keys with their defaults,
    and the ``train``/``tracking`` keys with their meaning."""
    lines = [
        "usage: clipsweep run [group=option ...] [key=value ...] [--multirun] [--config-dir DIR] [--cfg job]",
        "",
        "Config groups (group=option) and each option's keys (default):",
    ]
    for group in sorted(p for p in conf.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        lines.append(f"  {group.name}: {', '.join(sorted(p.stem for p in group.glob('*.yaml')))}")
        for name, schema in SCHEMAS.get(group.name, {}).items():
            keys = [
                f"{k}={_shown(v)}" for k, v in dataclasses_defaults(schema).items() if k not in ("_target_", "method")
            ]
            lines.append(f"      {name}: {', '.join(keys) or '(no keys)'}")
    for key, schema in (("train", TrainConf), ("tracking", TrackingConf)):
        lines.append(f"{key} keys (default):")
        docs = field_docs(schema)
        for name, default in dataclasses_defaults(schema).items():
            lines.append(f"  {key}.{name} ({_shown(default)})" + (f": {docs[name]}" if name in docs else ""))
    lines += ["", "Sweeping: clipsweep sweep --help. Hydra's own flags: clipsweep run --hydra-help."]
    return "\n".join(lines)


def _shown(value: Any) -> str:
    return repr(value.value if isinstance(value, Enum) else value)
