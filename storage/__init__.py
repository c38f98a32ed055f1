"""Where studies live: storage URLs, SQLite/PostgreSQL engines with heartbeats and retries, artifacts."""

from storage.artifacts import artifact_store_for
from storage.engine import open_storage
from storage.errors import StorageError
from storage.urls import DEFAULT_STORAGE, mask_url, resolve_storage_url

__all__ = [
    "DEFAULT_STORAGE",
    "StorageError",
    "artifact_store_for",
    "mask_url",
    "open_storage",
    "resolve_storage_url",
]
