"""Data over the device's budget is streamed from the cache: the same batches, the same curves, the choice recorded."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
from PIL import Image

from search.cli import main
from search.trial.data import make_split, prepare_data
from search.trial.datasets import load_dataset
from search.trial.train import fit
from spaces.schema import TrialConfig


def make_folder(root: Path, per_class: int = 24) -> Path:
    generator = torch.Generator().manual_seed(0)
    for label, channel in (("r", 0), ("g", 1), ("b", 2)):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            pixels = torch.randint(0, 120, (20, 20, 3), generator=generator, dtype=torch.uint8)
            pixels[:, :, channel] += 120
            Image.fromarray(pixels.numpy()).save(root / label / f"{i}.png")
    return root


def test_streamed_data_trains_to_exactly_the_curves_of_data_on_the_device(tmp_path):
    images = load_dataset(f"imagefolder:{make_folder(tmp_path / 'photos')}", image_size=16)
    split = make_split(images.labels, seed=0)
    config = TrialConfig(width=8, depth=1, epochs=3, batch_size=8, aug_flip=True, aug_translate=2, seed=7)
    on_device = prepare_data(images, split, "cpu")
    streamed = prepare_data(images, split, "cpu", data_memory=1000)
    assert on_device.feed["mode"] == "device" and streamed.feed["mode"] == "stream"
    assert streamed.feed["reason"].startswith(f"{len(split.train) + len(split.val)} images need ")
    assert torch.equal(on_device.mean, streamed.mean) and torch.equal(on_device.std, streamed.std)
    _, expected = fit(config, on_device, "cpu", measure=False)
    _, got = fit(config, streamed, "cpu", measure=False)
    assert got.curves == expected.curves


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_streamed_epoch_is_batch_for_batch_the_on_device_epoch(tmp_path, device):
    images = load_dataset(f"imagefolder:{make_folder(tmp_path / 'photos', per_class=30)}", image_size=16)
    split = make_split(images.labels, seed=0)
    on_device = prepare_data(images, split, device)
    streamed = prepare_data(images, split, device, data_memory=1)
    seen = []
    for data in (on_device, streamed):
        generator = torch.Generator(device=device).manual_seed(3)
        seen.append([(x.cpu(), y.cpu()) for x, y in data.train_batches(7, generator)])
        assert all(x.device.type == device for x, _ in data.train_batches(7, generator))
    assert len(seen[0]) == len(seen[1]) == -(-len(split.train) // 7)
    for (x0, y0), (x1, y1) in zip(*seen, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    assert torch.equal(on_device.val_x[2:9].cpu(), streamed.val_x[2:9].cpu())


def test_streamed_batches_stop_cleanly_when_training_stops_early(tmp_path):
    images = load_dataset(f"imagefolder:{make_folder(tmp_path / 'photos', per_class=8)}", image_size=16)
    streamed = prepare_data(images, make_split(images.labels, seed=0, val_fraction=0.2, test_fraction=0.2), "cpu",
                            data_memory=1)
    generator = torch.Generator().manual_seed(0)
    for x, y in streamed.train_batches(2, generator):
        assert x.shape == (2, 3, 16, 16) and y.shape == (2,)
        break
    assert torch.equal(streamed.val_x[0:3], images.images[torch.from_numpy(
        make_split(images.labels, seed=0, val_fraction=0.2, test_fraction=0.2).val[:3])])


@pytest.mark.slow
def test_run_with_a_tiny_data_memory_streams_and_records_why(workdir, capsys, monkeypatch):
    folder = make_folder(workdir / "photos")
    monkeypatch.setenv("CNNSEARCH_DATA_MEMORY_MB", "100000")  # the flag sets it for this process: undone at the end
    (workdir / "tiny.yaml").write_text("params:\n  epochs: 2\n  width: 4\n  depth: 1\n")
    curves = {}
    for study, extra in (("dev", []), ("stream", ["--data-memory", "0.001"])):
        assert main(["run", "--study", study, "--dataset", f"imagefolder:{folder}", "--space", "tiny.yaml",
                     "--trials", "1", "--no-progress", "--device", "cpu", *extra]) == 0
        trial = optuna.load_study(study_name=study, storage="sqlite:///cnnsearch.db").trials[0]
        curves[study] = trial.user_attrs["curves"]
        assert trial.user_attrs["data_feed"]["mode"] == ("stream" if extra else "device")
    assert "(--data-memory 0.001 MB)" in trial.user_attrs["data_feed"]["reason"]
    assert curves["dev"] == curves["stream"]
