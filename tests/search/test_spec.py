"""A study's spec, as it is written into the study and read back by workers and reports."""

from __future__ import annotations

from search.study.spec import StudySpec
from spaces import load_space
from storage import records


def test_every_study_attr_readers_look_up_is_one_the_spec_writes() -> None:
    written = StudySpec(space=load_space("tiny"), dataset="digits", budget=3).to_attrs()
    named = {value for name, value in vars(records).items() if name.startswith("STUDY_")}
    assert named <= set(written)


def test_spec_round_trips_through_its_study_attrs() -> None:
    spec = StudySpec(space=load_space("tiny"), dataset="digits", objectives=["accuracy", "params"], sampler="tpe",
                     budget=3, max_params=10_000)
    back = StudySpec.from_attrs(spec.to_attrs(), "s")
    assert back.to_attrs() | {records.STUDY_VERSIONS: None} == spec.to_attrs() | {records.STUDY_VERSIONS: None}
    assert back.space == spec.space
