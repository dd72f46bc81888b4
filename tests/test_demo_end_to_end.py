"""`make run` in miniature: the nightly flow with every stage on the demo data."""

from __future__ import annotations

import re
import shutil
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path

import httpx
import pandas as pd
import pytest
from sqlalchemy import select

from flows.nightly import nightly
from pipelines.analysis.aspects import load_aspect_config
from pipelines.config import DEFAULT_CONFIG_DIR
from pipelines.delivery.alerts import list_alerts
from pipelines.storage import Store, schema
from tests._web import SECRET, live_web


def test_every_stage_on_the_demo_data(
    prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEEDBACK_WEB_SECRET", SECRET)
    monkeypatch.delenv("FEEDBACK_SMTP_HOST", raising=False)
    config_dir = tmp_path / "configs"
    shutil.copytree(DEFAULT_CONFIG_DIR, config_dir)
    sources = (DEFAULT_CONFIG_DIR / "sources.yaml").read_text(encoding="utf-8")
    (config_dir / "sources.yaml").write_text(
        sources.replace("data_dir: ../demo", f"data_dir: {DEFAULT_CONFIG_DIR.parent / 'demo'}"),
        encoding="utf-8",
    )
    settings = (DEFAULT_CONFIG_DIR / "pipeline.yaml").read_text(encoding="utf-8")
    (config_dir / "pipeline.yaml").write_text(
        settings.replace("outbox_dir: outbox", f"outbox_dir: {tmp_path / 'outbox'}").replace(
            "reports_dir: reports", f"reports_dir: {tmp_path / 'reports'}"
        ),
        encoding="utf-8",
    )

    summary = nightly(config_dir=str(config_dir), db=str(tmp_path / "demo.duckdb"))

    assert set(summary.stage_rows) >= {"sentiment", "aspects", "topics", "flagging", "alerts"}
    with Store(tmp_path / "demo.duckdb") as store, store.engine.connect() as connection:
        feedback, aspects, flags = schema.feedback, schema.aspects, schema.flags
        aspect_langs = pd.DataFrame(
            connection.execute(
                select(aspects.c.aspect, feedback.c.lang).join(
                    feedback, feedback.c.id == aspects.c.record_id
                )
            ).all(),
            columns=["aspect", "lang"],
        )
        flagged = pd.DataFrame(
            connection.execute(
                select(feedback.c.lang, flags.c.priority)
                .join(feedback, feedback.c.id == flags.c.record_id)
                .where(flags.c.flagged)
            ).all(),
            columns=["lang", "priority"],
        )

    taxonomy = {aspect.name for aspect in load_aspect_config(config_dir).aspects} - {"other"}
    languages_per_aspect = aspect_langs.groupby("aspect")["lang"].nunique()
    assert {a for a in taxonomy if languages_per_aspect.get(a, 0) >= 2} == taxonomy

    assert set(flagged["lang"]) == {"tr", "fa", "ro", "en"}
    p1_share = (flagged["priority"] == "P1").mean()
    assert 0 < p1_share < 0.5, "P1 is for the worst cases, not most complaints"

    mails = [
        message_from_bytes(p.read_bytes(), policy=default_policy)
        for p in (tmp_path / "outbox").glob("*.eml")
    ]
    with Store(tmp_path / "demo.duckdb") as store:
        alerts = list_alerts(store)
    assert (
        sum(mail["X-Feedback-Priority"] == "P1" for mail in mails) == (alerts["kind"] == "p1").sum()
    )
    assert set(alerts.loc[alerts["kind"] == "p1", "priority"]) <= {"P1"}
    assert any(mail["Subject"].startswith("[Digest]") for mail in mails)
    assert summary.report is not None and Path(summary.report).is_file()

    # `make run` with FEEDBACK_WEB_SECRET set: a link from an outbox mail opens that alert's page
    # (a P1 mail's Open link, or a digest row's: demo feedback older than max_alert_age_days
    # when stored is in the digests).
    mail = mails[0]
    text = mail.get_body(preferencelist=("plain",)).get_content()
    link = re.search(r"http://127\.0\.0\.1:8700(/l/\S+)", text)
    assert link, "alert mails carry signed links to the triage page"
    ids = (mail["X-Feedback-Alert-Id"] or mail["X-Feedback-Alert-Ids"]).split()
    with Store(tmp_path / "demo.duckdb") as store, live_web(store, config_dir) as web:
        browser = httpx.Client(base_url=web.url, follow_redirects=True, timeout=10)
        page = browser.get(link.group(1))
    assert page.status_code == 200 and "Respond by" in page.text
    assert ids[0] in page.text
