"""PII redaction before storage: personal identifiers become typed placeholders.

Kinds, in precedence order (a span claimed by an earlier kind is never looked at again):

1. ``[EMAIL]`` e-mail addresses.
2. ``[IBAN]`` IBANs of any IBAN country (TR, IR, RO, DE, ...): known country length and the
   ISO 13616 mod-97 check; spaces or dashes between groups are allowed, case is ignored.
3. ``[CARD]`` payment cards: 13-19 digits, written as one run or in groups of 3+ digits,
   Luhn-valid; 13-digit numbers must start with 4 (only Visa issued them).
4. National ids valid under the official check:
   ``[TCKN]`` Turkish TC Kimlik No (11 digits, first non-zero, 10th/11th check digits),
   ``[IR_NATIONAL_ID]`` Iranian code melli (10 digits, mod-11 check, not all one digit),
   ``[CNP]`` Romanian CNP (13 digits, weights 279146358279, real birth date, county 01-52).
   Written as one run of digits, or in up to 5 groups separated by spaces, dashes or dots
   (``123 456 789 01``, ``xxx-xxxxxx-x``, ``1 850101 123456``) when the grouping is not a
   phone number's and not an amount's (``1 234 567 890``: thousands groups are left alone).
5. ``[PHONE]`` phone numbers: with ``+`` or ``00`` and a country code (exact national length for
   +90/+98/+40/+1, 8-15 digits otherwise), national numbers with a trunk ``0`` (TR/IR 11 digits
   such as ``0532 123 45 67`` or ``0912 345 6789``, RO 10 digits such as ``0721 234 567``),
   Turkish mobiles without the ``0`` written in groups (``532 123 45 67``) and North American
   numbers written in groups (``(555) 123-4567``, ``555-123-4567``).

Numbers failing a check are not redacted as that kind; a digit run that fits no rule is left
alone, so order numbers, prices, dates and amounts survive: a run with no ``+``, no trunk
``0`` and no phone grouping is never a phone. Known limits: an order number written like a
national phone number (``0`` + 10 digits) is redacted as ``[PHONE]``; a Romanian mobile that
happens to pass the Iranian check (1 in 11) is redacted as ``[IR_NATIONAL_ID]``.

Persian and Arabic-Indic digits are recognised as well as ASCII ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum

__all__ = ["PiiKind", "RedactionResult", "redact"]


class PiiKind(StrEnum):
    """Kind of personal identifier; the value is the placeholder's name."""

    EMAIL = "EMAIL"
    IBAN = "IBAN"
    CARD = "CARD"
    TCKN = "TCKN"
    IR_NATIONAL_ID = "IR_NATIONAL_ID"
    CNP = "CNP"
    PHONE = "PHONE"

    @property
    def placeholder(self) -> str:
        """Text that replaces an identifier of this kind, e.g. ``[EMAIL]``."""
        return f"[{self.value}]"


@dataclass(frozen=True)
class RedactionResult:
    """Redacted text and how many identifiers of each kind were replaced.

    Attributes:
        text: The text with every identifier replaced by its placeholder.
        counts: Placeholder name (``"EMAIL"``, ``"PHONE"``...) -> number replaced; kinds not
            found are absent.
    """

    text: str
    counts: dict[str, int] = field(default_factory=dict)


_IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IR": 26,
    "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20,
    "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30,
    "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22,
    "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip

_ASCII_DIGITS = str.maketrans(
    {chr(0x06F0 + value): str(value) for value in range(10)}
    | {chr(0x0660 + value): str(value) for value in range(10)}
)
_EMAIL = re.compile(r"[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}")
_IBAN_CANDIDATE = re.compile(r"(?<![0-9A-Za-z])[A-Za-z]{2}[0-9]{2}(?:[ -]?[0-9A-Za-z]){11,30}")
# Runs of digit groups separated by one space, dash or dot, with optional parentheses
# around a group and an optional leading '+'.
_NUMBER_RUN = re.compile(r"(?<![\w+])\+?\(?\d+\)?(?:[ .-]?\(?\d+\)?)*(?!\w)")
_DIGIT_GROUP = re.compile(r"\d+")

