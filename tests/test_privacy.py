"""What a source's records carry into storage: pseudonymised authors that still catch copy-paste
spam, the keep_in_clear opt-out, raw limited to configured columns, and the key and opt-out
validation (E050, E001)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from pipelines._errors import ConfigError, PrivacyError
from pipelines.ingest import ingest_batch
from pipelines.ingest.privacy import PII_KEY_ENV, pseudonym, scrub_quarantined
from pipelines.ingest.sources import Source, load_sources
from pipelines.storage import Store, schema

ENTRY = """\
sources:
  - name: social
    kind: jsonl
    channel: social
    path: posts.jsonl
    columns: {external_id: id, created_at: at, text: text, author: user.handle,
              customer_id: customer, url: link}
    metadata_columns: [device]
"""


def _source(folder: Path, rows: list[dict[str, Any]], extra: str = "") -> Source:
    (folder / "posts.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8"
    )
    (folder / "sources.yaml").write_text(f"data_dir: .\n{ENTRY}{extra}", encoding="utf-8")
    (source,) = load_sources(folder / "sources.yaml")
    return source


def _post(post_id: str, minute: int, handle: str = "@ayse_k") -> dict[str, Any]:
    return {
        "id": post_id,
        "at": f"2026-11-20T09:{minute:02d}:00Z",
        "text": "Kargo yine gecikti, rezalet!",
        "user": {"handle": handle, "email": "ayse.k@example.com", "name": "Ayşe Kaya"},
        "customer": "ayse.k@example.com",
        "device": "iPhone, call me on 0532 123 45 67",
        "link": f"https://social.example/{handle.upper()}/status/{post_id}",
        "unmapped": "Ayşe Kaya",
    }


def test_pseudonymised_authors_still_catch_copy_paste_spam(tmp_path: Path, store: Store) -> None:
    source = _source(tmp_path, [_post("1", 0), _post("2", 5), _post("3", 6, handle="@other")])
    counts = ingest_batch(source.read(), store, "run-1")
    assert (counts.stored, counts.duplicates) == (2, 1)

    table = schema.feedback
    with store.engine.connect() as connection:
        rows = connection.execute(
            select(table.c.author, table.c.customer_id, table.c.url, table.c.metadata, table.c.raw)
        ).all()
    assert {row.author for row in rows} == {
        pseudonym("AUTHOR", "@ayse_k"),
        pseudonym("AUTHOR", "@other"),
    }
    assert {row.customer_id for row in rows} == {pseudonym("CUSTOMER", "ayse.k@example.com")}
    first = rows[0]
    assert first.metadata == {"device": "iPhone, call me on [PHONE]"}
    assert first.url == f"https://social.example/{first.author}/status/1"
    assert set(first.raw) == {"id", "at", "text", "user.handle", "customer", "device", "link"}
    stored = json.dumps([tuple(row) for row in rows], ensure_ascii=False, default=str)
    for clear in ("ayse", "Ayşe", "0532", "@example.com"):
        assert clear not in stored


def test_keep_in_clear_keeps_the_handle_but_never_an_identifier(tmp_path: Path) -> None:
    opt_out = "    keep_in_clear: [author]\n"
    (record,) = _source(tmp_path, [_post("1", 0, "@ayse_k")], opt_out).read().records
    assert record.author == "@ayse_k"
    (record,) = _source(tmp_path, [_post("1", 0, "ayse.k@example.com")], opt_out).read().records
    assert record.author == "[EMAIL]"


def test_the_key_changes_the_pseudonyms_and_a_short_key_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built_in = pseudonym("AUTHOR", "@ayse_k")
    monkeypatch.setenv(PII_KEY_ENV, "a-long-random-production-key-0123456789")
    (record,) = _source(tmp_path, [_post("1", 0)]).read().records
    assert record.author == pseudonym("AUTHOR", "@ayse_k") != built_in

    monkeypatch.setenv(PII_KEY_ENV, "short")
    with pytest.raises(PrivacyError, match=r"\[E050\].*at least 16"):
        _source(tmp_path, [_post("1", 0)])


def test_keep_in_clear_accepts_only_author(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"keep_in_clear lists .*; only \['author'\]"):
        _source(tmp_path, [_post("1", 0)], "    keep_in_clear: [text]\n")


def test_quarantined_rows_and_details_are_redacted() -> None:
    raw = json.dumps({"at": "yesterday", "mail": "ali\u0040example.com", "n": 10000000146})
    stored_raw, reason, detail = scrub_quarantined(
        raw, "bad_date", "line 3: at 'ali@example.com' is not a date"
    )
    assert json.loads(stored_raw) == {"at": "yesterday", "mail": "[EMAIL]", "n": "[TCKN]"}
    assert (reason, detail) == ("bad_date", "line 3: at '[EMAIL]' is not a date")
    assert (
        scrub_quarantined("1,05321234567,not json", "bad_csv_row", None)[0] == "1,[PHONE],not json"
    )
