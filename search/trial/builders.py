"""Your own model: call a space's builder (:mod:`spaces.builder`) and check what it returns.

``build(config, input_shape, num_classes, **config.builder_args)`` must return an
``nn.Module``. A builder that raises, or returns something else, is a :class:`ModelError`
with the builder's own one-line error: the trial fails with it and the study goes on.

The memory check before a trial builds its model on the meta device (no memory, no
weights). A builder that cannot (it reads a tensor's values, builds on a fixed device)
is built on the CPU instead: the estimate then costs a real model, but the trial runs.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from search.trial.errors import ModelError
from spaces.builder import Builder, load_builder
from spaces.errors import SpaceError
from spaces.schema import TrialConfig

log = logging.getLogger(__name__)


def build_with_builder(config: TrialConfig, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The model ``config.builder`` builds from ``config`` for ``input_shape`` and ``num_classes``.

    The returned module has ``notes`` (the builder's own, when it sets them; else empty).
    Raises :class:`ModelError` for a builder that cannot be imported, is given a key it does
    not declare, raises, or does not return an ``nn.Module``.
    """
    try:
        builder = load_builder(config.builder, "config: builder")
    except SpaceError as err:
        raise ModelError(str(err)) from None
    args = dict(config.builder_args or {})
    unknown = sorted(set(args) - set(builder.keys))
    if unknown:
        raise ModelError(f"config: builder_args: {unknown[0]!r} is not an argument of builder {builder.ref}; "
                         f"it declares: {', '.join(builder.keys) or '(none)'}")
    if torch.get_default_device().type == "meta":
        try:
            model = _call(builder, config, input_shape, num_classes, args)
            model(torch.zeros(2, *input_shape))  # shapes only: the memory estimate's training-mode forward pass
            return model
        except Exception as exc:  # noqa: BLE001 - whatever fails on meta is retried for real below
            log.info("builder %s does not build on the meta device (%s); building it on the CPU",
                     builder.ref, exc)
        with torch.device("cpu"):
            return _call(builder, config, input_shape, num_classes, args)
    return _call(builder, config, input_shape, num_classes, args)


def _call(builder: Builder, config: TrialConfig, input_shape: tuple[int, int, int], num_classes: int,
          args: dict) -> nn.Module:
    try:
        model = builder.function(config, tuple(input_shape), num_classes, **args)
    except Exception as exc:  # noqa: BLE001 - the user's code may raise anything: it fails this trial only
        text = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelError(f"builder {builder.ref} raised {type(exc).__name__}" + (f": {text}" if text else "")
                         ) from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"builder {builder.ref} returned a {type(model).__name__}, not a torch.nn.Module; "
                         "return the network (an nn.Module)")
    if not isinstance(getattr(model, "notes", None), list):
        model.notes = []  # what the trainer reads and records of every model
    return model
