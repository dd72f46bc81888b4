"""Source readers: every kind, encodings, quarantine reasons, watermarks, a real HTTP API."""

from __future__ import annotations

import codecs
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from openpyxl import Workbook

from pipelines._errors import ConfigError, CountBalanceError, SourceError
from pipelines.config import load_yaml_model
from pipelines.ingest import ingest_source
from pipelines.ingest.sources import (
    REJECT_REASONS,
    CsvSource,
    HttpJsonSource,
    JsonlSource,
    SourceBatch,
    SourcesConfig,
    XlsxSource,
    build_source,
    detect_encoding,
    load_sources,
)
from pipelines.records import Channel, content_id, record_id
from pipelines.storage import Store, schema

REPO_ROOT = Path(__file__).resolve().parent.parent
TURKISH = [
    "Ürün çok güzel ama kargo çok geç geldi, şikayetçiyim.",
    "İade süreci ağır işliyor, müşteri hizmetleri hiç yardımcı olmadı.",
    "Fiyatı uygun, kalitesi beklediğimden iyi çıktı.",
]
# Legacy windows-1256 has Arabic yeh/kaf (ي ك), not the Persian forms (ی ک), so files hold those.
PERSIAN = [
    "كيفيت محصول خيلي خوب بود ولي ارسال دير انجام شد.",
    "پشتيباني پاسخگو نبود و مرجوعي كالا دو هفته طول كشيد.",
    "قيمت مناسب است و بسته بندي عالي بود.",
]


def one_source(tmp_path: Path, entry: str, data_dir: str = ".") -> Any:
    """Write a sources.yaml with one entry (YAML text, indented as a list item) and build it."""
    config_file = tmp_path / "sources.yaml"
    config_file.write_text(f"data_dir: {data_dir}\nsources:\n{entry}", encoding="utf-8")
    (source,) = load_sources(config_file)
    return source


def reasons(batch: SourceBatch) -> list[str]:
    return [rejected.reason for rejected in batch.rejected]


STORE_ENTRY = """\
  - name: store_reviews
    kind: csv
    channel: review
    path: reviews_store.csv
    columns: {external_id: review_id, created_at: created_at, store: store, product: product,
              rating: stars, title: title, text: body, customer_id: customer_id,
              customer_value: customer_value}
"""
STORE_HEADER = "review_id,created_at,store,product,stars,title,body,customer_id,customer_value\n"


def test_csv_with_bom_maps_every_column(tmp_path: Path) -> None:
    rows = (
        'r1,2026-11-20T10:00:00+03:00,Bucharest,Blender X,2,Slab,"Motorul s-a ars, ""rușine""",'
        "c1,1250.5\n"
        'r2,2026-11-21T09:30:00Z,Online,Kettle,5,,"Great kettle,\nboils fast",,\n'
    )
    (tmp_path / "reviews_store.csv").write_bytes(
        codecs.BOM_UTF8 + (STORE_HEADER + rows).encode("utf-8")
    )
    source = one_source(tmp_path, STORE_ENTRY)
    assert isinstance(source, CsvSource)
    assert (source.name, source.channel) == ("store_reviews", Channel.REVIEW)

    batch = source.read()

    assert batch.rejected == []
    assert batch.rows_read == 2
    first, second = batch.records
    assert first.id == record_id("store_reviews", "r1")
    assert first.created_at == datetime(2026, 11, 20, 7, 0, tzinfo=UTC)
    assert first.text == 'Motorul s-a ars, "rușine"'
    assert (first.rating, first.title, first.store, first.product) == (
        2,
        "Slab",
        "Bucharest",
        "Blender X",
    )
    assert (first.customer_id, first.customer_value) == ("c1", 1250.5)
    assert first.raw["review_id"] == "r1"
    assert second.text == "Great kettle,\nboils fast"
    assert (second.title, second.customer_id, second.customer_value) == (None, None, None)
    manifest = json.loads(batch.watermark or "")["files"]
    assert list(manifest) == ["reviews_store.csv"] and manifest["reviews_store.csv"]["rows"] == 2


