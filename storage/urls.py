"""Storage URLs: which database a study lives in, and how to show one without its password.

A URL is chosen once, by the caller (flag, then environment, then the default), and handed
to every worker as a plain string; each worker opens its own connections from it.
"""

from __future__ import annotations

import os
import re
from urllib.parse import unquote

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from storage.errors import StorageError

DEFAULT_STORAGE = "sqlite:///cnnsearch.db"
"""A SQLite file in the working directory: no server needed."""

STORAGE_ENV = "CNNSEARCH_STORAGE"
"""The environment variable read when no storage flag is given."""

POSTGRES_SCHEME = "postgresql+psycopg"

ACCEPTED_URLS = (
    "sqlite:///PATH or postgresql+psycopg://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
    " (postgresql:// and postgres:// mean postgresql+psycopg://)"
)
"""What an error about a storage URL tells the user to write instead."""

# Schemes that name PostgreSQL without a driver (or with the libpq alias) are read as psycopg 3,
# the driver we install; SQLAlchemy alone would pick psycopg2 for "postgresql://".
_POSTGRES_ALIASES = ("postgresql", "postgres")

_QUERY_PASSWORD = re.compile(r"(?i)(\bpassword=)[^&\s]*")

ESCAPE_HINT = ("percent-escape special characters in the user and password (@ as %40, / as %2F, : as %3A, "
               "? as %3F, # as %23, % as %25), or leave the password out of the URL and set $PGPASSWORD")
"""How to write a password that holds characters a URL gives a meaning to."""


def resolve_storage_url(flag: str | None) -> str:
    """The storage URL to use: ``flag`` if given, else ``$CNNSEARCH_STORAGE``, else :data:`DEFAULT_STORAGE`.

    Empty or blank values count as not given. ``postgresql://`` and ``postgres://`` are rewritten
    to ``postgresql+psycopg://``. A PostgreSQL URL without a password is returned as it is: libpq
    reads ``PGPASSWORD`` (or ``~/.pgpass``) when connecting, so the password never enters the URL.
    The URL is not checked here; :func:`storage.open_storage` does that.
    """
    for candidate in (flag, os.environ.get(STORAGE_ENV)):
        if candidate is not None and candidate.strip():
            return normalize_scheme(candidate.strip())
    return DEFAULT_STORAGE


def normalize_scheme(url: str) -> str:
    """``url`` with a driverless PostgreSQL scheme replaced by ``postgresql+psycopg``; others unchanged."""
    scheme, separator, rest = url.partition("://")
    if separator and scheme.lower() in _POSTGRES_ALIASES:
        return f"{POSTGRES_SCHEME}://{rest}"
    return url


def parse_storage_url(url: str) -> URL:
    """``url`` with its scheme normalized (:func:`normalize_scheme`), parsed as SQLAlchemy and the driver read it.

    Raises :class:`StorageError` (one line, the password masked) for text that is not a URL,
    a port that is not a number, or a user part that the driver would split elsewhere than
    at its last ``@`` (an unescaped ``@`` in the password: part of it would be taken for the host).
    """
    url = normalize_scheme(url.strip())
    shown = mask_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StorageError(f"storage URL {shown!r} is not a URL; expected {ACCEPTED_URLS}") from None
    except ValueError:  # SQLAlchemy reads the port with int(): "db:port", "[::1" (no closing bracket)
        raise StorageError(f"storage URL {shown!r}: the host or port cannot be read (a port is a number, an IPv6 "
                           f"host is written in brackets: [::1]:5432); expected {ACCEPTED_URLS}") from None
    split = _split_user_part(url)
    if split is not None:
        user, password = split[1]
        if unquote(user) != (parsed.username or "") or (password is not None
                                                        and unquote(password) != (parsed.password or "")):
            raise StorageError(f"storage URL {shown!r}: the user or password holds an unescaped character that "
                               f"ends it early; {ESCAPE_HINT}")
    return parsed


def mask_url(url: str) -> str:
    """``url`` with any password (in the user part or a ``password=`` parameter) shown as ``***``.

    The user part ends at the last ``@`` before the host, so all of a password is hidden
    even when it holds an unescaped ``@`` or ``/``. Safe to put in logs and error messages.
    Never raises: a string that is not a URL is masked by pattern, hiding more rather than less.
    """
    text = str(url)
    split = _split_user_part(text)
    if split is not None:
        (scheme, rest), (user, password) = split
        if password is not None:
            text = f"{scheme}://{user}:***@{rest}"
        try:
            # SQLAlchemy's rendering, for its canonical form (sorted query); the password is already gone.
            text = make_url(text).render_as_string(hide_password=True)
        except Exception:  # the contract is "never raises": keep the text masked by hand
            pass
    return _QUERY_PASSWORD.sub(r"\1***", text)


def _split_user_part(url: str) -> tuple[tuple[str, str], tuple[str, str | None]] | None:
    """``((scheme, after the user part), (user, password or None))`` of a URL with a user part, else None.

    The user part ends at the last ``@``: a password cannot hold an unescaped ``@`` that
    ends it, while the host, port and database name never hold one.
    """
    scheme, separator, rest = url.partition("://")
    user_part, at, after = rest.rpartition("@")
    if not separator or not at or rest.startswith("/"):  # sqlite:///PATH has no user part, its path may hold "@"
        return None
    user, colon, password = user_part.partition(":")
    return (scheme, after), (user, password if colon else None)
