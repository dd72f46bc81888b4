"""Decoding text files line by line: UTF-8 (with or without BOM) or legacy cp1254 / cp1256.

Legacy Windows code pages cannot be told apart from the bytes alone (every byte is valid in
both), so ``auto`` decodes with each and keeps the one whose words look like the expected
script: Turkish letters inside Latin words for cp1254, Arabic-script words for cp1256.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator

from charset_normalizer import from_bytes

__all__ = ["decode_lines", "detect_encoding", "resolve_codec"]

_TURKISH_LETTERS = frozenset("çğıöşüÇĞİÖŞÜ")
_WORD = re.compile(r"[^\W\d_]+")
_ASCII_LETTER = re.compile(r"[A-Za-z]")
_ARABIC_LETTER = re.compile(r"[\u0620-\u064a\u066e-\u06d3\u06fa-\u06ff\ufb50-\ufdff\ufe70-\ufefc]")
_CODECS = {"utf-8": "utf-8", "cp1254": "cp1254", "windows-1256": "cp1256"}


def _turkish_score(text: str) -> int:
    return sum(
        sum(char in _TURKISH_LETTERS for char in word)
        for word in _WORD.findall(text)
        if _ASCII_LETTER.search(word)
    )


def _persian_score(text: str) -> int:
    return sum(
        len(_ARABIC_LETTER.findall(word))
        for word in _WORD.findall(text)
        if not _ASCII_LETTER.search(word)
    )


def _mostly_utf8(data: bytes) -> bool:
    """True when most lines with non-ASCII bytes are valid UTF-8 (a few corrupt lines allowed)."""
    valid = invalid = 0
    for line in data.splitlines():
        if line.isascii():
            continue
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            invalid += 1
        else:
            valid += 1
    return valid >= invalid


def detect_encoding(data: bytes) -> str:
    """Python codec name for a text file's bytes.

    Args:
        data: The whole file.

    Returns:
        ``utf-8`` (also for pure ASCII and for files with a BOM), ``cp1254`` or ``cp1256``.
    """
    if data.startswith(codecs.BOM_UTF8) or _mostly_utf8(data):
        return "utf-8"
    turkish = _turkish_score(data.decode("cp1254", errors="replace"))
    persian = _persian_score(data.decode("cp1256", errors="replace"))
    if turkish == persian:
        best = from_bytes(data, cp_isolation=["cp1254", "cp1256"]).best()
        return "cp1256" if best is not None and best.encoding == "cp1256" else "cp1254"
    return "cp1254" if turkish > persian else "cp1256"


def resolve_codec(data: bytes, encoding: str) -> str:
    """The Python codec to decode a file with.

    Args:
        data: The whole file (used only when ``encoding`` is ``auto``).
        encoding: ``auto``, ``utf-8``, ``cp1254`` or ``windows-1256`` (as in sources.yaml).

    Returns:
        ``utf-8``, ``cp1254`` or ``cp1256``.
    """
    return detect_encoding(data) if encoding == "auto" else _CODECS[encoding]


def decode_lines(data: bytes, codec: str) -> Iterator[tuple[int, str | bytes]]:
    """Decode a file line by line so one corrupt line cannot spoil the rest.

    Args:
        data: The whole file.
        codec: Codec from ``resolve_codec``; a UTF-8 BOM is dropped.

    Returns:
        An iterator of ``(line_number, line)``: ``line`` is the decoded ``str`` with its line
        ending kept, or the original ``bytes`` when that line cannot be decoded.
    """
    if codec == "utf-8" and data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    # Splitting the bytes on line breaks is safe for UTF-8 and single-byte code pages alike.
    for number, line in enumerate(data.splitlines(keepends=True), start=1):
        try:
            yield number, line.decode(codec)
        except UnicodeDecodeError:
            yield number, line
