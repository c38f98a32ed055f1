"""The GPU paths' logic, pinned on the CPU: which device, which precision, how much memory, what is out of it.

No GPU here: CUDA's answers (visible GPUs, compute capability) are given to the code as a
GPU machine would give them, and the tests check what the user then gets.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import torch
import yaml

import search.trial.train
from search.cli import main
from search.trial.data import TrialData
from search.trial.device import amp_dtype_for, amp_dtype_for_capability, resolve_device
from search.trial.errors import TrialFailed
from search.trial.memory import EVAL_BUDGET_BYTES, eval_batch_size, is_out_of_memory
from search.trial.train import EVAL_BATCH, evaluate, fit
from spaces.schema import TrialConfig
from tests.support.studies import STUDY


def _gpus(monkeypatch: pytest.MonkeyPatch, count: int, current: int = 0,
          capability: dict[int, tuple[int, int]] | None = None) -> list[object]:
    """CUDA as a machine with ``count`` visible GPUs answers it; returns the devices asked for their capability."""
    asked: list[object] = []

    def get_capability(device: object = None) -> tuple[int, int]:
        asked.append(device)
        return (capability or {})[torch.device(device).index]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
    monkeypatch.setattr(torch.cuda, "get_device_capability", get_capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    return asked


@pytest.mark.parametrize("given", ["cuda", torch.device("cuda")])
def test_cuda_means_the_current_gpu_with_its_index(monkeypatch: pytest.MonkeyPatch, given) -> None:
    _gpus(monkeypatch, count=2, current=1)
    assert resolve_device(given) == torch.device("cuda", 1)  # torch.cuda.set_device refuses "cuda" alone
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("auto", worker_index=3) == torch.device("cuda", 1)


def test_a_gpu_that_is_not_visible_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch, workdir: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    _gpus(monkeypatch, count=1)
    args = ["run", "--study", "s", "--dataset", "digits", "--trials", "1", "--no-progress"]
    assert main([*args, "--device", "cuda:7"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device cuda:7" in err and "sees 1 GPU (cuda:0" in err
    assert not (workdir / "cnnsearch.db").exists()


def test_cuda_without_a_gpu_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch, workdir: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["run", "--study", "s", "--dataset", "digits", "--trials", "1", "--device", "cuda:0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA GPU is visible" in err


@pytest.mark.parametrize(("capability", "dtype"), [
    ((6, 0), torch.float16),  # P100
    ((7, 0), torch.float16),  # V100: bf16 only emulated
    ((7, 5), torch.float16),  # T4
    ((8, 0), torch.bfloat16),  # A100
    ((8, 9), torch.bfloat16),  # L4
    ((9, 0), torch.bfloat16),  # H100
])
def test_bf16_only_where_the_gpu_has_it_natively(capability: tuple[int, int], dtype: torch.dtype) -> None:
    assert amp_dtype_for_capability(capability) == dtype


def test_the_precision_is_the_trials_own_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    # A T4 as cuda:1 next to an A100: a trial on cuda:1 trains in fp16 (with the GradScaler).
    asked = _gpus(monkeypatch, count=2, capability={0: (8, 0), 1: (7, 5)})
    assert amp_dtype_for(torch.device("cuda", 1)) == torch.float16
    assert [torch.device(d).index for d in asked] == [1]
    assert amp_dtype_for(torch.device("cuda", 0)) == torch.bfloat16
    assert amp_dtype_for(torch.device("cpu")) is None


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
    RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    RuntimeError("CUDA error: out of memory\nCompile with `TORCH_USE_CUDA_DSA` to enable device-side assertions."),
    RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: you tried "
                 "to allocate 17970000000000 bytes. Error code 12 (Cannot allocate memory)"),
    MemoryError(),
])
def test_every_kind_of_out_of_memory_counts_as_such(error: BaseException) -> None:
    assert is_out_of_memory(error)


@pytest.mark.parametrize("error", [RuntimeError("mat1 and mat2 shapes cannot be multiplied"), ValueError("memory")])
def test_other_errors_are_not_out_of_memory(error: BaseException) -> None:
    assert not is_out_of_memory(error)


def test_a_run_out_of_memory_has_released_its_model_when_it_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    models: list[weakref.ref] = []
    build = search.trial.train.build_model

    def tracked_build(*args, **kwargs):
        model = build(*args, **kwargs)
        models.append(weakref.ref(model))
        return model

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(search.trial.train, "build_model", tracked_build)
    monkeypatch.setattr(search.trial.train, "_train_epoch", no_memory)
    data = _data(n=64, shape=(1, 8, 8))
    with pytest.raises(TrialFailed) as failed:
        fit(TrialConfig(width=8, depth=1, epochs=1), data, "cpu")
    assert failed.value.reason == "oom" and "Tried to allocate 2.00 GiB" in str(failed.value)
    # The error still held by the caller no longer keeps the failed run's model (and so its memory) alive.
    assert len(models) == 1 and models[0]() is None


@pytest.mark.parametrize(("shape", "expected"), [
    ((1, 28, 28), 1024),  # MNIST: the cap
    ((3, 32, 32), 1024),  # CIFAR: the cap
    ((3, 224, 224), EVAL_BUDGET_BYTES // (4 * 3 * 224 * 224)),  # ImageNet-sized: 111, not 1024 (617 MB of input)
    ((3, 4096, 4096), 1),  # never 0
])
def test_evaluation_batches_are_sized_by_bytes(shape: tuple[int, int, int], expected: int) -> None:
    assert eval_batch_size(shape, EVAL_BATCH) == expected
    assert eval_batch_size(shape, EVAL_BATCH, budget_bytes=2 * EVAL_BUDGET_BYTES) >= expected


def test_evaluation_of_large_images_runs_in_batches_within_the_budget() -> None:
    data = _data(n=300, shape=(3, 224, 224))
    seen: list[int] = []

    class Counting(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(len(x))
            return torch.zeros(len(x), 2)

    evaluate(Counting(), data, data.val_x, data.val_y)
    assert sum(seen) == 300 and max(seen) * 4 * 3 * 224 * 224 <= EVAL_BUDGET_BYTES


def _data(n: int, shape: tuple[int, int, int]) -> TrialData:
    """``n`` random uint8 images of ``shape`` in two classes, as train and val alike."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=generator)
    y = torch.arange(n) % 2
    stats = torch.full((1, shape[0], 1, 1), 0.5)
    return TrialData(train_x=x, train_y=y, val_x=x, val_y=y, mean=stats, std=stats, classes=["a", "b"],
                     input_shape=shape, num_classes=2)


