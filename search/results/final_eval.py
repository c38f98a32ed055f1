"""The final evaluation: retrain the best configs on train+val and test them on the held-out split.

Search only ever looked at val; this is the one place that touches test. Each of the
top K configs is retrained S times (seeds ``seed``, ``seed + 1``, ...; the first is the
trial's own) on train+val and evaluated on test with scikit-learn's metrics: accuracy,
macro precision/recall/F1, the confusion matrix, one-vs-rest ROC-AUC, top-5 accuracy
when there are more than 5 classes, and accuracy under corruptions (Gaussian noise of
sigma 0.1 and 0.2, a brightness shift) to show robustness as the drop from clean.

The result is a plain JSON-able dict (see :func:`final_evaluation`) that
``reports.report`` renders; reports never trains.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from typing import Any

import numpy as np
import optuna
import torch

from search.study.dataset import load_study_data, record_or_check_split
from search.study.errors import StudyError
from search.study.spec import load_spec
from search.trial.data import TrialData, prepare_data
from search.trial.device import amp_dtype_for, resolve_device, use_deterministic_kernels
from search.trial.errors import CnnSearchError, TrialFailed
from search.trial.memory import eval_batch_size, oom_as_trial_failed
from search.trial.train import EVAL_BATCH, fit
from spaces.schema import TrialConfig
from storage.records import CONFIG, VAL_ACCURACY
from storage.studies import most_accurate

log = logging.getLogger(__name__)

BRIGHTNESS_SHIFT = 0.2
NOISE_SIGMAS = (0.1, 0.2)
CORRUPTIONS = {
    **{f"noise_{s}": f"Gaussian noise σ={s}" for s in NOISE_SIGMAS},
    f"brightness_+{BRIGHTNESS_SHIFT}": f"brightness +{BRIGHTNESS_SHIFT}",
}
"""Corruption name -> what it is (pixels in [0, 1], clipped back into [0, 1] after)."""


def final_evaluation(study: optuna.Study, top_k: int, seeds: int, *, device: str | torch.device = "auto",
                     data_dir: str | None = None,
                     on_run: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Retrain the ``top_k`` best configs of ``study`` ``seeds`` times each on train+val; test them.

    Returns ``{"top_k", "seeds", "device", "train_images", "test_images", "classes",
    "corruptions": {name: description}, "models": [{"trial", "val_accuracy", "params",
    "config", "confusion_matrix" (summed over seeds), "runs": [{"seed", "accuracy",
    "precision_macro", "recall_macro", "f1_macro", "roc_auc_ovr", "top5_accuracy" (None for
    5 classes or fewer), "train_seconds", "inference_ms" (per image, batched), "corrupted":
    {name: accuracy}}]}]}``. ``on_run`` is called with each run's record as it finishes.
    A study run with ``--deterministic`` is retrained with deterministic kernels (process-wide:
    :func:`search.trial.device.use_deterministic_kernels`); a run that runs out of memory or
    diverges is a :class:`CnnSearchError` naming the trial and seed.
    """
    if top_k < 1:
        raise CnnSearchError(f"--final-eval must be at least 1 (configs to retrain), got {top_k}")
    if seeds < 1:
        raise CnnSearchError(f"--seeds must be at least 1, got {seeds}")
    chosen = most_accurate(study, top_k)
    if not chosen:
        raise StudyError(f"--final-eval: study {study.study_name!r} has no completed trial to evaluate yet")
    spec = load_spec(study)
    images, split = load_study_data(spec, data_dir)
    record_or_check_split(study, spec, images, split)  # refuses data that splits differently
    dev = resolve_device(device)
    if spec.deterministic:
        use_deterministic_kernels()
    data = prepare_data(images, split, dev, stage="final")
    models = []
    for trial in chosen:
        config = TrialConfig.from_dict(trial.user_attrs[CONFIG], where=f"trial #{trial.number}: config")
        runs = []
        matrix = np.zeros((data.num_classes, data.num_classes), dtype=np.int64)
        for offset in range(seeds):
            run, run_matrix = _evaluate_run(trial.number, config.replace(seed=config.seed + offset), data, dev)
            matrix += run_matrix
            runs.append(run)
            log.info("final evaluation: trial %d seed %d: test accuracy %.4f", trial.number, run["seed"],
                     run["accuracy"])
            if on_run is not None:
                on_run({"trial": trial.number, **run})
        models.append({"trial": trial.number, "val_accuracy": trial.user_attrs.get(VAL_ACCURACY),
                       "params": trial.params, "config": config.to_dict(), "runs": runs,
                       "confusion_matrix": matrix.tolist()})
    return {"top_k": top_k, "seeds": seeds, "device": str(dev), "train_images": len(data.train_y),
            "test_images": len(data.val_y), "classes": data.classes, "corruptions": dict(CORRUPTIONS),
            "models": models}


