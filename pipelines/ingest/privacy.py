"""Personal data at rest: what each record field is stored as, and the keyed pseudonyms.

Nothing that identifies a person is stored in clear: not in the database (quarantine included),
alert payloads and mails, reports, Prefect results or logs. A record is made safe where it is
built (``RowMapper`` calls ``RecordPrivacy.protect``), before anything keeps it:

* ``text`` and ``title``: the analysis text (``normalize_text`` then ``redact``), at ingest.
* ``author``: a keyed pseudonym ``[AUTHOR:<16 hex>]``, the same for the same author on every
  run, so copy-paste spam is still found (``dedupe``). A source that lists ``author`` in
  ``keep_in_clear`` (public social handles) keeps it readable, with any identifier inside it
  (e-mail, phone...) still redacted.
* ``customer_id`` and ``external_id``: kept (customer contact goes through ``customer_id``),
  unless ``redact`` finds an identifier in them (an e-mail used as customer id): then a
  pseudonym, ``[CUSTOMER:...]`` or ``[ID:...]``. Record ids are computed before, from the
  value as read, so they do not change.
* ``url``, ``product``, ``store``, ``platform``: identifiers replaced by placeholders, and a
  pseudonymised value found inside them (the author's handle in a profile URL) by its pseudonym.
* ``metadata`` and ``raw``: ``raw`` keeps, for audit, the configured columns of the source row
  (``columns``, ``metadata_columns``, ``answer_columns``; unmapped columns are dropped), redacted
  like the text: every identifier ``redact`` finds, after ``normalize_text`` wherever
  normalizing could reveal one (markup, entities, invisible characters, runs of whitespace;
  other strings stay as read), becomes its placeholder; so does a number that reads as an
  identifier; a pseudonymised field's value (whole, or inside a string when 4+ characters
  long) becomes its pseudonym. ``metadata`` is redacted the same way.
* quarantined rows (``scrub_quarantined``): the line (a JSON line is decoded, redacted value by
  value and re-encoded) and the detail are redacted.

Pseudonyms are HMAC-SHA256 keyed with ``$FEEDBACK_PII_KEY`` (at least 16 characters; E050
otherwise). Without it a built-in key is used: values still never appear in clear, but anyone
who guesses one can confirm it, so set the key in production and keep it out of the database.
Changing the key changes the pseudonyms (spam across the change is not matched).

Known limits: identifiers are found by pattern (``redact``'s kinds); a person's name written in
free text is not recognised, nor one in a quarantined row (whose columns are unknown).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import re
from collections.abc import Collection, Mapping
from typing import Any

from pipelines._errors import PrivacyError
from pipelines.ingest.normalize import normalize_text
from pipelines.ingest.redact import redact
from pipelines.records import FeedbackRecord

__all__ = [
    "KEEPABLE_FIELDS",
    "PII_KEY_ENV",
    "RecordPrivacy",
    "protect_field",
    "pseudonym",
    "scrub_quarantined",
    "scrub_text",
    "scrub_value",
]

PII_KEY_ENV = "FEEDBACK_PII_KEY"
KEEPABLE_FIELDS: tuple[str, ...] = ("author",)
"""Fields a source may keep readable with ``keep_in_clear`` (identifiers inside still go)."""

_MIN_KEY_CHARS = 16
# Every identifier ``redact`` knows has a digit or an "@"; "&" may hide one (``&commat;``).
_MAY_HOLD_IDENTIFIER = re.compile(r"[\d@&]")
_ISO_TIMESTAMP = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?(?:Z|[+-]\d{2}:?\d{2})?"
)
# What ``normalize_text`` undoes and could hide an identifier from ``redact``: markup and
# entities, invisible and control characters, Arabic separators, runs of whitespace.
_HIDES_IDENTIFIERS = re.compile(
    r"[&<\u00ad\u0640\u066b\u066c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff"
    r"\x00-\x1f\x7f-\x9f]|\s{2,}|[^\S ]"
)
_BUILT_IN_KEY = b"feedback-pipeline/pseudonyms/v1"
_PSEUDONYM_HEX = 16
_REDACTED_FIELDS = ("url", "product", "store", "platform")
_PSEUDONYMISED_IF_PII = {"customer_id": "CUSTOMER", "external_id": "ID"}


def _key() -> bytes:
    configured = os.environ.get(PII_KEY_ENV)
    if configured is None:
        return _BUILT_IN_KEY
    if len(configured.strip()) < _MIN_KEY_CHARS:
        raise PrivacyError(
            f"${PII_KEY_ENV} has {len(configured.strip())} characters; the pseudonym key needs at "
            f"least {_MIN_KEY_CHARS}. Set it to a long random value, e.g. the output of "
            "`openssl rand -hex 32`, and keep it the same across runs."
        )
    return configured.strip().encode("utf-8")


def pseudonym(kind: str, value: str) -> str:
    """The stable stand-in stored instead of an identifying value.

    Args:
        kind: What the value is (``AUTHOR``, ``CUSTOMER``, ``ID``); part of the placeholder.
        value: The value as read.

    Returns:
        ``[KIND:<16 hex>]``, an HMAC-SHA256 of the value under ``$FEEDBACK_PII_KEY``.

    Raises:
        PrivacyError: ``$FEEDBACK_PII_KEY`` is set but too short.
    """
    digest = hmac.new(_key(), value.strip().encode("utf-8"), hashlib.sha256).hexdigest()
    return f"[{kind}:{digest[:_PSEUDONYM_HEX]}]"


def scrub_text(text: str) -> str:
    """``text`` as stored: normalized and redacted (see ``normalize_text`` and ``redact``).

    Args:
        text: Any free text.

    Returns:
        The analysis form, with every identifier replaced by its placeholder.
    """
    return redact(normalize_text(text)).text


class _Pseudonyms:
    """Clear value -> what is stored instead: whole values, and, for pseudonyms of 4+ characters,
    inside text too (a handle in a profile URL), matched case-insensitively.

    Args:
        replacements: Clear value -> pseudonym.
        checked: Values already found free of identifiers, stored as they are.
    """

    def __init__(self, replacements: Mapping[str, str], checked: Collection[str] = ()) -> None:
        self.exact = {value.strip(): value.strip() for value in checked}
        self.exact |= {clear.strip(): stored for clear, stored in replacements.items()}
        longest_first = sorted(replacements.items(), key=lambda pair: -len(pair[0].strip()))
        self.pairs = [
            (clear.strip().lower(), stored)
            for clear, stored in longest_first
            if len(clear.strip()) >= 4
        ]

    def whole(self, value: str) -> str | None:
        return self.exact.get(value.strip())

    def inside(self, text: str) -> str:
        for clear, stored in self.pairs:
            lowered = text.lower()
            if len(lowered) != len(text):  # lower() changed lengths (İ): let re align the match
                text = re.sub(re.escape(clear), stored, text, flags=re.IGNORECASE)
                continue
            start = lowered.find(clear)
            while start != -1:
                text = text[:start] + stored + text[start + len(clear) :]
                start = text.lower().find(clear, start + len(stored))
        return text


def _scrub_string(value: str) -> str:
    """``value`` without identifiers, kept as read where normalizing cannot reveal one."""
    if not _MAY_HOLD_IDENTIFIER.search(value) or _ISO_TIMESTAMP.fullmatch(value):
        return value
    if _HIDES_IDENTIFIERS.search(value):
        return scrub_text(value)
    return redact(value).text


@functools.lru_cache(maxsize=4096)
def _scrub_key(key: str) -> str:
    return _scrub_string(key)


def _scrub(value: Any, known: _Pseudonyms) -> Any:
    if isinstance(value, Mapping):
        return {_scrub_key(str(key)): _scrub(item, known) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(item, known) for item in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, str):
        if (whole := known.whole(value)) is not None:
            return whole
        return _scrub_string(known.inside(value))
    if isinstance(value, int | float):
        number = str(value)
        redacted = redact(number)
        return known.whole(number) or (redacted.text if redacted.counts else value)
    return value


def scrub_value(value: Any, replacements: Mapping[str, str] | None = None) -> Any:
    """A JSON value with every identifier redacted, recursively (keys included).

    Args:
        value: A JSON-ready value (dicts, lists, strings, numbers...).
        replacements: Clear values -> what to store instead (pseudonyms); a whole value is
            replaced, and a clear value of 4+ characters also inside strings.

    Returns:
        The same structure; strings scrubbed with ``scrub_text`` after the replacements, numbers
        turned into the placeholder string when they read as an identifier, other types
        unchanged.
    """
    return _scrub(value, _Pseudonyms(replacements or {}))


def scrub_quarantined(raw: str, reason: str, detail: str | None) -> tuple[str, str, str | None]:
    """A quarantined row, as stored.

    Args:
        raw: The row as read: a JSON line or a line of text (CSV...).
        reason: Its reject reason code (kept).
        detail: What was wrong; may quote field values.

    Returns:
        ``raw`` redacted (a JSON line value by value, then re-encoded), ``reason``, and
        ``detail`` redacted.
    """
    try:
        parsed = json.loads(raw)
    except ValueError:
        scrubbed = scrub_text(raw)
    else:
        scrubbed = json.dumps(scrub_value(parsed), ensure_ascii=False)
    return scrubbed, reason, None if detail is None else scrub_text(detail)


def protect_field(name: str, value: Any) -> Any:
    """One value of a flat row (``feedback analyze`` input columns) as it may be written out.

    Args:
        name: Column name; ``author`` is pseudonymised, ``id``, ``customer_id`` and
            ``external_id`` when an identifier is found in them.
        value: The value.

    Returns:
        The pseudonym, or the value redacted with ``scrub_value``.
    """
    if name == "author" and isinstance(value, str | int):
        return pseudonym("AUTHOR", str(value))
    kind = _PSEUDONYMISED_IF_PII.get(name, "ID" if name == "id" else None)
    if kind is not None and isinstance(value, str | int) and redact(str(value)).counts:
        return pseudonym(kind, str(value))
    return scrub_value(value)


class RecordPrivacy:
    """Turns a record as read into the record as stored (see the module docstring).

    Args:
        keep_in_clear: Fields of ``KEEPABLE_FIELDS`` the source keeps readable (validated with
            sources.yaml).

    Raises:
        PrivacyError: ``$FEEDBACK_PII_KEY`` is set but too short (checked at once, so a source
            fails when it is built, not row by row).
    """

    def __init__(self, keep_in_clear: Collection[str] = ()) -> None:
        _key()
        self.keep_in_clear = frozenset(keep_in_clear)

    def protect(self, record: FeedbackRecord) -> FeedbackRecord:
        """The record with every identifying value redacted or pseudonymised.

        ``text`` and ``title`` are left as read: ingest stores their analysis form.

        Args:
            record: A record as mapped from the source row (``raw`` holds the row's columns).

        Returns:
            A copy safe to store.
        """
        replacements: dict[str, str] = {}
        checked: list[str] = []
        updates: dict[str, Any] = {}
        if record.author is not None:
            if "author" in self.keep_in_clear:
                updates["author"] = redact(record.author).text
            else:
                updates["author"] = pseudonym("AUTHOR", record.author)
            replacements[record.author.strip()] = updates["author"]
        for name, kind in _PSEUDONYMISED_IF_PII.items():
            value = getattr(record, name)
            if value is not None and redact(value).counts:
                updates[name] = replacements[value.strip()] = pseudonym(kind, value)
            elif value is not None:
                checked.append(value)
        known = _Pseudonyms(replacements, checked)
        for name in _REDACTED_FIELDS:
            value = getattr(record, name)
            if value is not None:
                updates[name] = redact(known.inside(value)).text
        updates["metadata"] = _scrub(record.metadata, known)
        updates["raw"] = _scrub(record.raw, known)
        return record.model_copy(update=updates)
