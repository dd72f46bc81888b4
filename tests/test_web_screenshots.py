"""Headless Chromium renders the triage page (inbox, and an alert page with Persian text) from a
real uvicorn server. The screenshots go to the test's temporary folder; with
``FEEDBACK_UPDATE_SCREENSHOTS=1`` they replace docs/screenshots/ (the README's images)."""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipelines.storage import Store, schema
from tests._web import ADMIN, FA_LEAD, live_web, seed, write_config

SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
NOW = datetime.now(UTC)
RECORDS = [
    {
        "record_id": "fa1",
        "lang": "fa",
        "text": "سفارشم دو هفته دیر رسید. پشتیبانی هیچ جوابی نداد و دیگر از شما خرید نمی‌کنم. "
        "بسته‌بندی خوب بود.",
        "channel": "social",
        "platform": "instagram",
        "url": "https://social.example.com/p/8812",
        "ingested_at": NOW - timedelta(hours=6),
    },
    {
        "record_id": "tr1",
        "lang": "tr",
        "text": "Kargo 10 gündür gelmedi. Müşteri hizmetleri telefonu açmıyor. Ürün güzel.",
        "priority": "P2",
    },
    {
        "record_id": "ro1",
        "lang": "ro",
        "text": "Am primit produsul spart. Nimeni nu răspunde la e-mail. Prețul era bun.",
        "priority": "P3",
        "ingested_at": NOW - timedelta(hours=1),
    },
    {
        "record_id": "en1",
        "lang": "en",
        "text": "Charged twice for one order. Support closed my ticket. The app looks nice.",
        "priority": "P2",
        "ingested_at": NOW - timedelta(hours=30),
    },
    {
        "record_id": "en2",
        "lang": "en",
        "text": "The courier left the parcel in the rain. Everything is soaked. Fast though.",
        "priority": "P1",
        "ingested_at": NOW - timedelta(hours=2),
    },
]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(
        "chromium not found: install it (apt-get install -y chromium, as .ci/run does) to "
        "screenshot the triage page"
    )


def _shoot(chromium: str, url: str, target: Path, profile: Path, height: int) -> None:
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        f"--screenshot={target}",
        f"--window-size=1280,{height}",
        url,
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=120)


def _unflagged_similar(store: Store) -> None:
    """A Persian review about delivery that raised no alert: 'similar recent feedback'."""
    store.insert_ignore(
        schema.feedback,
        [
            {
                "id": "fa2",
                "source": "app_reviews",
                "channel": "review",
                "created_at": NOW - timedelta(days=3),
                "text": "پیک خیلی دیر آمد ولی غذا گرم بود.",
                "text_hash": "fa2",
                "lang": "fa",
                "run_id": "run-1",
                "ingested_at": NOW - timedelta(days=3),
            }
        ],
    )
    store.insert_ignore(
        schema.aspects,
        [
            {
                "record_id": "fa2",
                "aspect": "delivery_shipping",
                "model_version": "test-1",
                "polarity": "negative",
                "score": 0.7,
                "run_id": "run-1",
                "created_at": NOW,
            }
        ],
    )


def _colour_share(path: Path, hex_colour: str) -> int:
    from PIL import Image

    image = Image.open(path).convert("RGB")
    wanted = tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    colours = image.getcolors(maxcolors=1 << 22) or []
    return sum(count for count, colour in colours if colour == wanted)


def test_inbox_and_persian_alert_page_render_in_headless_chromium(
    tmp_path: Path,
) -> None:
    chromium = _chromium()
    config = write_config(tmp_path / "config")
    with Store(tmp_path / "feedback.duckdb") as store:
        alerts = seed(store, config, RECORDS)
        _unflagged_similar(store)
        with live_web(store, config) as web:
            folder = SCREENSHOTS if os.environ.get("FEEDBACK_UPDATE_SCREENSHOTS") else tmp_path
            folder.mkdir(parents=True, exist_ok=True)
            inbox, alert = folder / "inbox.png", folder / "alert-fa.png"
            _shoot(chromium, web.url + web.link(ADMIN, "", "inbox"), inbox, tmp_path / "p1", 620)
            _shoot(
                chromium,
                web.url + web.link(FA_LEAD, alerts["fa1"], "open"),
                alert,
                tmp_path / "p2",
                1100,
            )
    assert _colour_share(inbox, "#fdecea") > 5000, "overdue rows are highlighted"
    assert _colour_share(inbox, "#b3261e") > 100, "P1 badges"
    assert _colour_share(alert, "#fbd5d1") > 2000, "negative sentences are highlighted"
    assert _colour_share(alert, "#1f3b5c") > 10000, "the signed-in page, not the sign-in form"