def test_csv_quarantines_each_bad_row_and_keeps_reading(tmp_path: Path) -> None:
    long_text = "x" * 20_001
    lines = [
        "g1,2026-11-01T10:00:00Z,S,P,4,,fine one,,",
        "b1,2026-11-01T10:00:00Z,S,P,4,,too,few",
        'b2,2026-11-01T10:00:00Z,S,P,4,,"quoted"trailing,,',
        'b3,2026-11-01T10:00:00Z,S,P,4,,"never closed,,',
        "g2,2026-11-02T10:00:00Z,S,P,5,,fine two,,",
        "b4,2026-11-01T10:00:00Z,S,P,4,,   ,,",
        "b5,not a date,S,P,4,,text,,",
        f"b6,2026-11-01T10:00:00Z,S,P,4,,{long_text},,",
        "b7,2026-11-01T10:00:00Z,S,P,9,,rating nine,,",
        "b8,2026-11-01T10:00:00Z,S,P,4,,value bad,,lots",
        "g3,2026-11-03T10:00:00Z,S,P,1,,fine three,,",
    ]
    (tmp_path / "reviews_store.csv").write_text(STORE_HEADER + "\n".join(lines) + "\n")

    batch = one_source(tmp_path, STORE_ENTRY).read()

    assert [record.external_id for record in batch.records] == ["g1", "g2", "g3"]
    assert reasons(batch) == [
        "bad_csv_row",
        "bad_csv_row",
        "bad_csv_row",
        "missing_text",
        "bad_date",
        "text_too_long",
        "invalid_field",
        "invalid_field",
    ]
    assert batch.rows_read == 11
    assert batch.rejected[0].raw == lines[1]
    assert "expected 9 fields, got 8" in (batch.rejected[0].detail or "")
    assert "line 5" in (batch.rejected[2].detail or "")
    assert "rating '9' is outside 1-5" in (batch.rejected[6].detail or "")
    assert set(reasons(batch)) <= set(REJECT_REASONS)


def test_bad_encoding_lines_are_quarantined_not_fatal(tmp_path: Path) -> None:
    good = (STORE_HEADER + "r1,2026-11-01T10:00:00Z,S,P,4,,Çok iyi ürün,,\n").encode("utf-8")
    broken = b"r2,2026-11-01T10:00:00Z,S,P,4,,bad \xff\xfe bytes \xc3,,\n"
    tail = "r3,2026-11-02T10:00:00Z,S,P,4,,Foarte bună,,\n".encode()
    (tmp_path / "reviews_store.csv").write_bytes(good + broken + tail)

    batch = one_source(tmp_path, STORE_ENTRY).read()

    assert [record.text for record in batch.records] == ["Çok iyi ürün", "Foarte bună"]
    assert reasons(batch) == ["bad_encoding"]
    assert batch.rejected[0].raw.startswith("r2,")
    assert "line 3" in (batch.rejected[0].detail or "")


TR_ENTRY = """\
  - name: tr_legacy_reviews
    kind: csv
    channel: review
    path: reviews_tr_legacy.csv
    encoding: {encoding}
    date_format: "%d.%m.%Y %H:%M"
    timezone: Europe/Istanbul
    columns: {{external_id: yorum_no, created_at: tarih, rating: puan, text: yorum}}
"""


@pytest.mark.parametrize("encoding", ["auto", "cp1254"])
def test_cp1254_turkish_file(tmp_path: Path, encoding: str) -> None:
    rows = [f'{n},"2{n}.11.2026 14:05",{n + 2},"{text}"' for n, text in enumerate(TURKISH, 1)]
    content = "yorum_no,tarih,puan,yorum\r\n" + "\r\n".join(rows) + "\r\n"
    (tmp_path / "reviews_tr_legacy.csv").write_bytes(content.encode("cp1254"))

    batch = one_source(tmp_path, TR_ENTRY.format(encoding=encoding)).read()

    assert batch.rejected == []
    assert [record.text for record in batch.records] == TURKISH
    # 21.11.2026 14:05 in Istanbul (UTC+3) is 11:05 UTC.
    assert batch.records[0].created_at == datetime(2026, 11, 21, 11, 5, tzinfo=UTC)
    assert [record.rating for record in batch.records] == [3, 4, 5]


@pytest.mark.parametrize("encoding", ["auto", "windows-1256"])
def test_windows_1256_persian_file(tmp_path: Path, encoding: str) -> None:
    rows = [f"{n},2026-11-2{n} 08:00,{text}" for n, text in enumerate(PERSIAN, 1)]
    (tmp_path / "fa.csv").write_bytes(("id,date,text\n" + "\n".join(rows)).encode("cp1256"))
    entry = f"""\
  - name: fa_reviews
    kind: csv
    channel: review
    path: fa.csv
    encoding: {encoding}
    columns: {{external_id: id, created_at: date, text: text}}
"""
    batch = one_source(tmp_path, entry).read()

    assert batch.rejected == []
    assert [record.text for record in batch.records] == PERSIAN
    assert batch.records[0].created_at == datetime(2026, 11, 21, 8, 0, tzinfo=UTC)


