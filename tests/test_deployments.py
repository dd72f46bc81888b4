"""Deployments: schedules, timezones and documented parameters, in code and in prefect.yaml."""

from __future__ import annotations

import importlib
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client

from flows.deployments import DEFAULT_NIGHTLY_CRON, build_deployments
from flows.rerun import rerun
from pipelines._errors import ConfigError
from pipelines.settings import PipelineSettings

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def bucharest_config(tmp_path: Path) -> Path:
    config = tmp_path / "configs"
    config.mkdir()
    (config / "pipeline.yaml").write_text(
        "timezone: Europe/Bucharest\nstages: []\n", encoding="utf-8"
    )
    return config


def test_nightly_cron_in_the_configured_zone_watch_on_interval_rerun_on_demand(
    bucharest_config: Path,
) -> None:
    deployments = {
        d.name: d
        for d in build_deployments(
            str(bucharest_config), db="data/x.duckdb", watch_interval=timedelta(minutes=5)
        )
    }
    assert set(deployments) == {"nightly-local", "watch-local", "rerun-local"}
    deployments = {name.removesuffix("-local"): d for name, d in deployments.items()}
    nightly_schedule = deployments["nightly"].schedules[0].schedule
    assert (nightly_schedule.cron, nightly_schedule.timezone) == (
        DEFAULT_NIGHTLY_CRON,
        "Europe/Bucharest",
    )
    assert deployments["watch"].schedules[0].schedule.interval == timedelta(minutes=5)
    assert deployments["rerun"].schedules == []
    assert deployments["nightly"].concurrency_limit == 1
    for deployment in deployments.values():
        assert deployment.parameters == {"config_dir": str(bucharest_config), "db": "data/x.duckdb"}


def test_rerun_parameters_are_typed_and_documented() -> None:
    schema = build_deployments()[2]._parameter_openapi_schema.model_dump()
    properties = schema["properties"]
    assert schema["required"] == ["since"]
    assert properties["since"]["format"] == "date-time"
    assert "timezone" in properties["since"]["description"]
    assert properties["reanalyze"]["type"] == "boolean"
    assert "new model version" in properties["reanalyze"]["description"]
    assert properties["resend_alerts"]["default"] is False
    # What `prefect deployment run 'rerun/rerun' --param since=2026-11-01` sends:
    assert rerun.validate_parameters({"since": "2026-11-01"})["since"] == datetime(2026, 11, 1)


def test_an_invalid_cron_expression_is_reported_with_a_fix() -> None:
    with pytest.raises(ConfigError, match=r"invalid cron expression .*0 2 \* \* \*"):
        build_deployments(nightly_cron="every night")


def test_deployments_apply_to_a_prefect_server(prefect_harness: None) -> None:
    ids = [deployment.apply() for deployment in build_deployments()]
    with get_client(sync_client=True) as client:
        applied = {d.name: d for d in (client.read_deployment(i) for i in ids)}
    assert applied["nightly-local"].schedules[0].schedule.timezone == "Europe/Istanbul"
    assert applied["watch-local"].schedules[0].schedule.interval == timedelta(seconds=60)
    assert applied["rerun-local"].schedules == []


def test_prefect_yaml_matches_the_flows_and_the_default_timezone() -> None:
    project = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text(encoding="utf-8"))
    deployments = {d["name"]: d for d in project["deployments"]}
    assert set(deployments) == {"nightly", "watch", "rerun"}
    for name, deployment in deployments.items():
        path, function = deployment["entrypoint"].split(":")
        assert (REPO_ROOT / path).is_file()
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert getattr(module, function).name == name
        assert deployment["work_pool"]["name"] == "feedback-process"
    nightly = deployments["nightly"]["schedules"][0]
    assert nightly["cron"] == DEFAULT_NIGHTLY_CRON
    assert nightly["timezone"] == PipelineSettings().timezone
    assert deployments["rerun"]["schedules"] == []
    # `feedback serve` pauses its deployments when it stops: never the deployed ones.
    assert not set(deployments) & {d.name for d in build_deployments()}
