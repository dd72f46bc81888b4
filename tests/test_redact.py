"""PII redaction: every kind with generated valid ids, checksum negatives, and look-alikes."""

from __future__ import annotations

import random

import pytest

from pipelines.ingest.redact import redact

PERSIAN_DIGITS = str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹")


def luhn_complete(prefix: str) -> str:
    """``prefix`` plus the Luhn check digit."""
    for check in "0123456789":
        digits = prefix + check
        total = 0
        for position, char in enumerate(reversed(digits)):
            value = int(char) * (2 if position % 2 else 1)
            total += value - 9 if value > 9 else value
        if total % 10 == 0:
            return digits
    raise AssertionError("unreachable")


def make_tckn(rng: random.Random, first_digit: int | None = None) -> str:
    values = [first_digit if first_digit is not None else rng.randint(1, 9)]
    values += [rng.randint(0, 9) for _ in range(8)]
    tenth = (sum(values[0:9:2]) * 7 - sum(values[1:8:2])) % 10
    values.append(tenth)
    values.append(sum(values) % 10)
    return "".join(map(str, values))


def make_iranian_id(rng: random.Random) -> str:
    values = [rng.randint(0, 9) for _ in range(9)]
    remainder = sum(value * (10 - index) for index, value in enumerate(values)) % 11
    check = remainder if remainder < 2 else 11 - remainder
    return "".join(map(str, values)) + str(check)


def make_cnp(rng: random.Random) -> str:
    body = f"{rng.choice('1256')}{rng.randint(0, 99):02d}{rng.randint(1, 12):02d}"
    body += f"{rng.randint(1, 28):02d}{rng.randint(1, 46):02d}{rng.randint(0, 999):03d}"
    weighted = sum(int(c) * int(w) for c, w in zip(body, "279146358279", strict=True))
    check = weighted % 11
    return body + str(1 if check == 10 else check)


def make_iban(country: str, bban: str) -> str:
    rearranged = bban + country + "00"
    number = int("".join(str(int(char, 36)) for char in rearranged))
    return f"{country}{98 - number % 97:02d}{bban}"


def grouped(value: str, size: int = 4) -> str:
    return " ".join(value[index : index + size] for index in range(0, len(value), size))


def corrupt_last(value: str) -> str:
    return value[:-1] + str((int(value[-1]) + 1) % 10)


SEEDS = range(5)


def test_email() -> None:
    result = redact("Yazın: ali.veli+test@example.com.tr veya a_b@mail.ro")
    assert result.text == "Yazın: [EMAIL] veya [EMAIL]"
    assert result.counts == {"EMAIL": 2}


@pytest.mark.parametrize(
    "phone",
    [
        "0532 123 45 67",
        "05321234567",
        "0 (532) 123 45 67",
        "+90 532 123 45 67",
        "+90 (212) 555 12 34",
        "532 123 45 67",
        "0912 345 6789",
        "+98 912 345 6789",
        "0098 21 1234 5678",
        "0721 234 567",
        "+40 721 234 567",
        "(555) 123-4567",
        "555-123-4567",
        "+1 555 123 4567",
        "+44 20 7946 0958",
    ],
)
def test_phone_formats(phone: str) -> None:
    result = redact(f"Beni {phone} numarasından arayın.")
    assert result.text == "Beni [PHONE] numarasından arayın."
    assert result.counts == {"PHONE": 1}


def test_phone_in_persian_digits() -> None:
    result = redact(f"شماره من {'0912 345 6789'.translate(PERSIAN_DIGITS)} است")
    assert result.text == "شماره من [PHONE] است"


@pytest.mark.parametrize(
    "text",
    [
        "Sipariş no 123456789, tutar 1.250,00 TL",
        "Comanda 40012345 a costat 1299 lei pe 2024-03-15",
        "سفارش ۱۲۳۴۵۶۷ به مبلغ ۱۲۵۰۰۰۰ تومان",
        "Order #5551234567 shipped at 10.30",
        "Fiyat 12 500 000 TL, 3 adet",
    ],
)
def test_order_numbers_prices_and_dates_survive(text: str) -> None:
    result = redact(text)
    assert result.text == text
    assert result.counts == {}


@pytest.mark.parametrize("seed", SEEDS)
def test_iban_valid_and_checksum_negative(seed: int) -> None:
    rng = random.Random(seed)
    tr = make_iban("TR", "".join(rng.choice("0123456789") for _ in range(22)))
    ir = make_iban("IR", "".join(rng.choice("0123456789") for _ in range(22)))
    ro = make_iban("RO", "AAAA" + "".join(rng.choice("0123456789ABCDEF") for _ in range(16)))
    text = f"IBAN {grouped(tr)} / {ir} / {grouped(ro)} numaralı"
    assert redact(text).text == "IBAN [IBAN] / [IBAN] / [IBAN] numaralı"
    bad = tr[:2] + f"{(int(tr[2:4]) + 1) % 100:02d}" + tr[4:]
    assert "[IBAN]" not in redact(f"IBAN {bad}").text


