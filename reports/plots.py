"""The report's plots, drawn with matplotlib and embedded as ``data:image/png;base64`` URIs.

Optuna's own matplotlib functions draw what they cover (optimisation history, parallel
coordinates, Pareto front), scikit-learn's ``ConfusionMatrixDisplay`` the confusion
matrices; the rest are a few lines of matplotlib. Every function returns a data URI, or
None when there is nothing to draw; none opens a window or writes a file. Each plot is
drawn inside ``rc_context`` because Optuna's functions switch the global style sheet.
"""

from __future__ import annotations

import base64
import io
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import optuna
from optuna.trial import FrozenTrial

DPI = 80


@contextmanager
def _pyplot() -> Iterator[Any]:
    import matplotlib

    matplotlib.use("Agg")  # reports are written on servers without a display
    import matplotlib.pyplot as plt

    with plt.rc_context(), warnings.catch_warnings():
        # Optuna marks its matplotlib functions experimental; the warning says nothing to a report reader.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # A parameter with one value among the completed trials: matplotlib widens its axis, as it should.
        warnings.filterwarnings("ignore", message="Attempting to set identical low and high ylims")
        yield plt


def _data_uri(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure_of(axes: Any) -> Any:
    """The figure behind what an Optuna plot function returns (one Axes or an array of them)."""
    first = axes.flat[0] if hasattr(axes, "flat") else axes
    return first.figure


def history_plot(study: optuna.Study, target: Callable[[FrozenTrial], float], target_name: str) -> str | None:
    """Objective value per trial and the best so far (Optuna's ``plot_optimization_history``)."""
    with _pyplot():
        axes = optuna.visualization.matplotlib.plot_optimization_history(
            study, target=target, target_name=target_name)
        fig = _figure_of(axes)
        fig.set_size_inches(7, 3.6)
        return _data_uri(fig)


def parallel_plot(study: optuna.Study, params: Sequence[str], target: Callable[[FrozenTrial], float],
                  target_name: str) -> str | None:
    """Parallel coordinates of ``params`` against the objective (Optuna's ``plot_parallel_coordinate``)."""
    if not params:
        return None
    with _pyplot():
        axes = optuna.visualization.matplotlib.plot_parallel_coordinate(
            study, params=list(params), target=target, target_name=target_name)
        fig = _figure_of(axes)
        fig.set_size_inches(8, 3.8)
        return _data_uri(fig)


def pareto_plot(study: optuna.Study, target_names: Sequence[str]) -> str | None:
    """The Pareto front of a multi-objective study (Optuna's ``plot_pareto_front``; first 3 objectives)."""
    names = list(target_names)[:3]
    if len(names) < 2:
        return None
    n = len(names)
    with _pyplot():
        axes = optuna.visualization.matplotlib.plot_pareto_front(
            study, targets=lambda t: tuple(t.values[:n]), target_names=names)
        fig = _figure_of(axes)
        fig.set_size_inches(6, 4.5)
        return _data_uri(fig)


def importance_plot(importances: dict[str, float], evaluator_name: str) -> str | None:
    """Horizontal bars of parameter importances (computed once by the caller with Optuna's evaluator)."""
    if not importances:
        return None
    with _pyplot() as plt:
        names = list(importances)[::-1]  # most important on top
        fig, ax = plt.subplots(figsize=(6, 0.35 * len(names) + 1.2))
        ax.barh(names, [importances[n] for n in names], color="#3b6ea5")
        for i, name in enumerate(names):
            ax.text(importances[name], i, f" {importances[name]:.2f}", va="center", fontsize=8)
        ax.set_xlabel(f"importance for val accuracy ({evaluator_name})")
        ax.set_xlim(0, max(1.0, max(importances.values()) * 1.15))
        return _data_uri(fig)


def curves_plot(curves: Sequence[tuple[str, Sequence[float]]], ylabel: str = "val accuracy") -> str | None:
    """One line per (label, per-epoch values): the learning curves of the top trials."""
    curves = [(label, values) for label, values in curves if values]
    if not curves:
        return None
    with _pyplot() as plt:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        for label, values in curves:
            ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
        return _data_uri(fig)


def confusion_plot(matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str) -> str:
    """A confusion matrix (rows: true class, columns: predicted) with scikit-learn's display."""
    import numpy as np
    from sklearn.metrics import ConfusionMatrixDisplay

    with _pyplot() as plt:
        side = min(9.0, 2.0 + 0.45 * len(classes))
        fig, ax = plt.subplots(figsize=(side, side))
        show_values = len(classes) <= 20  # beyond that the numbers overlap
        ConfusionMatrixDisplay(np.asarray(matrix), display_labels=list(classes)).plot(
            ax=ax, colorbar=False, include_values=show_values, xticks_rotation="vertical")
        ax.set_title(title)
        return _data_uri(fig)