def test_detect_encoding() -> None:
    assert detect_encoding("\n".join(TURKISH).encode("cp1254")) == "cp1254"
    assert detect_encoding("\n".join(PERSIAN).encode("cp1256")) == "cp1256"
    assert detect_encoding("\n".join(TURKISH + PERSIAN).encode("utf-8")) == "utf-8"
    assert detect_encoding(codecs.BOM_UTF8 + b"plain ascii") == "utf-8"


SOCIAL_ENTRY = """\
  - name: social_posts
    kind: jsonl
    channel: social
    path: "social/*.jsonl"
    columns: {external_id: post_id, platform: platform, author: author,
              author_followers: followers, url: url, created_at: created_at, text: text,
              customer_id: customer_id}
    keep_in_clear: [author]
"""


def test_jsonl_social_posts_over_a_glob(tmp_path: Path) -> None:
    folder = tmp_path / "social"
    folder.mkdir()
    post = {
        "post_id": "p1",
        "platform": "x",
        "author": "@ana",
        "followers": 120_000,
        "url": "https://x.example/p1",
        "created_at": "2026-11-22T08:00:00Z",
        "text": "Comanda mea a întârziat două săptămâni!",
    }
    lines = [
        json.dumps(post, ensure_ascii=False),
        "{not json",
        json.dumps([1, 2]),
        json.dumps({**post, "post_id": "p2", "followers": -5}),
        "",
    ]
    (folder / "a.jsonl").write_text("\n".join(lines), encoding="utf-8")
    (folder / "b.jsonl").write_text(
        json.dumps({**post, "post_id": "p3", "customer_id": "c9", "text": "Mulțumesc!"}) + "\n"
    )

    batch = one_source(tmp_path, SOCIAL_ENTRY).read()

    assert [record.external_id for record in batch.records] == ["p1", "p3"]
    first = batch.records[0]
    assert (first.platform, first.author, first.author_followers, first.url) == (
        "x",
        "@ana",
        120_000,
        "https://x.example/p1",
    )
    assert first.customer_id is None
    assert batch.records[1].customer_id == "c9"
    assert reasons(batch) == ["not_json", "not_json", "invalid_field"]
    assert batch.rows_read == 5


def test_jsonl_without_id_column_gets_stable_content_ids(tmp_path: Path) -> None:
    row = {"date": "2026-11-22T08:00:00", "content": "Aplicația se blochează", "user": "ion"}
    (tmp_path / "app.jsonl").write_text(json.dumps({**row, "app_version": "4.2.1"}) + "\n")
    entry = """\
  - name: app_reviews
    kind: jsonl
    channel: review
    path: app.jsonl
    metadata_columns: [app_version]
    columns: {created_at: date, text: content, author: user}
"""
    source = one_source(tmp_path, entry)

    (record,) = source.read().records

    assert record.id == source.read().records[0].id
    expected_id = content_id(
        "app_reviews", "2026-11-22T08:00:00+00:00", "ion", "Aplicația se blochează"
    )
    assert record.id == expected_id
    assert record.external_id is None
    assert record.metadata == {"app_version": "4.2.1"}
    assert record.created_at.tzinfo is not None


SURVEY_COLUMNS = ["respondent_id", "submitted_at", "nps", "customer_id", "customer_value"]
SURVEY_ROWS: list[list[Any]] = [
    ["s1", "2026-11-20T10:00:00Z", 3, "c1", 900, "Livrare lentă", "Curieri mai rapizi"],
    ["s2", "2026-11-20T11:00:00Z", 9, "c2", 100, "Great support", None],
    ["s3", "2026-11-20T12:00:00Z", 7, "", None, "", ""],
    ["s4", "2026-11-20T13:00:00Z", 11, "c4", None, "out of range", ""],
]
SURVEY_ENTRY = """\
  - name: {name}
    kind: {kind}
    channel: survey
    path: {path}
    {extra}
    answer_columns: [q_reason, q_improve]
    columns: {{external_id: respondent_id, created_at: submitted_at, nps: nps,
              customer_id: customer_id, customer_value: customer_value}}
"""


