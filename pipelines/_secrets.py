"""Masking credentials in anything shown to a person: console lines, error messages, logs."""

from __future__ import annotations

import re

__all__ = ["MASK", "mask_credentials"]

MASK = "***"

# ``scheme://user:password@host``: the password runs to the last ``@`` before the host, so a
# password holding a raw ``@`` or ``:`` is masked whole.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][\w+.\-]*://[^\s:/@'\"]*:)[^\s'\"]*@")
_QUERY_SECRET = re.compile(
    r"(?P<head>[?&](?:password|passwd|pwd|pass|token|secret|api_key|apikey)=)[^&\s'\"]*",
    re.IGNORECASE,
)


def mask_credentials(text: object) -> str:
    """``text`` with every URL password and secret query parameter replaced by ``***``.

    Use it on anything that may hold a database or SMTP URL before it is printed, logged or
    put in an error message: ``postgresql+psycopg://feedback:s3cret@db/feedback`` becomes
    ``postgresql+psycopg://feedback:***@db/feedback``.

    Args:
        text: A URL, or any message that may contain URLs (converted with ``str``).

    Returns:
        The text with the credentials masked; everything else unchanged.
    """
    masked = _URL_PASSWORD.sub(lambda match: f"{match['head']}{MASK}@", str(text))
    return _QUERY_SECRET.sub(lambda match: f"{match['head']}{MASK}", masked)
