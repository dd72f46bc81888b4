"""Per-recipient alert delivery against a real aiosmtpd server on 127.0.0.1: a recipient refused
then accepted, one refused for good, a server not listening, two delivery loops at once, and
``feedback rerun --resend-alerts`` without ``--reanalyze``; on DuckDB and PostgreSQL."""

from __future__ import annotations

import email
import logging
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select
from typer.testing import CliRunner

from flows._tasks import summary_markdown
from flows.cli import app
from flows.nightly import nightly
from flows.rerun import rerun
from pipelines._errors import ConfigError
from pipelines.delivery.alerts import (
    AlertStage,
    DeliveryPolicy,
    Mailer,
    deliver_pending,
    delivery_backlog,
    enqueue_alerts,
    list_alerts,
)
from pipelines.delivery.routing import RoutingConfig, load_routing
from pipelines.stages import StageContext
from pipelines.storage import Store, schema

T0 = datetime(2025, 3, 10, 9, 0, tzinfo=UTC)
LEAD, SECOND = "lead@example.com", "second@example.com"

ROUTING = f"""
default_sla_hours: {{P1: 4, P2: 24, P3: 72}}
routes:
  - name: default
    to: [{LEAD}, {SECOND}]
"""


class Handler:
    """Accepts every envelope, except that it refuses ``refuse[address]`` more RCPTs of it
    (``-1``: for ever) with ``550 5.1.1 mailbox unavailable``."""

    def __init__(self) -> None:
        self.refuse: dict[str, int] = {}
        self.envelopes: list[Any] = []
        self.lock = threading.Lock()

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        left = self.refuse.get(address, 0)
        if left:
            self.refuse[address] = left - 1 if left > 0 else left
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.envelopes.append(envelope)
        return "250 Message accepted for delivery"

    def received(self) -> Counter[tuple[str, str]]:
        """(alert id, recipient) -> times received."""
        counts: Counter[tuple[str, str]] = Counter()
        for envelope in self.envelopes:
            message = email.message_from_bytes(envelope.content, policy=default_policy)
            ids = str(message["X-Feedback-Alert-Id"] or message["X-Feedback-Alert-Ids"]).split()
            for recipient in envelope.rcpt_tos:
                counts.update((alert, recipient) for alert in ids)
        return counts


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _environ(port: int) -> dict[str, str]:
    return {
        "FEEDBACK_SMTP_HOST": "127.0.0.1",
        "FEEDBACK_SMTP_PORT": str(port),
        "FEEDBACK_SMTP_SECURITY": "none",
        "FEEDBACK_SMTP_FROM": "alerts@example.com",
    }


@pytest.fixture
def smtp() -> Iterator[tuple[Handler, int]]:
    """A listening aiosmtpd server: (its handler, its port)."""
    handler, port = Handler(), _free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()


@pytest.fixture
def routing(tmp_path: Path) -> RoutingConfig:
    folder = tmp_path / "routing"
    folder.mkdir()
    (folder / "routing.yaml").write_text(ROUTING, encoding="utf-8")
    return load_routing(folder)


def flagged(record_id: str, priority: str) -> dict[str, Any]:
    return {
        "id": record_id,
        "source": "shop_reviews",
        "channel": "review",
        "created_at": T0 - timedelta(hours=2),
        "text": f"Order {record_id} arrived broken.",
        "lang": "en",
        "flagged": True,
        "priority": priority,
        "reasons": ["negative 0.95"],
    }


def _deliveries(store: Store) -> dict[tuple[str, str], dict[str, Any]]:
    table = schema.alert_deliveries
    with store.engine.connect() as connection:
        rows = connection.execute(select(table)).mappings().all()
    return {(row["alert_id"], row["recipient"]): dict(row) for row in rows}


