"""A failed or crashed nightly/rerun run mails the data team (a real aiosmtpd on 127.0.0.1)."""

from __future__ import annotations

import email
import json
from datetime import datetime
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest

from flows.nightly import nightly
from flows.rerun import rerun
from pipelines._errors import ConfigError
from pipelines.delivery.failure_mail import rerun_command
from pipelines.storage import Store, recent_runs, start_run
from tests._smtp import smtp_server

TEAM = "data-team@example.com"


class Inbox:
    """aiosmtpd handler keeping every accepted message and its envelope recipients."""

    def __init__(self) -> None:
        self.received: list[tuple[list[str], EmailMessage]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=default_policy)
        self.received.append((list(envelope.rcpt_tos), message))  # type: ignore[arg-type]
        return "250 Message accepted for delivery"


def _config(tmp_path: Path) -> Path:
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "rows.jsonl").write_text(
        json.dumps({"id": "1", "ts": "2026-11-02T10:00:00", "body": "Kargo geç geldi"}) + "\n",
        encoding="utf-8",
    )
    (folder / "sources.yaml").write_text(
        "data_dir: .\nsources:\n  - name: shop\n    kind: jsonl\n    channel: review\n"
        "    path: rows.jsonl\n    columns: {external_id: id, created_at: ts, text: body}\n",
        encoding="utf-8",
    )
    (folder / "routing.yaml").write_text("routes:\n  - name: all\n    to: [lead@example.com]\n")
    (folder / "pipeline.yaml").write_text(f"stages: []\nfailure_mail_to: [{TEAM}]\n")
    return folder


def test_a_failed_rerun_mails_code_link_and_rerun_command(
    prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, db = _config(tmp_path), str(tmp_path / "feedback.duckdb")
    inbox = Inbox()
    with smtp_server(inbox, monkeypatch), pytest.raises(ConfigError):
        rerun(
            since=datetime(2026, 11, 8),
            until=datetime(2026, 11, 1),
            stages=["sentiment"],
            config_dir=str(config),
            db=db,
        )
    ((recipients, message),) = inbox.received
    assert recipients == [TEAM]
    assert message["Subject"].startswith("[feedback-pipeline] rerun run failed: E001")
    body = message.get_content()
    assert "Error code: E001" in body and "must be after since" in body
    assert "/runs/flow-run/" in body or "feedback runs" in body
    with Store(db) as store:
        (run,) = recent_runs(store)
    assert run["run_id"] in body and run["status"] == "failed"
    assert (
        f"feedback rerun --since {run['parameters']['since']} --until "
        f"{run['parameters']['until']} --stage sentiment --config {config} --db {db}" in body
    )


def test_a_crashed_nightly_is_mailed_by_the_next_run(
    prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, db = _config(tmp_path), str(tmp_path / "feedback.duckdb")
    with Store(db) as store:  # a run whose process died: 'running', no live lock holder
        start_run(store, "dead-run-0001", "nightly", {"sources": ["shop"], "since": None})
    inbox = Inbox()
    with smtp_server(inbox, monkeypatch):
        summary = nightly(config_dir=str(config), db=db)
    assert sum(c.stored for c in summary.sources) == 1
    ((recipients, message),) = inbox.received
    assert recipients == [TEAM] and "nightly run crashed" in message["Subject"]
    body = message.get_content()
    assert "dead-run-0001" in body and "feedback run --source shop" in body


def test_the_rerun_command_never_carries_a_password() -> None:
    command = rerun_command("nightly", {"since": None}, None, "postgresql://u:secret@h/db")
    assert command == "feedback run" and "secret" not in command
