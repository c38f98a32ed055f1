"""The progress bar of a running study: trials done/pruned/failed, best so far, ETA.

One tqdm bar, fed by a thread that reads the study from the storage every couple of
seconds, so it shows the whole study (every worker's trials), not only this process's.
"""

from __future__ import annotations

import threading

import optuna
from optuna.trial import TrialState
from tqdm import tqdm

from reports.summary import best_trials
from search.study import is_original


def study_counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state name (COMPLETE, PRUNED, FAIL, RUNNING, WAITING)."""
    counts = {s.name: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] += 1
    return counts


def best_text(study: optuna.Study) -> str:
    """The best feasible value so far in a few characters (``-`` while no trial meets the constraints)."""
    best = best_trials(study, 1)
    if not best:
        return "-"
    if len(study.directions) > 1:
        return f"{len(best)} on front"
    return f"{best[0].value:.4f}"


class StudyProgress:
    """A live progress bar over a study; use as a context manager."""

    def __init__(self, study: optuna.Study, total: int | None, enabled: bool = True,
                 interval: float = 2.0) -> None:
        self._study = study
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar = tqdm(total=total, unit="trial", disable=not enabled, dynamic_ncols=True,
                         desc=study.study_name, smoothing=0.1)
        self._start_done = self._finished()

    def _finished(self) -> int:
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        return sum(1 for t in self._study.get_trials(deepcopy=False, states=states) if is_original(t))

    def refresh(self) -> None:
        counts = study_counts(self._study)
        done = self._finished() - self._start_done
        self._bar.update(max(0, done - self._bar.n))
        self._bar.set_postfix_str(
            f"done {counts['COMPLETE']} pruned {counts['PRUNED']} failed {counts['FAIL']} "
            f"running {counts['RUNNING']} best {best_text(self._study)}", refresh=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - a missed refresh (storage busy) is not worth a crash
                continue

    def __enter__(self) -> StudyProgress:
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.refresh()
        finally:
            self._bar.close()
