"""Where a study's checkpoints and plots are stored."""

from __future__ import annotations

import io
from pathlib import Path

import optuna
import pytest
from optuna.artifacts import download_artifact, upload_artifact

from storage import StorageError, artifact_store_for, open_storage

SERVER_URL = "postgresql+psycopg://cnn:pw@db.example/cnnsearch"


def _writes_into(store: optuna.artifacts.FileSystemArtifactStore, directory: Path) -> bool:
    """Whether an artifact written to ``store`` lands in ``directory``."""
    store.write("probe", io.BytesIO(b"probe"))
    return (directory / "probe").read_bytes() == b"probe"


@pytest.fixture(autouse=True)
def _no_artifacts_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CNNSEARCH_ARTIFACTS", raising=False)


def test_sqlite_study_keeps_artifacts_next_to_its_database(tmp_path: Path) -> None:
    store = artifact_store_for(f"sqlite:///{tmp_path / 'runs' / 'mnist.db'}")

    assert _writes_into(store, tmp_path / "runs" / "mnist-artifacts")


def test_relative_sqlite_path_gives_a_directory_that_does_not_follow_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = artifact_store_for("sqlite:///cnnsearch.db")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # as a worker started in another directory

    assert _writes_into(store, tmp_path / "cnnsearch-artifacts")


def test_server_study_uses_root_then_environment_then_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert _writes_into(artifact_store_for(SERVER_URL), tmp_path / "cnnsearch-artifacts")

    monkeypatch.setenv("CNNSEARCH_ARTIFACTS", str(tmp_path / "from-env"))
    assert _writes_into(artifact_store_for(SERVER_URL), tmp_path / "from-env")

    assert _writes_into(artifact_store_for(SERVER_URL, root=tmp_path / "given"), tmp_path / "given")


def test_explicit_root_wins_for_sqlite_too(tmp_path: Path) -> None:
    store = artifact_store_for(f"sqlite:///{tmp_path / 'a.db'}", root=tmp_path / "given")
    assert _writes_into(store, tmp_path / "given")


def test_uncreatable_directory_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the directory should be")
    with pytest.raises(StorageError, match=f"cannot create artifact directory {blocker / 'sub'}"):
        artifact_store_for(SERVER_URL, root=blocker / "sub")


def test_checkpoint_uploaded_for_a_trial_comes_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=open_storage(url, heartbeat_interval=None))
    trial = study.ask()
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"\x00weights\xff")

    artifact_id = upload_artifact(
        artifact_store=artifact_store_for(url), file_path=str(checkpoint), study_or_trial=trial
    )
    study.tell(trial, 1.0)
    restored = tmp_path / "restored.pt"
    download_artifact(artifact_store=artifact_store_for(url), artifact_id=artifact_id, file_path=str(restored))

    assert restored.read_bytes() == b"\x00weights\xff"


class _FullDisk(io.BytesIO):
    """A checkpoint whose copy fails part way, as on a full disk or under `ulimit -f`."""

    def read(self, size: int = -1) -> bytes:
        if self.tell() > 0:
            raise OSError(27, "File too large")
        return super().read(4)


def test_an_artifact_that_cannot_be_written_whole_leaves_nothing_behind(tmp_path: Path) -> None:
    store = artifact_store_for(f"sqlite:///{tmp_path / 'study.db'}")
    with pytest.raises(OSError, match="File too large"):
        store.write("checkpoint", _FullDisk(b"0123456789"))
    assert list((tmp_path / "study-artifacts").iterdir()) == []
    store.write("checkpoint", io.BytesIO(b"0123456789"))
    assert [p.name for p in (tmp_path / "study-artifacts").iterdir()] == ["checkpoint"]
