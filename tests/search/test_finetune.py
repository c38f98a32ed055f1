"""Fine-tuning: what each freeze mode trains, body/head learning rates, weights files, pretrained input."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pytest
import torch
import torchvision
import yaml

from search.cli import main
from search.trial.data import TrialData, make_split, prepare_data
from search.trial.datasets import load_dataset
from search.trial.finetune import param_groups
from search.trial.models import build_model
from search.trial.train import fit, make_optimizer
from spaces.schema import BACKBONES, TrialConfig


@pytest.fixture(scope="module")
def digits() -> TrialData:
    """128 training images of scikit-learn's 8x8 digits (grey), 64 to validate on."""
    images = load_dataset("digits")
    data = prepare_data(images, make_split(images.labels, seed=0), "cpu")
    data.train_x, data.train_y = data.train_x[:128], data.train_y[:128]
    data.val_x, data.val_y = data.val_x[:64], data.val_y[:64]
    return data


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An untrained ResNet-18's state dict saved as torchvision publishes its weights."""
    torch.manual_seed(7)
    path = str(tmp_path_factory.mktemp("weights") / "resnet18-local.pth")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def _finetune(digits: TrialData, weights: str, **keys) -> tuple[dict, dict]:
    """The model's state before and after a short pretrained ResNet-18 fine-tuning run at 32x32."""
    config = TrialConfig.from_dict({"model": "resnet18", "pretrained": True, "weights_path": weights,
                                    "input_size": 32, "epochs": 1, "batch_size": 32, "lr": 1e-2, **keys})
    before = {k: v.clone() for k, v in build_model(config, digits.input_shape, digits.num_classes)
              .net.state_dict().items()}
    model, _ = fit(config, digits, "cpu", measure=False)
    return before, model.net.state_dict()


def _changed(before: dict, after: dict, prefix: str) -> list[bool]:
    return [not torch.equal(before[k], after[k]) for k in before
            if k.startswith(prefix) and not k.endswith("num_batches_tracked")]


@pytest.mark.slow
def test_freeze_body_trains_only_the_output_layer(digits, resnet18_file):
    before, after = _finetune(digits, resnet18_file, freeze="body")
    assert not any(_changed(before, after, "")[:-2])  # weights and running statistics alike
    assert all(_changed(before, after, "fc."))


@pytest.mark.slow
def test_freeze_stages_freezes_the_first_stages_from_the_input(digits, resnet18_file):
    before, after = _finetune(digits, resnet18_file, freeze="stages", freeze_stages=2)
    for frozen in ("conv1.", "bn1.", "layer1."):
        assert not any(_changed(before, after, frozen)), frozen
    for trained in ("layer2.", "layer3.", "layer4.", "fc."):
        assert all(_changed(before, after, trained)), trained


@pytest.mark.slow
def test_frozen_layers_train_from_the_unfreeze_epoch(digits, resnet18_file):
    before, kept = _finetune(digits, resnet18_file, freeze="body", epochs=2, unfreeze_epoch=3)
    assert not any(_changed(before, kept, "layer1."))
    before, released = _finetune(digits, resnet18_file, freeze="body", epochs=2, unfreeze_epoch=2)
    assert all(_changed(before, released, "layer1.")) and all(_changed(before, released, "conv1."))


def test_body_and_head_learning_rates_reach_the_optimizer():
    config = TrialConfig.from_dict({"model": "lenet5", "lr": 0.02, "body_lr_mult": 0.1, "optimizer": "sgd"})
    model = build_model(config, (1, 28, 28), 10)
    optimizer = make_optimizer(config, param_groups(model, config))
    assert [(g["name"], g["lr"]) for g in optimizer.param_groups] == [("head", 0.02), ("body", pytest.approx(0.002))]
    head = {id(p) for p in model.net.classifier[-1].parameters()}
    assert {id(p) for p in optimizer.param_groups[0]["params"]} == head
    assert len(optimizer.param_groups[1]["params"]) == len(list(model.parameters())) - 2


def test_one_learning_rate_is_one_parameter_group():
    config = TrialConfig.from_dict({"model": "lenet5", "lr": 0.02, "optimizer": "adam"})
    model = build_model(config, (1, 28, 28), 10)
    optimizer = make_optimizer(config, param_groups(model, config))
    assert [(g["name"], g["lr"]) for g in optimizer.param_groups] == [("all", 0.02)]
    assert [id(p) for p in optimizer.param_groups[0]["params"]] == [id(p) for p in model.parameters()]


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_a_body_learning_rate_of_zero_leaves_the_body_as_it_was(digits, resnet18_file, schedule):
    before, after = _finetune(digits, resnet18_file, body_lr_mult=0.0, optimizer="sgd", schedule=schedule)
    body = [k for k in before if k.endswith(("weight", "bias")) and not k.startswith("fc.")]
    assert not any(changed for k in body for changed in _changed(before, after, k))  # running statistics may move
    assert all(_changed(before, after, "fc."))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in ("vgg11_bn", "resnet50") else n
                                  for n in BACKBONES if n != "lenet5"])
