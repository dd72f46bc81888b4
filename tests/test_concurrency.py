"""Nightly, rerun and two watch processes at once on a real PostgreSQL, with a real SMTP server:
every row read is stored exactly once and no alert reaches a recipient twice."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from flows.nightly import nightly
from flows.rerun import rerun
from pipelines.config import DEFAULT_CONFIG_DIR
from pipelines.storage import Store, schema
from tests._smtp import smtp_server

REPO_ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 3
PER_ROUND = 8  # 2 influencer churn posts (P1), 2 small complaints (digest), 4 happy posts
WATCHERS = 2

_WATCH_UNTIL_STOPPED = """
import sys, time
from pathlib import Path
from flows.watch import Watcher
watcher = Watcher.from_config(sys.argv[1])
print("ready", flush=True)
stop = Path(sys.argv[2])
while not stop.exists():
    watcher.poll()
    time.sleep(0.1)
watcher.poll()
"""


class Recipients:
    """aiosmtpd handler recording, per accepted message, its alert ids and envelope recipients."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content, policy=default_policy)
        ids = str(message.get("X-Feedback-Alert-Id") or message.get("X-Feedback-Alert-Ids"))
        with self._lock:
            self.deliveries += [
                (alert_id, rcpt) for alert_id in ids.split() for rcpt in envelope.rcpt_tos
            ]
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recipients]:
    """A real SMTP server on a free loopback port, configured through FEEDBACK_SMTP_*."""
    received = Recipients()
    with smtp_server(received, monkeypatch):
        yield received


def _posts(round_number: int) -> list[dict[str, Any]]:
    texts = [
        (
            "Third order in a row that arrived broken and nobody answers the phone. I am "
            "cancelling my subscription and switching to Acme.",
            120_000,
        ),
        ("The refund never came and nobody answers my emails. Not happy at all.", 40),
        ("Lovely coffee and friendly staff at the new store this morning, thank you!", 90),
        ("Great service today, the barista remembered my order. Thanks!", 75),
    ]
    posts = []
    for index in range(PER_ROUND):
        number = round_number * PER_ROUND + index
        body, followers = texts[index % len(texts)]
        posts.append(
            {
                "post_id": f"{number:04d}",
                "author": f"user_{number}",
                "followers": followers,
                "url": f"https://twitter.com/user_{number}/status/{number}",
                "created_at": f"2026-11-{1 + round_number:02d}T10:{index:02d}:00Z",
                "text": f"{body} (ticket {number})",
            }
        )
    return posts


def _append(path: Path, posts: list[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as file:
        file.write("".join(json.dumps(post) + "\n" for post in posts))


def _config(tmp_path: Path, db_url: str) -> Path:
    config = tmp_path / "configs"
    shutil.copytree(DEFAULT_CONFIG_DIR, config)
    (config / "sources.yaml").write_text(
        f"data_dir: {tmp_path}\n"
        "sources:\n"
        "  - name: social_posts\n"
        "    kind: jsonl\n"
        "    channel: social\n"
        "    path: social.jsonl\n"
        "    columns: {external_id: post_id, created_at: created_at, author: author,\n"
        "              author_followers: followers, url: url, text: text}\n",
        encoding="utf-8",
    )
    (config / "pipeline.yaml").write_text(
        f"database: {db_url}\n"
        "timezone: UTC\n"
        "stages: [flagging, alerts]\n"
        f"outbox_dir: {tmp_path / 'outbox'}\n"
        f"reports_dir: {tmp_path / 'reports'}\n",
        encoding="utf-8",
    )
    return config


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_nightly_rerun_and_watch_at_once_lose_nothing_and_mail_nothing_twice(
    prefect_harness: None, smtp_env: Recipients, db_url: str, tmp_path: Path
) -> None:
    config = _config(tmp_path, db_url)
    posts_file, stop = tmp_path / "social.jsonl", tmp_path / "stop"
    _append(posts_file, _posts(0))
    watchers = [
        subprocess.Popen(
            [sys.executable, "-c", _WATCH_UNTIL_STOPPED, str(config), str(stop)],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(WATCHERS)
    ]
    for watcher in watchers:
        assert watcher.stdout is not None and watcher.stdout.readline() == "ready\n"
    errors: list[BaseException] = []

    def guarded(call: Any) -> None:
        try:
            call()
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    def feed() -> None:
        for round_number in range(1, ROUNDS):
            time.sleep(1.0)
            _append(posts_file, _posts(round_number))

    calls = [
        feed,
        lambda: nightly(config_dir=str(config)),
        lambda: rerun(since=datetime(2026, 11, 1), config_dir=str(config)),
        lambda: nightly(config_dir=str(config)),
    ]
    threads = [threading.Thread(target=guarded, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    stop.touch()
    for watcher in watchers:
        _, stderr = watcher.communicate(timeout=120)
        assert watcher.returncode == 0, stderr
    assert errors == []
    nightly(config_dir=str(config))  # drains the digests the watchers left pending

    expected = ROUNDS * PER_ROUND
    with Store(db_url) as store, store.engine.connect() as connection:
        feedback, counts, alerts = schema.feedback, schema.run_source_counts, schema.alerts
        external_ids = connection.execute(select(feedback.c.external_id)).scalars().all()
        stored = connection.execute(select(func.sum(counts.c.stored))).scalar_one()
        quarantined = connection.execute(
            select(func.count()).select_from(schema.quarantine)
        ).scalar_one()
        flows = set(connection.execute(select(schema.runs.c.flow)).scalars())
        alert_rows = connection.execute(
            select(alerts.c.alert_id, alerts.c.priority, alerts.c.status, alerts.c.recipients)
        ).all()
    assert flows == {"nightly", "rerun", "watch"}  # all three really took part
    assert sorted(external_ids) == [f"{number:04d}" for number in range(expected)]
    assert stored == expected and quarantined == 0
    assert sum(row.priority == "P1" for row in alert_rows) == 2 * ROUNDS
    assert {row.status for row in alert_rows} == {"sent"}

    twice = [pair for pair, seen in Counter(smtp_env.deliveries).items() if seen > 1]
    assert twice == []
    wanted = {(row.alert_id, rcpt) for row in alert_rows for rcpt in row.recipients}
    assert set(smtp_env.deliveries) == wanted