_CNP_WEIGHTS = (2, 7, 9, 1, 4, 6, 3, 5, 8, 2, 7, 9)
_CNP_CENTURIES: dict[str, tuple[int, ...]] = {
    "1": (1900,), "2": (1900,), "3": (1800,), "4": (1800,), "5": (2000,), "6": (2000,),
    "7": (1900, 2000), "8": (1900, 2000), "9": (1900, 2000),
}  # fmt: skip
_PHONE_COUNTRY_LENGTHS = {"90": 10, "98": 10, "40": 9, "1": 10}
_MAX_ID_GROUPS = 5


def _iban_is_valid(compact: str) -> bool:
    if _IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def _luhn_is_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _tckn_is_valid(digits: str) -> bool:
    if len(digits) != 11 or digits[0] == "0":
        return False
    values = [int(char) for char in digits]
    odd_sum = sum(values[0:9:2])
    even_sum = sum(values[1:8:2])
    return values[9] == (odd_sum * 7 - even_sum) % 10 and values[10] == sum(values[:10]) % 10


def _iranian_id_is_valid(digits: str) -> bool:
    if len(digits) != 10 or len(set(digits)) == 1:
        return False
    remainder = sum(int(digits[index]) * (10 - index) for index in range(9)) % 11
    check = int(digits[9])
    return check == remainder if remainder < 2 else check == 11 - remainder


def _cnp_is_valid(digits: str) -> bool:
    if len(digits) != 13 or digits[0] == "0":
        return False
    weighted = sum(int(char) * weight for char, weight in zip(digits, _CNP_WEIGHTS, strict=False))
    check = weighted % 11
    if (1 if check == 10 else check) != int(digits[12]):
        return False
    if not 1 <= int(digits[7:9]) <= 52:
        return False
    year, month, day = int(digits[1:3]), int(digits[3:5]), int(digits[5:7])
    for century in _CNP_CENTURIES[digits[0]]:
        try:
            date(century + year, month, day)
        except ValueError:
            continue
        return True
    return False


def _card_is_valid(digits: str, group_lengths: list[int]) -> bool:
    if not 13 <= len(digits) <= 19 or (len(digits) == 13 and digits[0] != "4"):
        return False
    if len(group_lengths) > 1 and min(group_lengths) < 3:
        return False
    return _luhn_is_valid(digits)


def _looks_like_amount(group_lengths: list[int]) -> bool:
    """``1 234 567 890``: thousands groups, an amount rather than an id."""
    return group_lengths[0] <= 3 and all(length == 3 for length in group_lengths[1:])


def _national_id_kind(digits: str, group_lengths: list[int]) -> PiiKind | None:
    if len(group_lengths) > _MAX_ID_GROUPS or (
        len(group_lengths) > 1 and _looks_like_amount(group_lengths)
    ):
        return None
    if _tckn_is_valid(digits):
        return PiiKind.TCKN
    if _iranian_id_is_valid(digits):
        return PiiKind.IR_NATIONAL_ID
    if _cnp_is_valid(digits):
        return PiiKind.CNP
    return None


def _is_phone(digits: str, group_lengths: list[int], has_plus: bool) -> bool:
    international = digits[2:] if digits.startswith("00") else digits if has_plus else None
    if international is not None:
        for country, national_length in _PHONE_COUNTRY_LENGTHS.items():
            if international.startswith(country):
                return len(international) - len(country) == national_length
        return 8 <= len(international) <= 15
    if digits[0] == "0":
        return (len(digits) == 11 and digits[1] != "0") or (
            len(digits) == 10 and digits[1] in "2378"
        )
    if len(digits) == 10 and digits[0] == "5" and len(group_lengths) >= 3:
        return True
    nanp_groups = group_lengths in ([3, 3, 4], [1, 3, 3, 4])
    return nanp_groups and digits[-10] in "23456789" and digits[-7] in "23456789"


