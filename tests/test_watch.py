"""The watch loop end to end: a JSONL social source, the analysis stages and a real aiosmtpd
server on 127.0.0.1; P1 alerts go out at once, digests wait for the nightly run."""

from __future__ import annotations

import email
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from flows.cli import app
from flows.nightly import nightly
from flows.watch import Watcher, watch
from pipelines._errors import StoreError
from pipelines.config import DEFAULT_CONFIG_DIR
from pipelines.registry import STAGES
from pipelines.storage import RunLock, schema
from tests._smtp import smtp_server

REPO_ROOT = Path(__file__).resolve().parent.parent


def analysis_stages() -> list[str]:
    """The sentiment stage when it and its trained head exist; flagging and alerts always."""
    heads = REPO_ROOT / "models" / "heads"
    has_sentiment = "sentiment" in STAGES and heads.is_dir() and any(heads.iterdir())
    return [*(["sentiment"] if has_sentiment else []), "flagging", "alerts"]


class Inbox:
    """aiosmtpd handler keeping every accepted message."""

    def __init__(self) -> None:
        self.contents: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.contents.append(envelope.content)
        return "250 Message accepted for delivery"

    @property
    def messages(self) -> list[EmailMessage]:
        return [
            email.message_from_bytes(content, policy=default_policy)  # type: ignore[misc]
            for content in self.contents
        ]


@pytest.fixture
def inbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Inbox]:
    """A real SMTP server on a free loopback port, configured through FEEDBACK_SMTP_*."""
    received = Inbox()
    with smtp_server(received, monkeypatch):
        yield received


# Posts of the last hours: feedback older than max_alert_age_days when stored goes to the digest.
_RECENT = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)


