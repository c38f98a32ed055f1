"""The metrics record a trained trial returns: its fields, its JSON form and the user attrs it records."""

from __future__ import annotations

import dataclasses
import json

from search.trial.metrics import TrialMetrics
from storage.records import METRICS

CURVES = {"val_accuracy": [0.5, 0.75], "val_loss": [1.0, 0.5], "train_loss": [1.2, 0.6], "lr": [0.01, 0.005]}


def metrics(**measured: float) -> TrialMetrics:
    return TrialMetrics(val_accuracy=0.75, val_loss=0.5, best_val_accuracy=0.75, curves=CURVES, epochs_run=2,
                        params=1000, flops=20_000, train_seconds=1.5, device="cpu", amp=None,
                        notes=["depth 3 clamped to 2"], **measured)


def test_every_recorded_metric_is_a_field() -> None:
    fields = {f.name for f in dataclasses.fields(TrialMetrics)}
    assert set(METRICS) <= fields
    assert fields - set(METRICS) == {"curves", "device", "scores"}


def test_scores_are_recorded_each_under_its_own_key_and_an_objective_reads_them() -> None:
    scored = metrics(scores={"val_macro_f1": 0.7, "my_pkg.metrics:score": 0.25})
    assert scored.attrs()["val_macro_f1"] == 0.7 and scored.attrs()["my_pkg.metrics:score"] == 0.25
    assert scored.value("my_pkg.metrics:score") == 0.25 and scored.value("val_loss") == 0.5
    assert "scores" not in metrics().to_dict()


def test_unmeasured_latency_and_throughput_are_left_out() -> None:
    data = metrics().to_dict()
    assert "latency_ms" not in data and "throughput" not in data
    assert json.loads(json.dumps(data)) == data and data["curves"] == CURVES and data["amp"] is None
    assert list(metrics().attrs()) == [name for name in METRICS if name not in ("latency_ms", "throughput")]


def test_attrs_are_the_recorded_metrics_of_a_measured_trial() -> None:
    attrs = metrics(latency_ms=0.2, throughput=5000.0).attrs()
    assert list(attrs) == list(METRICS)
    assert attrs["latency_ms"] == 0.2 and attrs["throughput"] == 5000.0 and attrs["notes"] == ["depth 3 clamped to 2"]
