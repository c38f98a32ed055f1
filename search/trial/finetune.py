"""Which parameters of a model train, and at which learning rate: freezing and body/head learning rates.

The *head* is the output layer (the last ``nn.Linear`` registered, the one replaced for the
dataset's classes); the *body* is everything else. ``freeze: body`` freezes the body,
``freeze: stages`` the first ``freeze_stages`` stages from the input (a backbone's
:attr:`search.trial.backbones.Backbone.stages`, the custom family's conv stages). Frozen
parameters stop needing gradients and their batch norms stay in eval mode, so neither
weights nor running statistics change; from ``unfreeze_epoch`` on they train again.
The optimizer holds every parameter from the start (frozen ones have no gradient, so it
skips them), in two groups: the head at ``lr``, the body at ``lr * body_lr_mult``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from spaces.schema import TrialConfig, ineffective


def output_layer(model: nn.Module) -> nn.Linear | None:
    """The model's output layer: the last ``nn.Linear`` it registers (true of every model we build).

    None for a model without one (a user's builder may end in a conv): it is all head.
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def param_groups(model: nn.Module, config: TrialConfig) -> list[dict]:
    """The optimizer's parameter groups: the head at ``config.lr`` first, then the body at ``lr * body_lr_mult``.

    The head comes first so that ``param_groups[0]["lr"]`` (the learning-rate curve) is the peak rate.
    With ``body_lr_mult`` 1 (every model but a fine-tuned one) there is one group, ``all``: the
    optimizer's foreach kernels run once per group, and a second group costs every step ~20 us
    on a CPU (``benchmarks/gpu_check.py --ablate``); on a GPU it is a second set of kernel
    launches a step, not yet measured there.
    """
    if config.body_lr_mult == 1.0:
        return [{"params": list(model.parameters()), "lr": config.lr, "name": "all"}]
    layer = output_layer(model)
    head = list((layer or model).parameters())
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    groups = [{"params": head, "lr": config.lr, "name": "head"}]
    if body:
        groups.append({"params": body, "lr": config.lr * config.body_lr_mult, "name": "body"})
    return groups


@dataclass
class Frozen:
    """What :func:`freeze` froze: its parameters and batch norms, and the notes it leaves."""

    parameters: list[nn.Parameter] = field(default_factory=list)
    norms: list[nn.Module] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def keep_eval(self) -> None:
        """Put the frozen batch norms back in eval mode (call after ``model.train()``)."""
        for norm in self.norms:
            norm.eval()

    def release(self) -> None:
        """Let every frozen parameter train again (gradual unfreezing)."""
        for parameter in self.parameters:
            parameter.requires_grad_(True)
        self.parameters, self.norms = [], []


FINETUNE_KEYS = ("freeze_stages", "unfreeze_epoch", "body_lr_mult")


def freeze(model: nn.Module, config: TrialConfig) -> Frozen:
    """Freeze what ``config.freeze`` names in ``model``; returns the :class:`Frozen` part.

    Its notes also say which fine-tuning keys do nothing in this config (a space that
    searches ``freeze`` and ``unfreeze_epoch`` unconditionally has such trials).
    """
    unused = ineffective(config, FINETUNE_KEYS)
    if config.freeze == "none":
        return Frozen(notes=unused)
    head = output_layer(model)
    if config.freeze == "body":
        modules = [m for m in model.children()]
        notes = ["freeze: every layer but the output layer is frozen"]
    else:
        stages = _stages(model)
        count = min(config.freeze_stages, len(stages))
        notes = [f"freeze: the first {count} of {len(stages)} stages are frozen"]
        if count < config.freeze_stages:
            notes.append(f"freeze_stages {config.freeze_stages} lowered to {count}: {type(model).__name__} has "
                         f"{len(stages)} stages")
        modules = [m for stage in stages[:count] for m in stage]
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    frozen = Frozen(notes=notes + unused)
    for module in modules:
        for parameter in module.parameters():
            if id(parameter) not in head_ids and parameter.requires_grad:
                parameter.requires_grad_(False)
                frozen.parameters.append(parameter)
        frozen.norms += [m for m in module.modules() if isinstance(m, _BatchNorm)]
    if config.unfreeze_epoch is not None and 1 < config.unfreeze_epoch <= config.epochs:
        frozen.notes.append(f"the frozen layers train again from epoch {config.unfreeze_epoch}")
    return frozen


def _stages(model: nn.Module) -> list[list[nn.Module]]:
    """A backbone's stages, or the custom family's conv stages (``model.features``)."""
    stages = getattr(model, "stages", None)
    if stages is not None:
        return stages
    return [[stage] for stage in model.features.children()]
