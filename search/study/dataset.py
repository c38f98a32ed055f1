"""A study's dataset: loaded and split as the study records, and checked against what it recorded."""

from __future__ import annotations

import optuna

from search.study.errors import StudyError
from search.study.spec import StudySpec
from search.trial.data import Split, make_split
from search.trial.datasets import ImageSet, load_dataset
from storage.records import CLASSES, DATA_FINGERPRINT, FOLDS, INPUT_SHAPE, SPLIT_FINGERPRINT, SPLIT_SIZES


def load_study_data(spec: StudySpec, data_dir: str | None = None, download: bool = False) -> tuple[ImageSet, Split]:
    """Load the study's dataset and split it as the study records (into its ``--cv`` folds too)."""
    images = load_dataset(spec.dataset, data_dir=data_dir or spec.data_dir, download=download,
                          image_size=spec.image_size)
    return images, make_split(images.labels, **spec.split_args(), parts=images.parts, cv=spec.cv)


def record_or_check_split(study: optuna.Study, spec: StudySpec, images: ImageSet, split: Split) -> None:
    """Record the split (and folds) and the data's content on a new study; refuse a worker whose copy differs.

    Results from differently split or other data would not compare, so such a worker must
    not join. A study from before content was recorded gets it from its first such worker.
    """
    attrs = study.user_attrs
    recorded = attrs.get(SPLIT_FINGERPRINT)
    if recorded is None:
        study.set_user_attr(SPLIT_FINGERPRINT, split.fingerprint())
        study.set_user_attr(SPLIT_SIZES, split.describe())
        study.set_user_attr(CLASSES, images.classes)
        study.set_user_attr(INPUT_SHAPE, list(images.images.shape[1:]))
    elif recorded != split.fingerprint():
        raise StudyError(f"dataset {spec.dataset!r} here splits differently from study {study.study_name!r} "
                         f"(fingerprint {split.fingerprint()}, study has {recorded}): the data files differ")
    _record_or_check_folds(study, split)
    content = images.fingerprint()
    if attrs.get(DATA_FINGERPRINT) is None:
        study.set_user_attr(DATA_FINGERPRINT, content)
    elif attrs[DATA_FINGERPRINT] != content:
        raise StudyError(f"dataset {spec.dataset!r} here holds other images than study {study.study_name!r} was "
                         f"made from (content fingerprint {content}, study has {attrs[DATA_FINGERPRINT]}): "
                         "give this machine the study's copy of the data")


def _record_or_check_folds(study: optuna.Study, split: Split) -> None:
    """Record a ``--cv`` study's folds; refuse a worker that would divide train + val differently.

    Fold values from other folds would not average into the same measure (a different
    scikit-learn could shuffle them otherwise, for instance).
    """
    folds = split.describe_folds()
    if folds is None:
        return
    recorded = study.user_attrs.get(FOLDS)
    if recorded is None:
        study.set_user_attr(FOLDS, folds)
    elif recorded.get("fingerprint") != folds["fingerprint"]:
        raise StudyError(f"the {folds['k']} folds of train + val here differ from study {study.study_name!r}'s "
                         f"(fingerprint {folds['fingerprint']}, study has {recorded.get('fingerprint')}): "
                         "run this worker with the scikit-learn version and data the study was made with")
