"""Routing of flagged records to support leads, the default route and validation messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipelines._errors import ConfigError
from pipelines.delivery.routing import RoutingConfig, load_routing

ROUTING = """
default_sla_hours: {P1: 4, P2: 24, P3: 72}
routes:
  - name: social-p1
    match: {channels: [social], priorities: [P1]}
    to: [social-lead@example.com]
    sla_hours: {P1: 1}
  - name: pricing
    match: {aspects: [price_value]}
    to: [pricing-lead@example.com]
  - name: persian
    match: {languages: [fa]}
    to: [fa-lead@example.com, fa-backup@example.com]
  - name: istanbul-store
    match: {languages: [tr], stores: [Istanbul Kadikoy]}
    to: [kadikoy@example.com]
  - name: default
    to: [support-lead@example.com]
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "routing.yaml").write_text(text, encoding="utf-8")
    return tmp_path


@pytest.fixture
def routing(tmp_path: Path) -> RoutingConfig:
    return load_routing(write(tmp_path, ROUTING))


@pytest.mark.parametrize(
    ("record", "route"),
    [
        ({"lang": "fa", "channel": "social", "priority": "P1"}, "social-p1"),
        ({"lang": "fa", "channel": "review", "priority": "P1"}, "persian"),
        ({"lang": "de", "channel": "survey", "priority": "P3"}, "default"),
        ({"lang": None, "channel": None, "priority": None}, "default"),
        ({"lang": "tr", "store": "Ankara Cankaya", "priority": "P2"}, "default"),
        ({"lang": "tr", "store": "ISTANBUL KADIKOY", "priority": "P2"}, "istanbul-store"),
        (
            {
                "lang": "fa",
                "priority": "P2",
                "aspects": [{"aspect": "price_value", "polarity": "negative"}],
            },
            "pricing",
        ),
        (
            {
                "lang": "en",
                "priority": "P2",
                "aspects": [{"aspect": "price_value", "polarity": "positive"}],
            },
            "default",
        ),
    ],
)
def test_most_specific_route_wins_first_on_ties(
    routing: RoutingConfig, record: dict[str, Any], route: str
) -> None:
    assert routing.route(record).name == route


def test_sla_hours_merge_route_and_default(routing: RoutingConfig) -> None:
    social = routing.route({"channel": "social", "priority": "P1"})
    assert social.sla_hours == {"P1": 1.0, "P2": 24.0, "P3": 72.0}
    assert routing.route({"lang": "fa"}).to == ["fa-lead@example.com", "fa-backup@example.com"]


def test_embedded_routing_config_is_valid() -> None:
    assert load_routing().route({"lang": "xx"}).name == "default"


def test_missing_default_route_says_how_to_fix(tmp_path: Path) -> None:
    text = ROUTING.replace("  - name: default\n    to: [support-lead@example.com]\n", "")
    with pytest.raises(ConfigError) as error:
        load_routing(write(tmp_path, text))
    message = str(error.value)
    assert "no default route" in message
    assert "add a route without 'match'" in message
    assert error.value.code == "E001"


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        ("to: [support-lead@example.com]", "to: ['Support <lead@example.com>']"),
        ("to: [support-lead@example.com]", "to: ['lead@example.com\\r\\nBcc: x@evil.com']"),
    ],
)
def test_bad_addresses_are_rejected(tmp_path: Path, broken: str, expected: str) -> None:
    with pytest.raises(ConfigError, match="not a plain email address"):
        load_routing(write(tmp_path, ROUTING.replace(broken, expected)))


def test_unknown_priority_and_duplicate_names_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"routes\.0\.match\.priorities\.0"):
        load_routing(write(tmp_path, ROUTING.replace("priorities: [P1]", "priorities: [urgent]")))
    with pytest.raises(ConfigError, match="used twice"):
        load_routing(write(tmp_path, ROUTING.replace("name: pricing", "name: persian")))
