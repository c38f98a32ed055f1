"""Recipes: export one from a study, load one, build its model, retrain it.

A recipe is what ``cnnsearch export`` writes (its keys are described in
:mod:`reports.export`). In a training repo::

    from search import build_model, load_recipe
    recipe = load_recipe("configs/cnn/recipe.yaml")
    model = build_model(recipe)            # or build_model(recipe["config"], input_shape, num_classes)

``cnnsearch train --config recipe.yaml`` (:func:`train_recipe`) retrains it on the same
dataset and split with the same seed; for a trial that ran on the CPU, on the CPU with the
thread count the trial used, that reproduces the trial's val accuracy exactly (the trainer
is seeded and deterministic; CPU kernels split their sums by thread, so another thread
count can move the last digits). A trial that ran on a GPU replays exactly only on the same
GPU model, with the deterministic kernels of a ``run --deterministic`` study.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reports.export import FORMATS, RECIPE_FORMAT, build_recipe, checkpoint_source, pick_trial, write_export
from search.trial import models
from search.trial.data import TrialData, make_split, prepare_data
from search.trial.datasets import load_dataset
from search.trial.errors import CnnSearchError, DataError, ModelError
from search.trial.metrics import TrialMetrics
from search.trial.train import fit
from spaces.builder import check_source, load_builder
from spaces.errors import SpaceError
from spaces.loader import load_yaml
from spaces.schema import TrialConfig
from storage.staging import staged_files

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("config", "input_shape", "num_classes", "classes", "data")


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a recipe file (YAML with :func:`spaces.loader.load_yaml`, or JSON by its ``.json`` suffix) and check it.

    The returned recipe's ``config`` is a :class:`~spaces.schema.TrialConfig` (a partial
    config, as older recipes may hold, takes the defaults). Raises :class:`CnnSearchError`
    (one line naming the file and the key) for a missing file, unparsable text, something
    that is not a cnnsearch recipe, or a config the trainer would refuse.
    """
    path = Path(path)
    where = f"--config {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CnnSearchError(f"{where}: no such file; export a recipe with `cnnsearch export`") from None
    except OSError as exc:
        raise CnnSearchError(f"{where}: cannot read it: {exc.strerror or exc}") from None
    if path.suffix == ".json":
        try:
            recipe = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CnnSearchError(f"{where}: not valid JSON ({exc})") from None
    else:
        recipe = load_yaml(text, where)  # the space files' safe loader: refuses alias bombs and repeated keys
    if not isinstance(recipe, dict) or recipe.get("format") != RECIPE_FORMAT:
        found = recipe.get("format") if isinstance(recipe, dict) else type(recipe).__name__
        raise CnnSearchError(f"{where}: not a cnnsearch recipe (format {found!r}, expected {RECIPE_FORMAT!r}); "
                             "write one with `cnnsearch export`")
    missing = [k for k in REQUIRED_KEYS if k not in recipe]
    if missing:
        raise CnnSearchError(f"{where}: missing key(s) {', '.join(missing)}; re-export it with `cnnsearch export`")
    if not isinstance(recipe["config"], dict):
        raise CnnSearchError(f"{where}: config must be a mapping of config keys, got {recipe['config']!r}")
    recipe["config"] = TrialConfig.from_dict(recipe["config"], where=f"{where}: config")
    _check_builder(recipe, where)
    return recipe


def _check_builder(recipe: dict[str, Any], where: str) -> None:
    """Refuse a recipe whose builder is missing here, or whose source file here is not the one the study used."""
    ref = recipe["config"].builder
    if ref is None:
        return
    try:
        builder = load_builder(ref, f"{where}: config")
        check_source(builder, (recipe.get("builder") or {}).get("sha256"), where)
    except SpaceError as err:
        raise CnnSearchError(str(err)) from None


def build_model(config_or_recipe: Mapping[str, Any], input_shape: tuple[int, int, int] | list[int] | None = None,
                num_classes: int | None = None) -> nn.Module:
    """The model of a trial config, or of a recipe (a dict with ``config``, ``input_shape``, ``num_classes``).

    The config is a :class:`~spaces.schema.TrialConfig` or a dict, which may be partial
    (unset keys take their defaults). ``input_shape`` (C, H, W) and ``num_classes`` default
    to the recipe's and are required for a bare config. The initial weights come from the
    config's ``seed``; load trained ones with ``model.load_state_dict``. Raises
    :class:`ModelError` for a config the trainer would refuse or a shape it cannot build.
    """
    source = config_or_recipe
    if not isinstance(source, TrialConfig) and "config" in source and "format" in source:
        input_shape = input_shape if input_shape is not None else source.get("input_shape")
        num_classes = num_classes if num_classes is not None else source.get("num_classes")
        source = source["config"]
    if input_shape is None or num_classes is None:
        raise ModelError("build_model: give input_shape (C, H, W) and num_classes with a bare config, "
                         "or pass the whole recipe")
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3:
        raise ModelError(f"build_model: input_shape must be (channels, height, width), got {list(shape)}")
    try:
        config = TrialConfig.from_dict(source)
    except SpaceError as err:
        raise ModelError(str(err)) from None
    return models.build_model(config, shape, int(num_classes))  # type: ignore[arg-type]


