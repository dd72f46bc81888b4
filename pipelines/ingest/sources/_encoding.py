"""Decoding text files line by line: UTF-8 (with or without BOM) or legacy cp1254 / cp1256.

``auto`` looks at every line with non-ASCII bytes. A line is evidence of UTF-8 when it decodes,
or when most of its non-ASCII characters decode and only a few bytes are broken (a UTF-8 file
with a corrupt byte: that line alone is quarantined as ``bad_encoding``, the file stays UTF-8).
Otherwise it is evidence of a legacy Windows code page; those cannot be told apart from the
bytes alone (every byte is valid in both), so the file is decoded with each and keeps the one
whose words look like the expected script: Turkish letters inside Latin words for cp1254,
Arabic-script words for cp1256. The evidence is gathered in one streaming pass
(``EncodingProbe``), so a file is never held whole in memory.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Iterator

from charset_normalizer import from_bytes

__all__ = ["EncodingProbe", "decode_lines", "detect_encoding", "resolve_codec"]

_TURKISH_LETTERS = frozenset("çğıöşüÇĞİÖŞÜ")
_WORD = re.compile(r"[^\W\d_]+")
_ASCII_LETTER = re.compile(r"[A-Za-z]")
_ARABIC_LETTER = re.compile(r"[\u0620-\u064a\u066e-\u06d3\u06fa-\u06ff\ufb50-\ufdff\ufe70-\ufefc]")
_CODECS = {"utf-8": "utf-8", "cp1254": "cp1254", "windows-1256": "cp1256"}
_SAMPLE_BYTES = 64 * 1024


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


def _mostly_decodes(line: bytes) -> bool:
    """True for a UTF-8 line with a few broken bytes: more good non-ASCII chars than bad."""
    text = line.decode("utf-8", errors="replace")
    bad = text.count("\ufffd")
    good = sum(not char.isascii() for char in text) - bad
    return good > bad


class EncodingProbe:
    """Evidence for ``detect_encoding``, fed one line at a time."""

    def __init__(self) -> None:
        self.bom = False
        self.utf8_lines = 0
        self.legacy_lines = 0
        self.turkish = 0
        self.persian = 0
        self.sample = bytearray()

    def add(self, line: bytes) -> None:
        """Take one line (bytes as read, line ending included) into account.

        Args:
            line: The line.
        """
        if not (self.utf8_lines or self.legacy_lines) and line.startswith(codecs.BOM_UTF8):
            self.bom = True
        if line.isascii():
            return
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            if _mostly_decodes(line):
                self.utf8_lines += 1
                return
        else:
            self.utf8_lines += 1
            return
        self.legacy_lines += 1
        self.turkish += _turkish_score(line.decode("cp1254", errors="replace"))
        self.persian += _persian_score(line.decode("cp1256", errors="replace"))
        if len(self.sample) < _SAMPLE_BYTES:
            self.sample += line

    def codec(self) -> str:
        """The Python codec the evidence points to.

        Returns:
            ``utf-8`` (also for pure ASCII and for files with a BOM), ``cp1254`` or ``cp1256``.
        """
        if self.bom or self.utf8_lines >= self.legacy_lines:
            return "utf-8"
        if self.turkish == self.persian:
            best = from_bytes(bytes(self.sample), cp_isolation=["cp1254", "cp1256"]).best()
            return "cp1256" if best is not None and best.encoding == "cp1256" else "cp1254"
        return "cp1254" if self.turkish > self.persian else "cp1256"


def detect_encoding(data: bytes) -> str:
    """Python codec name for a text file's bytes.

    Args:
        data: The whole file.

    Returns:
        ``utf-8`` (also for pure ASCII and for files with a BOM), ``cp1254`` or ``cp1256``.
    """
    probe = EncodingProbe()
    for line in data.splitlines(keepends=True):
        probe.add(line)
    return probe.codec()


def resolve_codec(probe: EncodingProbe | None, encoding: str) -> str:
    """The Python codec to decode a file with.

    Args:
        probe: What a pass over the file found (needed only when ``encoding`` is ``auto``).
        encoding: ``auto``, ``utf-8``, ``cp1254`` or ``windows-1256`` (as in sources.yaml).

    Returns:
        ``utf-8``, ``cp1254`` or ``cp1256``.
    """
    if encoding != "auto":
        return _CODECS[encoding]
    return probe.codec() if probe is not None else "utf-8"


def decode_lines(lines: Iterable[bytes], codec: str) -> Iterator[tuple[int, str | bytes]]:
    """Decode a file line by line so one corrupt line cannot spoil the rest.

    Args:
        lines: The file's lines as bytes, endings kept (e.g. an open binary file).
        codec: Codec from ``resolve_codec``; a UTF-8 BOM is dropped.

    Returns:
        An iterator of ``(line_number, line)``: ``line`` is the decoded ``str`` with its line
        ending kept, or the original ``bytes`` when that line cannot be decoded.
    """
    number = 0
    for chunk in lines:
        # A binary file splits on \n only; split on \r too, like bytes.splitlines.
        for line in chunk.splitlines(keepends=True):
            if number == 0 and codec == "utf-8" and line.startswith(codecs.BOM_UTF8):
                line = line[len(codecs.BOM_UTF8) :]
            number += 1
            try:
                yield number, line.decode(codec)
            except UnicodeDecodeError:
                yield number, line
