"""PII canary: identifiers planted in every field of two sources go through nightly, watch,
rerun (resend), analyze, the report and alerts (outbox and a real aiosmtpd on 127.0.0.1); then
every byte the pipeline wrote is scanned for them, with base64, zlib and gzip blobs decoded:
the database (files, WAL and every table), outbox, inbox, reports, analyze output,
``$PREFECT_HOME`` and Prefect's database (results, artifacts, logs) and the captured logs.
On PostgreSQL the server's data files and WAL are scanned too."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import random
import re
import shutil
import socket
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import prefect.settings
import pytest
from aiosmtpd.controller import Controller
from prefect.logging.handlers import APILogWorker
from sqlalchemy import create_engine, select, text

from flows import _tasks
from flows.nightly import nightly
from flows.rerun import rerun
from flows.watch import Watcher
from pipelines.analysis.analyze import analyze_frame, write_jsonl
from pipelines.analysis.flagging import FlaggingStage
from pipelines.config import DEFAULT_CONFIG_DIR
from pipelines.ingest.privacy import pseudonym
from pipelines.stages import StageContext
from pipelines.storage import Store, schema
from tests.test_redact import luhn_complete, make_cnp, make_iban, make_iranian_id, make_tckn

ZONE = "Europe/Istanbul"
_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/_-]{24,}={0,2}")
_ZLIB_HEADERS = (b"\x78\x9c", b"\x78\x01", b"\x78\xda", b"\x78\x5e")


class Canary:
    """Fresh identifiers of every kind, each written plainly and grouped with spaces."""

    def __init__(self, rng: random.Random) -> None:
        tag = "".join(rng.choice("abcdefghijkmnpqrstuvwxyz") for _ in range(8))
        digits = lambda count: "".join(rng.choice("0123456789") for _ in range(count))  # noqa: E731
        tckn, cnp, ir_code = make_tckn(rng), make_cnp(rng), make_iranian_id(rng)
        card = luhn_complete("4" + digits(14))
        iban = make_iban("TR", digits(22))
        tr_mobile, ro_mobile, ir_mobile = "5" + digits(9), "7" + digits(8), "912" + digits(7)
        self.email = f"{tag}.canary@{tag}-mail.example.com"
        self.name = f"Kanarya{tag.capitalize()}"
        self.forms: dict[str, str] = {
            "email": self.email,
            "tr_phone": f"+90 {tr_mobile[:3]} {tr_mobile[3:6]} {tr_mobile[6:8]} {tr_mobile[8:]}",
            "tr_phone_plain": f"0{tr_mobile}",
            "ro_phone": f"+40 {ro_mobile[:3]} {ro_mobile[3:6]} {ro_mobile[6:]}",
            "ro_phone_plain": f"0{ro_mobile}",
            "ir_phone": f"+98 {ir_mobile[:3]} {ir_mobile[3:6]} {ir_mobile[6:]}",
            "ir_phone_plain": f"0{ir_mobile}",
            "iban": " ".join(iban[index : index + 4] for index in range(0, len(iban), 4)),
            "iban_plain": iban,
            "card": " ".join(card[index : index + 4] for index in range(0, 16, 4)),
            "card_plain": card,
            "tckn": f"{tckn[:3]} {tckn[3:6]} {tckn[6:9]} {tckn[9:]}",
            "tckn_plain": tckn,
            "cnp": f"{cnp[0]} {cnp[1:7]} {cnp[7:]}",
            "cnp_plain": cnp,
            "ir_code": f"{ir_code[:3]}-{ir_code[3:9]}-{ir_code[9]}",
            "ir_code_spaced": f"{ir_code[:4]} {ir_code[4:7]} {ir_code[7:]}",
            "ir_code_plain": ir_code,
        }

    def blurb(self) -> str:
        """Every identifier in one sentence."""
        return " / ".join(self.forms.values())

    def needles(self) -> dict[bytes, str]:
        """What must never be found, as bytes -> name: each form and its bare digits."""
        found = {self.name.encode(): "name"}
        for kind, value in self.forms.items():
            found[value.encode()] = kind
            compact = re.sub(r"\D", "", value)
            if len(compact) >= 9:
                found[compact.encode()] = f"{kind} (digits)"
        found[self.email.lower().encode()] = "email"
        return found


def _decoded_blobs(data: bytes) -> Iterator[bytes]:
    for match in _BASE64_RUN.finditer(data):
        chunk = match.group(0)
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            with contextlib.suppress(binascii.Error, ValueError):
                yield decode(chunk + b"=" * (-len(chunk) % 4))
    view = memoryview(data)
    for header, wbits in ((header, zlib.MAX_WBITS) for header in _ZLIB_HEADERS):
        yield from _inflated(data, view, header, wbits)
    yield from _inflated(data, view, b"\x1f\x8b", zlib.MAX_WBITS | 16)  # gzip


def _inflated(data: bytes, view: memoryview, header: bytes, wbits: int) -> Iterator[bytes]:
    """Every stream that inflates from an occurrence of ``header`` (no copies of ``data``)."""
    start = data.find(header)
    while start != -1:
        with contextlib.suppress(zlib.error):
            inflated = zlib.decompressobj(wbits).decompress(view[start:], 50_000_000)
            if inflated:
                yield inflated
        start = data.find(header, start + 1)


def scan(data: bytes, needles: dict[bytes, str], depth: int = 0) -> set[str]:
    """Names of the needles found in ``data`` or in blobs decoded from it (2 levels deep)."""
    hits = {name for needle, name in needles.items() if needle in data}
    if depth < 2:
        for blob in _decoded_blobs(data):
            if len(blob) >= 8:
                hits |= scan(blob, needles, depth + 1)
    return hits


def scan_tree(
    root: Path, needles: dict[bytes, str], newer_than: float = 0.0
) -> dict[str, set[str]]:
    """File -> needles found, for every readable file under ``root``."""
    found: dict[str, set[str]] = {}
    for path in [root] if root.is_file() else root.rglob("*"):
        if not path.is_file() or path.stat().st_mtime < newer_than:
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        hits = scan(data, needles)
        if hits:
            found[str(path)] = hits
    return found


def _line(canary: Canary, post_id: str, created_at: datetime, **extra: Any) -> dict[str, Any]:
    blurb = canary.blurb()
    return {
        "post_id": f"{post_id} {canary.email}",
        "created_at": created_at.isoformat(),
        "text": f"I am cancelling my subscription and switching to Acme. {blurb}",
        "title": f"Title {blurb}",
        "author": f"{canary.name} {canary.email} {canary.forms['tr_phone']}",
        "customer_id": canary.forms["tr_phone_plain"],
        "platform": f"twitter {canary.forms['ro_phone']}",
        "url": f"https://social.example/u/{canary.email}/status/{post_id}?tel={canary.forms['ir_phone_plain']}",
        "product": f"Kettle {canary.forms['card']}",
        "store": f"Store {canary.forms['iban']}",
        "rating": 1,
        "followers": 250_000,
        "contact": {"mail": canary.email, "ids": [canary.forms["tckn"], canary.forms["cnp"]]},
        "national_id": int(canary.forms["tckn_plain"]),
        "unmapped_name": canary.name,
        **extra,
    }


def _write_config(folder: Path, db: str) -> Path:
    config_dir = folder / "configs"
    shutil.copytree(DEFAULT_CONFIG_DIR, config_dir)
    (config_dir / "sources.yaml").write_text(
        f"""
