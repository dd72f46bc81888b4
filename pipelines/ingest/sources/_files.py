"""File readers: CSV, JSON lines and Excel, each over one path or a glob of paths.

Late rows are never skipped by date. A file source remembers, as its watermark, a manifest of
the files it read whole (path -> size, SHA-256 and rows). The next read skips only the files
whose size and content hash are unchanged, counting their rows as ``skipped`` with the reason
``unchanged_file``; a new or changed file (a late export, a re-sent backlog, an appended file)
is read in full and its rows already stored are dropped as duplicates by record id. Why: dates
say nothing about what was ingested (an export may hold rows older than any seen), ids do; the
hash makes skipping safe and costs one streaming pass over each file. A watermark from before
the manifest (an ISO timestamp) reads every file again once; ids drop what is known.

Files are streamed line by line (Excel row by row) and yielded in chunks, so memory does not
grow with the file.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import logging
import zipfile
from abc import abstractmethod
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from openpyxl import load_workbook
from openpyxl.utils.exceptions import InvalidFileException

from pipelines._errors import SourceError
from pipelines.ingest.sources._base import (
    DEFAULT_CHUNK_ROWS,
    Rejected,
    RowRejected,
    Source,
    SourceBatch,
    raw_text,
)
from pipelines.ingest.sources._config import CsvSourceConfig, JsonlSourceConfig, XlsxSourceConfig
from pipelines.ingest.sources._encoding import EncodingProbe, decode_lines, resolve_codec
from pipelines.records import FeedbackRecord

__all__ = ["UNCHANGED_FILE", "CsvSource", "FileSource", "JsonlSource", "XlsxSource"]

UNCHANGED_FILE = "unchanged_file"
"""Skip reason: the file was read whole by an earlier run and has not changed since."""

_LOG = logging.getLogger(__name__)
_GLOB_CHARS = frozenset("*?[")
_HASH_BLOCK = 1 << 20


class _Row(NamedTuple):
    values: dict[str, Any]
    raw: str
    where: str


class _Scan(NamedTuple):
    """One streaming pass over a file: its fingerprint and, for text, the codec to use."""

    size: int
    sha256: str
    codec: str | None


def _bad_encoding(line: bytes, codec: str, where: str) -> Rejected:
    text = line.decode("utf-8", errors="backslashreplace").rstrip("\r\n")
    return Rejected(text, "bad_encoding", f"{where}: bytes are not valid {codec}")


def _manifest(since: str | None) -> dict[str, dict[str, Any]]:
    """The files a previous read ingested whole; empty for a first or pre-manifest read."""
    if not since:
        return {}
    try:
        state = json.loads(since)
    except ValueError:
        return {}
    files = state.get("files") if isinstance(state, dict) else None
    return files if isinstance(files, dict) else {}


class _Chunk:
    """Records and rejected rows gathered until a chunk is full."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.records: list[FeedbackRecord] = []
        self.rejected: list[Rejected] = []

    @property
    def rows(self) -> int:
        return len(self.records) + len(self.rejected)

    def batch(self, watermark: str | None = None, skipped: int = 0) -> SourceBatch:
        return SourceBatch(
            source=self.source,
            records=self.records,
            rejected=self.rejected,
            rows_read=self.rows,
            watermark=watermark,
            skipped={UNCHANGED_FILE: skipped} if skipped else {},
        )