def test_a_weights_file_in_torchvisions_format_loads_for_every_backbone(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    torch.manual_seed(1)
    state = torchvision.models.get_model(name, weights=None).state_dict()
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)
    config = TrialConfig.from_dict({"model": name, "pretrained": True, "weights_path": str(path), "input_size": 64})
    model = build_model(config, (3, 32, 32), 5)
    loaded = model.net.state_dict()
    last = [k for k in state if k.endswith("weight")][-2]  # the last weight before the replaced output layer
    assert torch.equal(loaded[last], state[last])
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_pretrained_input_is_renormalised_for_the_weights_and_resized_to_the_native_size(resnet18_file):
    config = TrialConfig.from_dict({"model": "resnet18", "pretrained": True, "weights_path": resnet18_file,
                                    "gray_to_rgb": "replicate"})
    model = build_model(config, (1, 8, 8), 10)
    assert model.net.conv1.in_channels == 3
    model.expect_input(torch.tensor([0.25]), torch.tensor([0.5]))
    grey = torch.full((1, 1, 8, 8), 0.6)  # normalised: the pixel value 0.55
    seen = model.renormalize(model.resize(grey))
    assert seen.shape == (1, 3, 224, 224)
    expected = (0.55 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(seen[0, :, 100, 100], expected, atol=1e-5)
    assert any("224x224" in note for note in model.notes)


def _pretrained_recipe(tmp_path: Path, model: str, **keys) -> Path:
    """A recipe file fine-tuning ``model`` from pretrained weights on the digits."""
    recipe = {"format": "cnnsearch-recipe/1", "input_shape": [1, 8, 8], "num_classes": 10,
              "classes": [str(i) for i in range(10)], "data": {"dataset": "digits"},
              "config": {"model": model, "pretrained": True, "epochs": 1, **keys}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_pretrained_training_offline_without_weights_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))

    def refuse(*args, **kwargs):
        raise AssertionError("tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    path = _pretrained_recipe(tmp_path, "alexnet")
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "alexnet-owt-7be5be79.pth" in err and str(tmp_path / "empty-hub") in err and "weights_path" in err


def test_concurrent_loaders_download_the_weights_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub-home"))
    monkeypatch.setenv("CNNSEARCH_DOWNLOAD_WEIGHTS", "1")
    torch.manual_seed(2)
    state = torchvision.models.resnet18(weights=None).state_dict()
    fetches = []

    def fetch(url, dst, hash_prefix=None, progress=True):  # the network, and only it, is mocked
        fetches.append((url, hash_prefix))
        time.sleep(0.5)  # a slow download: the other loaders arrive while it runs
        torch.save(state, dst + ".partial")
        os.replace(dst + ".partial", dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fetch)
    config = TrialConfig.from_dict({"model": "resnet18", "pretrained": True, "input_size": 32})
    with ThreadPoolExecutor(4) as pool:
        models = list(pool.map(lambda _: build_model(config, (3, 32, 32), 10), range(4)))
    assert fetches == [("https://download.pytorch.org/models/resnet18-f37072fd.pth", "f37072fd")]
    assert (tmp_path / "hub-home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth").is_file()
    assert all(torch.equal(m.net.layer1[0].conv1.weight, state["layer1.0.conv1.weight"]) for m in models)


def test_a_failed_download_is_one_line_saying_which_file_to_place_where(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub-home"))
    monkeypatch.delenv("CNNSEARCH_DOWNLOAD_WEIGHTS", raising=False)  # --download-weights sets it; restored after

    def offline(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    path = _pretrained_recipe(tmp_path, "alexnet")
    assert main(["train", "--config", str(path), "--download-weights"]) == 2
    err = capsys.readouterr().err.strip()
    expected = tmp_path / "hub-home" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert len(err.splitlines()) == 1 and "name resolution" in err and str(expected) in err
    assert not expected.exists()


@pytest.mark.slow
def test_the_seed_studys_alexnet_recipe_fine_tunes_end_to_end(workdir, capsys, monkeypatch):
    """AlexNet from a local weights file, fine-tuned on the digits resized to 63 px; exported, retrained."""
    monkeypatch.setenv("TORCH_HOME", str(workdir / "empty-hub"))
    torch.manual_seed(4)
    weights = workdir / "alexnet-local.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), weights)
    space = workdir / "alexnet.yaml"
    space.write_text(yaml.safe_dump({"description": "AlexNet fine-tuning", "params": {
        "model": "alexnet", "pretrained": True, "weights_path": str(weights), "input_size": 63,
        "freeze": "stages", "freeze_stages": 2,
        "body_lr_mult": 0.1, "optimizer": "sgd", "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
        "batch_size": 16, "epochs": 1}}))  # batch 16: the memory estimate refuses AlexNet at 128 on 20 GB
    assert main(["run", "--study", "alex", "--dataset", "digits", "--space", str(space), "--trials", "1",
                 "--pruner", "none", "--no-progress"]) == 0
    assert main(["export", "--study", "alex", "--out", "recipe"]) == 0
    recipe = yaml.safe_load((workdir / "recipe" / "recipe.yaml").read_text())
    config = recipe["config"]
    assert (config["model"], config["pretrained"], config["input_size"]) == ("alexnet", True, 63)
    assert config["freeze"] == "stages" and config["body_lr_mult"] == 0.1
    assert config["weights_path"] == str(weights)
    capsys.readouterr()

    assert main(["train", "--config", "recipe/recipe.yaml", "--out", "retrained"]) == 0
    metrics = json.loads((workdir / "retrained" / "metrics.json").read_text())
    assert metrics["val_accuracy"] == recipe["metrics"]["val_accuracy"]
    assert any("63x63" in note for note in metrics["notes"])

    weights.rename(workdir / "elsewhere.pth")  # another machine, without the file
    capsys.readouterr()
    assert main(["train", "--config", "recipe/recipe.yaml", "--out", "again"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(weights) in err and "fine-tunes from that file" in err


def test_input_size_on_the_custom_family_is_noted_as_ignored():
    model = build_model(TrialConfig.from_dict({"input_size": 64, "depth": 1, "width": 4}), (1, 8, 8), 10)
    assert "input_size 64 ignored: model 'cnn' is built for the data's size" in model.notes


def test_a_space_key_that_would_do_nothing_is_refused_by_run_with_one_line_and_exit_2(workdir, capsys):
    (workdir / "inert.yaml").write_text("params:\n  model: resnet18\n  freeze: body\n  unfreeze_epoch: 4\n"
                                        "  epochs: 3\n")
    assert main(["run", "--study", "inert", "--dataset", "digits", "--space", "inert.yaml", "--trials", "1",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "inert.yaml: param 'unfreeze_epoch'" in err
    assert "unfreeze_epoch=4 has no effect: training ends after epoch 3" in err
    assert not (workdir / "cnnsearch.db").exists()


@pytest.mark.slow
def test_trials_in_which_a_searched_key_does_nothing_say_so_in_their_notes(workdir, capsys):
    (workdir / "some.yaml").write_text(yaml.safe_dump({"params": {
        "depth": 1, "width": 4, "epochs": 2, "batch_size": 64,
        "freeze": {"type": "categorical", "choices": ["none", "stages"]},
        "unfreeze_epoch": {"type": "int", "low": 2, "high": 3}}}))
    assert main(["run", "--study", "some", "--dataset", "digits", "--space", "some.yaml", "--sampler", "grid",
                 "--trials", "4", "--pruner", "none", "--no-progress"]) == 0
    study = optuna.load_study(study_name="some", storage=f"sqlite:///{workdir / 'cnnsearch.db'}")
    notes = {(t.params["freeze"], t.params["unfreeze_epoch"]): t.user_attrs["notes"] for t in study.trials}
    assert {t.state for t in study.trials} == {optuna.trial.TrialState.COMPLETE} and len(notes) == 4
    assert "unfreeze_epoch=2 has no effect: freeze is none, so nothing is frozen to release" in " ".join(
        notes["none", 2])
    assert "unfreeze_epoch=3 has no effect: training ends after epoch 2" in " ".join(notes["stages", 3])
    assert not any("has no effect" in note for note in notes["stages", 2])
    assert "the frozen layers train again from epoch 2" in notes["stages", 2]


@pytest.mark.slow
def test_ray_tasks_get_the_runs_weights_download_setting_and_hub_folder(workdir, capsys, monkeypatch):
    """As on a node started elsewhere: the cluster runs before the settings exist, so only forwarding brings them."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=1, include_dashboard=False, logging_level=logging.WARNING)
    try:
        hub = workdir / "hub-home"
        monkeypatch.setenv("TORCH_HOME", str(hub))
        monkeypatch.delenv("CNNSEARCH_DOWNLOAD_WEIGHTS", raising=False)  # --download-weights sets it; restored after
        (workdir / "pre.yaml").write_text(yaml.safe_dump({"params": {
            "model": "mobilenet_v3_small", "pretrained": True, "input_size": 32, "epochs": 1}}))
        assert main(["run", "--study", "rw", "--dataset", "digits", "--space", "pre.yaml", "--trials", "1",
                     "--backend", "ray", "--workers", "1", "--download-weights", "--pruner", "none",
                     "--no-progress"]) == 0
    finally:
        ray.shutdown()
    trial, = optuna.load_study(study_name="rw", storage=f"sqlite:///{workdir / 'cnnsearch.db'}").trials
    expected = hub / "hub" / "checkpoints" / "mobilenet_v3_small-047dcff4.pth"
    if trial.state == optuna.trial.TrialState.COMPLETE:  # online: the task downloaded into the run's hub folder
        assert expected.is_file()
    else:  # offline (as here): the task tried to download, into the run's hub folder
        message = trial.user_attrs["fail_message"]
        assert "downloading https://download.pytorch.org/models/mobilenet_v3_small" in message
        assert str(expected) in message
