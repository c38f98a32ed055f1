"""Files written whole or not at all: staged in a private folder, then renamed into place.

Every file cnnsearch writes for a user (a report, a recipe and its weights, retrained
weights, a kept checkpoint) goes through :func:`staged_files`, so a full disk, a
``ulimit -f`` or an interrupt never leaves a half-written file or a temporary one behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


class Staging:
    """Where a group of files is written before :func:`staged_files` renames them into place."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.names: list[str] = []

    def path(self, name: str) -> Path:
        """Where to write the file that becomes ``directory/name``; it does not exist yet.

        Files are renamed into place in the order their paths were asked for.
        """
        self.names.append(name)
        return self.folder / name

    def write_text(self, name: str, text: str) -> Path:
        """Write ``text`` (UTF-8) as the file that becomes ``directory/name``."""
        path = self.path(name)
        path.write_text(text, encoding="utf-8")
        return path


@contextlib.contextmanager
def staged_files(directory: str | Path) -> Iterator[Staging]:
    """Stage files in a private folder inside ``directory``; rename them into ``directory`` at the end.

    ``directory`` (and missing parents) is created. When the block ends without an error,
    each staged file replaces the file of its name in ``directory`` (one atomic rename
    each; all data is on disk by then); files there that were not staged are left alone.
    On an error in the block, interrupts included, nothing in ``directory`` is replaced,
    the staged files are removed, and so are the folders this call created. Raises what
    the block raised, or ``OSError``.
    """
    directory = Path(directory)
    made = [p for p in (directory, *directory.parents) if not p.exists()]  # innermost first
    folder: Path | None = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=".cnnsearch-staging-", dir=directory))
        staging = Staging(folder)
        yield staging
        for name in staging.names:
            os.replace(folder / name, directory / name)
    except BaseException:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        for new in made:
            with contextlib.suppress(OSError):  # one that holds something now is not ours alone: it stays
                new.rmdir()
        raise
    shutil.rmtree(folder, ignore_errors=True)
