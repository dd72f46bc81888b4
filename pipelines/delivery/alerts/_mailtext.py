"""The words of the alert mail frame in each lead's language (``lang`` of a route).

Only the frame is translated (labels, headings, buttons); the customer's feedback is shown as
written. Persian mails are laid out right-to-left.
"""

from __future__ import annotations

__all__ = ["RTL_LANGUAGES", "age_text", "mail_text"]

RTL_LANGUAGES = frozenset({"fa"})

_TEXT: dict[str, dict[str, str]] = {
    "en": {
        "priority": "Priority",
        "respond_by": "Respond by",
        "sla": "SLA {hours} h",
        "why": "Why flagged",
        "record": "Record id",
        "source": "Source",
        "url": "URL",
        "customer": "Customer id",
        "customer_value": "Customer value",
        "author": "Author",
        "product": "Product",
        "store": "Store",
        "language": "Language",
        "age": "Feedback age",
        "created": "Created",
        "alert": "Alert id",
        "feedback": "Feedback (PII redacted)",
        "open": "Open",
        "ack": "Acknowledge",
        "resolve": "Resolve",
        "inbox": "Open the full inbox",
        "p1_heading": "{priority} negative feedback: respond by {when}",
        "digest_subject": "[Digest] {count} flagged feedback record(s) ({breakdown})",
        "more": "{count} more in the inbox",
        "aspect": "Aspect",
        "snippet": "Feedback",
        "link": "Link",
        "terminal": "In a terminal",
        "no_links": "One-click links need FEEDBACK_WEB_SECRET where the pipeline runs.",
        "stale": "Older than {days:g} days when stored: sent in the digest, not as an "
        "immediate mail",
        "days": "{n} days",
        "day": "1 day",
        "hours": "{n} hours",
        "hour": "1 hour",
        "minutes": "{n} minutes",
    },
    "tr": {
        "priority": "Öncelik",
        "respond_by": "Son yanıt zamanı",
        "sla": "SLA {hours} sa",
        "why": "İşaretlenme nedeni",
        "record": "Kayıt no",
        "source": "Kaynak",
        "url": "Bağlantı",
        "customer": "Müşteri no",
        "customer_value": "Müşteri değeri",
        "author": "Yazar",
        "product": "Ürün",
        "store": "Mağaza",
        "language": "Dil",
        "age": "Geri bildirimin yaşı",
        "created": "Oluşturulma",
        "alert": "Uyarı no",
        "feedback": "Geri bildirim (kişisel veriler gizlendi)",
        "open": "Aç",
        "ack": "Üstlen",
        "resolve": "Çözüldü",
        "inbox": "Tüm gelen kutusunu aç",
        "p1_heading": "{priority} olumsuz geri bildirim: en geç {when} yanıtlayın",
        "digest_subject": "[Özet] {count} işaretli geri bildirim ({breakdown})",
        "more": "Gelen kutusunda {count} tane daha",
        "aspect": "Konu",
        "snippet": "Geri bildirim",
        "link": "Bağlantı",
        "terminal": "Terminalden",
        "no_links": "Tek tıkla bağlantılar için FEEDBACK_WEB_SECRET ayarlanmalı.",
        "stale": "Kaydedildiğinde {days:g} günden eskiydi: anında değil, özetle gönderildi",
        "days": "{n} gün",
        "day": "1 gün",
        "hours": "{n} saat",
        "hour": "1 saat",
        "minutes": "{n} dakika",
    },
    "ro": {
        "priority": "Prioritate",
        "respond_by": "Răspuns până la",
        "sla": "SLA {hours} h",
        "why": "Motivul semnalării",
        "record": "ID înregistrare",
        "source": "Sursă",
        "url": "Link",
        "customer": "ID client",
        "customer_value": "Valoare client",
        "author": "Autor",
        "product": "Produs",
        "store": "Magazin",
        "language": "Limbă",
        "age": "Vechimea feedbackului",
        "created": "Creat",
        "alert": "ID alertă",
        "feedback": "Feedback (date personale ascunse)",
        "open": "Deschide",
        "ack": "Preiau",
        "resolve": "Rezolvat",
        "inbox": "Deschide toate alertele",
        "p1_heading": "Feedback negativ {priority}: răspundeți până la {when}",
        "digest_subject": "[Rezumat] {count} feedbackuri semnalate ({breakdown})",
        "more": "Încă {count} în lista de alerte",
        "aspect": "Aspect",
        "snippet": "Feedback",
        "link": "Link",
        "terminal": "Din terminal",
        "no_links": "Linkurile directe necesită FEEDBACK_WEB_SECRET.",
        "stale": "Mai vechi de {days:g} zile la stocare: trimis în rezumat, nu imediat",
        "days": "{n} zile",
        "day": "1 zi",
        "hours": "{n} ore",
        "hour": "1 oră",
        "minutes": "{n} minute",
    },
    "fa": {
        "priority": "اولویت",
        "respond_by": "مهلت پاسخ",
        "sla": "SLA {hours} ساعت",
        "why": "دلیل علامت‌گذاری",
        "record": "شناسه رکورد",
        "source": "منبع",
        "url": "پیوند",
        "customer": "شناسه مشتری",
        "customer_value": "ارزش مشتری",
        "author": "نویسنده",
        "product": "محصول",
        "store": "فروشگاه",
        "language": "زبان",
        "age": "عمر بازخورد",
        "created": "تاریخ ایجاد",
        "alert": "شناسه هشدار",
        "feedback": "بازخورد (داده‌های شخصی حذف شده)",
        "open": "باز کردن",
        "ack": "پذیرفتن",
        "resolve": "حل شد",
        "inbox": "باز کردن همه هشدارها",
        "p1_heading": "بازخورد منفی {priority}: تا {when} پاسخ دهید",
        "digest_subject": "[خلاصه] {count} بازخورد علامت‌خورده ({breakdown})",
        "more": "{count} مورد دیگر در فهرست هشدارها",
        "aspect": "جنبه",
        "snippet": "بازخورد",
        "link": "پیوند",
        "terminal": "از ترمینال",
        "no_links": "پیوندهای یک‌کلیکی به FEEDBACK_WEB_SECRET نیاز دارند.",
        "stale": "هنگام ذخیره بیش از {days:g} روز از آن گذشته بود: در خلاصه، نه فوری",
        "days": "{n} روز",
        "day": "1 روز",
        "hours": "{n} ساعت",
        "hour": "1 ساعت",
        "minutes": "{n} دقیقه",
    },
}


def mail_text(lang: str, key: str, **values: object) -> str:
    """One phrase of the mail frame in ``lang`` (English for an unknown language).

    Args:
        lang: ``en``, ``tr``, ``ro`` or ``fa``.
        key: The phrase.
        **values: Placeholders of the phrase.

    Returns:
        The phrase, filled in.
    """
    return _TEXT.get(lang, _TEXT["en"])[key].format(**values)


def age_text(lang: str, seconds: float) -> str:
    """A feedback's age in words: days from one day on, else hours, else minutes."""
    seconds = max(seconds, 0.0)
    if seconds >= 86400:
        days = int(seconds // 86400)
        return mail_text(lang, "day") if days == 1 else mail_text(lang, "days", n=days)
    if seconds >= 3600:
        hours = int(seconds // 3600)
        return mail_text(lang, "hour") if hours == 1 else mail_text(lang, "hours", n=hours)
    return mail_text(lang, "minutes", n=int(seconds // 60))
