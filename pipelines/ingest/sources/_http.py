"""JSON HTTP API reader: page or cursor pagination, bearer token, retries with backoff.

Each page is one chunk. Where a read resumes (the watermark, saved only after every page of the
read is stored) depends on the pagination:

* cursor, and pages listed oldest first: the cursor or page number of the last page that
  returned items; the next read reads that page again (it may have grown; ids drop the
  repeats). A read stopped by ``max_pages`` resumes at the next page. A cursor the API already
  gave in this read (a cycle) fails the read at once (E012) and is never saved.
* pages listed newest first (``order: newest_first``): new items push the old ones to later
  pages, so a page number says nothing. A read starts at the first page and goes on until the
  page holding one of the newest ids of the previous complete read (the watermark), or the
  end; every item read is deduped by id, not by date. A crashed read saved nothing, so the
  next read goes down to the same mark again. When that takes more than ``max_pages`` pages
  the read fails (E014) rather than leave a gap.

``timeout_seconds`` bounds each request in total (connection, headers and body), not each
socket read: a server dripping one byte a second cannot hold a request longer (E013 once the
retries are spent).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore
import httpx

from pipelines._errors import SourceError
from pipelines.ingest.sources._base import (
    DEFAULT_CHUNK_ROWS,
    Rejected,
    RowRejected,
    Source,
    SourceBatch,
    lookup,
    raw_text,
)
from pipelines.ingest.sources._config import CursorPagination, HttpJsonSourceConfig, PagePagination
from pipelines.records import FeedbackRecord

__all__ = ["HttpJsonSource"]

_LOG = logging.getLogger(__name__)
_RETRY_STATUS = frozenset({408, 429})
_ANCHOR_IDS = 50


class _Deadline:
    """The instant the current request must be done by (``inf`` between requests)."""

    def __init__(self) -> None:
        self.at = math.inf

    def left(self, timeout: float | None) -> float | None:
        """The socket timeout to use now: ``timeout`` capped by the time left.

        Raises:
            httpcore.ReadTimeout: The deadline has passed.
        """
        remaining = self.at - time.monotonic()
        if remaining <= 0:
            raise httpcore.ReadTimeout("the request's total deadline has passed")
        return remaining if timeout is None else min(timeout, remaining)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self._stream = stream
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._deadline.left(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._deadline.left(timeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return _DeadlineStream(self._stream.start_tls(*args, **kwargs), self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's socket backend, each socket operation capped by the request's deadline."""

    def __init__(self, deadline: _Deadline) -> None:
        self._backend = httpcore.SyncBackend()
        self._deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._backend.connect_tcp(
            host, port, self._deadline.left(timeout), local_address, socket_options
        )
        return _DeadlineStream(stream, self._deadline)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _DeadlineTransport(httpx.HTTPTransport):
    """httpx's transport over ``_DeadlineBackend`` (httpx has no public hook for a backend)."""

    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(), network_backend=_DeadlineBackend(deadline)
        )


def _anchor(since: str | None) -> set[str]:
    """Newest ids of the previous complete newest-first read (empty: read every page)."""
    try:
        state = json.loads(since) if since else None
    except ValueError:
        return set()
    ids = state.get("newest_ids") if isinstance(state, dict) else None
    return {str(value) for value in ids} if isinstance(ids, list) else set()


