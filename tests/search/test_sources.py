"""The image sources users have: CSV files of paths and labels, given train/val/test folders, images of any kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from search.cli import main
from search.trial.data import make_split
from search.trial.datasets import load_dataset


def save(path: Path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def test_csv_lists_images_relative_to_itself_and_skips_a_corrupt_one(tmp_path, caplog):
    for i in range(3):
        save(tmp_path / "img" / f"cat{i}.png", Image.new("RGB", (40, 40), (200, 0, 0)))
        save(tmp_path / "img" / f"dog{i}.jpg", Image.new("RGB", (40, 40), (0, 0, 200)))
    (tmp_path / "img" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    rows = [f"img/cat{i}.png,cat" for i in range(3)] + [f"img/dog{i}.jpg,dog" for i in range(3)]
    (tmp_path / "labels.csv").write_text("label,path\n" + "\n".join(
        f"{row.split(',')[1]},{row.split(',')[0]}" for row in [*rows, "img/bad.png,dog"]) + "\n")
    data = load_dataset(f"csv:{tmp_path / 'labels.csv'}")
    assert data.classes == ["cat", "dog"]
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert tuple(data.images.shape) == (6, 3, 40, 40)
    assert int(data.images[0, 0].float().mean()) >= 198 and int(data.images[5, 2].float().mean()) >= 198
    assert any("skipped 1 unreadable images" in r.getMessage() and "bad.png" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize(("content", "expected"), [
    ("path,label,weight\na.png,x\n", "line 1 has unknown column 'weight'; the header must name exactly the columns "
                                     "path,label"),
    ("path,label\nmissing.png,x\n", "line 2: {dir}/missing.png is not a file (paths are relative to {dir})"),
])
def test_bad_csv_is_one_line_exit_2(tmp_path, capsys, content, expected):
    (tmp_path / "data.csv").write_text(content)
    assert main(["data", "prepare", f"csv:{tmp_path / 'data.csv'}", "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err == (f"cnnsearch: error: dataset 'csv:{tmp_path / 'data.csv'}': {tmp_path / 'data.csv'} "
                   + expected.format(dir=tmp_path) + "\n")


def test_train_and_val_folders_are_the_given_split_and_test_is_drawn_from_train(tmp_path):
    for part, count in (("train", 10), ("val", 3)):
        for label, color in (("a", (250, 0, 0)), ("b", (0, 250, 0))):
            for i in range(count):
                save(tmp_path / part / label / f"{i}.png", Image.new("RGB", (36, 36), color))
    data = load_dataset(f"imagefolder:{tmp_path}")
    assert data.classes == ["a", "b"] and data.parts == {"train": 20, "val": 6}
    split = make_split(data.labels, seed=0, test_fraction=0.2, parts=data.parts)
    assert split.val.tolist() == list(range(20, 26))
    assert len(split.train) == 16 and len(split.test) == 4 and max(split.test) < 20
    assert split.describe()["given"] == ["train", "val"]
    assert make_split(data.labels, seed=0, test_fraction=0.2, parts=data.parts).fingerprint() == split.fingerprint()


def test_given_test_folder_is_the_test_part_and_a_class_missing_from_val_is_named(tmp_path):
    for part in ("train", "val", "test"):
        for label in ("a", "b"):
            save(tmp_path / part / label / "0.png", Image.new("L", (20, 20), 9))
    data = load_dataset(f"imagefolder:{tmp_path}")
    split = make_split(data.labels, parts=data.parts)
    assert (split.train.tolist(), split.val.tolist(), split.test.tolist()) == ([0, 1], [2, 3], [4, 5])
    (tmp_path / "val" / "b" / "0.png").unlink()
    (tmp_path / "val" / "b").rmdir()
    data = load_dataset(f"imagefolder:{tmp_path}")
    with pytest.raises(Exception, match=r"the val/ folder \(1 images\) has no images of classes \[1\]"):
        make_split(data.labels, parts=data.parts)


def test_images_of_any_mode_come_back_rgb(tmp_path):
    folder = tmp_path / "photos"
    save(folder / "a" / "rgba.png", Image.new("RGBA", (32, 32), (255, 0, 0, 255)))
    save(folder / "a" / "palette.png", Image.new("RGB", (32, 32), (255, 0, 0)).convert("P"))
    save(folder / "b" / "cmyk.jpg", Image.new("CMYK", (32, 32), (255, 0, 255, 0)))  # green
    wide = Image.fromarray(np.full((32, 32), 65535, dtype=np.uint16))
    save(folder / "b" / "sixteen.png", wide)
    data = load_dataset(f"imagefolder:{folder}")
    assert tuple(data.images.shape) == (4, 3, 32, 32)
    means = data.images.float().mean(dim=(2, 3)).round().int().tolist()
    assert means[0] == [255, 0, 0] and means[1] == [255, 0, 0]
    assert means[2][1] >= 250 and means[2][0] <= 5
    assert means[3] == [255, 255, 255]
