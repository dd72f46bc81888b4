"""Churn-intent detection on real-looking sentences in tr/fa/ro/en, with negation."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines._errors import ConfigError
from pipelines.analysis.churn import ChurnDetector, ChurnKind, ChurnRules, matching_form
from pipelines.analysis.flagging import load_flagging_rules
from pipelines.config import load_yaml_model


@pytest.fixture(scope="module")
def detector() -> ChurnDetector:
    return ChurnDetector(load_flagging_rules().churn_intent_patterns)


CHURN = [
    ("en", "After three broken chargers I will never buy from you again.", ChurnKind.NEVER_AGAIN),
    ("en", "Worst flight ever, I won't be flying with them again.", ChurnKind.NEVER_AGAIN),
    ("en", "Cancelling my subscription today, the price doubled.", ChurnKind.CANCELLATION),
    ("en", "I'm switching to Verizon next month.", ChurnKind.COMPETITOR_SWITCH),
    ("en", "Support ignored me for a week, so we're leaving you.", ChurnKind.LEAVING),
    ("tr", "Bir daha asla almam bu markadan!", ChurnKind.NEVER_AGAIN),
    ("tr", "BİR DAHA ASLA ALMAM, kargo 2 hafta sürdü", ChurnKind.NEVER_AGAIN),
    ("tr", "Aboneliğimi iptal ettim, fiyatlar çok yüksek.", ChurnKind.CANCELLATION),
    ("tr", "Faturalar yine yanlış geldi, Turkcell'e geçiyorum.", ChurnKind.COMPETITOR_SWITCH),
    ("tr", "aboneligimi iptal ediyorum artik", ChurnKind.CANCELLATION),
    ("fa", "دیگه ازتون خرید نمی‌کنم، غذا سرد رسید", ChurnKind.NEVER_AGAIN),
    ("fa", "دیگه ازتون خرید نمی کنم", ChurnKind.NEVER_AGAIN),
    ("fa", "ديگه ازتون خريد نميكنم", ChurnKind.NEVER_AGAIN),
    ("fa", "اشتراکم رو لغو کردم، خیلی گرون شده", ChurnKind.CANCELLATION),
    ("fa", "از این به بعد میرم سراغ اسنپ‌فود", ChurnKind.COMPETITOR_SWITCH),
    ("ro", "Nu mai cumpăr niciodată de la voi!", ChurnKind.NEVER_AGAIN),
    ("ro", "nu mai cumpar niciodata, coletul a venit spart", ChurnKind.NEVER_AGAIN),
    ("ro", "Îmi anulez abonamentul mâine.", ChurnKind.CANCELLATION),
    ("ro", "Imi anulez abonamentul maine.", ChurnKind.CANCELLATION),
    ("ro", "Trec la Orange, m-am săturat de facturi greșite.", ChurnKind.COMPETITOR_SWITCH),
]

NOT_CHURN = [
    ("en", "I would never leave, you guys are the best."),
    ("en", "Delivery was late but I'm not going to cancel my subscription."),
    ("en", "Great food, we will come again!"),
    ("en", "I'd never switch, the support team is amazing."),
    ("tr", "Ne olursa olsun asla vazgeçmem, harika ürün."),
    ("tr", "Kargo hızlı geldi, teşekkürler."),
    ("tr", "Aboneliğimi iptal etmem, çok memnunum."),
    ("tr", "Üyeliğimi iptal etmek istemiyorum ama fiyat arttı."),
    ("fa", "هیچوقت ترکتون نمی‌کنم، عالی هستید"),
    ("fa", "غذا خیلی خوشمزه بود، دوباره سفارش میدم"),
    ("ro", "Nu aș renunța niciodată la voi."),
    ("ro", "Livrare rapidă, recomand!"),
    ("ro", "Curierul nu mai vine de trei zile."),
]


@pytest.mark.parametrize(("lang", "text", "kind"), CHURN)
def test_churn_intent_is_found(
    detector: ChurnDetector, lang: str, text: str, kind: ChurnKind
) -> None:
    matches = detector.find(text, lang)
    assert matches, text
    assert matches[0].kind == kind
    assert matches[0].lang == lang


@pytest.mark.parametrize(("lang", "text"), NOT_CHURN)
def test_negated_or_happy_text_is_not_churn(detector: ChurnDetector, lang: str, text: str) -> None:
    assert detector.find(text, lang) == []


def test_misdetected_or_unknown_language_still_matches(detector: ChurnDetector) -> None:
    assert detector.has_churn_intent("Bir daha asla almam", None)
    assert detector.has_churn_intent("nu mai comand de la voi", "en")
    assert not detector.has_churn_intent("", "en")


def test_matching_form_unifies_persian_and_romanian_variants() -> None:
    assert matching_form("نمی‌کنم", "fa") == matching_form("نمي كنم", "fa") == "نمیکنم"
    assert matching_form("Cumpăr NICIODATĂ", "ro") == "cumpar niciodata"
    assert matching_form("İPTAL ISLAK", "tr") == "iptal islak"


def test_seed_articles_about_loyalty_raise_no_churn(
    detector: ChurnDetector, seed_texts: dict[str, str]
) -> None:
    lines = [line for text in seed_texts.values() for line in text.splitlines() if line.strip()]
    assert len(lines) > 50
    assert [line for line in lines if detector.has_churn_intent(line, None)] == []


@pytest.mark.parametrize(
    ("pattern", "message"),
    [("Switching to \\w+", "lower case"), ("(unclosed", "not a valid regular expression")],
)
def test_bad_patterns_are_rejected_with_a_fix(tmp_path: Path, pattern: str, message: str) -> None:
    config = tmp_path / "churn.yaml"
    config.write_text(
        "languages:\n  en:\n    patterns:\n      competitor_switch: ['" + pattern + "']\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=message):
        load_yaml_model(config, ChurnRules)
