"""Help text read from the typed schemas: each key with its default and the docstring written under
it, so the help never restates a default or drifts from the schema."""

from __future__ import annotations

import dataclasses
from typing import Any

from clipsweep.config import SWEEPER_SCHEMAS, RecommendConf, SweeperConf


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
    lines += ["", "Config groups and training keys: clipsweep run --help (search presets: search=NAME)."]
    return "\n".join(lines)


def dataclasses_defaults(schema: type) -> dict[str, Any]:
    instance = schema()
    return {f.name: getattr(instance, f.name) for f in dataclasses.fields(schema)}
