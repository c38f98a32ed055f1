"""Storage URLs: which database a study lives in, and how to show one without its password.

A URL is chosen once, by the caller (flag, then environment, then the default), and handed
to every worker as a plain string; each worker opens its own connections from it.
"""

from __future__ import annotations

import os
import re

from sqlalchemy.engine import make_url

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
# Fallback for strings SQLAlchemy cannot parse or parses wrongly (an unescaped "@" in the
# password): everything between "user:" and the last "@" is hidden, even if that hides too much.
_USERINFO_PASSWORD = re.compile(r"(://[^:/@\s]*:).*@")


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


def mask_url(url: str) -> str:
    """``url`` with any password (in the user part or a ``password=`` parameter) shown as ``***``.

    Safe to put in logs and error messages. Never raises: a string that is not a URL is masked
    by pattern, hiding more rather than less.
    """
    text = str(url)
    try:
        parsed = make_url(text)
        if parsed.host is not None and "@" in parsed.host:
            # "user:p@ss@host" parses with password "p" and host "ss@host": part of the password
            # would be shown.
            raise ValueError("unescaped @ in the user part")
        shown = parsed.render_as_string(hide_password=True)
    except Exception:  # the contract is "never raises": fall back to patterns
        shown = _USERINFO_PASSWORD.sub(r"\1***@", text)
    return _QUERY_PASSWORD.sub(r"\1***", shown)
