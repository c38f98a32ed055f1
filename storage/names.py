"""What a study may be called: a name that is also safe as one folder name.

A study's name becomes a path (the report's default folder ``cnnsearch-reports/<study>/``)
and a row in the database (PostgreSQL: ``varchar(512)``), so it is checked once, where it
enters: by the CLI's ``--study`` flags and by the functions that open or create a study.
"""

from __future__ import annotations

import unicodedata

from storage.errors import StudyNameError

MAX_NAME_BYTES = 200
"""Longest study name in UTF-8 bytes: a folder name may hold 255 on common file systems."""

_SEPARATORS = ("/", "\\")
# Control characters, invisible format characters, line and paragraph separators: a name
# holding one cannot be read back from a terminal or breaks the line it is printed on.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def check_study_name(name: str) -> str:
    """``name``, once it is known to be a usable study name; else :class:`StudyNameError` saying why.

    Accepted: non-empty text of at most :data:`MAX_NAME_BYTES` UTF-8 bytes, without ``/``
    or ``\\``, control or invisible characters, and other than ``.`` and ``..``.
    """
    accepted = (f"a study name is 1 to {MAX_NAME_BYTES} bytes of UTF-8 text without /, \\ or control "
                "characters, e.g. mnist-cnn-1")
    if not name:
        raise StudyNameError(f"the study name is empty; {accepted}")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:  # undecodable bytes in argv arrive as lone surrogates
        raise StudyNameError(f"study name {_preview(name)} is not valid UTF-8 text; {accepted}") from None
    if size > MAX_NAME_BYTES:
        raise StudyNameError(f"study name {_preview(name)} is {size} bytes long; {accepted}")
    for separator in _SEPARATORS:
        if separator in name:
            raise StudyNameError(f"study name {_preview(name)} holds {separator!r}, so it would be a path "
                                 f"rather than one folder name; {accepted}")
    if name in (".", ".."):
        raise StudyNameError(f"study name {name!r} would name the folder a report goes in (.) or the one "
                             f"above it (..); {accepted}")
    for char in name:
        if unicodedata.category(char) in _UNPRINTABLE:
            raise StudyNameError(f"study name {_preview(name)} holds the control character "
                                 f"U+{ord(char):04X}; {accepted}")
    return name


def _preview(name: str, limit: int = 40) -> str:
    """``name`` quoted, cut to ``limit`` characters: a 10,000-character name is not echoed whole."""
    text = repr(name)
    return text if len(text) <= limit else text[: limit - 4] + "...'"
