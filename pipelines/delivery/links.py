"""Signed, expiring links to the triage web page, as alert mails carry them.

A link is ``<FEEDBACK_WEB_URL>/l/<token>``; the token holds the recipient, the alert, the action
(``open``, ``ack``, ``resolve``, or ``inbox``) and an expiry time, with an HMAC-SHA256 of all of
them under ``FEEDBACK_WEB_SECRET``. Nothing else is needed to check one: the web page refuses a
token whose MAC does not match (forged or altered) or whose time is past (expired), and a link
bound to one lead and alert is useless for another. The same signing (with another purpose
string, so tokens never pass for one another) protects the session cookie.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from pipelines._errors import WebError

__all__ = [
    "DEFAULT_LINK_TTL",
    "DEFAULT_WEB_URL",
    "LINK_ACTIONS",
    "MIN_SECRET_CHARS",
    "WEB_SECRET_BLOCK_ENV",
    "WEB_SECRET_ENV",
    "WEB_URL_ENV",
    "LinkClaim",
    "LinkSigner",
    "web_base_url",
    "web_secret",
]

WEB_SECRET_ENV = "FEEDBACK_WEB_SECRET"
WEB_SECRET_BLOCK_ENV = "FEEDBACK_WEB_SECRET_BLOCK"
WEB_URL_ENV = "FEEDBACK_WEB_URL"
DEFAULT_WEB_URL = "http://127.0.0.1:8700"
MIN_SECRET_CHARS = 32
LINK_ACTIONS: tuple[str, ...] = ("open", "ack", "resolve", "inbox")
DEFAULT_LINK_TTL = timedelta(days=14)
_SET_SECRET_HINT = (
    f"set {WEB_SECRET_ENV} to a random value of at least {MIN_SECRET_CHARS} characters, e.g. "
    f"export {WEB_SECRET_ENV}=\"$(python -c 'import secrets; print(secrets.token_urlsafe(48))')\""
    f", or name a Prefect Secret block holding one in {WEB_SECRET_BLOCK_ENV}"
)


def web_secret(environ: Mapping[str, str] | None = None, *, required: bool = True) -> str | None:
    """The signing secret: ``$FEEDBACK_WEB_SECRET``, else the Prefect Secret block named by
    ``$FEEDBACK_WEB_SECRET_BLOCK``.

    Args:
        environ: Environment to read; ``os.environ`` when None.
        required: Raise when no secret is configured (the web page); else return None
            (alert mails then carry no links).

    Returns:
        The secret, or None when none is configured and ``required`` is False.

    Raises:
        WebError: E070 when it is missing (and required), shorter than 32 characters, or the
            block cannot be loaded.
    """
    env = os.environ if environ is None else environ
    secret = env.get(WEB_SECRET_ENV) or None
    block = env.get(WEB_SECRET_BLOCK_ENV)
    if secret is None and block:
        secret = _block_value(block)
    if secret is None:
        if required:
            raise WebError(f"the triage web page needs a signing secret: {_SET_SECRET_HINT}")
        return None
    if len(secret) < MIN_SECRET_CHARS:
        raise WebError(
            f"the web signing secret has {len(secret)} characters, fewer than "
            f"{MIN_SECRET_CHARS}: {_SET_SECRET_HINT}"
        )
    return secret


def _block_value(name: str) -> str:
    from prefect.blocks.system import Secret
    from prefect.exceptions import PrefectException

    try:
        return str(Secret.load(name).get())
    except (PrefectException, ValueError, RuntimeError, OSError) as exc:
        raise WebError(
            f"cannot load the Prefect Secret block {name!r} named by {WEB_SECRET_BLOCK_ENV} "
            f"({type(exc).__name__}); create it (prefect block create secret) or set "
            f"{WEB_SECRET_ENV}"
        ) from exc


def web_base_url(environ: Mapping[str, str] | None = None) -> str:
    """The public address of the web page links point at (``$FEEDBACK_WEB_URL``).

    Args:
        environ: Environment to read; ``os.environ`` when None.

    Returns:
        ``http(s)://host[:port][/path]`` without a trailing slash.

    Raises:
        WebError: E070 when it is not an http or https URL.
    """
    env = os.environ if environ is None else environ
    url = (env.get(WEB_URL_ENV) or DEFAULT_WEB_URL).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
        raise WebError(
            f"{WEB_URL_ENV} must be the page's public address, http(s)://host[:port][/path]; "
            f"e.g. {DEFAULT_WEB_URL}"
        )
    return url


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class LinkClaim:
    """What a valid link says.

    Attributes:
        recipient: The lead the link was mailed to.
        alert_id: The alert (empty for ``inbox``).
        action: ``open``, ``ack``, ``resolve`` or ``inbox``.
        expires_at: When the link stops working.
    """

    recipient: str
    alert_id: str
    action: str
    expires_at: datetime


class LinkSigner:
    """Signs and checks tokens with HMAC-SHA256 under the web secret.

    Args:
        secret: ``FEEDBACK_WEB_SECRET`` (at least 32 characters).
        base_url: Public address of the web page (``FEEDBACK_WEB_URL``).
        ttl: How long a mailed link works.
    """

    def __init__(
        self, secret: str, base_url: str = DEFAULT_WEB_URL, ttl: timedelta = DEFAULT_LINK_TTL
    ):
        self._key = secret.encode("utf-8")
        self.base_url = base_url.rstrip("/")
        self.ttl = ttl

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LinkSigner | None:
        """The signer of alert mails, or None when no web secret is configured.

        Raises:
            WebError: E070 when a secret is set but too short, or the URL is invalid.
        """
        secret = web_secret(environ, required=False)
        return None if secret is None else cls(secret, web_base_url(environ))

    def _mac(self, purpose: str, payload: bytes) -> bytes:
        return hmac.new(self._key, purpose.encode() + b"\x1f" + payload, hashlib.sha256).digest()

    def sign(self, purpose: str, payload: str) -> str:
        """``payload`` with its MAC, URL-safe.

        Args:
            purpose: What the token is for (``link``, ``session``...); a token signed for one
                purpose never verifies for another.
            payload: The text to protect.

        Returns:
            ``<payload b64>.<mac b64>``.
        """
        data = payload.encode("utf-8")
        return f"{_b64(data)}.{_b64(self._mac(purpose, data))}"

    def unsign(self, purpose: str, token: str) -> str:
        """The payload of a token signed for ``purpose``.

        Raises:
            WebError: E072 when the token is malformed or its MAC does not match.
        """
        try:
            data_part, mac_part = token.split(".", 1)
            data, mac = _unb64(data_part), _unb64(mac_part)
        except (ValueError, binascii.Error):
            raise WebError("this link is not valid; ask for a fresh one", code="E072") from None
        if not hmac.compare_digest(mac, self._mac(purpose, data)):
            raise WebError("this link is not valid; ask for a fresh one", code="E072")
        return data.decode("utf-8")

    def mac_hex(self, purpose: str, value: str) -> str:
        """A keyed hash of ``value`` (CSRF tokens, rate-limit keys), 32 hex characters."""
        return self._mac(purpose, value.encode("utf-8")).hex()[:32]

    def token(self, recipient: str, alert_id: str, action: str, now: datetime) -> str:
        """A link token for one lead, alert and action, valid for ``ttl`` from ``now``."""
        if action not in LINK_ACTIONS:
            raise ValueError(f"unknown link action {action!r}")
        expires = int((now + self.ttl).timestamp())
        return self.sign("link", f"{action}\x1f{alert_id}\x1f{expires}\x1f{recipient}")

    def url(self, recipient: str, alert_id: str, action: str, now: datetime) -> str:
        """The full link (base URL + ``/l/`` + token)."""
        return f"{self.base_url}/l/{self.token(recipient, alert_id, action, now)}"

    def inbox_url(self, recipient: str, now: datetime) -> str:
        """A link signing ``recipient`` in and opening their inbox."""
        return self.url(recipient, "", "inbox", now)

    def verify(self, token: str, now: datetime | None = None) -> LinkClaim:
        """Check a link token.

        Args:
            token: The token from the URL.
            now: Current time; now when None.

        Returns:
            What the link grants.

        Raises:
            WebError: E072 when forged or malformed; E071 when expired.
        """
        payload = self.unsign("link", token)
        try:
            action, alert_id, expires_text, recipient = payload.split("\x1f", 3)
            expires_at = datetime.fromtimestamp(int(expires_text), UTC)
        except ValueError:
            raise WebError("this link is not valid; ask for a fresh one", code="E072") from None
        if action not in LINK_ACTIONS:
            raise WebError("this link is not valid; ask for a fresh one", code="E072")
        if (now or datetime.now(UTC)) >= expires_at:
            raise WebError(
                f"this link expired on {expires_at:%Y-%m-%d %H:%M} UTC; ask for a fresh one on "
                "the sign-in page",
                code="E071",
            )
        return LinkClaim(recipient, alert_id, action, expires_at)
