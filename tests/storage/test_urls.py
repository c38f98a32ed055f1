"""Choosing a storage URL and showing it without its password."""

from __future__ import annotations

import pytest

from storage import DEFAULT_STORAGE, StorageError, mask_url, resolve_storage_url
from storage.urls import parse_storage_url

SECRET = "s3cr3t-Pa55"


def test_flag_wins_over_environment_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNNSEARCH_STORAGE", "sqlite:///from-env.db")
    assert resolve_storage_url("sqlite:///from-flag.db") == "sqlite:///from-flag.db"


def test_environment_wins_over_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNNSEARCH_STORAGE", "sqlite:///from-env.db")
    assert resolve_storage_url(None) == "sqlite:///from-env.db"


def test_default_is_sqlite_file_in_working_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CNNSEARCH_STORAGE", raising=False)
    assert resolve_storage_url(None) == DEFAULT_STORAGE == "sqlite:///cnnsearch.db"


def test_blank_values_count_as_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNNSEARCH_STORAGE", "  ")
    assert resolve_storage_url("") == DEFAULT_STORAGE


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "POSTGRES", "postgresql+psycopg"])
def test_postgres_schemes_are_read_as_psycopg(scheme: str) -> None:
    url = resolve_storage_url(f"{scheme}://cnn@db.example:5432/cnnsearch")
    assert url == "postgresql+psycopg://cnn@db.example:5432/cnnsearch"


def test_url_without_password_is_not_given_one_from_pgpassword(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", SECRET)
    url = resolve_storage_url("postgresql://cnn@db.example/cnnsearch")
    assert SECRET not in url
    assert SECRET not in mask_url(url)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            f"postgresql+psycopg://cnn:{SECRET}@db.example:5432/cnnsearch",
            "postgresql+psycopg://cnn:***@db.example:5432/cnnsearch",
        ),
        (f"postgresql://cnn:{SECRET}@db.example/cnnsearch", "postgresql://cnn:***@db.example/cnnsearch"),
        (f"postgresql+psycopg://:{SECRET}@db.example/cnnsearch", "postgresql+psycopg://:***@db.example/cnnsearch"),
        (
            f"postgresql+psycopg://cnn@db.example/cnnsearch?sslmode=require&password={SECRET}",
            "postgresql+psycopg://cnn@db.example/cnnsearch?password=***&sslmode=require",
        ),
        (
            "postgresql+psycopg://cnn:p%40ss%2Fw0rd@db.example/cnnsearch",
            "postgresql+psycopg://cnn:***@db.example/cnnsearch",
        ),
        ("sqlite:///studies/cnnsearch.db", "sqlite:///studies/cnnsearch.db"),
        ("postgresql+psycopg://cnn@db.example/cnnsearch", "postgresql+psycopg://cnn@db.example/cnnsearch"),
    ],
)
def test_mask_url_hides_password(url: str, shown: str) -> None:
    assert mask_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://cnn:{SECRET}@@db.example/cnnsearch",  # unescaped "@" in the password
        f"postgresql://cnn:{SECRET[:4]}@{SECRET[4:]}@db.example/cnnsearch",
        f"postgresql://cnn:{SECRET}/x@db.example/cnnsearch",  # unescaped "/" in the password
        f"postgresql://cnn:{SECRET}@db.example:port/cnnsearch",  # not a port number
        f"host=db.example user=cnn password={SECRET} dbname=cnnsearch",
    ],
)
def test_mask_url_never_shows_password_of_malformed_urls(url: str) -> None:
    shown = mask_url(url)
    assert SECRET not in shown
    assert SECRET[4:] not in shown
    assert "***" in shown


@pytest.mark.parametrize("password", ["ngPw@x/y", "Str/ng@ngPw-Zeta9", "a@b@c-d", "p:w@q?r=s"])
def test_mask_url_hides_all_of_a_password_with_unescaped_special_characters(password: str) -> None:
    shown = mask_url(f"postgresql+psycopg://cns:{password}@127.0.0.1/cnnsearch")
    assert shown == "postgresql+psycopg://cns:***@127.0.0.1/cnnsearch"


@pytest.mark.parametrize("url", [
    "postgresql://cns:ngPw@x/y@127.0.0.1/cnnsearch",
    "postgresql://cns:Str/ng@ngPw-Zeta9@127.0.0.1:9/cnnsearch",
])
def test_a_password_with_an_unescaped_at_is_refused_with_how_to_write_it(url: str) -> None:
    with pytest.raises(StorageError) as caught:
        parse_storage_url(url)
    message = str(caught.value)
    assert "cns:***@127.0.0.1" in message and "%40" in message and "$PGPASSWORD" in message
    for part in ("ngPw", "Str", "x/y", "Zeta9"):
        assert part not in message


def test_an_escaped_password_is_read_as_written() -> None:
    parsed = parse_storage_url("postgresql://cns:Str%2Fng%40ngPw@127.0.0.1/cnnsearch")
    assert parsed.password == "Str/ng@ngPw" and parsed.host == "127.0.0.1"
    assert parsed.drivername == "postgresql+psycopg"


def test_a_sqlite_path_with_an_at_is_a_path() -> None:
    url = "sqlite:////data/me@lab:2/cnnsearch.db"
    assert parse_storage_url(url).database == "/data/me@lab:2/cnnsearch.db"
    assert mask_url(url) == url
