"""What the triage web page needs: the signing secret, its public URL, the database, who may
sign in (leads from ``routing.yaml``, admins from ``users.yaml``) and the limits it enforces.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import cast

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipelines.config import config_path, load_yaml_model
from pipelines.delivery.links import DEFAULT_LINK_TTL, web_base_url, web_secret
from pipelines.delivery.routing import RoutingConfig, load_routing
from pipelines.settings import load_settings
from pipelines.storage import DB_URL_ENV

__all__ = ["UsersConfig", "WebSettings", "load_users", "load_web_settings"]

_EMAIL = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+\.[^@\s<>,;\"]+$")


class UsersConfig(BaseModel):
    """``configs/users.yaml``: who sees every alert on the web page."""

    model_config = ConfigDict(extra="forbid")

    admins: list[str] = Field(
        default_factory=list, description="addresses that see and act on every alert"
    )

    @field_validator("admins")
    @classmethod
    def _emails(cls, value: list[str]) -> list[str]:
        for index, address in enumerate(value):
            if not _EMAIL.match(address):
                raise ValueError(
                    f"admins[{index}] is not a plain email address; write it as name@domain.tld"
                )
        return value


def load_users(config_dir: str | os.PathLike[str] | None = None) -> UsersConfig:
    """Load and validate ``users.yaml`` (the embedded one names no admin).

    Raises:
        ConfigError: The file is invalid (unknown key, not an address).
    """
    return load_yaml_model(config_path("users.yaml", config_dir), UsersConfig)


def _folded(address: str) -> str:
    return address.strip().casefold()


@dataclass(frozen=True)
class WebSettings:
    """Settings of one web app.

    Attributes:
        secret: ``FEEDBACK_WEB_SECRET`` (signs links, sessions and CSRF tokens).
        base_url: ``FEEDBACK_WEB_URL``, the address links point at.
        db_url: The database.
        routing: Routes: their addresses are the leads.
        admins: Addresses that see every alert (casefolded).
        aspects: Aspect names a label correction may use (aspects.yaml).
        outbox_dir: Where sign-in mails go without an SMTP server.
        link_ttl: How long a mailed link works.
        session_ttl: How long a session lasts after the link was opened.
        login_window: Window of the sign-in rate limits.
        login_per_address: Sign-in link requests per address and window.
        login_per_client: Sign-in link requests per client address and window.
    """

    secret: str
    base_url: str
    db_url: str
    routing: RoutingConfig
    admins: frozenset[str]
    aspects: tuple[str, ...]
    outbox_dir: Path
    link_ttl: timedelta = DEFAULT_LINK_TTL
    session_ttl: timedelta = timedelta(hours=12)
    login_window: timedelta = timedelta(minutes=15)
    login_per_address: int = 3
    login_per_client: int = 10

    @property
    def secure_cookies(self) -> bool:
        """Cookies are ``Secure`` when the page is served over https."""
        return self.base_url.startswith("https://")

    def leads(self) -> list[str]:
        """Every address that may sign in (leads and admins), casefolded and sorted."""
        return sorted({_folded(address) for address in self.routing.leads()} | self.admins)

    def is_known(self, address: str) -> bool:
        """Whether ``address`` may sign in."""
        return _folded(address) in set(self.leads())

    def is_admin(self, address: str) -> bool:
        """Whether ``address`` sees every alert."""
        return _folded(address) in self.admins


def load_web_settings(
    config_dir: str | os.PathLike[str] | None = None,
    db: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> WebSettings:
    """Read the secret first (nothing starts without it), then the configuration.

    Args:
        config_dir: ``--config``.
        db: ``--db``; else ``$FEEDBACK_DB_URL``; else ``pipeline.yaml``'s database.
        environ: Environment to read; ``os.environ`` when None.

    Returns:
        The settings.

    Raises:
        WebError: E070 when the secret is missing or too short, or the URL is invalid.
        ConfigError: A configuration file is invalid.
    """
    from pipelines.analysis.aspects import load_aspect_config  # heavy imports: load lazily

    env = os.environ if environ is None else environ
    secret = cast(str, web_secret(env, required=True))
    pipeline = load_settings(config_dir)
    return WebSettings(
        secret=secret,
        base_url=web_base_url(env),
        db_url=db or env.get(DB_URL_ENV) or pipeline.database,
        routing=load_routing(config_dir),
        admins=frozenset(_folded(address) for address in load_users(config_dir).admins),
        aspects=tuple(aspect.name for aspect in load_aspect_config(config_dir).aspects),
        outbox_dir=pipeline.outbox_dir,
    )