class FileSource(Source):
    """Base of the file readers: path resolution, the file manifest and chunking.

    Args:
        config: The source's configuration.
        base_dir: Folder relative paths are resolved against.
    """

    config: CsvSourceConfig | JsonlSourceConfig | XlsxSourceConfig

    def __init__(
        self, config: CsvSourceConfig | JsonlSourceConfig | XlsxSourceConfig, base_dir: Path
    ) -> None:
        super().__init__(config)
        self.base_dir = base_dir

    def files(self) -> list[Path]:
        """The files this source reads now (a glob may match more files over time).

        Returns:
            Existing files, sorted by path.

        Raises:
            SourceError: A plain (non-glob) path does not exist.
        """
        pattern = Path(self.config.path).expanduser()
        if not pattern.is_absolute():
            pattern = self.base_dir / pattern
        if not _GLOB_CHARS.intersection(self.config.path):
            if not pattern.is_file():
                raise SourceError(
                    f"source {self.name!r}: file {pattern} not found. Fix 'path' in sources.yaml "
                    f"(relative paths are resolved against {self.base_dir}) or set enabled: false."
                )
            return [pattern]
        matches = sorted(Path(match) for match in glob.glob(str(pattern), recursive=True))
        files = [match for match in matches if match.is_file()]
        if not files:
            _LOG.warning("source %r: no file matches %s", self.name, pattern)
        return files

    def _cannot_read(self, path: Path, exc: OSError) -> SourceError:
        return SourceError(
            f"source {self.name!r}: cannot read {path}: {exc}. Check the file's permissions."
        )

    def _scan(self, path: Path) -> _Scan:
        """Size and SHA-256 of a file, read in blocks."""
        digest = hashlib.sha256()
        size = 0
        try:
            with path.open("rb") as handle:
                while block := handle.read(_HASH_BLOCK):
                    digest.update(block)
                    size += len(block)
        except OSError as exc:
            raise self._cannot_read(path, exc) from exc
        return _Scan(size, digest.hexdigest(), None)

    def _check_header(self, path: Path, header: Sequence[str]) -> None:
        config = self.config
        wanted = [*config.columns.values(), *config.metadata_columns, *config.answer_columns]
        missing = [column for column in wanted if column not in header]
        if missing:
            raise SourceError(
                f"source {self.name!r}: column(s) {missing} configured in sources.yaml are not in "
                f"the header of {path} ({list(header)}). Fix the column names under 'columns', "
                "'metadata_columns' or 'answer_columns'."
            )

    @abstractmethod
    def _rows(self, path: Path, scan: _Scan) -> Iterator[_Row | Rejected]:
        """Rows of one file, or ``Rejected`` for those that cannot even be parsed."""

    def _key(self, path: Path) -> str:
        """The file's name in the manifest: relative to ``base_dir`` when inside it."""
        return str(path.relative_to(self.base_dir) if path.is_relative_to(self.base_dir) else path)

    def read_chunks(
        self, since: str | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS
    ) -> Iterator[SourceBatch]:
        """Read every new or changed file of the source, in chunks.

        Args:
            since: The manifest saved by the previous complete read, or None for every file.
            chunk_rows: Rows per chunk.

        Returns:
            Chunks; the last one carries the new manifest as watermark and the rows of
            unchanged files as ``skipped`` (``unchanged_file``).

        Raises:
            SourceError: A file is missing, unreadable, or lacks a configured column.
        """
        previous = _manifest(since)
        manifest: dict[str, dict[str, Any]] = {}
        skipped = 0
        chunk = _Chunk(self.name)
        for path in self.files():
            key, scan = self._key(path), self._scan(path)
            known = previous.get(key)
            if known is not None and (known.get("size"), known.get("sha256")) == scan[:2]:
                manifest[key] = known
                skipped += int(known.get("rows", 0))
                continue
            rows = 0
            for row in self._rows(path, scan):
                if isinstance(row, Rejected):
                    chunk.rejected.append(row)
                    rows += 1
                else:
                    try:
                        created_at = self.mapper.created_at(row.values)
                        produced = self.mapper.records(row.values, created_at)
                    except RowRejected as exc:
                        detail = f"{row.where}: {exc.detail}"
                        chunk.rejected.append(Rejected(row.raw, exc.reason, detail))
                        rows += 1
                    else:
                        chunk.records.extend(produced)
                        rows += len(produced)
                if chunk.rows >= chunk_rows:
                    yield chunk.batch()
                    chunk = _Chunk(self.name)
            manifest[key] = {"size": scan.size, "sha256": scan.sha256, "rows": rows}
        yield chunk.batch(json.dumps({"files": manifest}, sort_keys=True), skipped)


class _TextFileSource(FileSource):
    """CSV and JSON lines: decoded line by line with the configured or detected encoding."""

    config: CsvSourceConfig | JsonlSourceConfig

    def _scan(self, path: Path) -> _Scan:
        """Size, SHA-256 and (for ``encoding: auto``) the codec, in one pass over the lines."""
        digest = hashlib.sha256()
        size = 0
        probe = EncodingProbe() if self.config.encoding == "auto" else None
        try:
            with path.open("rb") as handle:
                for line in handle:
                    digest.update(line)
                    size += len(line)
                    if probe is not None:
                        probe.add(line)
        except OSError as exc:
            raise self._cannot_read(path, exc) from exc
        return _Scan(size, digest.hexdigest(), resolve_codec(probe, self.config.encoding))

    def _lines(self, path: Path, codec: str) -> Iterator[tuple[int, str | bytes]]:
        try:
            with path.open("rb") as handle:
                yield from decode_lines(handle, codec)
        except OSError as exc:
            raise self._cannot_read(path, exc) from exc


class _PendingLines:
    """Decoded lines of a CSV file pulled on demand, so a record may span several lines.

    Lines that cannot be decoded are set aside in ``bad`` (quarantined as ``bad_encoding``).
    """

    def __init__(self, lines: Iterator[tuple[int, str | bytes]]) -> None:
        self._lines = lines
        self.buffer: deque[tuple[int, str]] = deque()
        self.bad: list[tuple[int, bytes]] = []

    def pull(self) -> bool:
        """Append the next decodable line to ``buffer``; False at the end of the file."""
        for number, line in self._lines:
            if isinstance(line, bytes):
                self.bad.append((number, line))
                continue
            self.buffer.append((number, line))
            return True
        return False