def check_survey(batch: SourceBatch, source: str) -> None:
    assert [(r.external_id, r.metadata["question"]) for r in batch.records] == [
        ("s1:q_reason", "q_reason"),
        ("s1:q_improve", "q_improve"),
        ("s2:q_reason", "q_reason"),
    ]
    first = batch.records[0]
    assert first.id == record_id(source, "s1:q_reason")
    assert (first.nps, first.customer_id, first.customer_value) == (3, "c1", 900.0)
    assert first.metadata["respondent_id"] == "s1"
    assert first.text == "Livrare lentă"
    assert batch.records[1].text == "Curieri mai rapizi"
    assert reasons(batch) == ["missing_text", "invalid_field"]
    assert "is outside 0-10" in (batch.rejected[1].detail or "")
    assert batch.rows_read == 5


def test_survey_csv_one_record_per_answer(tmp_path: Path) -> None:
    header = ",".join([*SURVEY_COLUMNS, "q_reason", "q_improve"])
    body = "\n".join(
        ",".join("" if cell is None else str(cell) for cell in row) for row in SURVEY_ROWS
    )
    (tmp_path / "survey.csv").write_text(f"{header}\n{body}\n", encoding="utf-8")
    entry = SURVEY_ENTRY.format(name="nps_csv", kind="csv", path="survey.csv", extra="")

    check_survey(one_source(tmp_path, entry).read(), "nps_csv")


def test_survey_xlsx_written_with_openpyxl(tmp_path: Path) -> None:
    workbook = Workbook()
    workbook.active.title = "cover"
    workbook.active.append(["not the data"])
    sheet = workbook.create_sheet("answers")
    sheet.append([*SURVEY_COLUMNS, "q_reason", "q_improve"])
    for row in SURVEY_ROWS:
        cells = list(row)
        # A real datetime cell (naive = UTC) for the first respondent, text for the others.
        if cells[0] == "s1":
            cells[1] = datetime(2026, 11, 20, 10, 0)
        sheet.append([None if cell == "" else cell for cell in cells])
    workbook.save(tmp_path / "survey.xlsx")
    entry = SURVEY_ENTRY.format(
        name="nps_xlsx", kind="xlsx", path="survey.xlsx", extra="sheet: answers"
    )
    source = one_source(tmp_path, entry)
    assert isinstance(source, XlsxSource)

    batch = source.read()

    check_survey(batch, "nps_xlsx")
    assert batch.records[0].created_at == datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def test_late_rows_in_a_new_or_changed_file_are_read_not_skipped(tmp_path: Path) -> None:
    """Defect 2: a second file with older dates, or rows appended with older dates, were lost."""
    folder = tmp_path / "exports"
    folder.mkdir()
    header = "review_id,created_at,store,product,stars,title,body,customer_id,customer_value\n"
    entry = STORE_ENTRY.replace("path: reviews_store.csv", 'path: "exports/*.csv"')

    def rows(*days: int) -> str:
        return "".join(f"r{day},2026-11-{day:02d}T12:00:00Z,S,P,4,,text {day},,\n" for day in days)

    (folder / "a.csv").write_text(header + rows(10, 11, 12))
    source = one_source(tmp_path, entry)
    first = source.read()
    assert [record.external_id for record in first.records] == ["r10", "r11", "r12"]

    again = source.read(since=first.watermark)
    assert (again.records, again.rows_read, again.skipped) == ([], 0, {"unchanged_file": 3})

    (folder / "b.csv").write_text(header + rows(1, 2))  # a late export: older than any row seen
    late = source.read(since=again.watermark)
    assert [record.external_id for record in late.records] == ["r1", "r2"]
    assert late.skipped == {"unchanged_file": 3}

    with (folder / "a.csv").open("a") as handle:  # a re-sent backlog appended to a read file
        handle.write(rows(3))
    changed = source.read(since=late.watermark)
    assert [record.external_id for record in changed.records] == ["r10", "r11", "r12", "r3"]
    assert changed.skipped == {"unchanged_file": 2}

    legacy = source.read(since="2026-11-12T12:00:00+00:00")  # a watermark from before manifests
    assert len(legacy.records) == 6 and legacy.skipped == {}


