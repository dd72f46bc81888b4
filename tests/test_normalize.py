"""normalize_text and casefold_for_matching, per language."""

from __future__ import annotations

import pytest

from pipelines.ingest.normalize import casefold_for_matching, normalize_text

ZWNJ = "\u200c"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # Persian: ZWNJ inside a word is kept, doubled/edge ZWNJ cleaned
        (f"می{ZWNJ}خواهم", f"می{ZWNJ}خواهم"),
        (f"می{ZWNJ}{ZWNJ}خواهم", f"می{ZWNJ}خواهم"),
        (f"{ZWNJ}کتاب{ZWNJ} خوب", "کتاب خوب"),
        # Arabic yeh / alef maksura / kaf -> Persian forms
        ("علي كتاب مى", "علی کتاب می"),
        # Persian and Arabic-Indic digits, Arabic decimal separator
        ("۱۲۳ تومان و ٤٥٦", "123 تومان و 456"),
        ("۱۲٫۵", "12.5"),
        # tatweel removed
        ("خـــوب", "خوب"),
        # HTML tags stripped, entities unescaped, '<' that is not a tag kept
        ("<p>Ürün &amp; kargo</p><br/>iyi", "Ürün & kargo iyi"),
        ("a < b <3 &lt;b&gt;", "a < b <3 <b>"),
        ("x<!-- hidden -->y", "x y"),
        # URLs keep only the host
        ("Bakın https://www.Example.com/p/123?ref=ali.", "Bakın [URL:example.com]."),
        ("see www.shop.ro/x and http://a.b/c", "see [URL:shop.ro] and [URL:a.b]"),
        # mentions normalized, e-mail untouched (left to redaction)
        ("@ali_veli thanks, write to ali@example.com", "@user thanks, write to ali@example.com"),
        # whitespace collapsed, control and invisible characters removed
        ("  a\t\tb\n\nc\x00d\u200be\u200ff  ", "a b cdef"),
        # Romanian cedilla -> comma below when the text is clearly Romanian
        ("Aplicaţia şi ţara", "Aplicația și țara"),
        # NFC
        ("cafe\u0301", "café"),
    ],
)
def test_normalize_text(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


def test_turkish_cedilla_is_never_turned_romanian() -> None:
    assert normalize_text("Kuşadası'nda şişe") == "Kuşadası'nda şişe"
    assert normalize_text("şişe", lang="tr") == "şişe"


def test_romanian_cedilla_with_known_language() -> None:
    assert normalize_text("şi", lang="ro") == "și"
    assert normalize_text("ŞI ŢARĂ", lang="ro") == "ȘI ȚARĂ"
    assert normalize_text("şi") == "şi"  # no Romanian-only letter, language unknown


@pytest.mark.parametrize(
    "raw",
    [
        "<b>Çok</b> iyi https://x.com/a @bob",
        f"می{ZWNJ}خواهم  ۱۲ كتاب",
        "Aplicaţia &amp; www.site.ro",
    ],
)
def test_normalize_is_idempotent(raw: str) -> None:
    once = normalize_text(raw)
    assert normalize_text(once) == once


def test_markup_only_gives_empty_text() -> None:
    assert normalize_text("<br/>  <p></p>") == ""


@pytest.mark.parametrize(
    ("text", "lang", "expected"),
    [
        ("İSTANBUL", "tr", "istanbul"),
        ("IŞIK", "tr", "\u0131ş\u0131k"),
        ("IĞDIR", "az", "\u0131ğd\u0131r"),
        ("ISTANBUL", "en", "istanbul"),
        ("Straße", None, "strasse"),
        ("كيفيت عالي", "fa", "کیفیت عالی"),
        ("ŞI", "ro", "și"),
    ],
)
def test_casefold_for_matching(text: str, lang: str | None, expected: str) -> None:
    assert casefold_for_matching(text, lang) == expected