class HttpJsonSource(Source):
    """Reads items from a JSON API page by page.

    Args:
        config: The source's configuration.
    """

    kind = "http_json"
    config: HttpJsonSourceConfig

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        token_env = self.config.token_env
        if token_env is not None:
            token = os.environ.get(token_env)
            if not token:
                raise SourceError(
                    f"source {self.name!r}: environment variable {token_env} is empty or not set. "
                    f"Export the API token in it (export {token_env}=...) before the run."
                )
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _get_json(
        self, client: httpx.Client, deadline: _Deadline, params: dict[str, str | int]
    ) -> Any:
        """GET the endpoint, retrying 5xx, 408, 429, timeouts and connection errors."""
        url = self.config.url
        attempts = self.config.max_retries + 1
        problem = ""
        timed_out = False
        for attempt in range(attempts):
            deadline.at = time.monotonic() + self.config.timeout_seconds
            try:
                response = client.get(url, params=params)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
                timed_out = isinstance(exc, httpx.TimeoutException)
            else:
                status = response.status_code
                if status < 400:
                    try:
                        return response.json()
                    except ValueError as exc:
                        raise SourceError(
                            f"source {self.name!r}: {url} answered HTTP {status} with a body "
                            f"that is not JSON ({exc}). Check 'url' points at the JSON API."
                        ) from exc
                if status < 500 and status not in _RETRY_STATUS:
                    hint = (
                        f"check the token in ${self.config.token_env}"
                        if status in (401, 403)
                        else "check 'url' and the pagination parameters"
                    )
                    raise SourceError(
                        f"source {self.name!r}: {url} answered HTTP {status}; {hint}."
                    )
                problem = f"HTTP {status}"
                timed_out = False
            finally:
                deadline.at = math.inf
            if attempt + 1 < attempts:
                delay = self.config.backoff_seconds * 2**attempt
                _LOG.warning(
                    "source %r: GET %s failed (%s); retry %d/%d in %.2fs",
                    self.name,
                    url,
                    problem,
                    attempt + 1,
                    self.config.max_retries,
                    delay,
                )
                time.sleep(delay)
        if timed_out:
            raise SourceError(
                f"source {self.name!r}: GET {url} did not answer in full within timeout_seconds "
                f"({self.config.timeout_seconds:g} s) in {attempts} attempt(s): {problem}. The "
                "server is too slow or stalled; check it, or raise timeout_seconds.",
                code="E013",
            )
        raise SourceError(
            f"source {self.name!r}: GET {url} failed after {attempts} attempt(s): {problem}. "
            "Check that the API is up and reachable, or raise max_retries / timeout_seconds."
        )

    def _items(self, payload: Any, params: dict[str, str | int]) -> list[Any]:
        items_path = self.config.items_path
        if not items_path:
            items = payload
        else:
            items = lookup(payload, items_path) if isinstance(payload, dict) else None
        if not isinstance(items, list):
            where = f"key {items_path!r}" if items_path else "the response root"
            raise SourceError(
                f"source {self.name!r}: {where} of {self.config.url} (params {params}) is not a "
                "list of items. Fix 'items_path' (dotted path to the list, empty for a root list)."
            )
        return items

    def read_chunks(
        self, since: str | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS
    ) -> Iterator[SourceBatch]:
        """Read pages from the watermark on, one chunk per page.

        Args:
            since: Watermark of the previous complete read (page, cursor or newest ids), or
                None to start at the top.
            chunk_rows: Unused: a page is one chunk (``page_size`` bounds it).

        Returns:
            A chunk per page, then an empty chunk carrying the watermark.

        Raises:
            SourceError: The API fails after the retries (E013: too slow), answers 4xx, the
                token variable is unset, the watermark does not fit the pagination, a cursor
                repeats (E012), or newest-first pages exceed ``max_pages`` (E014).
        """
        pagination = self.config.pagination
        deadline = _Deadline()
        transport = _DeadlineTransport(deadline)
        timeout = self.config.timeout_seconds
        with httpx.Client(timeout=timeout, headers=self._headers(), transport=transport) as client:
            if isinstance(pagination, PagePagination) and pagination.order == "newest_first":
                yield from self._newest_first(client, deadline, pagination, since)
            else:
                yield from self._resumable(client, deadline, pagination, since)

    def _batch(self, items: list[Any], watermark: str | None = None) -> SourceBatch:
        records: list[FeedbackRecord] = []
        rejected: list[Rejected] = []
        rows = self._map_items(items, records, rejected)
        return SourceBatch(self.name, records, rejected, rows, watermark)

    def _resumable(
        self,
        client: httpx.Client,
        deadline: _Deadline,
        pagination: PagePagination | CursorPagination,
        since: str | None,
    ) -> Iterator[SourceBatch]:
        """Cursor pages, or numbered pages oldest first: resume at the last page read."""
        key: str | int | None = self._first_key(pagination, since)
        watermark: str | int | None = since
        used = {key}
        for _ in range(self.config.max_pages):
            params = self._params(pagination, key)
            payload = self._get_json(client, deadline, params)
            items = self._items(payload, params)
            if not items:
                break
            watermark = key
            next_key = self._next_key(pagination, key, payload, len(items))
            if next_key is not None and next_key in used:
                raise SourceError(
                    f"source {self.name!r}: {self.config.url} returned cursor {next_key!r}, "
                    "already used in this read: the cursors cycle. Stopped without saving it as "
                    "the watermark; check 'pagination.cursor_field' or report it to the API's "
                    "owner.",
                    code="E012",
                )
            yield self._batch(items)
            if next_key is None:
                break
            used.add(next_key)
            key = next_key
        else:
            watermark = key
        yield SourceBatch(self.name, watermark=None if watermark is None else str(watermark))

    def _newest_first(
        self,
        client: httpx.Client,
        deadline: _Deadline,
        pagination: PagePagination,
        since: str | None,
    ) -> Iterator[SourceBatch]:
        """Numbered pages newest first: from the first page down to the previous read's mark."""
        anchor = _anchor(since)
        newest: list[str] = []
        page = pagination.first_page
        for _ in range(self.config.max_pages):
            params = self._params(pagination, page)
            items = self._items(self._get_json(client, deadline, params), params)
            if not items:
                break
            batch = self._batch(items)
            ids = [record.id for record in batch.records]
            newest = newest or ids[:_ANCHOR_IDS]
            yield batch
            if anchor.intersection(ids) or len(items) < pagination.page_size:
                break
            page += 1
        else:
            raise SourceError(
                f"source {self.name!r}: {self.config.url} lists newest first and holds more "
                f"than max_pages ({self.config.max_pages}) pages of items not read yet; the "
                "pages read are stored, the rest would be lost. Raise max_pages in "
                "sources.yaml.",
                code="E014",
            )
        watermark = json.dumps({"newest_ids": newest}) if newest else since
        yield SourceBatch(self.name, watermark=watermark)

    def _first_key(
        self, pagination: PagePagination | CursorPagination, since: str | None
    ) -> str | int | None:
        if isinstance(pagination, CursorPagination):
            return since
        if since is None:
            return pagination.first_page
        try:
            return int(since)
        except ValueError as exc:
            raise SourceError(
                f"source {self.name!r}: watermark {since!r} is not a page number. Delete the "
                "watermark of this source to read it from the first page."
            ) from exc

    @staticmethod
    def _params(
        pagination: PagePagination | CursorPagination, key: str | int | None
    ) -> dict[str, str | int]:
        if isinstance(pagination, PagePagination):
            assert key is not None
            return {pagination.page_param: key, pagination.size_param: pagination.page_size}
        return {} if key is None else {pagination.cursor_param: key}

    @staticmethod
    def _next_key(
        pagination: PagePagination | CursorPagination,
        key: str | int | None,
        payload: Any,
        item_count: int,
    ) -> str | int | None:
        if isinstance(pagination, PagePagination):
            assert isinstance(key, int)
            return key + 1 if item_count >= pagination.page_size else None
        cursor = lookup(payload, pagination.cursor_field) if isinstance(payload, dict) else None
        return str(cursor) if cursor not in (None, "") else None

    def _map_items(
        self, items: list[Any], records: list[FeedbackRecord], rejected: list[Rejected]
    ) -> int:
        """Map one page's items into ``records`` / ``rejected``; returns the rows it counted."""
        url = self.config.url
        rows = 0
        for position, item in enumerate(items):
            if not isinstance(item, dict):
                raw = json.dumps(item, ensure_ascii=False)
                detail = f"{url} item {position}: a {type(item).__name__}, not an object"
                rejected.append(Rejected(raw, "not_json", detail))
                rows += 1
                continue
            try:
                created_at = self.mapper.created_at(item)
                produced = self.mapper.records(item, created_at)
            except RowRejected as exc:
                rejected.append(Rejected(raw_text(item), exc.reason, f"{url}: {exc.detail}"))
                rows += 1
                continue
            records.extend(produced)
            rows += len(produced)
        return rows
