"""The progress bar of a running study: trials done/pruned/failed, best so far, ETA.

One tqdm bar, fed by a thread that reads the study from the storage every couple of
seconds, so it shows the whole study (every worker's trials), not only this process's.
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState
from tqdm import tqdm

from storage.periodic import Periodic
from storage.studies import best_trials, is_original, study_counts


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
        self._refresher = Periodic("progress", interval, self._refresh_quietly, first_now=False)
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

    def _refresh_quietly(self) -> None:
        try:
            self.refresh()
        except Exception:  # noqa: BLE001 - a missed refresh (storage busy) is not worth a crash
            pass

    def __enter__(self) -> StudyProgress:
        self._refresher.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._refresher.__exit__(*exc)
        try:
            self.refresh()
        finally:
            self._bar.close()
