"""JSON HTTP API reader: page or cursor pagination, bearer token, retries with backoff.

The watermark is the page number or cursor of the last page that returned items: the next
read starts by reading that page again (it may have grown; dedupe drops the repeats). When a
read stops at ``max_pages`` the watermark is the next page, so the next read goes on.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import httpx

from pipelines._errors import SourceError
from pipelines.ingest.sources._base import (
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

    def _get_json(self, client: httpx.Client, params: dict[str, str | int]) -> Any:
        """GET the endpoint, retrying 5xx, 408, 429, timeouts and connection errors."""
        url = self.config.url
        attempts = self.config.max_retries + 1
        problem = ""
        for attempt in range(attempts):
            try:
                response = client.get(url, params=params)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
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

    def read(self, since: str | None = None) -> SourceBatch:
        """Read pages from the watermark on.

        Args:
            since: Page number or cursor from the previous read, or None to start at the top.

        Returns:
            The batch with the page or cursor to resume from as watermark.

        Raises:
            SourceError: The API fails after the retries, answers 4xx, the token variable is
                unset, or the watermark does not fit the pagination.
        """
        pagination = self.config.pagination
        key: str | int | None = self._first_key(pagination, since)
        watermark: str | int | None = since
        records: list[FeedbackRecord] = []
        rejected: list[Rejected] = []
        rows_read = 0
        with httpx.Client(timeout=self.config.timeout_seconds, headers=self._headers()) as client:
            for _ in range(self.config.max_pages):
                params = self._params(pagination, key)
                payload = self._get_json(client, params)
                items = self._items(payload, params)
                if not items:
                    break
                watermark = key
                rows_read += self._map_items(items, records, rejected)
                next_key = self._next_key(pagination, key, payload, len(items))
                if next_key is None:
                    break
                if next_key == key:
                    raise SourceError(
                        f"source {self.name!r}: {self.config.url} returned the cursor it was "
                        f"given ({key!r}); stopping to avoid an endless loop. Check "
                        "'pagination.cursor_field'."
                    )
                key = next_key
            else:
                watermark = key
        return SourceBatch(
            source=self.name,
            records=records,
            rejected=rejected,
            rows_read=rows_read,
            watermark=None if watermark is None else str(watermark),
        )

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