@pytest.fixture
def determinism_restored() -> Iterator[None]:
    """Deterministic mode is process-wide: undone after the test, for the tests after it."""
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    yield
    if workspace is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = False
    torch.backends.cudnn.benchmark = False


@pytest.mark.slow
def test_run_deterministic_is_the_studys_and_its_recipe_replays_with_it(workdir: Path, determinism_restored: None,
                                                                         capsys: pytest.CaptureFixture) -> None:
    (workdir / "one.yaml").write_text("params:\n  width: 4\n  depth: 1\n  epochs: 1\n")
    assert main(["run", "--study", "d", "--dataset", "digits", "--space", "one.yaml", "--trials", "1",
                 "--no-progress", "--deterministic"]) == 0
    study = optuna.load_study(study_name="d", storage=f"sqlite:///{workdir / 'cnnsearch.db'}")
    assert study.user_attrs["deterministic"] is True  # every worker of the study, wherever started, follows it
    assert torch.are_deterministic_algorithms_enabled() and os.environ["CUBLAS_WORKSPACE_CONFIG"]
    assert main(["export", "--study", "d", "--out", "exp"]) == 0
    recipe = yaml.safe_load((workdir / "exp" / "recipe.yaml").read_text())
    assert recipe["provenance"]["deterministic"] is True
    assert "--deterministic" in (workdir / "exp" / "README.md").read_text()


@pytest.mark.slow
def test_train_says_that_a_gpu_trial_replays_on_the_cpu_only_approximately(
        tmp_path: Path, tiny_study: Callable[[Path], str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    url = tiny_study(tmp_path / "db")
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--study", STUDY, "--storage", url, "--out", "exp", "--no-weights"]) == 0
    recipe_path = tmp_path / "exp" / "recipe.yaml"
    recipe = yaml.safe_load(recipe_path.read_text())
    recipe["provenance"]["trained_on"] = "cuda:0"  # as a trial of a GPU worker records it
    recipe_path.write_text(yaml.safe_dump(recipe))
    capsys.readouterr()
    assert main(["train", "--config", str(recipe_path), "--out", "run"]) == 0
    out = capsys.readouterr().out
    assert "the trial ran on cuda:0; a replay on cpu matches it only approximately" in out
    assert "--deterministic" in out
