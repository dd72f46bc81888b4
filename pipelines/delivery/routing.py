"""Route flagged records to support leads: ``configs/routing.yaml``.

A route matches on any of language, channel, negative aspect, priority, store, product and
source; a criterion left out matches everything. **The most specific matching route wins**: the
one with the most criteria given; among equally specific routes, the first in the file wins. The
route without any criterion is the default and must exist, so every flagged record reaches
someone. Languages, channels, aspects and priorities must be values a record can have: a typo
would make its route never match, so it is an error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipelines._errors import ConfigError
from pipelines.analysis.flagging import PRIORITIES, Priority
from pipelines.config import config_path, load_yaml_model
from pipelines.ingest.language import DEFAULT_LANGUAGES, OTHER
from pipelines.records import Channel

__all__ = [
    "MAIL_LANGUAGES",
    "DeliverySettings",
    "Route",
    "RouteMatch",
    "RoutingConfig",
    "load_routing",
]

MAIL_LANGUAGES: tuple[str, ...] = ("en", "tr", "ro", "fa")
"""Languages of the alert mail frame (labels, headings); ``lang`` of a route."""

_EMAIL = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+\.[^@\s<>,;\"]+$")
_DEFAULT_ROUTE_HINT = (
    "add a route without 'match' to 'routes', e.g. "
    "'- {name: default, to: [support-lead@yourcompany.example]}'"
)


def _folded(values: list[str]) -> frozenset[str]:
    return frozenset(value.casefold() for value in values)


class RouteMatch(BaseModel):
    """Criteria of a route; an empty list matches any value."""

    model_config = ConfigDict(extra="forbid")

    languages: list[str] = Field(default_factory=list)
    channels: list[str] = Field(default_factory=list)
    aspects: list[str] = Field(default_factory=list, description="negative aspects of the record")
    priorities: list[Priority] = Field(default_factory=list)
    stores: list[str] = Field(default_factory=list)
    products: list[str] = Field(default_factory=list)
    sources: list[str] = Field(default_factory=list)

    @property
    def specificity(self) -> int:
        """Number of criteria given."""
        return sum(bool(getattr(self, name)) for name in type(self).model_fields)

    def matches(self, record: Mapping[str, Any]) -> bool:
        """Whether the record satisfies every criterion.

        Args:
            record: A flagged record (``lang``, ``channel``, ``aspects``, ``priority``,
                ``store``, ``product``, ``source``).

        Returns:
            True when every given criterion matches.
        """
        scalar_criteria = (
            (self.languages, "lang"),
            (self.channels, "channel"),
            (self.priorities, "priority"),
            (self.stores, "store"),
            (self.products, "product"),
            (self.sources, "source"),
        )
        for wanted, column in scalar_criteria:
            value = record.get(column)
            if wanted and (not isinstance(value, str) or value.casefold() not in _folded(wanted)):
                return False
        if self.aspects:
            aspects = record.get("aspects")
            found = {
                str(item.get("aspect")).casefold()
                for item in (aspects if isinstance(aspects, list | tuple) else [])
                if isinstance(item, Mapping) and item.get("polarity", "negative") == "negative"
            }
            if not found & _folded(self.aspects):
                return False
        return True


class Route(BaseModel):
    """Where a flagged record goes and how fast it must be answered."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    match: RouteMatch = Field(default_factory=RouteMatch)
    to: list[str] = Field(min_length=1, description="support-lead email addresses")
    sla_hours: dict[Priority, float] = Field(
        default_factory=dict, description="hours to respond per priority; missing ones default"
    )
    lang: Literal["en", "tr", "ro", "fa"] = Field(
        default="en", description="language of the alert mails' frame (fa: right-to-left)"
    )
    timezone: str = Field(default="UTC", description="IANA zone of the times in the mails")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError("unknown timezone; use an IANA name such as Europe/Istanbul") from exc
        return value

    @field_validator("to")
    @classmethod
    def _emails(cls, value: list[str]) -> list[str]:
        for index, address in enumerate(value):
            if not _EMAIL.match(address):
                raise ValueError(
                    f"to[{index}] is not a plain email address; write it as name@domain.tld "
                    "(no display name, commas or line breaks)"
                )
        return value

    @field_validator("sla_hours")
    @classmethod
    def _positive(cls, value: dict[Priority, float]) -> dict[Priority, float]:
        for priority, hours in value.items():
            if hours <= 0:
                raise ValueError(f"sla_hours.{priority} must be a positive number of hours")
        return value


