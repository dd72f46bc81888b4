"""The triage web page for tests: a seeded database, a config folder, and the real app served by
uvicorn on a free 127.0.0.1 port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.delivery.alerts import enqueue_alerts, list_alerts
from pipelines.delivery.links import LinkSigner
from pipelines.delivery.routing import load_routing
from pipelines.storage import Store, schema
from pipelines.web import WebSettings, load_web_settings, web_server

__all__ = [
    "ADMIN",
    "FA_LEAD",
    "LEAD",
    "SECRET",
    "LiveWeb",
    "live_web",
    "seed",
    "write_config",
]

SECRET = "test-secret-" + "s" * 40
LEAD = "lead@example.com"
FA_LEAD = "fa-lead@example.com"
ADMIN = "data-team@example.com"
ROUTING = f"""
default_sla_hours: {{P1: 4, P2: 24, P3: 72}}
routes:
  - name: persian
    match: {{languages: [fa]}}
    to: [{FA_LEAD}]
    lang: fa
    timezone: Asia/Tehran
  - name: default
    to: [{LEAD}]
"""


def write_config(folder: Path) -> Path:
    """A config folder with routing.yaml (two leads) and users.yaml (one admin)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "routing.yaml").write_text(ROUTING, encoding="utf-8")
    (folder / "users.yaml").write_text(f"admins: [{ADMIN}]\n", encoding="utf-8")
    return folder


def _record(record_id: str, lang: str, text: str, **extra: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    row = {
        "id": record_id,
        "source": "app_reviews",
        "channel": "review",
        "external_id": record_id,
        "created_at": now - timedelta(days=1),
        "text": text,
        "text_hash": record_id,
        "customer_id": f"C-{record_id}",
        "customer_value": 1250.0,
        "author": "[AUTHOR:1a2b3c]",
        "lang": lang,
        "run_id": "run-1",
        "ingested_at": now - timedelta(hours=20),
    }
    row.update(extra)
    return row


def seed(
    store: Store, config: Path, records: Sequence[dict[str, Any]] | None = None
) -> dict[str, str]:
    """Store feedback with analysis results and queue their alerts.

    Args:
        store: The database.
        config: The config folder (routing).
        records: ``record_id``, ``lang``, ``text``, optional ``priority`` (default P1) and
            feedback columns; a default English and Persian pair.

    Returns:
        record id -> alert id.
    """
    now = datetime.now(UTC)
    rows = [
        _record(**item)
        for item in records
        or [
            {
                "record_id": "en1",
                "lang": "en",
                "text": "Delivery took two weeks. The courier was rude. Packaging was fine.",
            },
            {
                "record_id": "fa1",
                "lang": "fa",
                "text": "سفارشم دو هفته دیر رسید. پشتیبانی هیچ جوابی نداد. بسته‌بندی خوب بود.",
            },
        ]
    ]
    priorities = {row["id"]: row.pop("priority", "P1") for row in rows}
    store.insert_ignore(schema.feedback, rows)
    sentences = {}
    for row in rows:
        parts = [part.strip() + "." for part in row["text"].split(".") if part.strip()]
        sentences[row["id"]] = [
            {"text": part, "sentiment": "positive" if index == len(parts) - 1 else "negative"}
            for index, part in enumerate(parts)
        ]
    store.insert_ignore(
        schema.sentiment,
        [
            {
                "record_id": row["id"],
                "model_version": "test-1",
                "label": "negative",
                "negative": 0.91,
                "neutral": 0.05,
                "positive": 0.04,
                "sentences": sentences[row["id"]],
                "run_id": "run-1",
                "created_at": now,
            }
            for row in rows
        ],
    )
    store.insert_ignore(
        schema.aspects,
        [
            {
                "record_id": row["id"],
                "aspect": aspect,
                "model_version": "test-1",
                "polarity": polarity,
                "score": 0.8,
                "run_id": "run-1",
                "created_at": now,
            }
            for row in rows
            for aspect, polarity in (
                ("delivery_shipping", "negative"),
                ("product_quality", "positive"),
            )
        ],
    )
    batch = pd.DataFrame(
        [
            {
                **row,
                "flagged": True,
                "priority": priorities[row["id"]],
                "reasons": ["negative 0.91", "rating 1/5"],
                "aspects": [{"aspect": "delivery_shipping", "polarity": "negative"}],
            }
            for row in rows
        ]
    )
    enqueue_alerts(batch, store, load_routing(config), now=now)
    alerts = list_alerts(store)
    return dict(zip(alerts["record_id"], alerts["alert_id"], strict=True))


@dataclass
class LiveWeb:
    """A running app: its URL, settings and a signer for links."""

    url: str
    settings: WebSettings
    signer: LinkSigner
    store: Store

    def link(self, recipient: str, alert_id: str, action: str, at: datetime | None = None) -> str:
        """A signed link path (``/l/...``) as an alert mail carries it."""
        token = self.signer.token(recipient, alert_id, action, at or datetime.now(UTC))
        return f"/l/{token}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def live_web(store: Store, config: Path, **overrides: Any) -> Iterator[LiveWeb]:
    """Serve the app with uvicorn on a free loopback port for the block.

    Args:
        store: The seeded database.
        config: The config folder.
        **overrides: ``WebSettings`` fields to change (rate limits...).
    """
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    settings = load_web_settings(
        config, store.url, environ={"FEEDBACK_WEB_SECRET": SECRET, "FEEDBACK_WEB_URL": url}
    )
    settings = replace(settings, outbox_dir=config.parent / "outbox", **overrides)
    server = web_server(settings, "127.0.0.1", port)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield LiveWeb(url, settings, LinkSigner(SECRET, url, settings.link_ttl), store)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
