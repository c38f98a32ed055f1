"""The exported recipe: one trial's configuration in a form a training repo can consume.

A recipe (``recipe.yaml`` or ``recipe.json``) holds:

- ``config``: the complete config the trial trained from (``spaces.schema.CONFIG_KEYS``), as
  built: where the model builder fitted a value to the input (a depth the images cannot
  hold), the value it used; ``search.build_model(recipe["config"], recipe["input_shape"],
  recipe["num_classes"])`` builds the model, ``cnnsearch train --config recipe.yaml`` retrains it.
- ``notes``: what the model builder or trainer adjusted and why (``depth 4 clamped to 2: ...``).
- ``input_shape``, ``num_classes``, ``classes``: what the model takes and predicts.
- ``preprocessing``: channels, how pixels become model input (``x / 255``, then
  ``(x - mean) / std`` per channel, with the training split's statistics), and the
  training-time augmentation keys.
- ``data``: the dataset name (an ``imagefolder:`` path absolute, as the study recorded it),
  the content's fingerprint and the exact split (seed, fractions, fingerprint), so a retrain
  sees the same images.
- ``metrics``: what the trial measured (val accuracy, params, FLOPs, latency, time).
- ``provenance``: study, trial number, seed, space fingerprint, package versions, git
  commit, storage (password masked).
- ``weights``: the trial's ``state_dict`` file (``weights.pt``, from the artifact store,
  when the study kept checkpoints) with its sha256, or null.

Beside it, ``weights.pt`` (when kept) and a short ``README.md``. Files are written to
temporary names in the target directory and renamed into place only when all are
complete. This module builds and writes; the dataset statistics and versions come from
``search`` (``search.results.recipe.export_recipe``), which reads the data.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial, TrialState

from reports.errors import ReportError
from reports.summary import SHOWN_METRICS
from spaces.schema import AUGMENTATION_KEYS
from storage import artifact_store_for
from storage.records import (
    CHECKPOINT,
    CLASSES,
    CONFIG,
    DATA_FINGERPRINT,
    DEVICE,
    INPUT_SHAPE,
    NOTES,
    SEED,
    SPLIT_FINGERPRINT,
    SPLIT_SIZES,
    STUDY_DATA_DIR,
    STUDY_DATASET,
    STUDY_DETERMINISTIC,
    STUDY_IMAGE_SIZE,
    STUDY_OBJECTIVES,
    STUDY_SAMPLER,
    STUDY_SPACE_FINGERPRINT,
    STUDY_SPACE_NAME,
    STUDY_VERSIONS,
    THREADS,
)
from storage.staging import staged_files
from storage.studies import most_accurate

log = logging.getLogger(__name__)

RECIPE_FORMAT = "cnnsearch-recipe/1"
FORMATS = ("yaml", "json")
WEIGHTS_FILE = "weights.pt"
README_FILE = "README.md"
README_FALLBACK = "README.cnnsearch.md"
README_MARK = "<!-- written by cnnsearch export -->"
"""First line of our README: an existing README.md without it is the user's and is left alone."""


def pick_trial(study: optuna.Study, number: int | None = None) -> FrozenTrial:
    """Trial ``number`` (it must be COMPLETE), or the best completed trial.

    For several objectives "best" is the Pareto-front trial with the highest val
    accuracy. Raises :class:`ReportError` when there is no such trial.
    """
    if number is not None:
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        if number not in trials:
            raise ReportError(f"--trial {number}: study {study.study_name!r} has no trial #{number} "
                              f"(trials #0..#{len(trials) - 1})" if trials else
                              f"--trial {number}: study {study.study_name!r} has no trials")
        trial = trials[number]
        if trial.state != TrialState.COMPLETE:
            raise ReportError(f"--trial {number}: trial #{number} of study {study.study_name!r} is "
                              f"{trial.state.name}, only a COMPLETE trial can be exported")
        return trial
    best = most_accurate(study, 1)
    if not best:
        raise ReportError(f"study {study.study_name!r} has no completed trial to export yet; "
                          "run more trials or wait for a running one to finish")
    return best[0]


