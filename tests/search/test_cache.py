"""The decoded cache: image folders decoded once per host, memory-mapped by every process, rebuilt when they change."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from search.cli import main
from search.trial.datasets import load_dataset

REPO = Path(__file__).resolve().parents[2]


def make_folder(root: Path, per_class: int = 4, size: tuple[int, int] = (40, 36)) -> Path:
    for label, color in (("blue", (0, 0, 200)), ("red", (200, 0, 0))):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", size, tuple(min(255, c + i) for c in color)).save(root / label / f"{i:05d}.png")
    return root


def entry(cache: Path) -> Path:
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]
    return folder


def data_files(cache: Path) -> list[str]:
    return sorted(p.name for p in entry(cache).iterdir() if not p.name.startswith("."))


def load_in_another_process(name: str, cache: Path) -> list[int]:
    code = ("import sys; from search.trial.datasets import load_dataset; "
            "d = load_dataset(sys.argv[1], cache_dir=sys.argv[2]); "
            "print(int(d.images.long().sum()), len(d.labels))")
    out = subprocess.run([sys.executable, "-c", code, name, str(cache)], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    return [int(word) for word in out.split()]


@pytest.mark.slow
def test_prepared_cache_is_mapped_by_a_second_process_without_decoding_again(tmp_path, capsys):
    folder = make_folder(tmp_path / "photos", per_class=300)  # 600 images: decoded by 2 processes
    cache = tmp_path / "cache"
    assert main(["data", "prepare", f"imagefolder:{folder}", "--cache-dir", str(cache)]) == 0
    assert capsys.readouterr().out.startswith(f"imagefolder:{folder}: 600 images of 3x38x38, 2 classes, cached in ")
    images_file = entry(cache) / json.loads((entry(cache) / "header.json").read_text())["images_file"]
    built = images_file.stat()

    here = load_dataset(f"imagefolder:{folder}", cache_dir=cache)
    assert load_in_another_process(f"imagefolder:{folder}", cache) == [int(here.images.long().sum()), 600]
    again = images_file.stat()
    assert (again.st_ino, again.st_mtime_ns) == (built.st_ino, built.st_mtime_ns)
    expected = np.asarray(Image.open(folder / "red" / "00007.png").convert("RGB").resize((38, 38), Image.BILINEAR))
    assert torch.equal(here.images[307], torch.from_numpy(expected.transpose(2, 0, 1).copy()))
    assert here.labels.tolist() == [0] * 300 + [1] * 300


def test_changed_file_rebuilds_the_cache_and_drops_the_old_one(tmp_path):
    folder = make_folder(tmp_path / "photos")
    cache = tmp_path / "cache"
    before = load_dataset(f"imagefolder:{folder}", cache_dir=cache)
    assert int(before.images[0, 2].float().mean()) == 200
    Image.new("RGB", (40, 36), (0, 0, 10)).save(folder / "blue" / "00000.png")
    after = load_dataset(f"imagefolder:{folder}", cache_dir=cache)
    assert int(after.images[0, 2].float().mean()) == 10
    assert len([name for name in data_files(cache) if name.endswith(".images")]) == 1


@pytest.mark.slow
def test_killed_build_leaves_nothing_that_is_used_later(tmp_path):
    folder = make_folder(tmp_path / "photos", per_class=1500, size=(96, 96))
    cache = tmp_path / "cache"
    code = ("import sys; from search.trial.datasets import load_dataset; "
            "load_dataset(sys.argv[1], cache_dir=sys.argv[2])")
    build = subprocess.Popen([sys.executable, "-c", code, f"imagefolder:{folder}", str(cache)], cwd=REPO,
                             start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(cache.glob("*/.cnnsearch-staging-*/*.images")):
        assert build.poll() is None and time.monotonic() < deadline, "the build ended before it could be killed"
        time.sleep(0.05)
    os.killpg(build.pid, signal.SIGKILL)  # the build and its decoding processes
    build.wait()
    assert not (entry(cache) / "header.json").exists()

    data = load_dataset(f"imagefolder:{folder}", cache_dir=cache)
    assert data.images.shape == (3000, 3, 96, 96)
    assert int(data.images[-1, 0].float().mean()) == min(255, 200 + 1499)
    assert not list(entry(cache).glob(".cnnsearch-staging-*"))


def test_cache_dir_that_cannot_be_written_is_one_line_exit_2(tmp_path, capsys):
    folder = make_folder(tmp_path / "photos")
    (tmp_path / "a-file").write_text("not a folder")
    bad = tmp_path / "a-file" / "cache"
    assert main(["data", "prepare", f"imagefolder:{folder}", "--cache-dir", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cnnsearch: error: cache directory {bad} is not writable (")
    assert err.count("\n") == 1 and "give --cache-dir" in err


def test_disk_too_small_for_the_cache_is_refused_before_decoding(tmp_path, capsys, monkeypatch):
    import shutil

    folder = make_folder(tmp_path / "photos")
    cache = tmp_path / "cache"
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=1000))
    assert main(["data", "prepare", f"imagefolder:{folder}", "--cache-dir", str(cache), "--image-size", "64"]) == 2
    err = capsys.readouterr().err
    assert err == (f"cnnsearch: error: the decoded cache of dataset 'imagefolder:{folder}' (8 images of 3x64x64) "
                   f"needs 98.3 kB in {cache}, which has 1.0 kB free; free space, give --cache-dir (or "
                   "$CNNSEARCH_CACHE_DIR) on a larger disk, or a smaller --image-size\n")
    assert data_files(cache) == []


def test_data_list_and_clear_show_and_remove_cached_datasets(tmp_path, capsys, monkeypatch):
    first, second = make_folder(tmp_path / "one"), make_folder(tmp_path / "two")
    monkeypatch.setenv("CNNSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    for folder, size in ((first, "16"), (first, "24"), (second, "16")):
        assert main(["data", "prepare", f"imagefolder:{folder}", "--image-size", size]) == 0
    capsys.readouterr()
    assert main(["data", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [f"imagefolder:{first}"] * 2 + [f"imagefolder:{second}"]
    assert "8 images of 3x16x16, 2 classes, 0 skipped" in lines[0]
    (tmp_path / "cache" / "not-ours").mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["data", "clear", "imagefolder:one"]) == 0
    assert capsys.readouterr().out.startswith("removed 2 cached datasets (")
    assert main(["data", "clear"]) == 0
    assert capsys.readouterr().out.startswith("removed 1 cached datasets (")
    assert main(["data", "list"]) == 0
    assert capsys.readouterr().out == f"no cached datasets in {tmp_path / 'cache'}\n"
    assert (tmp_path / "cache" / "not-ours").is_dir()


def mapped_files(pid: int) -> set[str]:
    """The files process ``pid`` has memory-mapped (from /proc)."""
    with open(f"/proc/{pid}/maps") as maps:
        return {line.split(maxsplit=5)[5].strip() for line in maps if len(line.split(maxsplit=5)) == 6}


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_jobs_parent_holds_none_of_the_images_while_its_workers_stream_them(workdir):
    import optuna
    from optuna.trial import TrialState

    from tests.support.workers import wait_for

    folder = make_folder(workdir / "photos", per_class=40)
    (workdir / "slow.yaml").write_text("params:\n  epochs: 200\n  width: 4\n  depth: 1\n  batch_size: 8\n")
    db = f"sqlite:///{workdir / 'cnnsearch.db'}"
    env = {**os.environ, "CNNSEARCH_STORAGE": db, "PYTHONPATH": str(REPO)}
    with open(workdir / "run.log", "w") as log:
        run = subprocess.Popen(
            [sys.executable, "-m", "search.cli", "run", "--study", "s", "--dataset", f"imagefolder:{folder}",
             "--space", "slow.yaml", "--pruner", "none", "--trials", "2", "--jobs", "2", "--device", "cpu",
             "--data-memory", "0.001", "--no-progress"],
            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        def both_training() -> bool:
            assert run.poll() is None, (workdir / "run.log").read_text()
            try:
                running = optuna.load_study(study_name="s", storage=db).get_trials(states=(TrialState.RUNNING,))
            except KeyError:  # not created yet
                return False
            return sum(bool(t.intermediate_values) for t in running) == 2

        wait_for(both_training, 240, "both workers training")
        (images_file,) = (str(path) for path in Path(os.environ["CNNSEARCH_CACHE_DIR"]).glob("*/*.images")
                          if str(folder) in (path.parent / "header.json").read_text())
        workers += [int(pid) for pid in subprocess.run(["pgrep", "-P", str(run.pid)], capture_output=True,
                                                        text=True).stdout.split()]
        assert sum(images_file in mapped_files(pid) for pid in workers) == 2  # the workers share the file
        assert images_file not in mapped_files(run.pid)
    finally:
        for pid in [run.pid, *workers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        run.wait()


def test_a_second_worker_takes_the_content_fingerprint_from_the_cache_and_a_changed_file_is_refused(
        tmp_path, monkeypatch):
    import optuna

    import search.trial.datasets
    from search.study.dataset import load_study_data, record_or_check_split
    from search.study.errors import StudyError
    from search.study.spec import StudySpec
    from spaces import load_space

    folder = make_folder(tmp_path / "photos", per_class=10)
    spec = StudySpec(space=load_space("tiny"), dataset=f"imagefolder:{folder}")
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'cnnsearch.db'}")
    record_or_check_split(study, spec, *load_study_data(spec))  # the first worker builds the cache
    recorded = study.user_attrs["data_fingerprint"]

    hashed = []
    real = search.trial.datasets.content_fingerprint
    monkeypatch.setattr(search.trial.datasets, "content_fingerprint", lambda *a: hashed.append(1) or real(*a))
    images, split = load_study_data(spec)  # a second worker: the same cache, mapped
    record_or_check_split(study, spec, images, split)
    assert hashed == []  # it did not read the whole map to fingerprint it
    assert images.fingerprint() == recorded == real(images.images.numpy(), images.labels.numpy(), images.classes)

    Image.new("RGB", (40, 36), (0, 0, 10)).save(folder / "blue" / "00000.png")  # another image, same name
    with pytest.raises(StudyError, match="holds other images than study 's' was made from"):
        record_or_check_split(study, spec, *load_study_data(spec))
