"""What one trained trial measured: a frozen record that :func:`search.trial.train.fit` returns.

Its fields are the metrics a study records (``storage.records.METRICS``, each its own trial
user attr), plus ``curves`` (recorded whole as ``storage.records.CURVES``) and ``device``
(recorded with the worker's identity). Writers never list the keys: :meth:`TrialMetrics.attrs`
iterates over ``METRICS``, the one list.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from storage.records import METRICS

MEASURED = ("latency_ms", "throughput")
"""The metrics only a trial trained with ``measure=True`` has (None otherwise)."""


@dataclass(frozen=True)
class TrialMetrics:
    """The metrics of one trained model.

    ``val_accuracy`` and ``val_loss`` are the last epoch's, ``best_val_accuracy`` the best
    epoch's; ``curves`` holds per-epoch ``val_accuracy``, ``val_loss``, ``train_loss`` and
    ``lr`` lists; ``flops`` count one forward pass at batch 1; ``train_seconds`` is the wall
    time of training and per-epoch validation; ``amp`` the autocast dtype (``"bfloat16"``)
    or None; ``notes`` the adjustments the model builder made (e.g. a clamped depth).
    ``latency_ms`` (ms/image at batch 1) and ``throughput`` (inference images/s) are None
    when the trial was not measured. ``scores`` holds the last epoch's validation scores the
    objectives asked for (``val_macro_f1``, a user's ``module:function``...), each recorded as
    its own user attr; their per-epoch values are in ``curves`` under the same keys.
    """

    val_accuracy: float
    val_loss: float
    best_val_accuracy: float
    curves: dict[str, list[float]]
    epochs_run: int
    params: int
    flops: int
    train_seconds: float
    device: str
    amp: str | None
    notes: list[str]
    latency_ms: float | None = None
    throughput: float | None = None
    scores: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field, in order; unmeasured ``latency_ms``/``throughput``, empty ``scores`` out."""
        data = asdict(self)
        for name in MEASURED:
            if data[name] is None:
                del data[name]
        if not self.scores:
            del data["scores"]
        return data

    def attrs(self) -> dict[str, Any]:
        """The per-metric trial user attrs: each name of ``storage.records.METRICS`` this trial has, and its scores."""
        data = self.to_dict()
        return {**{name: data[name] for name in METRICS if name in data}, **self.scores}

    def value(self, metric: str) -> float:
        """The metric an objective reads: a score's key or a field's name."""
        return self.scores[metric] if metric in self.scores else float(getattr(self, metric))
