"""Where a study's files (checkpoints, plots) go: an Optuna artifact store per storage URL."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import optuna.artifacts
from sqlalchemy.engine import make_url

from storage.errors import StorageError
from storage.staging import staged_files
from storage.urls import normalize_scheme

ARTIFACTS_ENV = "CNNSEARCH_ARTIFACTS"
"""The environment variable naming the artifact directory for server-backed studies."""

DEFAULT_ARTIFACTS = "cnnsearch-artifacts"
"""The artifact directory, relative to the working directory, when nothing else names one."""


def artifact_store_for(url: str, root: str | Path | None = None) -> WholeFileArtifactStore:
    """The artifact store for the study database at ``url``; its directory is created.

    The directory is, first match wins: ``root`` if given; for ``sqlite:///DIR/NAME.db``,
    ``DIR/NAME-artifacts/`` (a SQLite study and its files move together); ``$CNNSEARCH_ARTIFACTS``;
    ``./cnnsearch-artifacts``. Paths are made absolute, so workers in other directories agree.

    Raises:
        StorageError: the directory cannot be created.
    """
    directory = Path(os.path.abspath(_artifact_directory(url, root).expanduser()))
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StorageError(
            f"cannot create artifact directory {directory}: {error.strerror or error}; "
            f"choose another with ${ARTIFACTS_ENV}"
        ) from error
    return WholeFileArtifactStore(directory)


class WholeFileArtifactStore(optuna.artifacts.FileSystemArtifactStore):
    """Optuna's file-system artifact store, writing each artifact whole or not at all.

    Optuna's own store writes straight into the artifact's file, so a full disk or
    ``ulimit -f`` leaves a truncated checkpoint under a valid id; this one stages it
    (:func:`storage.staging.staged_files`) and renames it into place when complete.
    """

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.directory = directory

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        with staged_files(self.directory) as staging:
            staged = staging.path(artifact_id)
            optuna.artifacts.FileSystemArtifactStore(staged.parent).write(artifact_id, content_body)


def _artifact_directory(url: str, root: str | Path | None) -> Path:
    if root is not None:
        return Path(root)
    sqlite_file = _sqlite_file(url)
    if sqlite_file is not None:
        return sqlite_file.with_name(f"{sqlite_file.stem}-artifacts")
    from_env = os.environ.get(ARTIFACTS_ENV, "").strip()
    return Path(from_env or DEFAULT_ARTIFACTS)


def _sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URL, else None."""
    try:
        parsed = make_url(normalize_scheme(url.strip()))
    except Exception:  # not a URL at all: no SQLite file to sit next to
        return None
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)