class DeliverySettings(BaseModel):
    """``delivery:`` in routing.yaml: how refused or unreachable alert mail is retried.

    A recipient the server refuses (or every recipient, when the server is unreachable) is
    retried after ``backoff_base_s``, then twice as long each time up to ``backoff_max_s``, and
    marked failed after ``max_attempts`` tries.
    """

    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(default=10, ge=1, le=100, description="tries per recipient")
    backoff_base_s: float = Field(default=30.0, gt=0, description="wait after the first failure")
    backoff_max_s: float = Field(default=3600.0, gt=0, description="longest wait between tries")
    claim_timeout_s: float = Field(
        default=900.0,
        ge=60,
        description="a delivery left claimed this long (crashed sender) is tried again",
    )

    @model_validator(mode="after")
    def _ordered(self) -> DeliverySettings:
        if self.backoff_max_s < self.backoff_base_s:
            raise ValueError(
                f"backoff_max_s ({self.backoff_max_s:g}) is below backoff_base_s "
                f"({self.backoff_base_s:g}); make it at least as long"
            )
        return self


class RoutingConfig(BaseModel):
    """``configs/routing.yaml``."""

    model_config = ConfigDict(extra="forbid")

    default_sla_hours: dict[Priority, float]
    max_alert_age_days: float = Field(
        default=7.0,
        gt=0,
        description="feedback older than this when stored goes to the digest, never a P1 mail",
    )
    routes: list[Route] = Field(min_length=1)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)

    @model_validator(mode="after")
    def _complete(self) -> RoutingConfig:
        missing = [level for level in PRIORITIES if level not in self.default_sla_hours]
        if missing:
            raise ValueError(
                f"default_sla_hours lacks {missing}; give hours for P1, P2 and P3, "
                "e.g. {P1: 4, P2: 24, P3: 72}"
            )
        names = [route.name for route in self.routes]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValueError(
                f"route names {duplicated} are used twice; give each route a unique name"
            )
        defaults = [route.name for route in self.routes if route.match.specificity == 0]
        if not defaults:
            raise ValueError(f"routing has no default route; {_DEFAULT_ROUTE_HINT}")
        if len(defaults) > 1:
            raise ValueError(
                f"routes {defaults} have no 'match', so all of them are defaults; keep one and "
                "give the others match criteria"
            )
        for route in self.routes:
            route.sla_hours = {**self.default_sla_hours, **route.sla_hours}
        return self

    def route(self, record: Mapping[str, Any]) -> Route:
        """The route of a flagged record: the most specific match, the first in the file on ties.

        Args:
            record: A flagged record (row of the flagged batch as a mapping).

        Returns:
            The chosen route (the default route when nothing more specific matches).
        """
        candidates = [route for route in self.routes if route.match.matches(record)]
        return max(candidates, key=lambda route: route.match.specificity)

    def leads(self) -> list[str]:
        """Every address some route mails, sorted."""
        return sorted({address for route in self.routes for address in route.to})


def _check_known_values(routing: RoutingConfig, file: Path, aspects: list[str]) -> None:
    """Refuse match criteria no record can have; they would make their route never match."""
    known = {
        "languages": [*DEFAULT_LANGUAGES, OTHER],
        "channels": [channel.value for channel in Channel],
        "aspects": aspects,
    }
    problems = []
    for index, route in enumerate(routing.routes):
        for criterion, valid in known.items():
            unknown = [
                position
                for position, value in enumerate(getattr(route.match, criterion))
                if value.casefold() not in _folded(valid)
            ]
            if unknown:
                where = ", ".join(f"routes.{index}.match.{criterion}.{p}" for p in unknown)
                problems.append(
                    f"route '{route.name}' ({where}) names an unknown {criterion[:-1]}; "
                    f"use any of {', '.join(valid)}"
                )
    if problems:
        raise ConfigError(
            f"{file}: {'; '.join(problems)}. Aspects are the names in aspects.yaml.",
            code="E005",
        )


def load_routing(config_dir: str | os.PathLike[str] | None = None) -> RoutingConfig:
    """Load and validate ``routing.yaml``.

    Args:
        config_dir: Folder with the YAML files (``--config``); embedded defaults when None.

    Returns:
        The validated routing.

    Raises:
        ConfigError: Missing file, invalid key or no default route; E005 for a language,
            channel or aspect (as listed in ``aspects.yaml``) no record can have. The message
            says the fix.
    """
    from pipelines.analysis.aspects import load_aspect_config  # spaCy and torch: load lazily

    file = config_path("routing.yaml", config_dir)
    routing = load_yaml_model(file, RoutingConfig)
    aspects = [aspect.name for aspect in load_aspect_config(config_dir).aspects]
    _check_known_values(routing, file, aspects)
    return routing
