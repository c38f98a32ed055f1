"""Trials as built: each param at the value the model was built with, not the value the sampler asked for.

The model builder fits a config to the input (``depth: 4`` on 8x8 images builds 2 stages) and
the trial records the fitted config (user attr ``config``) beside the sampler's params. Figures
about what a parameter does (importances, the ablation) read the built values: depth 2 and
depth 4 that built the same network are one value there, not two.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from storage.records import CONFIG


def built_params(trial: FrozenTrial) -> dict[str, Any]:
    """``trial.params`` with each value replaced by the recorded config's (the same where nothing was fitted)."""
    config = trial.user_attrs.get(CONFIG) or {}
    return {name: config.get(name, value) for name, value in trial.params.items()}


def built_trials(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The COMPLETE ``trials`` with their built params; each distribution widened to hold the built values.

    Every trial gets the same widened distribution of a parameter, as Optuna's importance
    evaluators require. Values, user attrs and numbers are kept.
    """
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    params = [built_params(t) for t in done]
    widened: dict[str, BaseDistribution] = {}
    for t, built in zip(done, params, strict=True):
        for name, dist in t.distributions.items():
            widened[name] = _widen(widened.get(name, dist), built[name])
    out = []
    for t, built in zip(done, params, strict=True):
        copy = create_trial(params=built, distributions={n: widened[n] for n in built}, values=t.values,
                            user_attrs=t.user_attrs, intermediate_values=t.intermediate_values)
        copy.number = t.number
        out.append(copy)
    return out


def built_study(study: optuna.Study) -> optuna.Study:
    """An in-memory copy of ``study``'s completed trials at their built params (for Optuna's importance evaluators)."""
    copy = optuna.create_study(directions=study.directions)
    copy.add_trials(built_trials(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))))
    return copy


def _widen(dist: BaseDistribution, value: Any) -> BaseDistribution:
    """``dist``, or the smallest distribution of its kind that also holds ``value``."""
    if isinstance(dist, CategoricalDistribution):
        held = any(type(c) is type(value) and c == value for c in dist.choices)
        return dist if held else CategoricalDistribution([*dist.choices, value])
    if isinstance(dist, IntDistribution):
        if dist.low <= value <= dist.high and (value - dist.low) % dist.step == 0:
            return dist
        # A value off the step grid drops the step: the built value is what matters here.
        return IntDistribution(min(dist.low, value), max(dist.high, value), log=dist.log)
    if isinstance(dist, FloatDistribution):
        on_grid = dist.step is None or abs((k := (value - dist.low) / dist.step) - round(k)) < 1e-8
        if dist.low <= value <= dist.high and on_grid:
            return dist
        return FloatDistribution(min(dist.low, value), max(dist.high, value), log=dist.log)
    return dist