def test_refused_recipient_is_retried_alone_until_accepted(
    smtp: tuple[Handler, int], store: Store, routing: RoutingConfig
) -> None:
    handler, port = smtp
    handler.refuse[SECOND] = 4  # both alerts refused twice to SECOND, then accepted
    enqueue_alerts(pd.DataFrame([flagged("p1", "P1"), flagged("p2", "P2")]), store, routing, now=T0)
    mailer = Mailer.from_env(environ=_environ(port))
    policy = DeliveryPolicy(max_attempts=5, backoff_base_s=60)

    first = deliver_pending(store, mailer, T0, policy)
    assert (first.deliveries_sent, first.deliveries_retrying, first.alerts_sent) == (2, 2, 0)
    assert f"{SECOND}: 550 5.1.1 mailbox unavailable" in first.errors
    alerts = list_alerts(store)
    assert set(alerts["status"]) == {"pending"}, "an alert a recipient refused is not sent"
    waiting = [row for key, row in _deliveries(store).items() if key[1] == SECOND]
    assert [(row["status"], row["attempts"], row["last_code"]) for row in waiting] == [
        ("pending", 1, 550),
        ("pending", 1, 550),
    ]
    assert all("mailbox unavailable" in row["last_reply"] for row in waiting)
    backlog = delivery_backlog(store)
    assert (backlog.retrying, backlog.unreachable, backlog.failed) == (2, 0, 0)
    assert backlog.warnings()[0].startswith("[E041] the mail server refused 2 alert")

    assert deliver_pending(store, mailer, T0 + timedelta(seconds=30), policy).messages_sent == 0
    second = deliver_pending(store, mailer, T0 + timedelta(minutes=1), policy)
    assert second.deliveries_retrying == 2
    third = deliver_pending(store, mailer, T0 + timedelta(minutes=3), policy)
    assert (third.deliveries_sent, third.alerts_sent) == (2, 2)

    received = handler.received()
    assert set(received.values()) == {1}, "nobody receives an alert twice"
    ids = set(list_alerts(store)["alert_id"])
    assert set(received) == {(alert, lead) for alert in ids for lead in (LEAD, SECOND)}
    assert all(envelope.rcpt_tos == [SECOND] for envelope in handler.envelopes[2:])
    alerts = list_alerts(store)
    assert set(alerts["status"]) == {"sent"} and alerts["last_error"].isna().all()
    assert delivery_backlog(store).warnings() == []


def test_recipient_refused_for_good_fails_shows_in_status_and_retry_sends_it_alone(
    smtp: tuple[Handler, int], store: Store, routing: RoutingConfig, tmp_path: Path
) -> None:
    handler, port = smtp
    handler.refuse[SECOND] = -1
    enqueue_alerts(pd.DataFrame([flagged("f1", "P1")]), store, routing, now=T0)
    mailer = Mailer.from_env(environ=_environ(port))
    policy = DeliveryPolicy(max_attempts=3, backoff_base_s=10)
    reports = [
        deliver_pending(store, mailer, T0 + timedelta(minutes=minute), policy)
        for minute in range(3)
    ]
    assert [r.deliveries_retrying for r in reports] == [1, 1, 0]
    assert reports[-1].deliveries_failed == 1 and reports[-1].alerts_failed == 1
    ((alert_id, _),) = handler.received()
    failed = _deliveries(store)[(alert_id, SECOND)]
    assert (failed["status"], failed["attempts"], failed["last_code"]) == ("failed", 3, 550)
    (alert,) = list_alerts(store).to_dict(orient="records")
    assert alert["status"] == "failed"
    assert alert["last_error"] == f"{SECOND}: 550 5.1.1 mailbox unavailable"
    assert deliver_pending(store, mailer, T0 + timedelta(hours=5), policy).messages_sent == 0

    db = store.url.removeprefix("duckdb:///")
    runner = CliRunner(env={"COLUMNS": "250"})
    status = runner.invoke(app, ["status", "--db", db])
    assert status.exit_code == 0, status.output
    assert "1 failed" in status.output and SECOND in status.output
    assert "[E042] 1 alert delivery(ies) failed after the last allowed try" in status.output

    handler.refuse.clear()
    retried = runner.invoke(app, ["alerts", "retry", alert_id, "--db", db])
    assert retried.exit_code == 0 and "1 failed delivery(ies)" in retried.output
    assert deliver_pending(store, mailer, T0 + timedelta(hours=6), policy).alerts_sent == 1
    assert handler.received() == Counter({(alert_id, LEAD): 1, (alert_id, SECOND): 1})
    assert list_alerts(store)["status"].tolist() == ["sent"]