@pytest.mark.parametrize("seed", SEEDS)
def test_card_luhn(seed: int) -> None:
    rng = random.Random(seed)
    card = luhn_complete("4" + "".join(str(rng.randint(0, 9)) for _ in range(14)))
    for written in (card, grouped(card), "-".join(grouped(card).split())):
        result = redact(f"Kart: {written} ile ödedim")
        assert result.text == "Kart: [CARD] ile ödedim"
        assert result.counts == {"CARD": 1}
    assert "[CARD]" not in redact(f"Kart: {grouped(corrupt_last(card))}").text


@pytest.mark.parametrize("seed", SEEDS)
def test_tckn(seed: int) -> None:
    tckn = make_tckn(random.Random(seed))
    assert redact(f"TC kimlik no {tckn}.").text == "TC kimlik no [TCKN]."
    assert "[TCKN]" not in redact(f"TC kimlik no {corrupt_last(tckn)}").text
    leading_zero = make_tckn(random.Random(seed), first_digit=0)  # check digits right
    assert "[TCKN]" not in redact(f"TC kimlik no {leading_zero}").text


@pytest.mark.parametrize("seed", SEEDS)
def test_iranian_national_id(seed: int) -> None:
    code = make_iranian_id(random.Random(seed))
    result = redact(f"کد ملی {code.translate(PERSIAN_DIGITS)} است")
    assert result.text == "کد ملی [IR_NATIONAL_ID] است"
    dashed = f"{code[:3]}-{code[3:9]}-{code[9]}"
    assert redact(f"code {dashed}").text == "code [IR_NATIONAL_ID]"
    assert "[IR_NATIONAL_ID]" not in redact(f"کد ملی {corrupt_last(code)}").text


def test_iranian_id_all_same_digits_rejected() -> None:
    # 1111111111 passes the mod-11 arithmetic but is a known invalid code
    assert redact("code 1111111111").text == "code 1111111111"


@pytest.mark.parametrize("seed", SEEDS)
def test_cnp(seed: int) -> None:
    cnp = make_cnp(random.Random(seed))
    assert redact(f"CNP {cnp}, multumesc").text == "CNP [CNP], multumesc"
    assert "[CNP]" not in redact(f"CNP {corrupt_last(cnp)}").text


def test_cnp_with_impossible_date_rejected() -> None:
    body = "1990230" + "40" + "123"  # 30 February
    weighted = sum(int(c) * int(w) for c, w in zip(body, "279146358279", strict=True))
    check = weighted % 11
    cnp = body + str(1 if check == 10 else check)
    assert "[CNP]" not in redact(f"CNP {cnp}").text


def test_counts_per_kind_and_precedence() -> None:
    rng = random.Random(7)
    tckn = make_tckn(rng)
    card = luhn_complete("5" + "".join(str(rng.randint(0, 9)) for _ in range(14)))
    result = redact(f"{tckn} {card} 0532 111 22 33, a@b.co, 0533 111 22 33")
    assert result.counts == {"TCKN": 1, "CARD": 1, "PHONE": 2, "EMAIL": 1}
    assert result.text == "[TCKN] [CARD] [PHONE], [EMAIL], [PHONE]"


def test_redaction_is_idempotent_and_keeps_plain_text() -> None:
    once = redact("mail ali@example.com tel 0532 123 45 67").text
    assert redact(once).text == once
    assert redact("Harika bir ürün, teşekkürler!").counts == {}


def spaced_forms(value: str, cuts: list[list[int]]) -> list[str]:
    """``value`` cut at each list of positions, joined by a space, a dash and a dot."""
    forms = []
    for positions in cuts:
        parts = [
            value[start:end] for start, end in zip([0, *positions], [*positions, None], strict=True)
        ]
        forms += [separator.join(parts) for separator in (" ", "-", ".")]
    return forms


@pytest.mark.parametrize("seed", SEEDS)
def test_national_ids_written_with_spaces(seed: int) -> None:
    rng = random.Random(seed)
    cases = {
        "TCKN": (make_tckn(rng), [[3, 6, 9], [5], [3, 5, 8]]),
        "IR_NATIONAL_ID": (make_iranian_id(rng), [[3, 9], [3, 6], [4, 8]]),
        "CNP": (make_cnp(rng), [[1, 7], [1, 7, 9], [7]]),
    }
    for kind, (value, cuts) in cases.items():
        for written in spaced_forms(value, cuts):
            # Some groupings are also phone numbers' (Iranian 3-3-4): redacted either way.
            assert redact(f"no {written} ok").text in (f"no [{kind}] ok", "no [PHONE] ok")
        assert f"[{kind}]" not in redact(f"no {grouped(corrupt_last(value), 3)} ok").text


@pytest.mark.parametrize("text", ["Toplam 1 234 567 890 TL", "Suma 9.876.543.210 lei"])
def test_amounts_in_thousands_groups_are_not_ids(text: str) -> None:
    assert redact(text).text == text
