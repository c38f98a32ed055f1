"""Bad input, as a user hands it to the CLI: one line saying what, where and what would do; exit 2; nothing written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from search.cli import main

SPACE_ERRORS = [
    ("params:\n  lr: {type: float, low: 0.1, high: [\n", "line"),
    ("params:\n  lr: {type: gaussian, low: 0.1, high: 1}\n", "type"),
    ("params:\n  lr: {type: float, low: 0.1, high: 0.01}\n", "low"),
    ("params:\n  lr: {type: float, low: 0.0, high: 0.1, log: true}\n", "log"),
    ("params:\n  optimizer: {type: categorical, choices: []}\n", "choices"),
    ("params:\n  momentum: {type: float, low: 0.8, high: 0.9, when: {optimiser: sgd}}\n", "optimiser"),
    ("params:\n  model: resnet18\n  stem_stride: 2\n", "stem_stride=2 has no effect"),
]


def _fails(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Run the CLI; it must exit 2 with exactly one line on stderr. Return that line."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("cnnsearch: error: ")
    assert "Traceback" not in captured.err
    return lines[0]


@pytest.mark.parametrize(("argv", "message"), [
    (["run", "--study", "s", "--trials", "abc"], "argument --trials: expected an integer at least 1, got 'abc'"),
    (["run", "--study", "s", "--trials", "0"], "argument --trials: must be at least 1, got 0"),
    (["run", "--study", "s", "--trials", "2", "--timeout", "-5"], "argument --timeout: must be more than 0, got -5"),
    (["run", "--study", "s", "--trials", "2", "--trial-timeout", "0"],
     "argument --trial-timeout: must be more than 0, got 0"),
    (["run", "--study", "s", "--trials", "2", "--max-params", "0"], "argument --max-params: must be at least 1, got 0"),
    (["run", "--study", "s", "--trials", "2", "--max-latency-ms", "nan"],
     "argument --max-latency-ms: must be more than 0, got nan"),
    (["run", "--study", "s", "--trials", "2", "--seed", "-3"], "argument --seed: must be at least 0, got -3"),
    (["run", "--trials", "2"], "the following arguments are required: --study"),
    (["worker", "--study", "s", "--threads", "0"], "argument --threads: must be at least 1, got 0"),
    (["report", "--study", "s", "--final-eval", "-1"], "argument --final-eval: must be at least 0, got -1"),
    (["best", "--study", "s", "--top", "0"], "argument --top: must be at least 1, got 0"),
    (["frobnicate"], "argument COMMAND: invalid choice: 'frobnicate'"),
])
def test_bad_flag_values_are_one_line_before_anything_runs(workdir: Path, capsys: pytest.CaptureFixture,
                                                           argv: list[str], message: str) -> None:
    line = _fails(capsys, argv)
    assert line.startswith(f"cnnsearch: error: {message}")
    assert line.endswith("--help`)")  # where to read what is accepted
    _nothing_written(workdir)


def _nothing_written(workdir: Path) -> None:
    leftovers = sorted(p.name for p in workdir.iterdir() if p.suffix not in (".yaml",) and p.name != "images")
    assert leftovers == [], leftovers


@pytest.mark.parametrize("text, key", SPACE_ERRORS)
def test_bad_space_file_is_one_line_naming_file_and_key(workdir: Path, capsys: pytest.CaptureFixture, text: str,
                                                        key: str) -> None:
    (workdir / "bad.yaml").write_text(text)
    line = _fails(capsys, ["run", "--study", "s", "--space", "bad.yaml", "--trials", "1"])
    assert "bad.yaml" in line and key in line
    assert _fails(capsys, ["spaces", "validate", "bad.yaml"]) == line
    _nothing_written(workdir)


def test_grid_over_a_continuous_float_is_refused_before_anything_runs(workdir: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    (workdir / "cont.yaml").write_text("params:\n  lr: {type: float, low: 0.001, high: 0.1}\n")
    line = _fails(capsys, ["run", "--study", "s", "--space", "cont.yaml", "--sampler", "grid"])
    assert "grid search needs a finite set of values" in line and "'lr'" in line and "step" in line
    _nothing_written(workdir)


@pytest.mark.parametrize("flag, value, listed", [
    ("--space", "defualt", "default"),
    ("--dataset", "mnist10k", "mnist5k"),
    ("--sampler", "bayes", "tpe"),
    ("--pruner", "asha", "hyperband"),
    ("--objectives", "accuracy,speed", "latency"),
])
def test_unknown_names_list_the_valid_ones(workdir: Path, capsys: pytest.CaptureFixture, flag: str, value: str,
                                           listed: str) -> None:
    line = _fails(capsys, ["run", "--study", "s", flag, value, "--trials", "1"])
    assert value.split(",")[-1] in line and listed in line
    _nothing_written(workdir)


def test_torchvision_dataset_without_its_files_points_to_download(workdir: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    line = _fails(capsys, ["run", "--study", "s", "--dataset", "cifar10", "--trials", "1"])
    assert "--data-dir" in line
    line = _fails(capsys, ["run", "--study", "s", "--dataset", "mnist", "--data-dir", str(workdir / "data"),
                           "--trials", "1"])
    assert "--download" in line and "data" in line
    _nothing_written(workdir)


def _images(root: Path, classes: dict[str, int]) -> None:
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("L", (12, 12), color=(i * 37) % 255).save(root / name / f"{i}.png")


def test_image_folder_with_one_class_is_refused(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    _images(workdir / "images", {"cats": 5})
    line = _fails(capsys, ["run", "--study", "s", "--dataset", f"imagefolder:{workdir / 'images'}", "--trials", "1"])
    assert "2 classes" in line
    _nothing_written(workdir)


def test_too_few_images_for_a_stratified_val_split_is_refused(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    _images(workdir / "images", {"a": 3, "b": 3})
    line = _fails(capsys, ["run", "--study", "s", "--dataset", f"imagefolder:{workdir / 'images'}", "--trials", "1"])
    assert "val" in line or "test" in line
    _nothing_written(workdir)


def test_batch_larger_than_the_train_split_is_adjusted_with_a_note(workdir: Path) -> None:
    import optuna

    (workdir / "big.yaml").write_text("params:\n  batch_size: 4096\n  epochs: 1\n  width: 4\n  depth: 1\n")
    assert main(["run", "--study", "b", "--dataset", "digits", "--space", "big.yaml", "--trials", "1",
                 "--no-progress"]) == 0
    (trial,) = optuna.load_study(study_name="b", storage="sqlite:///cnnsearch.db").get_trials()
    assert trial.state.name == "COMPLETE"
    assert any("batch_size 4096 reduced" in note for note in trial.user_attrs["notes"])


@pytest.mark.parametrize("url, shown", [
    ("postgresql+psycopg://cnn:s3cret-pw@127.0.0.1:9/cnnsearch", "127.0.0.1:9"),
    ("mysql://cnn:s3cret-pw@127.0.0.1/cnnsearch", "sqlite"),
    ("sqlite:////no/such/dir/cnnsearch.db", "/no/such/dir"),
])
def test_unusable_storage_is_one_line_with_the_password_masked(workdir: Path, capsys: pytest.CaptureFixture,
                                                               url: str, shown: str) -> None:
    for argv in (["run", "--study", "s", "--dataset", "digits", "--trials", "1", "--storage", url],
                 ["status", "--study", "s", "--storage", url], ["studies", "--storage", url]):
        line = _fails(capsys, argv)
        assert "s3cret-pw" not in line
        assert shown in line
    _nothing_written(workdir)


def test_status_of_an_unknown_study_lists_the_studies_there(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    (workdir / "q.yaml").write_text("params:\n  epochs: 1\n  width: 4\n  depth: 1\n")
    assert main(["run", "--study", "real", "--dataset", "digits", "--space", "q.yaml", "--trials", "1",
                 "--no-progress"]) == 0
    capsys.readouterr()
    line = _fails(capsys, ["status", "--study", "nope"])
    assert "'nope'" in line and "real" in line


@pytest.mark.parametrize("dataset, size", [("digits", 100_000), ("images", 1_000_000)])
def test_image_size_beyond_host_memory_is_refused_with_the_figures(workdir: Path, capsys: pytest.CaptureFixture,
                                                                   dataset: str, size: int) -> None:
    if dataset == "images":
        _images(workdir / "images", {"a": 6, "b": 6})
        dataset = f"imagefolder:{workdir / 'images'}"
    line = _fails(capsys, ["run", "--study", "s", "--dataset", dataset, "--image-size", str(size), "--trials", "1"])
    if dataset.startswith("imagefolder:"):  # decoded into the cache on disk first: the disk is what runs out
        assert re.search(rf"\(\d+ images of \dx{size}x{size}\) needs [\d.]+ TB in .*, which has [\d.]+ [kMGT]?B free; "
                         r"free space, give --cache-dir .* or a smaller --image-size", line)
        return
    assert re.search(rf"at image_size {size}: \d+ images of \dx{size}x{size} need [\d.]+ TB of host memory", line)
    assert re.search(r"[\d.]+ [kMGT]?B is available here; give a smaller --image-size", line)
    _nothing_written(workdir)


TINY_SPACE = "params:\n  epochs: 1\n  width: 4\n  depth: 1\n"


@pytest.mark.slow
def test_worker_whose_images_differ_from_the_studys_is_refused(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    (workdir / "tiny.yaml").write_text(TINY_SPACE)
    _images(workdir / "images", {"a": 10, "b": 10})
    assert main(["run", "--study", "s", "--dataset", "imagefolder:images", "--space", "tiny.yaml", "--trials", "1",
                 "--no-progress"]) == 0
    for i, png in enumerate(sorted((workdir / "images").rglob("*.png"))):  # other pictures, same names and counts
        Image.new("L", (12, 12), color=255 - i).save(png)
    capsys.readouterr()
    line = _fails(capsys, ["worker", "--study", "s", "--trials", "1"])
    assert f"dataset 'imagefolder:{workdir / 'images'}' here holds other images than study 's'" in line
    line = _fails(capsys, ["run", "--study", "s", "--dataset", "imagefolder:images", "--space", "tiny.yaml",
                           "--trials", "2", "--no-progress"])
    assert "holds other images" in line


@pytest.mark.parametrize(("name", "said"), [
    ("", "empty"),
    ("../../x", "'/'"),
    ("/abs/path", "'/'"),
    ("..", "'..'"),
    ("a\\b", "'\\\\'"),
    ("a\nb", "control character"),
    ("s" * 10_000, "10000 bytes"),
])
@pytest.mark.parametrize("command", [
    ["run", "--trials", "1", "--dataset", "digits"], ["worker"], ["status"], ["best"], ["report"],
    ["export", "--out", "exported"],
])
def test_a_study_name_that_cannot_be_a_folder_name_is_refused_before_anything_is_written(
        workdir: Path, capsys: pytest.CaptureFixture, command: list[str], name: str, said: str) -> None:
    line = _fails(capsys, [*command, "--study", name])
    assert "--study" in line and said in line
    assert len(line) < 400  # a 10,000-character name is not echoed whole
    _nothing_written(workdir)


def test_a_bad_warm_start_study_name_is_refused_before_anything_is_written(workdir: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    line = _fails(capsys, ["run", "--study", "s", "--trials", "1", "--warm-start", "../old"])
    assert "--warm-start" in line and "'/'" in line
    _nothing_written(workdir)


@pytest.mark.parametrize(("url", "said"), [
    ("postgresql://u@[::1/db", "port"),
    ("postgresql://u@db.example:port/db", "port"),
])
def test_an_unreadable_storage_url_is_one_line(workdir: Path, capsys: pytest.CaptureFixture, url: str,
                                               said: str) -> None:
    line = _fails(capsys, ["status", "--study", "s", "--storage", url])
    assert said in line
    _nothing_written(workdir)


def test_a_password_with_an_unescaped_at_is_refused_without_showing_any_of_it(workdir: Path,
                                                                              capsys: pytest.CaptureFixture) -> None:
    password = "Str/ng@ngPw-Zeta9"
    for argv in (["status", "--study", "s"], ["run", "--study", "s", "--dataset", "digits", "--trials", "1"]):
        line = _fails(capsys, [*argv, "--storage", f"postgresql://cns:{password}@127.0.0.1:9/cnnsearch"])
        for part in ("Str", "ng@", "ngPw", "Zeta9"):
            assert part not in line
        assert "cns:***@127.0.0.1:9/cnnsearch" in line and "%40" in line and "$PGPASSWORD" in line
    _nothing_written(workdir)


def test_the_report_command_printed_by_run_is_safe_to_paste(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    import shlex

    name = "$(touch pwned) it's"
    (workdir / "q.yaml").write_text("params:\n  epochs: 1\n  width: 4\n  depth: 1\n")
    assert main(["run", "--study", name, "--dataset", "digits", "--space", "q.yaml", "--trials", "1",
                 "--no-progress"]) == 0
    (hint,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("report: ")]
    command = hint.removeprefix("report: ").split("   ")[0]
    assert shlex.split(command) == ["cnnsearch", "report", "--study", name]
