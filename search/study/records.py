"""Typed records of what a trial and a worker did, as every worker reports them.

A worker run in this process, in a local worker process, or as a Ray task returns one
:class:`WorkerSummary` (picklable, so it crosses process boundaries unchanged); a worker
stopped by an error returns one too, with ``error`` set instead of trials.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import TrialState

from search.study.errors import TooManyFailures
from search.trial.errors import CnnSearchError

INTERRUPTED = "interrupted"
"""The ``error`` of a worker stopped by Ctrl-C or SIGTERM: the run itself reports the interrupt."""


@dataclass
class TrialOutcome:
    """How one trial ended: its number, final state, objective values and (when not COMPLETE) why."""

    number: int
    state: TrialState
    values: list[float] | None
    reason: str | None = None


@dataclass
class WorkerSummary:
    """What one worker did, or the error that stopped it."""

    worker: str
    device: str | None = None
    outcomes: list[TrialOutcome] = field(default_factory=list)
    stopped_because: str = "budget spent"
    error: str | None = None
    too_many_failures: bool = False
    gpu_ids: list[Any] = field(default_factory=list)

    @classmethod
    def failed(cls, worker: str, error: str, *, too_many_failures: bool = False,
               gpu_ids: list[Any] | None = None) -> WorkerSummary:
        """The record of a worker that stopped on ``error`` (a one-line message)."""
        return cls(worker=worker, error=error, stopped_because="stopped",
                   too_many_failures=too_many_failures, gpu_ids=list(gpu_ids or []))

    @property
    def counts(self) -> dict[str, int]:
        """Trials of this worker by final state name."""
        out: dict[str, int] = {}
        for o in self.outcomes:
            out[o.state.name] = out.get(o.state.name, 0) + 1
        return out


def raise_worker_errors(workers: Iterable[WorkerSummary]) -> None:
    """A worker that stopped on an error stops the run with that error (exit 1 or 2 in the CLI).

    Too many failed trials wins over other errors (it is the study's state, not one worker's);
    an interrupted worker raises nothing here: the interrupt itself propagates.
    """
    workers = list(workers)
    for w in workers:
        if w.too_many_failures:
            raise TooManyFailures(w.error or "too many failed trials")
    for w in workers:
        if w.error and w.error != INTERRUPTED:
            raise CnnSearchError(f"worker {w.worker}: {w.error}")