def recipe_data(recipe: dict[str, Any], *, data_dir: str | None = None, device: torch.device | str = "cpu",
                stage: str = "search") -> TrialData:
    """The recipe's dataset, split exactly as the study split it, on ``device``.

    ``stage="search"`` gives the trial's train and val parts; ``"final"`` train+val and
    test. Raises :class:`DataError` when the data here splits differently or holds other
    images (other files), or does not have the recipe's shape and classes.
    """
    data_spec = recipe["data"]
    split_spec = data_spec.get("split") or {}
    images = load_dataset(data_spec["dataset"], data_dir=data_dir or data_spec.get("data_dir"),
                          image_size=data_spec.get("image_size"))
    split = make_split(images.labels, seed=split_spec.get("seed", 0),
                       val_fraction=split_spec.get("val_fraction", 0.1),
                       test_fraction=split_spec.get("test_fraction", 0.1), parts=images.parts)
    wanted = split_spec.get("fingerprint")
    if wanted and split.fingerprint() != wanted:
        raise DataError(f"dataset {data_spec['dataset']!r} here splits differently from the recipe's study "
                        f"(fingerprint {split.fingerprint()}, recipe has {wanted}): the data files differ")
    content = data_spec.get("content_fingerprint")  # absent from recipes exported before it was recorded
    if content and (found := images.fingerprint()) != content:
        raise DataError(f"dataset {data_spec['dataset']!r} here holds other images than the recipe's study "
                        f"(content fingerprint {found}, recipe has {content}): "
                        "give this machine the study's copy of the data")
    if list(images.images.shape[1:]) != list(recipe["input_shape"]) or list(images.classes) != recipe["classes"]:
        raise DataError(f"dataset {data_spec['dataset']!r} here has input {list(images.images.shape[1:])} and "
                        f"{len(images.classes)} classes; the recipe wants {recipe['input_shape']} and "
                        f"{recipe['num_classes']}")
    return prepare_data(images, split, device, stage=stage)


def train_recipe(recipe: dict[str, Any], *, data_dir: str | None = None, device: torch.device | str = "cpu",
                 stage: str = "search", threads: int | None = None) -> tuple[nn.Module, TrialMetrics]:
    """Retrain the recipe's config with its seed; return the model and its metrics.

    ``recipe`` is what :func:`load_recipe` returns (a config still a plain dict is checked
    here). On CPU, torch's thread count (process-wide: ``torch.set_num_threads``) is set to
    ``threads``, by default to the count the trial ran with (recorded in the recipe), so
    the result matches the trial's bit for bit.
    """
    device = torch.device(device)
    if device.type == "cpu":
        wanted = threads or (recipe.get("provenance") or {}).get("threads")
        if wanted:
            torch.set_num_threads(int(wanted))
    data = recipe_data(recipe, data_dir=data_dir, device=device, stage=stage)
    return fit(TrialConfig.from_dict(recipe["config"], where="recipe: config"), data, device, measure=False)


def save_trained(model: nn.Module, metrics: TrialMetrics, out_dir: str | Path, *, split: str = "val",
                 evaluated_on: str | None = None) -> list[Path]:
    """Write ``weights.pt`` (a CPU ``state_dict``) and ``metrics.json`` into ``out_dir``, whole or not at all.

    ``metrics.json`` is ``metrics.to_dict()`` with the held-out metrics named after the
    ``split`` they were measured on (``split="test"``: ``test_accuracy``, ``best_test_accuracy``,
    curves ``test_accuracy``, ``test_loss``, where the trainer says ``val_*``), plus
    ``evaluated_on`` (that split, in words) when given.
    """
    record = _named_split(metrics.to_dict(), split)
    if evaluated_on is not None:
        record["evaluated_on"] = evaluated_on
    out = Path(out_dir)
    try:
        with staged_files(out) as staging:
            torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                       staging.path("weights.pt"))
            staging.write_text("metrics.json", json.dumps(record, indent=2, default=str) + "\n")
    except OSError as exc:
        raise CnnSearchError(f"--out {out}: cannot write there: {exc.strerror or exc}; choose another --out") \
            from None
    return [out / name for name in staging.names]


def _named_split(record: dict[str, Any], split: str) -> dict[str, Any]:
    """``record`` with its ``val_*`` keys (also in ``curves``) renamed to ``{split}_*``."""
    def rename(key: str) -> str:
        return key.replace("val_", f"{split}_", 1) if key.startswith(("val_", "best_val_")) else key

    named = {rename(k): v for k, v in record.items()}
    if isinstance(named.get("curves"), dict):
        named["curves"] = {rename(k): v for k, v in named["curves"].items()}
    return named


def export_recipe(storage_url: str, study_name: str, out_dir: str | Path, *, trial: int | None = None,
                  fmt: str = "yaml", data_dir: str | None = None, weights: bool = True) -> list[Path]:
    """Export trial ``trial`` (default: the best) of a study as a recipe in ``out_dir``; return the files.

    Loads the study's dataset once to compute the normalisation statistics of the split
    the trial trained on, and copies the trial's kept checkpoint from the artifact store
    (unless ``weights`` is False).
    """
    from search.study.spec import load_spec, package_versions
    from search.study.worker import load_study_data, record_or_check_split
    from storage import mask_url, open_storage
    from storage.studies import load_study

    if fmt not in FORMATS:
        raise CnnSearchError(f"--format {fmt!r} is not accepted; choose yaml or json")
    study = load_study(open_storage(storage_url, heartbeat_interval=None, read_only=True), study_name)
    chosen = pick_trial(study, trial)
    spec = load_spec(study)
    images, split = load_study_data(spec, data_dir)
    record_or_check_split(study, spec, images, split)  # refuses data that splits differently
    data = prepare_data(images, split, "cpu", stage="search")
    recipe = build_recipe(study, chosen, mean=data.mean.flatten().tolist(), std=data.std.flatten().tolist(),
                          storage_label=mask_url(storage_url), versions=package_versions())
    if spec.space.builder is not None:  # its import path and source hash: `train --config` checks its copy
        recipe["builder"] = spec.space.builder.identity()
    source = checkpoint_source(chosen, storage_url) if weights else None
    return write_export(recipe, out_dir, fmt, source)
