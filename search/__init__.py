"""cnnsearch's search package; in a training repo: ``from search import build_model, load_recipe``.

One sub-package per job: ``cli`` (the command line), ``trial`` (one trial's data, model and
training), ``study`` (workers, samplers, the study's spec and budget), ``results`` (the final
evaluation and the exported recipe).

The names below are loaded on first use, so ``import search`` (and the CLI's ``--help``)
does not pay for importing torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_model", "load_recipe", "train_recipe"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from search.results import recipe

        return getattr(recipe, name)
    raise AttributeError(f"module 'search' has no attribute {name!r}")
