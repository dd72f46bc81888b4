"""Mail transports: real SMTP (smtplib) or ``.eml`` files in an outbox folder.

``Mailer.from_env`` reads ``FEEDBACK_SMTP_HOST``, ``FEEDBACK_SMTP_PORT``,
``FEEDBACK_SMTP_SECURITY`` (``starttls`` (default), ``ssl`` or ``none``), ``FEEDBACK_SMTP_USER``,
``FEEDBACK_SMTP_PASSWORD`` (or ``FEEDBACK_SMTP_PASSWORD_BLOCK``: the name of a Prefect
``Secret`` block holding it) and ``FEEDBACK_SMTP_FROM``. With no host configured, messages are
written to the outbox folder instead; they are built identically, only the transport differs.
"""

from __future__ import annotations

import os
import re
import smtplib
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Literal

from pipelines._errors import ConfigError

__all__ = [
    "DEFAULT_SENDER",
    "Mailer",
    "OutboxTransport",
    "Refused",
    "SendMessage",
    "SmtpSettings",
    "SmtpTransport",
]

DEFAULT_SENDER = "feedback-alerts@localhost"
_DEFAULT_PORTS = {"starttls": 587, "ssl": 465, "none": 25}
_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")

Refused = dict[str, tuple[int, str]]
"""Recipient -> (SMTP reply code, reply text) for each recipient the server refused."""

SendMessage = Callable[[EmailMessage, Sequence[str]], Refused]
"""Sends one message to the given envelope recipients; returns the ones refused."""


@dataclass(frozen=True)
class SmtpSettings:
    """How to reach the SMTP server.

    Attributes:
        host: Server name or address.
        port: TCP port.
        security: ``starttls`` (upgrade a plain connection), ``ssl`` (TLS from the start) or
            ``none`` (plain, for a local relay).
        user: Login name; no login when None.
        password: Login password.
        timeout_s: Socket timeout in seconds.
    """

    host: str
    port: int
    security: Literal["starttls", "ssl", "none"] = "starttls"
    user: str | None = None
    password: str | None = None
    timeout_s: float = 30.0


class SmtpTransport:
    """Sends messages through an SMTP server, one connection per delivery run.

    Args:
        settings: Server, port, security and credentials.
    """

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings

    def describe(self) -> str:
        """Where mail goes, for logs (no password)."""
        return f"smtp://{self.settings.host}:{self.settings.port} ({self.settings.security})"

    @contextmanager
    def connect(self) -> Iterator[SendMessage]:
        """Open (and log in to) the server; yields a function sending one message.

        The function returns the recipients the server refused (``smtplib`` only raises
        when it refused all of them: ``SMTPRecipientsRefused``).

        Raises:
            OSError, smtplib.SMTPException: The server is unreachable or refused the login.
        """
        settings = self.settings
        context = ssl.create_default_context()
        client: smtplib.SMTP
        if settings.security == "ssl":
            client = smtplib.SMTP_SSL(
                settings.host, settings.port, timeout=settings.timeout_s, context=context
            )
        else:
            client = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout_s)
        try:
            if settings.security == "starttls":
                client.starttls(context=context)
            if settings.user:
                client.login(settings.user, settings.password or "")

            def send(message: EmailMessage, recipients: Sequence[str]) -> Refused:
                refused = client.send_message(message, to_addrs=list(recipients))
                return {
                    address: (code, reply.decode("utf-8", "replace"))
                    for address, (code, reply) in refused.items()
                }

            yield send
        finally:
            try:
                client.quit()
            except (OSError, smtplib.SMTPException):
                client.close()


class OutboxTransport:
    """Writes each message as an ``.eml`` file (the default when no SMTP server is configured).

    Args:
        directory: Folder for the files; created when missing.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def describe(self) -> str:
        """Where mail goes, for logs."""
        return f"outbox folder {self.directory}"

    @contextmanager
    def connect(self) -> Iterator[SendMessage]:
        """Yields a function writing one message to ``<directory>/<time>-<message-id>.eml``.

        The file carries the message as built (its ``To`` header lists the recipients); no
        recipient is ever refused.
        """
        self.directory.mkdir(parents=True, exist_ok=True)

        def write(message: EmailMessage, recipients: Sequence[str]) -> Refused:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
            name = _UNSAFE_FILE_CHARS.sub("_", str(message["Message-ID"]).strip("<>"))
            target = self.directory / f"{stamp}-{name}.eml"
            partial = target.with_suffix(".eml.part")
            partial.write_bytes(message.as_bytes(policy=SMTP))
            partial.replace(target)
            return {}

        yield write


class Mailer:
    """A sender address plus a transport; what ``deliver_pending`` uses.

    Args:
        sender: The From address of every alert.
        transport: ``SmtpTransport`` or ``OutboxTransport``.
    """

    def __init__(self, sender: str, transport: SmtpTransport | OutboxTransport) -> None:
        self.sender = sender
        self.transport = transport

    @classmethod
    def from_env(
        cls,
        outbox_dir: str | os.PathLike[str] = "outbox",
        environ: Mapping[str, str] | None = None,
    ) -> Mailer:
        """SMTP when ``FEEDBACK_SMTP_HOST`` is set, else the outbox folder.

        Args:
            outbox_dir: Folder for ``.eml`` files when no SMTP host is configured.
            environ: Environment to read; ``os.environ`` when None.

        Returns:
            The mailer.

        Raises:
            ConfigError: A port or security value is invalid, or the Prefect Secret block
                named for the password cannot be loaded.
        """
        env = os.environ if environ is None else environ
        sender = env.get("FEEDBACK_SMTP_FROM") or DEFAULT_SENDER
        host = env.get("FEEDBACK_SMTP_HOST")
        if not host:
            return cls(sender, OutboxTransport(outbox_dir))
        security = (env.get("FEEDBACK_SMTP_SECURITY") or "starttls").lower()
        if security not in _DEFAULT_PORTS:
            raise ConfigError(
                f"FEEDBACK_SMTP_SECURITY={security!r} is not supported; use starttls, ssl or none"
            )
        port_text = env.get("FEEDBACK_SMTP_PORT") or str(_DEFAULT_PORTS[security])
        if not port_text.isdigit():
            raise ConfigError(f"FEEDBACK_SMTP_PORT={port_text!r} is not a port number; e.g. 587")
        password = env.get("FEEDBACK_SMTP_PASSWORD")
        block = env.get("FEEDBACK_SMTP_PASSWORD_BLOCK")
        if not password and block:
            password = _secret_block_value(block)
        settings = SmtpSettings(
            host=host,
            port=int(port_text),
            security=security,  # type: ignore[arg-type]
            user=env.get("FEEDBACK_SMTP_USER") or None,
            password=password,
        )
        return cls(sender, SmtpTransport(settings))

    def describe(self) -> str:
        """Where mail goes, for logs (no password)."""
        return self.transport.describe()

    @contextmanager
    def connect(self) -> Iterator[SendMessage]:
        """Open the transport; yields a function sending one message."""
        with self.transport.connect() as send:
            yield send


def _secret_block_value(name: str) -> str:
    from prefect.blocks.system import Secret
    from prefect.exceptions import PrefectException

    try:
        return str(Secret.load(name).get())
    except (PrefectException, ValueError, RuntimeError, OSError) as exc:
        raise ConfigError(
            f"cannot load the Prefect Secret block {name!r} named by FEEDBACK_SMTP_PASSWORD_BLOCK "
            f"({exc}); create it (prefect block create secret) or set FEEDBACK_SMTP_PASSWORD"
        ) from exc