data_dir: {folder}
sources:
  - name: canary_posts
    kind: jsonl
    channel: social
    path: posts.jsonl
    timezone: {ZONE}
    columns:
      external_id: post_id
      created_at: created_at
      text: text
      title: title
      author: author
      customer_id: customer_id
      platform: platform
      url: url
      product: product
      store: store
      rating: rating
      author_followers: followers
    metadata_columns: [contact, national_id]
  - name: canary_survey
    kind: csv
    channel: survey
    path: survey.csv
    columns:
      external_id: respondent
      created_at: submitted_at
      customer_id: customer
      nps: nps
    answer_columns: [q_reason]
""",
        encoding="utf-8",
    )
    (config_dir / "pipeline.yaml").write_text(
        json.dumps(
            {
                "database": db,
                "timezone": ZONE,
                "stages": ["flagging", "alerts"],
                "outbox_dir": str(folder / "outbox"),
                "reports_dir": str(folder / "reports"),
            }
        ),
        encoding="utf-8",
    )
    return config_dir


def _append_jsonl(path: Path, *rows: dict[str, Any] | str) -> None:
    with path.open("a", encoding="utf-8") as handle:
        for row in rows:
            handle.write((row if isinstance(row, str) else json.dumps(row)) + "\n")


def _write_survey(path: Path, canary: Canary, submitted: datetime) -> None:
    blurb = canary.blurb().replace('"', "'")
    header = "respondent,submitted_at,customer,nps,q_reason\n"
    good = f'{canary.email},{submitted.isoformat()},{canary.forms["cnp_plain"]},2,"Bad. {blurb}"\n'
    forms = canary.forms
    bad = f'{forms["ir_code_plain"]},not a date {canary.email},{forms["card_plain"]},3,"{blurb}"\n'
    path.write_text(header + good + bad, encoding="utf-8")


@pytest.fixture
def smtp_port() -> Iterator[tuple[int, list[bytes]]]:
    """A real aiosmtpd server on 127.0.0.1 keeping every message it accepts."""

    class Handler:
        def __init__(self) -> None:
            self.contents: list[bytes] = []

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            self.contents.append(envelope.content)
            return "250 OK"

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    handler = Handler()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield port, handler.contents
    controller.stop()


def _use_smtp(monkeypatch: pytest.MonkeyPatch, port: int | None) -> None:
    if port is None:
        monkeypatch.delenv("FEEDBACK_SMTP_HOST", raising=False)
        return
    monkeypatch.setenv("FEEDBACK_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("FEEDBACK_SMTP_PORT", str(port))
    monkeypatch.setenv("FEEDBACK_SMTP_SECURITY", "none")
    monkeypatch.setenv("FEEDBACK_SMTP_FROM", "alerts@example.com")


def _table_dump(db_url: str) -> bytes:
    """Every row of every table, as text (what a database dump would show)."""
    with Store(db_url) as store, store.engine.connect() as connection:
        return "\n".join(
            repr(tuple(row))
            for table in schema.metadata.sorted_tables
            for row in connection.execute(select(table))
        ).encode("utf-8")


def _postgres_files(db_url: str) -> list[Path]:
    engine = create_engine(db_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text("CHECKPOINT"))
        connection.execute(text("SELECT pg_switch_wal()"))
        data_dir = Path(connection.execute(text("SHOW data_directory")).scalar_one())
        oid = connection.execute(
            text("SELECT oid FROM pg_database WHERE datname = current_database()")
        ).scalar_one()
    engine.dispose()
    return [data_dir / "base" / str(oid), data_dir / "pg_wal"]


def test_no_identifier_is_written_anywhere_in_clear(
    prefect_harness: None,
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    smtp_port: tuple[int, list[bytes]],
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    started = datetime.now(UTC).timestamp() - 1
    canary = Canary(random.Random(uuid.uuid4().int))
    config_dir = _write_config(tmp_path, db_url)
    yesterday = datetime.now(ZoneInfo(ZONE)).date() - timedelta(days=1)
    noon = datetime.combine(yesterday, time(12), tzinfo=ZoneInfo(ZONE))
    posts = tmp_path / "posts.jsonl"
    bad_date = _line(canary, "p-bad", noon)
    bad_date["created_at"] = f"{canary.email} {canary.forms['tckn']}"
    # A quarantined row's columns are unknown: only identifiers found by pattern are redacted
    # there, so a bare name would stay (documented limit of pipelines.ingest.privacy).
    bad_date["author"] = f"{canary.email} {canary.forms['tr_phone']}"
    del bad_date["unmapped_name"]
    _append_jsonl(posts, _line(canary, "p1", noon), bad_date, f"{{not json {canary.blurb()}")
    _write_survey(tmp_path / "survey.csv", canary, noon)
    port, inbox = smtp_port

    _use_smtp(monkeypatch, None)  # the nightly run writes its mails to the outbox
    first = nightly(config_dir=str(config_dir), db=db_url)
    assert {c.source: (c.stored, c.quarantined) for c in first.sources} == {
        "canary_posts": (1, 2),
        "canary_survey": (1, 1),
    }
    assert list((tmp_path / "outbox").glob("*.eml")), "the P1 post should have been mailed"

    _use_smtp(monkeypatch, port)
    second = _line(canary, "p2", noon + timedelta(hours=1))
    second["text"] = f"Still broken, I am cancelling my subscription. {canary.blurb()}"
    _append_jsonl(posts, second)
    watcher = Watcher.from_config(config_dir, db=db_url)
    assert watcher.poll().p1_sent == 1
    watcher.store.close()
    rerun(
        since=noon - timedelta(days=1),
        reanalyze=True,
        resend_alerts=True,
        config_dir=str(config_dir),
        db=db_url,
    )
    assert len(inbox) >= 2

    # feedback analyze passes extra columns through redacted; unmapped names are not recognised.
    analyze_row = {**_line(canary, "a1", noon), "id": canary.email}
    del analyze_row["unmapped_name"]
    frame = pd.DataFrame([analyze_row])
    with (
        Store(tmp_path / "analyze.duckdb") as scratch,
        (tmp_path / "analyzed.jsonl").open("w", encoding="utf-8") as handle,
    ):
        context = StageContext(scratch, "analyze", {})
        write_jsonl(analyze_frame(frame, [FlaggingStage.from_config(config_dir)], context), handle)

    for store in list(_tasks._STORES.values()):
        store.close()
    APILogWorker.drain_all(timeout=30, at_exit=False)

    needles = canary.needles()
    assert scan(json.dumps(_line(canary, "x", noon)).encode(), needles) >= {"email", "tckn"}
    leaks = {"table dump": scan(_table_dump(db_url), needles)}
    places = [tmp_path / "outbox", tmp_path / "reports", tmp_path / "analyzed.jsonl"]
    if db_url.startswith("postgresql"):
        places += _postgres_files(db_url)
    else:
        places += [path for path in tmp_path.glob("feedback.duckdb*")]
    prefect_db = prefect.settings.PREFECT_SERVER_DATABASE_CONNECTION_URL.value()
    places += [
        Path(prefect.settings.PREFECT_HOME.value()),
        Path(prefect.settings.PREFECT_LOCAL_STORAGE_PATH.value()),
        Path(prefect_db.split("///", 1)[1]).parent,
    ]
    for place in places:
        leaks |= scan_tree(place, needles, newer_than=started if "pg_wal" in str(place) else 0)
    for index, message in enumerate(inbox):
        leaks[f"smtp message {index}"] = scan(message, needles)
    captured = capfd.readouterr()
    leaks["captured logs"] = scan((captured.out + captured.err + caplog.text).encode(), needles)
    assert {where: hits for where, hits in leaks.items() if hits} == {}
    with Store(db_url) as store, store.engine.connect() as connection:
        authors = connection.execute(select(schema.feedback.c.author)).scalars().all()
    assert pseudonym("AUTHOR", _line(canary, "p1", noon)["author"]) in authors
