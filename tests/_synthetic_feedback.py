"""Generated multilingual complaints for the aspect/topic/trend tests and the benchmark.

Written for this project: no data-set text.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pandas as pd

from pipelines.ingest.dedupe import text_hash

__all__ = ["THEMES", "feedback_rows", "synthetic_texts"]

THEMES: dict[str, dict[str, list[str]]] = {
    "delivery": {
        "tr": [
            "Siparişim {n} gün geç geldi",
            "Kargo hala gelmedi, {n} gündür bekliyorum",
            "Kurye paketi çok geç getirdi",
            "Teslimat {n} gün gecikti, kargo takibi de çalışmıyor",
        ],
        "fa": [
            "سفارشم {n} روز دیر رسید",
            "بسته هنوز نرسیده، {n} روزه منتظرم",
            "پیک سفارش رو خیلی دیر آورد",
            "ارسال {n} روز تاخیر داشت و کد رهگیری کار نمیکنه",
        ],
        "ro": [
            "Comanda a ajuns cu {n} zile întârziere",
            "Coletul tot nu a venit, aștept de {n} zile",
            "Curierul a adus coletul foarte târziu",
        ],
        "en": [
            "My order arrived {n} days late",
            "The parcel still has not arrived after {n} days",
            "Delivery was delayed by {n} days and tracking does not work",
        ],
    },
    "price": {
        "tr": [
            "Fiyatlar çok pahalı, {n} lira zam yapmışlar",
            "Bu fiyata hiç değmez",
            "Her ay zam geliyor, çok pahalı",
        ],
        "fa": [
            "قیمت ها خیلی گرونه، {n} تومن گرون تر شده",
            "اصلا ارزش این قیمت رو نداره",
            "هر ماه قیمت ها میره بالا",
        ],
        "ro": [
            "Prețurile sunt prea mari, au crescut cu {n} lei",
            "Nu merită banii",
            "Scumpesc în fiecare lună",
        ],
        "en": [
            "Prices are far too high, up {n} dollars",
            "Not worth the money at all",
            "They raise prices every month",
        ],
    },
    "app": {
        "tr": [
            "Uygulama ödeme ekranında çöküyor",
            "Siteden ödeme yapamıyorum, hata veriyor",
            "Uygulamaya giriş yapamıyorum",
        ],
        "fa": [
            "اپلیکیشن موقع پرداخت کرش میکنه",
            "نمیتونم از سایت پرداخت کنم، خطا میده",
            "نمیتونم وارد اپلیکیشن بشم",
        ],
        "ro": [
            "Aplicația se blochează la plată",
            "Nu pot plăti pe site, dă eroare",
            "Nu mă pot loga în aplicație",
        ],
        "en": [
            "The app crashes at checkout",
            "I cannot pay on the website, it shows an error",
            "I cannot log in to the app",
        ],
    },
    "staff": {
        "tr": [
            "Mağazadaki çalışan bize çok kaba davrandı",
            "Kasiyer çok saygısızdı",
            "Personel bağırarak konuştu",
        ],
        "fa": [
            "کارمند فروشگاه خیلی بی ادب بود",
            "صندوقدار خیلی بی احترامی کرد",
            "پرسنل سر ما داد زدن",
        ],
        "ro": [
            "Angajatul din magazin a fost foarte nepoliticos",
            "Casiera a fost nerespectuoasă",
            "Personalul a țipat la noi",
        ],
        "en": [
            "The shop employee was very rude to us",
            "The cashier was disrespectful",
            "The staff shouted at us",
        ],
    },
    "refund": {
        "tr": [
            "İade ettiğim ürünün parası {n} gündür yatmadı",
            "İade talebimi reddettiler",
            "Param hala iade edilmedi",
        ],
        "fa": [
            "پول کالای مرجوعی بعد از {n} روز برنگشته",
            "درخواست مرجوعی منو رد کردن",
            "هنوز پولم رو پس ندادن",
        ],
        "ro": [
            "Nu am primit banii pentru retur de {n} zile",
            "Mi-au respins cererea de retur",
            "Încă nu mi-au dat banii înapoi",
        ],
        "en": [
            "No refund for my return after {n} days",
            "They rejected my return request",
            "I still have not got my money back",
        ],
    },
}
_OPENERS = {
    "tr": ["", "Rezalet. ", "Çok kızgınım. ", "Merhaba, "],
    "fa": ["", "افتضاح. ", "خیلی ناراحتم. ", "سلام، "],
    "ro": ["", "Rușine. ", "Sunt foarte supărat. ", "Bună ziua, "],
    "en": ["", "Terrible. ", "Very annoyed. ", "Hello, "],
}


def synthetic_texts(theme: str, lang: str, count: int, seed: int = 0) -> list[str]:
    """``count`` varied complaints on ``theme`` in ``lang``.

    Args:
        theme: Key of ``THEMES``.
        lang: tr, fa, ro or en.
        count: How many.
        seed: Random seed.

    Returns:
        The texts.
    """
    generator = random.Random(f"{theme}-{lang}-{seed}")
    texts = []
    for _ in range(count):
        template = generator.choice(THEMES[theme][lang])
        opener = generator.choice(_OPENERS[lang]) if generator.random() < 0.25 else ""
        texts.append(opener + template.format(n=generator.randint(2, 30)))
    return texts


def feedback_rows(
    theme_counts: dict[str, int],
    start: datetime,
    days: int,
    seed: int = 0,
    sentiment: str = "negative",
) -> pd.DataFrame:
    """Records spread evenly over ``days`` days from ``start``, every language per theme.

    Args:
        theme_counts: Theme -> records per language.
        start: First day (UTC).
        days: Number of days.
        seed: Random seed (also makes ids unique between calls).
        sentiment: Value of the ``sentiment`` column.

    Returns:
        A batch with ``id, source, channel, created_at, text, lang, text_hash, sentiment``.
    """
    rows = []
    for theme, count in theme_counts.items():
        for lang in THEMES[theme]:
            for index, text in enumerate(synthetic_texts(theme, lang, count, seed)):
                created = start.astimezone(UTC) + timedelta(
                    days=index % days, hours=(index * 7) % 24
                )
                rows.append(
                    {
                        "id": f"s{seed}-{theme}-{lang}-{index}",
                        "source": "synthetic",
                        "channel": "review",
                        "created_at": created,
                        "text": text,
                        "lang": lang,
                        "text_hash": text_hash(text),
                        "sentiment": sentiment,
                    }
                )
    return pd.DataFrame(rows)