def build_recipe(study: optuna.Study, trial: FrozenTrial, *, mean: list[float], std: list[float],
                 storage_label: str, versions: dict[str, str] | None = None) -> dict[str, Any]:
    """The recipe of ``trial`` (see the module docstring); ``weights`` is filled in by :func:`write_export`.

    ``mean`` and ``std`` are the per-channel statistics of ``x / 255`` over the training
    split the trial trained on; ``storage_label`` must already be masked; ``versions``
    are the packages installed at export time (the study records those it was created with).
    """
    attrs = study.user_attrs
    config = dict(trial.user_attrs.get(CONFIG) or {})
    if not config:
        raise ReportError(f"trial #{trial.number} of study {study.study_name!r} has no recorded config "
                          "(was it run by cnnsearch?); nothing to export")
    input_shape = [int(v) for v in attrs.get(INPUT_SHAPE) or []]
    classes = [str(c) for c in attrs.get(CLASSES) or []]
    split = attrs.get(SPLIT_SIZES) or {}
    return {
        "format": RECIPE_FORMAT,
        "config": config,
        "notes": list(trial.user_attrs.get(NOTES) or []),
        "input_shape": input_shape,
        "num_classes": len(classes),
        "classes": classes,
        "preprocessing": {
            "channels": input_shape[0] if input_shape else None,
            "height": input_shape[1] if input_shape else None,
            "width": input_shape[2] if input_shape else None,
            "pixels": "uint8 0..255, divided by 255",
            "normalize": "(x / 255 - mean) / std per channel; mean and std of the training split",
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
            "augmentation": {k: config[k] for k in AUGMENTATION_KEYS if k in config},
        },
        "data": {
            "dataset": attrs.get(STUDY_DATASET),
            "data_dir": attrs.get(STUDY_DATA_DIR),
            "image_size": attrs.get(STUDY_IMAGE_SIZE),
            "content_fingerprint": attrs.get(DATA_FINGERPRINT),
            "split": {"seed": split.get("seed"), "val_fraction": split.get("val_fraction"),
                      "test_fraction": split.get("test_fraction"), "sizes": split.get("sizes"),
                      "fingerprint": attrs.get(SPLIT_FINGERPRINT)},
        },
        "metrics": {k: trial.user_attrs[k] for k in SHOWN_METRICS if k in trial.user_attrs},
        "provenance": {
            "study": study.study_name,
            "trial": trial.number,
            "seed": config.get("seed", trial.user_attrs.get(SEED)),
            "objectives": attrs.get(STUDY_OBJECTIVES),
            "values": trial.values,
            "space": attrs.get(STUDY_SPACE_NAME),
            "space_fingerprint": attrs.get(STUDY_SPACE_FINGERPRINT),
            "sampler": attrs.get(STUDY_SAMPLER),
            "storage": storage_label,
            "trained_on": trial.user_attrs.get(DEVICE),
            "threads": trial.user_attrs.get(THREADS),
            "deterministic": bool(attrs.get(STUDY_DETERMINISTIC)),
            "completed": trial.datetime_complete.isoformat(timespec="seconds") if trial.datetime_complete else None,
            "exported": dt.datetime.now().isoformat(timespec="seconds"),
            "study_versions": attrs.get(STUDY_VERSIONS) or {},
            "export_versions": versions or {},
            "git_commit": git_commit(),
        },
        "weights": None,
    }


def checkpoint_source(trial: FrozenTrial, storage_url: str) -> Callable[[Path], None] | None:
    """A function that copies ``trial``'s kept checkpoint to a path, or None when none was kept.

    The checkpoint is read from the artifact store of ``storage_url``
    (:func:`storage.artifact_store_for`).
    """
    artifact_id = trial.user_attrs.get(CHECKPOINT)
    if not artifact_id:
        return None

    def fetch(path: Path) -> None:
        try:
            optuna.artifacts.download_artifact(artifact_store=artifact_store_for(storage_url),
                                               artifact_id=artifact_id, file_path=str(path))
        except ArtifactNotFound:
            raise ReportError(f"trial #{trial.number}'s checkpoint (artifact {artifact_id}) is not in the artifact "
                              "store; point $CNNSEARCH_ARTIFACTS at the directory its workers wrote, or export "
                              "without weights (--no-weights)") from None

    return fetch


