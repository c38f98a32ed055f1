"""Decoding image files into uint8 arrays: what the cache's decoding processes run.

Kept apart from :mod:`search.trial.cache`: a decoding process needs numpy and PIL only (where
processes are spawned rather than forked, it imports nothing else of ours).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
"""PIL modes decoded to one channel; a source whose images are all of these modes is gray."""
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def read_headers(task: tuple[list[str], int]) -> list:
    """Per file: ``(mode, (width, height))``, ``"unreadable"``, or ``["too large", size]`` over the pixel limit."""
    from PIL import Image

    files, max_pixels = task
    out: list = []
    with _pil_bomb_check_off():
        for file in files:
            try:
                with Image.open(file) as image:
                    mode, size = image.mode, image.size
            except (OSError, ValueError):
                out.append("unreadable")
                continue
            out.append(["too large", size] if size[0] * size[1] > max_pixels else (mode, size))
    return out


def decode_rows(task: tuple[str, list[int], int, list[str], bool, int]) -> list[int]:
    """Decode ``files`` into rows ``start...`` of the images file; return the offsets of those that failed."""
    path, shape, start, files, gray, size = task
    images = np.memmap(path, dtype=np.uint8, mode="r+", shape=tuple(shape))
    failed = []
    with _pil_bomb_check_off():
        for offset, file in enumerate(files):
            try:
                images[start + offset] = read_image(file, gray, size).transpose(2, 0, 1)
            except (OSError, ValueError):
                failed.append(offset)
    images.flush()
    return failed


@contextlib.contextmanager
def _pil_bomb_check_off() -> Iterator[None]:
    """PIL's own decompression-bomb check off: it warns at 89 megapixels and refuses at twice that,
    whatever the pixel limit says, and every header is checked against that limit before decoding."""
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def read_image(file: str, gray: bool, size: int) -> np.ndarray:
    """One image file as a uint8 size x size x channels array (1 channel when ``gray``, else RGB).

    16-bit images are scaled to 8 bits (PIL's own conversion clips them); palette, RGBA and CMYK
    images are converted to RGB.
    """
    from PIL import Image

    with Image.open(file) as image:
        if image.mode in _WIDE_MODES:
            wide = np.asarray(image, dtype=np.float64)
            image = Image.fromarray(np.clip(wide / 257.0, 0, 255).round().astype(np.uint8))
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA")  # palette transparency needs RGBA before it can be composited
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image)
        image = image.convert("L" if gray else "RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
    return array[:, :, None] if gray else array