def evaluate_config(config: TrialConfig, data: TrialData, device: torch.device) -> tuple[dict[str, Any],
                                                                                         np.ndarray]:
    """Train ``config`` on ``data``'s train part (train+val) and test on its held-out part.

    Returns the run's metrics and its confusion matrix (rows: true class).
    """
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
        roc_auc_score,
        top_k_accuracy_score,
    )

    model, metrics = fit(config, data, device, measure=False)
    y = data.val_y.cpu().numpy()
    labels = list(range(data.num_classes))
    warmup = data.val_x[:eval_batch_size(data.input_shape, EVAL_BATCH)]
    predict_proba(model, data, warmup)  # the first call pays for allocations
    started = time.perf_counter()
    probs = predict_proba(model, data, data.val_x)
    inference_ms = (time.perf_counter() - started) * 1000 / max(1, len(y))
    pred = probs.argmax(1)
    precision, recall, f1, _ = precision_recall_fscore_support(y, pred, labels=labels, average="macro",
                                                               zero_division=0)
    run: dict[str, Any] = {
        "seed": config.seed,
        "accuracy": float(accuracy_score(y, pred)),
        "precision_macro": float(precision), "recall_macro": float(recall), "f1_macro": float(f1),
        "roc_auc_ovr": _roc_auc(roc_auc_score, y, probs, labels),
        "top5_accuracy": (float(top_k_accuracy_score(y, probs, k=5, labels=labels))
                          if data.num_classes > 5 else None),
        "train_seconds": metrics.train_seconds,
        "inference_ms": inference_ms,
        "corrupted": {},
    }
    for name in CORRUPTIONS:
        generator = torch.Generator(device=data.val_x.device).manual_seed(config.seed)
        corrupted = predict_proba(model, data, data.val_x, corrupt=partial(_corrupt, name=name, generator=generator))
        run["corrupted"][name] = float(accuracy_score(y, corrupted.argmax(1)))
    return run, confusion_matrix(y, pred, labels=labels)


def _evaluate_run(number: int, config: TrialConfig, data: TrialData,
                  device: torch.device) -> tuple[dict[str, Any], np.ndarray]:
    """:func:`evaluate_config`; a run that cannot finish (out of memory, NaN loss) is one line, not a traceback."""
    try:
        return oom_as_trial_failed(lambda: evaluate_config(config, data, device), device)
    except TrialFailed as exc:
        raise CnnSearchError(f"final evaluation of trial #{number} (seed {config.seed}) stopped: {exc}") from None


def _roc_auc(roc_auc_score: Callable, y: np.ndarray, probs: np.ndarray, labels: list[int]) -> float | None:
    try:
        if len(labels) == 2:
            return float(roc_auc_score(y, probs[:, 1]))
        return float(roc_auc_score(y, probs, multi_class="ovr", labels=labels))
    except ValueError as exc:  # a class absent from the test split: AUC is undefined for it
        log.warning("ROC-AUC not computed: %s", exc)
        return None


def _corrupt(x: torch.Tensor, name: str, generator: torch.Generator) -> torch.Tensor:
    """Corruption ``name`` applied in place to float images ``x`` in [0, 1] (one batch)."""
    if name.startswith("noise_"):
        sigma = float(name.removeprefix("noise_"))
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x.add_(noise, alpha=sigma).clamp_(0.0, 1.0)
    return x.add_(BRIGHTNESS_SHIFT).clamp_(0.0, 1.0)


@torch.inference_mode()
def predict_proba(model: torch.nn.Module, data: TrialData, x: torch.Tensor,
                  corrupt: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
    """Class probabilities (N x classes, float64 numpy) of ``model`` on uint8 images ``x``.

    Only one batch (:func:`search.trial.memory.eval_batch_size`) is float at a time, and
    ``corrupt`` (float images in [0, 1] in, the same out) runs on that batch: a large test
    set is not copied per corruption.
    """
    model.eval()
    amp = amp_dtype_for(x.device)
    autocast = torch.autocast(x.device.type, dtype=amp) if amp else nullcontext()
    size = eval_batch_size(data.input_shape, EVAL_BATCH)
    out = []
    for start in range(0, len(x), size):
        batch = x[start:start + size].float().div_(255.0)
        if corrupt is not None:
            batch = corrupt(batch)
        with autocast:
            logits = model(data.normalize(batch))
        out.append(torch.softmax(logits.double(), dim=1).cpu())  # float64: sklearn checks the rows sum to 1
    return torch.cat(out).numpy()
