"""File readers: CSV, JSON lines and Excel, each over one path or a glob of paths.

Incremental reads keep rows whose ``created_at`` is strictly after the watermark; the new
watermark is the newest ``created_at`` seen (UTC ISO).
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import zipfile
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from openpyxl import load_workbook
from openpyxl.utils.exceptions import InvalidFileException

from pipelines._errors import SourceError
from pipelines.ingest.sources._base import (
    Rejected,
    RowRejected,
    Source,
    SourceBatch,
    parse_since,
    raw_text,
)
from pipelines.ingest.sources._config import CsvSourceConfig, JsonlSourceConfig, XlsxSourceConfig
from pipelines.ingest.sources._encoding import decode_lines, resolve_codec
from pipelines.records import FeedbackRecord

__all__ = ["CsvSource", "FileSource", "JsonlSource", "XlsxSource"]

_LOG = logging.getLogger(__name__)
_GLOB_CHARS = frozenset("*?[")


class _Row(NamedTuple):
    values: dict[str, Any]
    raw: str
    where: str


def _undecodable(line: bytes, codec: str, where: str) -> Rejected:
    text = line.decode("utf-8", errors="backslashreplace").rstrip("\r\n")
    return Rejected(text, "undecodable", f"{where}: bytes are not valid {codec}")


class FileSource(Source):
    """Base of the file readers: path resolution, date filtering and the watermark.

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

    def _read_bytes(self, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise SourceError(
                f"source {self.name!r}: cannot read {path}: {exc}. Check the file's permissions."
            ) from exc

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
    def _rows(self, path: Path) -> Iterator[_Row | Rejected]:
        """Rows of one file, or ``Rejected`` for those that cannot even be parsed."""

    def read(self, since: str | None = None) -> SourceBatch:
        """Read every file of the source, keeping rows newer than ``since``.

        Args:
            since: ISO timestamp watermark from the previous read, or None for everything.

        Returns:
            The batch; its watermark is the newest ``created_at`` seen (or ``since``).

        Raises:
            SourceError: A file is missing, unreadable, or lacks a configured column.
        """
        since_at = parse_since(self.name, since) if since else None
        records: list[FeedbackRecord] = []
        rejected: list[Rejected] = []
        rows_read = rows_skipped = 0
        newest: datetime | None = None
        for path in self.files():
            for row in self._rows(path):
                if isinstance(row, Rejected):
                    rejected.append(row)
                    rows_read += 1
                    continue
                try:
                    created_at = self.mapper.created_at(row.values)
                    if since_at is not None and created_at <= since_at:
                        rows_skipped += 1
                        continue
                    newest = created_at if newest is None else max(newest, created_at)
                    produced = self.mapper.records(row.values, created_at)
                except RowRejected as exc:
                    rejected.append(Rejected(row.raw, exc.reason, f"{row.where}: {exc.detail}"))
                    rows_read += 1
                    continue
                records.extend(produced)
                rows_read += len(produced)
        watermark = newest.isoformat() if newest is not None else since
        return SourceBatch(
            source=self.name,
            records=records,
            rejected=rejected,
            rows_read=rows_read,
            watermark=watermark,
            rows_skipped=rows_skipped,
        )


class CsvSource(FileSource):
    """CSV with a header row. A row with broken quoting or the wrong number of fields is
    rejected as ``bad_csv_row`` and parsing resumes on the next line."""

    kind = "csv"
    config: CsvSourceConfig

    def _parse_one(self, lines: Sequence[str], start: int) -> tuple[list[str], int]:
        """Parse the record starting at ``lines[start]``; returns its fields and line count."""
        consumed = 0

        def feed() -> Iterator[str]:
            nonlocal consumed
            for index in range(start, len(lines)):
                consumed += 1
                yield lines[index]

        reader = csv.reader(feed(), delimiter=self.config.delimiter, strict=True)
        return next(reader, []), consumed

    def _rows(self, path: Path) -> Iterator[_Row | Rejected]:
        data = self._read_bytes(path)
        codec = resolve_codec(data, self.config.encoding)
        lines: list[str] = []
        numbers: list[int] = []
        for number, line in decode_lines(data, codec):
            if isinstance(line, bytes):
                if not lines:
                    raise SourceError(
                        f"source {self.name!r}: the header of {path} is not valid {codec}. Set "
                        "'encoding' in sources.yaml to the file's real encoding."
                    )
                yield _undecodable(line, codec, f"{path.name} line {number}")
            elif lines or line.strip():
                lines.append(line)
                numbers.append(number)
        if not lines:
            return
        try:
            header, start = self._parse_one(lines, 0)
        except csv.Error as exc:
            raise SourceError(
                f"source {self.name!r}: cannot parse the header of {path}: {exc}. Check the "
                "file's first line and 'delimiter'."
            ) from exc
        header = [name.strip() for name in header]
        self._check_header(path, header)
        while start < len(lines):
            where = f"{path.name} line {numbers[start]}"
            first_line = lines[start].rstrip("\r\n")
            try:
                fields, consumed = self._parse_one(lines, start)
            except csv.Error as exc:
                yield Rejected(first_line, "bad_csv_row", f"{where}: {exc}")
                start += 1
                continue
            if not fields:
                start += consumed
                continue
            if len(fields) != len(header):
                # Resync on the next physical line: a stray quote must not swallow later rows.
                detail = f"{where}: expected {len(header)} fields, got {len(fields)}"
                yield Rejected(first_line, "bad_csv_row", detail)
                start += 1
                continue
            raw = "".join(lines[start : start + consumed]).rstrip("\r\n")
            yield _Row(dict(zip(header, fields, strict=True)), raw, where)
            start += consumed


class JsonlSource(FileSource):
    """JSON lines: one object per line; a line that is not a JSON object is ``not_json``."""

    kind = "jsonl"
    config: JsonlSourceConfig

    def _rows(self, path: Path) -> Iterator[_Row | Rejected]:
        data = self._read_bytes(path)
        codec = resolve_codec(data, self.config.encoding)
        for number, line in decode_lines(data, codec):
            where = f"{path.name} line {number}"
            if isinstance(line, bytes):
                yield _undecodable(line, codec, where)
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

    def _rows(self, path: Path) -> Iterator[_Row | Rejected]:
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