def test_two_delivery_loops_at_once_mail_each_recipient_each_alert_once(
    smtp: tuple[Handler, int], db_url: str, routing: RoutingConfig
) -> None:
    handler, port = smtp
    handler.refuse[SECOND] = 3
    with Store(db_url) as first:
        batch = [flagged(f"c{n:02d}", "P1" if n % 2 else "P3") for n in range(40)]
        enqueue_alerts(pd.DataFrame(batch), first, routing, now=T0)
        # One Store per loop on PostgreSQL (as two processes); DuckDB has one writer per file,
        # which the processes of one machine share through one Store.
        second = Store(db_url) if not first.is_duckdb else first
        barrier = threading.Barrier(2)
        failures: list[BaseException] = []

        # Each loop runs its own simulated clock; on a loaded host one can run 15 simulated
        # minutes ahead of the other and would take the other's live claims for a crashed run's
        # (claim_timeout_s 900). Real loops share one clock; the timeout here outlasts the test.
        policy = DeliveryPolicy(claim_timeout_s=3600)

        def loop(store: Store) -> None:
            try:
                mailer = Mailer.from_env(environ=_environ(port))
                barrier.wait()
                for minute in range(0, 30, 3):
                    deliver_pending(store, mailer, T0 + timedelta(minutes=minute), policy)
            except BaseException as exc:  # reported by the main thread
                failures.append(exc)

        threads = [threading.Thread(target=loop, args=(s,)) for s in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        if second is not first:
            second.close()
        assert not failures, failures
        ids = set(list_alerts(first)["alert_id"])
        assert set(list_alerts(first)["status"]) == {"sent"}
    received = handler.received()
    assert set(received) == {(alert, lead) for alert in ids for lead in (LEAD, SECOND)}
    assert set(received.values()) == {1}, [key for key, n in received.items() if n > 1]


def _write_workspace(tmp_path: Path, db_url: str) -> Path:
    config = tmp_path / "configs"
    config.mkdir()
    data = tmp_path / "data"
    data.mkdir()
    (data / "reviews.csv").write_text(
        "review_id,created_at,stars,body\n"
        "R1,2026-11-02T09:30:00+00:00,1,The kettle broke after a day\n"
        "R2,2026-11-03T09:30:00+00:00,1,Refund still missing after two weeks\n",
        encoding="utf-8",
    )
    (config / "pipeline.yaml").write_text(
        f"database: {db_url}\ntimezone: UTC\nstages: [alerts]\n"
        f"reports_dir: {tmp_path / 'reports'}\noutbox_dir: {tmp_path / 'outbox'}\n",
        encoding="utf-8",
    )
    (config / "sources.yaml").write_text(
        f"data_dir: {data}\nsources:\n  - name: reviews\n    kind: csv\n    channel: review\n"
        "    path: reviews.csv\n"
        "    columns: {external_id: review_id, created_at: created_at, rating: stars, "
        "text: body}\n",
        encoding="utf-8",
    )
    (config / "routing.yaml").write_text(ROUTING, encoding="utf-8")
    return config


def test_rerun_resend_alerts_mails_the_range_again_without_reanalyze(
    prefect_harness: None,
    smtp: tuple[Handler, int],
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handler, port = smtp
    for name, value in _environ(port).items():
        monkeypatch.setenv(name, value)
    config = _write_workspace(tmp_path, db_url)
    nightly(config_dir=str(config), stages=[])
    with Store(db_url) as store:
        table = schema.feedback
        with store.engine.connect() as connection:
            ids = connection.execute(select(table.c.id)).scalars().all()
        routing = load_routing(config)
        enqueue_alerts(pd.DataFrame([flagged(i, "P1") for i in ids]), store, routing, now=T0)
        assert deliver_pending(store, Mailer.from_env(environ=_environ(port))).alerts_sent == 2
    assert sum(handler.received().values()) == 4

    rerun(since=datetime(2026, 11, 1), config_dir=str(config), read_sources=False)
    assert sum(handler.received().values()) == 4, "a rerun alone mails nothing again"
    args = ["rerun", "--since", "2026-11-01", "--no-read", "--config", str(config)]
    resent = CliRunner().invoke(app, [*args, "--resend-alerts"])
    assert resent.exit_code == 0, resent.exception
    assert set(handler.received().values()) == {2}, "--resend-alerts mails every alert again"
    assert len(handler.received()) == 4


def test_unreachable_server_completes_the_run_with_warnings_everywhere(
    prefect_harness: None,
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = _free_port()
    for name, value in _environ(port).items():
        monkeypatch.setenv(name, value)
    config = _write_workspace(tmp_path, db_url)
    with Store(db_url) as store:
        enqueue_alerts(pd.DataFrame([flagged("u1", "P1")]), store, load_routing(config))
    lines: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = lines.append  # type: ignore[method-assign]
    logger = logging.getLogger("prefect.flow_runs")
    logger.addHandler(handler)
    try:
        summary = nightly(config_dir=str(config))
    finally:
        logger.removeHandler(handler)
    assert summary.delivery is not None
    assert (summary.delivery.unreachable, summary.delivery.failed) == (2, 0)
    (warning,) = summary.delivery.warnings()
    assert warning.startswith("[E040] the mail server could not be reached: 2 alert")
    assert "ConnectionRefusedError" in warning
    *_, final, engine = lines  # the run's last line, then Prefect's "Finished in state"
    assert "Finished in state Completed" in engine.getMessage()
    assert final.levelno == logging.WARNING and "[E040]" in final.getMessage()
    assert "nightly run" in final.getMessage() and "completed" in final.getMessage()

    markdown = summary_markdown("Nightly", summary)
    assert "| not accepted yet | 0 | 2 | 2 | 0 |" in markdown and "[E040]" in markdown
    with Store(db_url) as store, store.engine.connect() as connection:
        (counts,) = connection.execute(select(schema.runs.c.counts)).scalars().all()
    assert counts["delivery"]["unreachable"] == 2 and counts["delivery"]["warnings"] == [warning]


@pytest.mark.parametrize(
    ("delivery", "says"),
    [
        ("{max_attempts: 0}", "delivery.max_attempts"),
        ("{backoff_base_s: 600, backoff_max_s: 60}", "backoff_max_s (60) is below"),
        ("{retries: 3}", "delivery.retries"),
    ],
)
def test_delivery_settings_fail_closed(tmp_path: Path, delivery: str, says: str) -> None:
    (tmp_path / "routing.yaml").write_text(f"{ROUTING}delivery: {delivery}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_routing(tmp_path)
    assert says in str(raised.value)


def test_alert_stage_uses_the_delivery_settings_of_routing_yaml(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in _environ(_free_port()).items():
        monkeypatch.setenv(name, value)
    (tmp_path / "routing.yaml").write_text(
        f"{ROUTING}delivery: {{max_attempts: 1}}\n", encoding="utf-8"
    )
    stage = AlertStage.from_config(tmp_path)
    enqueue_alerts(pd.DataFrame([flagged("s1", "P1")]), store, stage.routing)
    report = stage.deliver(StageContext(store=store, run_id="test"))
    assert report.deliveries_failed == 2 and "ConnectionRefusedError" in str(report.unreachable)
    (warning,) = delivery_backlog(store).warnings()
    assert warning.startswith("[E042] 2 alert delivery(ies) failed after the last allowed try")