def _posted(minutes: int) -> str:
    return (_RECENT + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def post(post_id: str, created_at: str, text: str, followers: int) -> dict[str, Any]:
    """One line of the social JSONL file."""
    return {
        "post_id": post_id,
        "platform": "twitter",
        "author": f"user_{post_id}",
        "followers": followers,
        "url": f"https://twitter.com/user_{post_id}/status/{post_id}",
        "created_at": created_at,
        "text": text,
    }


INFLUENCER_CHURN = post(
    "1001",
    _posted(0),
    "Third order in a row that arrived broken and nobody answers the phone. "
    "I am cancelling my subscription and switching to Acme.",
    followers=120_000,
)
SMALL_ACCOUNT_COMPLAINT = post(
    "1002",
    _posted(5),
    "The refund never came and nobody answers my emails. Not happy at all.",
    followers=40,
)
HAPPY = post(
    "1003",
    _posted(10),
    "Lovely coffee and friendly staff at the new store this morning, thank you!",
    followers=90,
)
TURKISH_INFLUENCER_CHURN = post(
    "1004",
    _posted(60),
    "Siparişim iki haftadır gelmedi, müşteri hizmetleri de hiç cevap vermiyor. "
    "Aboneliğimi iptal ediyorum, bir daha sizden alışveriş yapmam.",
    followers=54_000,
)


def append(path: Path, *posts: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as file:
        for item in posts:
            file.write(json.dumps(item, ensure_ascii=False) + "\n")


@pytest.fixture
def social_config(tmp_path: Path, db_url: str) -> Path:
    """Embedded rules and routing, one JSONL social source, a fresh database (each backend) and
    a tmp outbox."""
    config_dir = tmp_path / "configs"
    shutil.copytree(DEFAULT_CONFIG_DIR, config_dir)
    (config_dir / "sources.yaml").write_text(
        f"""
data_dir: {tmp_path}
sources:
  - name: social_posts
    kind: jsonl
    channel: social
    path: social.jsonl
    columns:
      external_id: post_id
      created_at: created_at
      platform: platform
      author: author
      author_followers: followers
      url: url
      text: text
    keep_in_clear: [author]
""",
        encoding="utf-8",
    )
    (config_dir / "pipeline.yaml").write_text(
        f"""
database: {db_url}
stages: {json.dumps(analysis_stages())}
outbox_dir: {tmp_path / "outbox"}
reports_dir: {tmp_path / "reports"}
""",
        encoding="utf-8",
    )
    append(tmp_path / "social.jsonl", INFLUENCER_CHURN, SMALL_ACCOUNT_COMPLAINT, HAPPY)
    return config_dir


def alert_rows(watcher: Watcher) -> dict[str, tuple[str, str, str]]:
    alerts = schema.alerts
    query = select(alerts.c.payload, alerts.c.priority, alerts.c.kind, alerts.c.status)
    with watcher.store.engine.connect() as connection:
        return {
            payload["url"]: (priority, kind, status)
            for payload, priority, kind, status in connection.execute(query)
        }


def test_watch_mails_p1_at_once_then_only_new_posts(
    inbox: Inbox, social_config: Path, tmp_path: Path
) -> None:
    watcher = Watcher.from_config(social_config)

    first = watcher.poll()
    assert (first.stored, first.p1_sent, first.delivery_errors) == (3, 1, [])
    (message,) = inbox.messages
    assert message["X-Feedback-Priority"] == "P1"
    assert message["To"] == "social-lead@example.com"
    assert message["Subject"].startswith("[P1] social_posts")
    body = message.get_body(preferencelist=("plain",))
    assert body is not None and INFLUENCER_CHURN["url"] in body.get_content()
    assert "churn intent" in body.get_content()
    assert alert_rows(watcher) == {
        INFLUENCER_CHURN["url"]: ("P1", "p1", "sent"),
        SMALL_ACCOUNT_COMPLAINT["url"]: ("P2", "digest", "pending"),  # waits for the nightly digest
    }

    append(tmp_path / "social.jsonl", TURKISH_INFLUENCER_CHURN)
    second = watcher.poll()
    assert (second.stored, second.p1_sent) == (1, 1)
    assert len(inbox.messages) == 2
    assert inbox.messages[1]["X-Feedback-Priority"] == "P1"
    assert alert_rows(watcher)[TURKISH_INFLUENCER_CHURN["url"]] == ("P1", "p1", "sent")

    idle = watcher.poll()
    assert (idle.stored, idle.p1_sent, idle.failed_sources) == (0, 0, {})
    assert len(inbox.messages) == 2
    with watcher.store.engine.connect() as connection:
        flows = connection.execute(select(schema.runs.c.flow)).scalars().all()
    assert flows == ["watch", "watch"]  # the idle poll leaves no run row


@pytest.mark.parametrize("db_url", ["duckdb"], indirect=True)
def test_watch_releases_the_duckdb_file_between_polls(
    inbox: Inbox, social_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEEDBACK_DB_BUSY_WAIT", "1")  # a poll waits this long for the file
    watcher = Watcher.from_config(social_config)
    assert watcher.poll().stored == 3
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, duckdb\n"
            f"connection = duckdb.connect({watcher.store.url.removeprefix('duckdb:///')!r})\n"
            "print(connection.execute('select count(*) from feedback').fetchone()[0], flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "3"
        with pytest.raises(StoreError, match=r"\[E060\] database .* is busy"):
            watcher.poll()
    finally:
        holder.communicate("", timeout=30)
    assert watcher.poll().failed_sources == {}


def test_watch_skips_polls_while_another_run_holds_the_pipeline_lock(
    inbox: Inbox, social_config: Path
) -> None:
    watcher = Watcher.from_config(social_config)
    nightly_lock = RunLock(watcher.store, "nightly-run-1", "nightly")
    assert nightly_lock.try_acquire()
    skipped = watcher.poll()
    assert skipped.busy_with is not None and skipped.busy_with.flow == "nightly"
    assert (skipped.stored, len(inbox.messages)) == (0, 0)
    nightly_lock.release()
    assert (watcher.poll().stored, len(inbox.messages)) == (3, 1)


def test_cli_watch_loops_and_reports_each_poll(
    inbox: Inbox, social_config: Path, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        app,
        ["watch", "--config", str(social_config), "--interval", "0", "--iterations", "2"],
    )
    assert result.exit_code == 0, result.output
    assert "new records 3, P1 alerts sent 1" in result.output
    assert "new records 0, P1 alerts sent 0" in result.output
    assert len(inbox.messages) == 1


def test_watch_flow_runs_under_prefect(
    prefect_harness: None, inbox: Inbox, social_config: Path
) -> None:
    summary = watch(config_dir=str(social_config))
    assert (summary.stored, summary.p1_sent) == (3, 1)
    assert summary.stage_rows["alerts"] == 2
    assert [message["X-Feedback-Priority"] for message in inbox.messages] == ["P1"]


def test_nightly_mails_the_digests_the_watch_left_pending(
    prefect_harness: None, inbox: Inbox, social_config: Path
) -> None:
    assert Watcher.from_config(social_config).poll().p1_sent == 1
    summary = nightly(config_dir=str(social_config))
    assert sum(counts.stored for counts in summary.sources) == 0
    assert [message["X-Feedback-Priority"] for message in inbox.messages] == ["P1", None]
    digest = inbox.messages[1].get_body(preferencelist=("plain",))
    assert digest is not None
    assert "The refund never came and nobody answers my emails" in digest.get_content()