def test_read_chunks_bounds_each_chunk(tmp_path: Path) -> None:
    lines = [json.dumps({"id": n, "d": "2026-11-01T00:00:00Z", "t": f"row {n}"}) for n in range(25)]
    (tmp_path / "a.jsonl").write_text("\n".join([*lines[:10], "{broken", *lines[10:]]) + "\n")
    entry = """\
  - name: chunky
    kind: jsonl
    channel: review
    path: a.jsonl
    columns: {external_id: id, created_at: d, text: t}
"""
    chunks = list(one_source(tmp_path, entry).read_chunks(None, chunk_rows=4))

    assert [chunk.rows_read for chunk in chunks] == [4, 4, 4, 4, 4, 4, 2]
    assert sum(len(chunk.rejected) for chunk in chunks) == 1
    assert [chunk.watermark is not None for chunk in chunks] == [False] * 6 + [True]


def test_auto_encoding_quarantines_only_the_broken_utf8_lines(tmp_path: Path) -> None:
    """Defect 7: an invalid byte in UTF-8 lines turned the whole file into cp1256 mojibake."""
    texts = ["Good product", "Çok iyi ürün", "Foarte bună", "کیفیت عالی بود", "Fast delivery"]
    lines = [
        json.dumps({"id": n, "d": "2026-11-01", "t": t}, ensure_ascii=False).encode()
        for n, t in enumerate(texts)
    ]
    lines[1] = lines[1].replace(b"iyi", b"i\xffi")  # one invalid byte each
    lines[3] = lines[3].replace("عالی".encode(), b"\xfe" + "عالی".encode())
    (tmp_path / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    entry = """\
  - name: mixed
    kind: jsonl
    channel: review
    path: a.jsonl
    encoding: auto
    columns: {external_id: id, created_at: d, text: t}
"""
    batch = one_source(tmp_path, entry).read()

    assert [record.text for record in batch.records] == [texts[0], texts[2], texts[4]]
    assert reasons(batch) == ["bad_encoding", "bad_encoding"]
    assert ["line 2" in (r.detail or "") for r in batch.rejected] == [True, False]
    assert "bad_encoding" in REJECT_REASONS and "undecodable" not in REJECT_REASONS


def test_batch_count_invariant_is_enforced() -> None:
    with pytest.raises(CountBalanceError) as caught:
        SourceBatch(source="s", rows_read=2)
    assert caught.value.code == "E021"


# --- a real JSON API on loopback -------------------------------------------------------------

TOKEN = "s3cret-test-token"
ITEMS = [
    {"id": f"a{n}", "created": f"2026-11-2{n}T10:00:00Z", "body": f"Review number {n}", "stars": 4}
    for n in range(1, 6)
]


@dataclass
class ApiState:
    """What the test server saw and how it misbehaves."""

    requests: list[str] = field(default_factory=list)
    tokens: list[str | None] = field(default_factory=list)
    fail_once: set[str] = field(default_factory=set)
    slow_once: set[str] = field(default_factory=set)
    down: set[str] = field(default_factory=set)
    newest_first: list[dict[str, Any]] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server: Any

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""

    def _send(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # client timed out
            self.wfile.write(body)

    def do_GET(self) -> None:
        state: ApiState = self.server.state
        state.requests.append(self.path)
        state.tokens.append(self.headers.get("Authorization"))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._send(401, {"error": "unauthorized"})
            return
        if self.path in state.slow_once:
            state.slow_once.discard(self.path)
            time.sleep(1.0)
        if self.path in state.fail_once:
            state.fail_once.discard(self.path)
            self._send(500, {"error": "transient"})
            return
        if self.path in state.down:
            self._send(503, {"error": "down"})
            return
        url = urlparse(self.path)
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        if url.path == "/pages":
            page, size = int(query["page"]), int(query["per_page"])
            self._send(200, {"data": ITEMS[(page - 1) * size : page * size], "page": page})
        elif url.path == "/cursor":
            start = int(query.get("after", "0"))
            chunk = ITEMS[start : start + 2]
            following = str(start + 2) if start + 2 < len(ITEMS) else None
            self._send(200, {"result": {"items": chunk}, "meta": {"next": following}})
        elif url.path == "/cycle":  # cursors "" -> x -> y -> x: a cycle
            start = {"": 0, "x": 2, "y": 4}[query.get("after", "")]
            following = {0: "x", 2: "y", 4: "x"}[start]
            chunk = ITEMS[start : start + 2]
            self._send(200, {"result": {"items": chunk}, "meta": {"next": following}})
        elif url.path == "/newest":
            page, size = int(query["page"]), int(query["per_page"])
            data = state.newest_first[(page - 1) * size : page * size]
            self._send(200, {"data": data, "page": page})
        elif url.path == "/drip":
            self._drip(json.dumps({"data": ITEMS[:1]}).encode())
        else:
            self._send(503, {"error": "down"})

    def _drip(self, body: bytes) -> None:
        """The whole answer, status line and headers included, one byte every 0.1 s."""
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for byte in head + body:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.1)


@pytest.fixture
def api() -> Iterator[tuple[str, ApiState]]:
    """A ThreadingHTTPServer on 127.0.0.1 (random port) in a background thread."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.state = ApiState()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.state  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def api_source(tmp_path: Path, url: str, pagination: str, items_path: str) -> HttpJsonSource:
    entry = f"""\
  - name: api_reviews
    kind: http_json
    channel: review
    url: {url}
    items_path: {items_path}
    token_env: TEST_REVIEWS_TOKEN
    max_retries: 2
    backoff_seconds: 0.01
    timeout_seconds: 5
    pagination: {pagination}
    columns: {{external_id: id, created_at: created, text: body, rating: stars}}
"""
    source = one_source(tmp_path, entry)
    assert isinstance(source, HttpJsonSource)
    return source


def test_http_page_pagination_with_retry_and_token(
    tmp_path: Path, api: tuple[str, ApiState], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, state = api
    monkeypatch.setenv("TEST_REVIEWS_TOKEN", TOKEN)
    state.fail_once.add("/pages?page=2&per_page=2")
    source = api_source(
        tmp_path,
        f"{base}/pages",
        "{type: page, page_param: page, size_param: per_page, page_size: 2}",
        "data",
    )

    batch = source.read()

    assert [record.external_id for record in batch.records] == ["a1", "a2", "a3", "a4", "a5"]
    assert state.requests == [
        "/pages?page=1&per_page=2",
        "/pages?page=2&per_page=2",
        "/pages?page=2&per_page=2",
        "/pages?page=3&per_page=2",
    ]
    assert set(state.tokens) == {f"Bearer {TOKEN}"}
    assert batch.watermark == "3"
    assert batch.records[0].created_at == datetime(2026, 11, 21, 10, 0, tzinfo=UTC)

    resumed = source.read(since=batch.watermark)
    assert [record.external_id for record in resumed.records] == ["a5"]
    assert resumed.watermark == "3"


def test_http_cursor_pagination_resumes_from_cursor(
    tmp_path: Path, api: tuple[str, ApiState], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, state = api
    monkeypatch.setenv("TEST_REVIEWS_TOKEN", TOKEN)
    source = api_source(
        tmp_path,
        f"{base}/cursor",
        "{type: cursor, cursor_field: meta.next, cursor_param: after}",
        "result.items",
    )

    batch = source.read()

    assert [record.external_id for record in batch.records] == ["a1", "a2", "a3", "a4", "a5"]
    assert state.requests == ["/cursor", "/cursor?after=2", "/cursor?after=4"]
    assert batch.watermark == "4"
    resumed = source.read(since="2")
    assert [record.external_id for record in resumed.records] == ["a3", "a4", "a5"]


def test_http_retries_a_timeout(
    tmp_path: Path, api: tuple[str, ApiState], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, state = api
    monkeypatch.setenv("TEST_REVIEWS_TOKEN", TOKEN)
    state.slow_once.add("/pages?page=1&per_page=10")
    pagination = "{type: page, size_param: per_page, page_size: 10}"
    source = api_source(tmp_path, f"{base}/pages", pagination, "data")
    source.config.timeout_seconds = 0.2

    batch = source.read()

    assert len(batch.records) == 5
    assert state.requests == ["/pages?page=1&per_page=10"] * 2


def test_http_gives_up_after_retries_naming_the_url(
    tmp_path: Path, api: tuple[str, ApiState], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, state = api
    monkeypatch.setenv("TEST_REVIEWS_TOKEN", TOKEN)
    source = api_source(tmp_path, f"{base}/down", "{type: page}", "data")

    with pytest.raises(SourceError) as caught:
        source.read()

    assert caught.value.code == "E010"
    assert f"{base}/down" in str(caught.value)
    assert "after 3 attempt(s): HTTP 503" in str(caught.value)
    assert len(state.requests) == 3


def test_http_total_deadline_stops_a_dripping_server(
    tmp_path: Path, api: tuple[str, ApiState], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 7: a server dripping a byte at a time held a 3 s request for a minute."""
    base, state = api
    monkeypatch.setenv("TEST_REVIEWS_TOKEN", TOKEN)
    source = api_source(tmp_path, f"{base}/drip", "{type: page}", "data")
    source.config.timeout_seconds = 0.5
    source.config.max_retries = 1

    began = time.monotonic()
    with pytest.raises(SourceError) as caught:
        source.read()
    elapsed = time.monotonic() - began

    assert caught.value.code == "E013"
    assert "within timeout_seconds (0.5 s) in 2 attempt(s)" in str(caught.value)
    assert elapsed < 2.5, f"two 0.5 s attempts took {elapsed:.1f} s"
    assert len(state.requests) == 2


def test_http_cursor_cycle_fails_at_once_and_is_not_saved(
    tmp_path: Path, api: tuple[str, ApiState], monkeypatch: pytest.MonkeyPatch, store: Store
) -> None:
    """Defect 7: a cycling cursor went round to max_pages and was saved as the watermark."""
    base, state = api
    monkeypatch.setenv("TEST_REVIEWS_TOKEN", TOKEN)
    source = api_source(
        tmp_path,
        f"{base}/cycle",
        "{type: cursor, cursor_field: meta.next, cursor_param: after}",
        "result.items",
    )
    source.config.max_pages = 50

    with pytest.raises(SourceError) as caught:
        ingest_source(source, store, "run-1")

    assert caught.value.code == "E012"
    assert "cursor 'x', already used in this read" in str(caught.value)
    assert state.requests == ["/cycle", "/cycle?after=x", "/cycle?after=y"]
    assert store.get_watermark("api_reviews") is None
    assert store.count(schema.feedback) == 4, "the pages before the cycle are kept"


def test_http_newest_first_pages_lose_nothing(
    tmp_path: Path, api: tuple[str, ApiState], monkeypatch: pytest.MonkeyPatch, store: Store
) -> None:
    """Defect 2: a page watermark on a newest-first API skipped every new item."""
    base, state = api
    monkeypatch.setenv("TEST_REVIEWS_TOKEN", TOKEN)

    def items(first: int, last: int) -> list[dict[str, Any]]:
        return [
            {"id": f"n{n}", "created": f"2026-11-{n:02d}T10:00:00Z", "body": f"Item {n}"}
            for n in range(last, first - 1, -1)
        ]

    pagination = "{type: page, size_param: per_page, page_size: 2, order: newest_first}"
    source = api_source(tmp_path, f"{base}/newest", pagination, "data")
    state.newest_first = items(1, 5)
    first = ingest_source(source, store, "run-1")
    assert (first.read, first.stored) == (5, 5)

    state.newest_first = items(1, 8)  # three new items push the others down
    state.requests.clear()
    state.down.add("/newest?page=2&per_page=2")  # the read breaks after its first page
    with pytest.raises(SourceError):
        ingest_source(source, store, "run-2")
    state.down.clear()
    state.requests.clear()
    second = ingest_source(source, store, "run-3")

    assert (second.read, second.stored, second.duplicates) == (4, 1, 3)
    assert state.requests == ["/newest?page=1&per_page=2", "/newest?page=2&per_page=2"]
    assert store.count(schema.feedback) == 8
    third = ingest_source(source, store, "run-4")
    assert (third.read, third.stored, third.duplicates) == (2, 0, 2)


def test_http_connection_refused_and_missing_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    source = api_source(tmp_path, f"http://127.0.0.1:{closed_port}/x", "{type: page}", "data")

    monkeypatch.delenv("TEST_REVIEWS_TOKEN", raising=False)
    with pytest.raises(SourceError, match="TEST_REVIEWS_TOKEN is empty or not set"):
        source.read()

    monkeypatch.setenv("TEST_REVIEWS_TOKEN", TOKEN)
    with pytest.raises(SourceError, match=f"127.0.0.1:{closed_port}/x failed after 3"):
        source.read()


def test_http_wrong_token_fails_fast(
    tmp_path: Path, api: tuple[str, ApiState], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, state = api
    monkeypatch.setenv("TEST_REVIEWS_TOKEN", "wrong")
    source = api_source(tmp_path, f"{base}/pages", "{type: page}", "data")

    with pytest.raises(SourceError, match="HTTP 401; check the token in \\$TEST_REVIEWS_TOKEN"):
        source.read()
    assert len(state.requests) == 1


# --- configuration ----------------------------------------------------------------------------

GOOD_ENTRY = """\
  - name: a
    kind: csv
    channel: review
    path: a.csv
    columns: {created_at: d, text: t}
"""


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (GOOD_ENTRY.replace("kind: csv", "kind: xml"), ["sources.0", "'kind'", "'csv', 'jsonl'"]),
        (GOOD_ENTRY.replace("    path: a.csv\n", ""), ["sources.0.csv.path", "Field required"]),
        (GOOD_ENTRY + GOOD_ENTRY, ["key 'sources'", "duplicate source name '…'"]),
        (GOOD_ENTRY.replace("channel: review", "channel: email"), ["sources.0.csv.channel"]),
        (GOOD_ENTRY.replace("text: t", "stars: t"), ["sources.0.csv.columns", "'stars'"]),
        (GOOD_ENTRY.replace("created_at: d, ", ""), ["columns.created_at is required"]),
        (GOOD_ENTRY.replace("kind: csv", "kind: csv\n    encoding: latin9"), ["encoding"]),
        (GOOD_ENTRY.replace("kind: csv", "kind: csv\n    token: abc"), ["token_env"]),
        (GOOD_ENTRY.replace("kind: csv", "kind: csv\n    timezone: Mars/Base"), ["timezone"]),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, entry: str, expected: list[str]) -> None:
    config_file = tmp_path / "sources.yaml"
    config_file.write_text(f"sources:\n{entry}", encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        load_sources(config_file)

    message = str(caught.value)
    assert caught.value.code == "E001"
    for fragment in expected:
        assert fragment in message


def test_secret_in_yaml_is_refused_and_not_echoed(tmp_path: Path) -> None:
    entry = GOOD_ENTRY.replace("kind: csv", "kind: csv\n    api_key: sk-live-123456")
    config_file = tmp_path / "sources.yaml"
    config_file.write_text(f"sources:\n{entry}", encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        load_sources(config_file)

    assert "key 'api_key' looks like a secret" in str(caught.value)
    assert "token_env" in str(caught.value)
    assert "sk-live-123456" not in str(caught.value)


def test_load_sources_resolves_paths_and_filters(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.csv").write_text("d,t\n2026-11-01,hello\n")
    config_dir = tmp_path / "conf"
    config_dir.mkdir()
    disabled = GOOD_ENTRY.replace("name: a", "name: b") + "    enabled: false\n"
    (config_dir / "sources.yaml").write_text(f"data_dir: ../data\nsources:\n{GOOD_ENTRY}{disabled}")

    (source,) = load_sources(config_dir / "sources.yaml")
    assert source.read().records[0].text == "hello"
    assert [s.name for s in load_sources(config_dir / "sources.yaml", include_disabled=True)] == [
        "a",
        "b",
    ]
    with pytest.raises(ConfigError, match="unknown source"):
        load_sources(config_dir / "sources.yaml", names=["nope"])
    (data / "a.csv").unlink()
    with pytest.raises(SourceError, match=r"a\.csv not found"):
        source.read()


def test_missing_configured_column_is_a_source_error(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("date,text\n2026-11-01,hi\n")
    config = load_yaml_model(_write(tmp_path, GOOD_ENTRY), SourcesConfig)

    with pytest.raises(SourceError, match=r"column\(s\) \['d', 't'\]"):
        build_source(config.sources[0], tmp_path).read()


def _write(tmp_path: Path, entry: str) -> Path:
    config_file = tmp_path / "sources.yaml"
    config_file.write_text(f"sources:\n{entry}", encoding="utf-8")
    return config_file


def test_repo_sources_yaml_is_valid_and_reads_the_demo_files() -> None:
    config_file = REPO_ROOT / "configs" / "sources.yaml"
    config = load_yaml_model(config_file, SourcesConfig)
    assert {source.name for source in config.sources} == {
        "store_reviews",
        "app_reviews",
        "tr_legacy_reviews",
        "nps_survey_csv",
        "nps_survey_xlsx",
        "social_posts",
    }
    for source in load_sources(config_file):
        assert isinstance(source, CsvSource | JsonlSource | XlsxSource)
        if not (source.base_dir / source.config.path).is_file():
            continue  # the demo data may not be generated yet
        batch = source.read()
        assert batch.records, f"{source.name}: no record read from the demo file"
        assert set(reasons(batch)) <= set(REJECT_REASONS)