def _classify_digits(digits: str, group_lengths: list[int], has_plus: bool) -> PiiKind | None:
    grouped = len(group_lengths) > 1
    if not has_plus:
        if _card_is_valid(digits, group_lengths):
            return PiiKind.CARD
        canonical = not grouped or group_lengths == [3, 6, 1]  # Iranian ``xxx-xxxxxx-x``
        if canonical and (national_id := _national_id_kind(digits, group_lengths)):
            return national_id
    if _is_phone(digits, group_lengths, has_plus):
        return PiiKind.PHONE
    # A grouped number that is no phone may still be an id written with spaces or dashes.
    return _national_id_kind(digits, group_lengths) if grouped and not has_plus else None


def _find_ibans(text: str) -> list[tuple[int, int, PiiKind]]:
    spans = []
    for match in _IBAN_CANDIDATE.finditer(text):
        alnum_ends = [
            match.start() + offset + 1
            for offset, char in enumerate(match.group(0))
            if char.isalnum()
        ]
        compact = "".join(char for char in match.group(0) if char.isalnum()).upper()
        length = _IBAN_LENGTHS.get(compact[:2])
        if length is not None and len(compact) >= length and _iban_is_valid(compact[:length]):
            end = alnum_ends[length - 1]
            if end == len(text) or not text[end].isalnum():
                spans.append((match.start(), end, PiiKind.IBAN))
    return spans


def _find_numbers(text: str) -> list[tuple[int, int, PiiKind]]:
    """Longest window of digit groups, leftmost first, that is some kind of identifier."""
    spans = []
    for run in _NUMBER_RUN.finditer(text):
        groups = list(_DIGIT_GROUP.finditer(run.group(0)))
        first = 0
        while first < len(groups):
            for last in range(len(groups) - 1, first - 1, -1):
                window = groups[first : last + 1]
                has_plus = first == 0 and run.group(0).startswith("+")
                kind = _classify_digits(
                    "".join(group.group(0) for group in window),
                    [len(group.group(0)) for group in window],
                    has_plus,
                )
                if kind is not None:
                    start = run.start() + (0 if has_plus else window[0].start())
                    end = run.start() + window[-1].end()
                    if text[start - 1 : start] == "(" and ")" in text[start:end]:
                        start -= 1
                    if text[end : end + 1] == ")" and "(" in text[start:end]:
                        end += 1
                    spans.append((start, end, kind))
                    first = last + 1
                    break
            else:
                first += 1
    return spans


def redact(text: str) -> RedactionResult:
    """Replace personal identifiers in ``text`` by typed placeholders (see module docstring).

    Args:
        text: Feedback text (raw or normalized); Persian/Arabic-Indic digits are recognised.

    Returns:
        The redacted text and the number of replacements per kind.
    """
    searchable = text.translate(_ASCII_DIGITS)
    claimed: list[tuple[int, int, PiiKind]] = []

    def claim(candidates: list[tuple[int, int, PiiKind]]) -> None:
        for start, end, kind in candidates:
            if all(
                end <= taken_start or start >= taken_end for taken_start, taken_end, _ in claimed
            ):
                claimed.append((start, end, kind))

    claim([(match.start(), match.end(), PiiKind.EMAIL) for match in _EMAIL.finditer(searchable)])
    claim(_find_ibans(searchable))
    masked = list(searchable)
    for start, end, _ in claimed:
        masked[start:end] = " " * (end - start)
    claim(_find_numbers("".join(masked)))

    pieces: list[str] = []
    counts: dict[str, int] = {}
    position = 0
    for start, end, kind in sorted(claimed):
        pieces.append(text[position:start])
        pieces.append(kind.placeholder)
        counts[kind.value] = counts.get(kind.value, 0) + 1
        position = end
    pieces.append(text[position:])
    return RedactionResult(text="".join(pieces), counts=counts)