class CsvSource(_TextFileSource):
    """CSV with a header row. A row with broken quoting or the wrong number of fields is
    rejected as ``bad_csv_row`` and parsing resumes on the next line."""

    kind = "csv"
    config: CsvSourceConfig

    def _parse_one(self, pending: _PendingLines) -> tuple[list[str], int]:
        """Parse the record starting at the first pending line; returns its fields and lines."""
        consumed = 0

        def feed() -> Iterator[str]:
            nonlocal consumed
            while consumed < len(pending.buffer) or pending.pull():
                consumed += 1
                yield pending.buffer[consumed - 1][1]

        reader = csv.reader(feed(), delimiter=self.config.delimiter, strict=True)
        return next(reader, []), consumed

    def _rows(self, path: Path, scan: _Scan) -> Iterator[_Row | Rejected]:
        codec = scan.codec or "utf-8"
        pending = _PendingLines(self._lines(path, codec))
        while (pending.buffer or pending.pull()) and not pending.buffer[0][1].strip():
            pending.buffer.popleft()
        if pending.bad:
            raise SourceError(
                f"source {self.name!r}: the header of {path} is not valid {codec}. Set "
                "'encoding' in sources.yaml to the file's real encoding."
            )
        if not pending.buffer:
            return
        try:
            header, consumed = self._parse_one(pending)
        except csv.Error as exc:
            raise SourceError(
                f"source {self.name!r}: cannot parse the header of {path}: {exc}. Check the "
                "file's first line and 'delimiter'."
            ) from exc
        header = [name.strip() for name in header]
        self._check_header(path, header)
        for _ in range(consumed):
            pending.buffer.popleft()
        while pending.buffer or pending.pull():
            number, first = pending.buffer[0]
            where = f"{path.name} line {number}"
            first_line = first.rstrip("\r\n")
            try:
                fields, consumed = self._parse_one(pending)
            except csv.Error as exc:
                yield Rejected(first_line, "bad_csv_row", f"{where}: {exc}")
                consumed, fields = 1, []
            else:
                if fields and len(fields) != len(header):
                    # Resync on the next physical line: a stray quote must not swallow later rows.
                    detail = f"{where}: expected {len(header)} fields, got {len(fields)}"
                    yield Rejected(first_line, "bad_csv_row", detail)
                    consumed, fields = 1, []
            lines = [pending.buffer.popleft()[1] for _ in range(consumed)]
            for bad_number, bad_line in pending.bad:
                yield _bad_encoding(bad_line, codec, f"{path.name} line {bad_number}")
            pending.bad.clear()
            if fields:
                raw = "".join(lines).rstrip("\r\n")
                yield _Row(dict(zip(header, fields, strict=True)), raw, where)


class JsonlSource(_TextFileSource):
    """JSON lines: one object per line; a line that is not a JSON object is ``not_json``."""

    kind = "jsonl"
    config: JsonlSourceConfig

    def _rows(self, path: Path, scan: _Scan) -> Iterator[_Row | Rejected]:
        codec = scan.codec or "utf-8"
        for number, line in self._lines(path, codec):
            where = f"{path.name} line {number}"
            if isinstance(line, bytes):
                yield _bad_encoding(line, codec, where)
                continue
            text = line.strip()
            if not text:
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                yield Rejected(text, "not_json", f"{where}: {exc}")
                continue
            if not isinstance(value, dict):
                yield Rejected(
                    text, "not_json", f"{where}: a {type(value).__name__}, not an object"
                )
                continue
            yield _Row(value, text, where)


class XlsxSource(FileSource):
    """Excel workbook read with openpyxl in read-only mode; first sheet unless ``sheet``."""

    kind = "xlsx"
    config: XlsxSourceConfig

    def _rows(self, path: Path, scan: _Scan) -> Iterator[_Row | Rejected]:
        try:
            workbook = load_workbook(path, read_only=True, data_only=True)
        except (InvalidFileException, zipfile.BadZipFile, KeyError, OSError) as exc:
            raise SourceError(
                f"source {self.name!r}: {path} is not a readable .xlsx workbook ({exc}). Save it "
                "as Excel .xlsx or change 'kind'."
            ) from exc
        try:
            sheet_name = self.config.sheet
            if sheet_name is not None and sheet_name not in workbook.sheetnames:
                raise SourceError(
                    f"source {self.name!r}: sheet {sheet_name!r} not in {path} (sheets: "
                    f"{workbook.sheetnames}). Fix 'sheet' in sources.yaml."
                )
            sheet = workbook[sheet_name] if sheet_name else workbook.worksheets[0]
            header: list[str] | None = None
            for number, cells in enumerate(sheet.iter_rows(values_only=True), start=1):
                if all(cell is None or cell == "" for cell in cells):
                    continue
                if header is None:
                    header = ["" if cell is None else str(cell).strip() for cell in cells]
                    self._check_header(path, header)
                    continue
                padded = list(cells) + [None] * (len(header) - len(cells))
                values = {name: cell for name, cell in zip(header, padded, strict=False) if name}
                yield _Row(values, raw_text(values), f"{path.name} row {number}")
        finally:
            workbook.close()