def write_export(recipe: dict[str, Any], out_dir: str | Path, fmt: str = "yaml",
                 weights: Callable[[Path], None] | None = None) -> list[Path]:
    """Write the recipe, the weights (``weights(path)`` copies them) and a README into ``out_dir``.

    Returns the paths written. Existing files of the same names are replaced, except a
    README.md that cnnsearch did not write (the README then goes to README.cnnsearch.md).
    Nothing is renamed into place until every file is complete, and on a failure no
    temporary file is left (:func:`storage.staging.staged_files`). Raises
    :class:`ReportError` for a bad ``fmt`` or an unwritable ``out_dir``.
    """
    if fmt not in FORMATS:
        raise ReportError(f"--format {fmt!r} is not accepted; choose yaml or json")
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} is a file; give a directory for the recipe")
    recipe = dict(recipe)
    try:
        with staged_files(out) as staging:
            if weights is not None:
                staged_weights = staging.path(WEIGHTS_FILE)
                weights(staged_weights)
                recipe["weights"] = {"file": WEIGHTS_FILE, "format": "state_dict", "sha256": _sha256(staged_weights),
                                     "load": f"torch.load('{WEIGHTS_FILE}', weights_only=True)"}
            recipe_name = f"recipe.{fmt}"
            text = (yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True) if fmt == "yaml"
                    else json.dumps(recipe, indent=2) + "\n")
            staging.write_text(recipe_name, text)
            staging.write_text(_readme_name(out), readme(recipe, recipe_name))
            written = [out / name for name in staging.names]
    except OSError as exc:
        raise ReportError(f"cannot write the recipe to {out}: {exc.strerror or exc}; choose another --out") from exc
    return written


def _readme_name(out: Path) -> str:
    existing = out / README_FILE
    if existing.is_file():
        with existing.open(encoding="utf-8", errors="replace") as f:
            if f.readline().strip() != README_MARK:
                log.warning("%s exists and was not written by cnnsearch; writing %s instead", existing,
                            README_FALLBACK)
                return README_FALLBACK
    return README_FILE


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit() -> str | None:
    """The commit of the cnnsearch checkout this runs from (``+dirty`` with local changes), or None."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None  # not a git checkout (an installed wheel), or no git
    return commit + ("+dirty" if dirty else "") if commit else None


def readme(recipe: dict[str, Any], recipe_name: str) -> str:
    """The short README.md that goes with a recipe into the training repo."""
    prov, metrics, pre = recipe["provenance"], recipe["metrics"], recipe["preprocessing"]
    weights = recipe.get("weights")
    acc = metrics.get("val_accuracy")
    lines = [
        README_MARK,
        f"# CNN recipe: study `{prov['study']}`, trial #{prov['trial']}",
        "",
        f"Val accuracy {acc:.4f} on `{recipe['data']['dataset']}`" if isinstance(acc, float) else
        f"Trained on `{recipe['data']['dataset']}`",
        f"({metrics.get('params', '?')} parameters, {metrics.get('flops', '?')} FLOPs, "
        f"{recipe['num_classes']} classes, input {'x'.join(str(v) for v in recipe['input_shape'])}).",
        f"Exported {prov['exported']} from space `{prov['space']}` ({prov['space_fingerprint']}), "
        f"seed {prov['seed']}.",
        *(f"Note: {note}." for note in recipe.get("notes") or []),
        "",
        "## Retrain",
        "",
        f"    cnnsearch train --config {recipe_name} --out runs/trial{prov['trial']}",
        "",
        "Same dataset, same split, same seed: a trial that ran on the CPU is reproduced exactly on the CPU. "
        "One that ran on a GPU is reproduced only approximately (other kernels, other random streams), "
        "exactly only on the same GPU model with `--device cuda` when its study ran with `--deterministic`.",
        "",
        "## Use in Python",
        "",
        "```python",
        "import torch, yaml" if recipe_name.endswith(".yaml") else "import json, torch",
        "from search import build_model",
        "",
        (f"recipe = yaml.safe_load(open('{recipe_name}'))" if recipe_name.endswith(".yaml")
         else f"recipe = json.load(open('{recipe_name}'))"),
        "model = build_model(recipe['config'], recipe['input_shape'], recipe['num_classes'])",
    ]
    if weights:
        lines.append(f"model.load_state_dict(torch.load('{weights['file']}', weights_only=True))")
    lines += [
        "model.eval()",
        "mean = torch.tensor(recipe['preprocessing']['mean']).view(1, -1, 1, 1)",
        "std = torch.tensor(recipe['preprocessing']['std']).view(1, -1, 1, 1)",
        "logits = model((images_uint8.float() / 255 - mean) / std)  # images: N x C x H x W",
        "```",
        "",
        f"Inputs: {pre['channels']} channel(s), {pre['height']}x{pre['width']} pixels; "
        f"mean {pre['mean']}, std {pre['std']}.",
    ]
    if not weights:
        lines += ["", "No weights: the study did not keep checkpoints (`cnnsearch run --keep-checkpoints`); "
                      "`cnnsearch train` makes them."]
    return "\n".join(lines) + "\n"
