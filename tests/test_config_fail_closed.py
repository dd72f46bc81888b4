"""Configuration fails closed (issue 11, defect 8), met through the real ``feedback`` CLI.

A missing configuration folder, a ``pipeline.yaml`` without ``stages``, a routing rule no record
can match and a source path leading out of the data folder are errors with a code and the fix;
no error quotes what a file holds and no database password is ever shown.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.client.orchestration import get_client
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from flows.cli import app
from models.sentiment.train import load_training_config
from pipelines._errors import ConfigError
from pipelines._secrets import mask_credentials
from pipelines.analysis.aspects import load_aspect_config
from pipelines.analysis.flagging import load_flagging_rules
from pipelines.analysis.sentiment import load_sentiment_config
from pipelines.analysis.topics import load_topics_config
from pipelines.config import CONFIG_DIR_ENV, DEFAULT_CONFIG_DIR
from pipelines.delivery.routing import load_routing
from pipelines.ingest.sources import load_sources
from pipelines.settings import load_settings
from pipelines.storage import DB_URL_ENV, Store, schema
from pipelines.web import load_users

CANARY = "Canary7Secret"
SOURCES = """\
sources:
  - name: reviews
    kind: csv
    channel: review
    path: '{path}'
    columns: {{external_id: id, created_at: at, text: body}}
"""
ROUTING = """\
default_sla_hours: {P1: 4, P2: 24, P3: 72}
routes:
  - name: default
    to: [lead@example.com]
"""


def site(tmp_path: Path, pipeline: str = "stages: []\n", path: str = "reviews.csv") -> Path:
    """A configuration folder with one small CSV source (inside it), routing and settings."""
    config = tmp_path / "conf"
    config.mkdir()
    (config / "reviews.csv").write_text(
        "id,at,body\n1,2026-11-01T10:00:00Z,The delivery was late again\n", encoding="utf-8"
    )
    (config / "sources.yaml").write_text(SOURCES.format(path=path), encoding="utf-8")
    (config / "routing.yaml").write_text(ROUTING, encoding="utf-8")
    (config / "pipeline.yaml").write_text(
        f"{pipeline}reports_dir: {tmp_path / 'reports'}\noutbox_dir: {tmp_path / 'outbox'}\n",
        encoding="utf-8",
    )
    return config


def feedback(*args: str | Path) -> tuple[int, str]:
    """Run the CLI; the exit code and everything shown (output and the error, if any)."""
    result = CliRunner().invoke(app, [str(arg) for arg in args])
    shown = result.output + ("" if result.exception is None else str(result.exception))
    return result.exit_code, shown


def stored(db: Path) -> int:
    if not db.exists():
        return 0
    with Store(db) as store:
        return store.count(schema.feedback)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_run_prints_the_database_without_its_password(
    prefect_harness: None, db_url: str, tmp_path: Path
) -> None:
    # First in the file: a flow run through CliRunner after other CliRunner calls can find
    # Prefect's log handler bound to a stream an earlier call closed.
    with_password = make_url(db_url).set(password=CANARY).render_as_string(hide_password=False)
    code, shown = feedback("ingest", "--config", site(tmp_path), "--db", with_password)
    assert code == 0, shown
    assert "postgresql+psycopg://feedback:***@127.0.0.1" in shown, shown
    assert CANARY not in shown
    # Prefect keeps flow parameters in its database: the URL travels in the environment instead.
    with get_client(sync_client=True) as client:
        parameters = [run.parameters for run in client.read_flow_runs()]
    assert parameters and CANARY not in json.dumps(parameters, default=str)
    assert os.environ.get(DB_URL_ENV) != with_password


def test_missing_config_folder_is_an_error_never_the_demo(
    prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "feedback.duckdb"
    code, shown = feedback("ingest", "--config", tmp_path / "typo", "--db", db)
    assert code != 0 and "[E002]" in shown and "--config" in shown, shown
    assert stored(db) == 0  # it used to ingest all the demo sources

    without_sources = tmp_path / "partial"
    without_sources.mkdir()
    (without_sources / "pipeline.yaml").write_text("stages: []\n", encoding="utf-8")
    code, shown = feedback("ingest", "--config", without_sources, "--db", db)
    assert code != 0 and "[E003]" in shown and "sources.yaml" in shown, shown
    assert stored(db) == 0

    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "typo"))
    code, shown = feedback("status", "--db", db)
    assert code != 0 and "[E002]" in shown and f"${CONFIG_DIR_ENV}" in shown, shown


def test_pipeline_yaml_without_stages_is_an_error(prefect_harness: None, tmp_path: Path) -> None:
    db = tmp_path / "feedback.duckdb"
    code, shown = feedback("run", "--config", site(tmp_path, "timezone: UTC\n"), "--db", db)
    assert code != 0 and "[E004]" in shown and "stages: []" in shown, shown
    assert stored(db) == 0


BAD_ROUTING = """\
default_sla_hours: {P1: 4, P2: 24, P3: 72}
routes:
  - name: pricing
    match: {aspects: [prcie_value], languages: [turkish], channels: [e-mail]}
    to: [pricing@example.com]
  - name: default
    to: [lead@example.com]
"""


def test_routing_rule_no_record_can_match_is_an_error(tmp_path: Path) -> None:
    config = site(tmp_path, "stages: [alerts]\n")
    (config / "routing.yaml").write_text(BAD_ROUTING, encoding="utf-8")
    db = tmp_path / "feedback.duckdb"
    code, shown = feedback("watch", "--config", config, "--db", db, "--iterations", "1")
    assert code != 0 and "[E005]" in shown and "routing.yaml" in shown, shown
    assert "route 'pricing'" in shown and "routes.0.match.aspects.0" in shown
    assert (
        "price_value" in shown and "tr, fa, ro, en" in shown and "review, survey, social" in shown
    )
    assert not {"prcie_value", "turkish", "e-mail"} & set(shown.replace(",", " ").split())
    assert stored(db) == 0


@pytest.mark.parametrize(
    ("file", "text", "code", "expected"),
    [
        ("routing.yaml", BAD_ROUTING.replace("[prcie_value]", "[price_value]"), "E005", "tr, fa"),
        (
            "routing.yaml",
            ROUTING.replace("- name", "- match: {priorities: [P4]}\n    name"),
            "E001",
            "'P1', 'P2' or 'P3'",
        ),
        ("flagging.yaml", None, "E005", "price_value"),
    ],
    ids=["routing-language", "routing-priority", "flagging-aspect"],
)
def test_rules_naming_unknown_values_are_errors(
    tmp_path: Path, file: str, text: str | None, code: str, expected: str
) -> None:
    if text is None:
        text = (DEFAULT_CONFIG_DIR / file).read_text(encoding="utf-8")
        text = text.replace("  price_value: {points", "  prcie_value: {points")
    (tmp_path / file).write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        (load_routing if file == "routing.yaml" else load_flagging_rules)(tmp_path)
    assert caught.value.code == code and expected in str(caught.value)


def test_source_path_outside_the_data_folder_is_refused(
    prefect_harness: None, tmp_path: Path
) -> None:
    db = tmp_path / "feedback.duckdb"
    code, shown = feedback("ingest", "--config", site(tmp_path, path="/etc/passwd"), "--db", db)
    assert code != 0 and "[E006]" in shown and "sources.0.path" in shown, shown
    assert "root:" not in shown  # it used to quote the header line of /etc/passwd
    assert stored(db) == 0


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/etc/passwd", False),
        ("../../etc/passwd", False),
        ("exports/../../outside.csv", False),
        ("**/../../*.csv", False),
        ("exports/*/../*.csv", False),
        ("~/reviews.csv", False),
        ("reviews.csv", True),
        ("./exports/../reviews.csv", True),
        ("exports/**/*.csv", True),
        ("{inside}/reviews.csv", True),
    ],
)
def test_what_source_paths_are_allowed(tmp_path: Path, path: str, allowed: bool) -> None:
    (tmp_path / "sources.yaml").write_text(
        SOURCES.format(path=path.format(inside=tmp_path.resolve())), encoding="utf-8"
    )
    if allowed:
        assert len(load_sources(tmp_path / "sources.yaml")) == 1
        return
    with pytest.raises(ConfigError) as caught:
        load_sources(tmp_path / "sources.yaml")
    assert caught.value.code == "E006" and "data_dir" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (f"database: postgresql://u:{CANARY}@h/db\ntimezone: [{CANARY}\n", "line 3"),
        (f"stages: []\ndatabase: x\n\t- {CANARY}\n", "line 3"),
        (f"stages: []\ntimezone: {CANARY}/Zone\n", "key 'timezone' (line 2)"),
        (f"stages: []\ndatabase: [{CANARY}]\n", "key 'database' (line 2)"),
        (f"stages: {CANARY}\n", "key 'stages' (line 1)"),
    ],
    ids=["yaml-syntax", "yaml-tab", "bad-value", "wrong-type", "not-a-list"],
)
def test_config_errors_name_file_and_line_never_the_content(
    tmp_path: Path, text: str, where: str
) -> None:
    (tmp_path / "pipeline.yaml").write_text(text, encoding="utf-8")
    code, shown = feedback("status", "--config", tmp_path, "--db", tmp_path / "x.duckdb")
    assert code != 0 and "[E001]" in shown and "pipeline.yaml" in shown, shown
    assert where in shown and "Fix" in shown, shown
    assert CANARY not in shown


def test_routing_errors_never_quote_an_address(tmp_path: Path) -> None:
    (tmp_path / "routing.yaml").write_text(
        ROUTING.replace("lead@example.com", f"{CANARY}-at-example.com"), encoding="utf-8"
    )
    with pytest.raises(ConfigError) as caught:
        load_routing(tmp_path)
    message = str(caught.value)
    assert "routes.0.to" in message and "line 4" in message and CANARY not in message


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (
            f"cannot open 'postgresql+psycopg://feedback:{CANARY}@db:5432/feedback': refused",
            "cannot open 'postgresql+psycopg://feedback:***@db:5432/feedback': refused",
        ),
        (f"postgresql://u:p@ss{CANARY}@db/x", "postgresql://u:***@db/x"),
        (f"smtp://mailer:{CANARY}@mail.internal:587", "smtp://mailer:***@mail.internal:587"),
        (f"postgresql://db/x?user=u&password={CANARY}", "postgresql://db/x?user=u&password=***"),
        ("duckdb:////srv/data/feedback.duckdb", "duckdb:////srv/data/feedback.duckdb"),
        ("postgresql+psycopg://feedback@db/x", "postgresql+psycopg://feedback@db/x"),
    ],
)
def test_mask_credentials(text: str, masked: str) -> None:
    assert mask_credentials(text) == masked


def test_database_password_is_never_shown(tmp_path: Path) -> None:
    unreachable = f"postgresql+psycopg://feedback:{CANARY}@127.0.0.1:1/nowhere"
    code, shown = feedback("status", "--db", unreachable)
    assert code != 0 and "[E020]" in shown and "feedback:***@127.0.0.1:1" in shown, shown
    assert CANARY not in shown


LOADERS: dict[str, Callable[[Path], Any]] = {
    "pipeline.yaml": load_settings,
    "routing.yaml": load_routing,
    "sources.yaml": lambda folder: load_sources(folder / "sources.yaml"),
    "flagging.yaml": load_flagging_rules,
    "topics.yaml": load_topics_config,
    "sentiment.yaml": load_sentiment_config,
    "aspects.yaml": load_aspect_config,
    "training.yaml": lambda folder: load_training_config(folder / "training.yaml"),
    "users.yaml": load_users,
}
# Maps whose keys are data, not settings: label/example languages and data-set categories (any
# key is used as written), and churn patterns per language (every language's patterns run on
# every text). Aspect keys of flagging.yaml must name aspects of aspects.yaml (E005). Training
# caps are keyed by data-set name, checked against the sets found when training starts (E001).
FREE_FORM = {
    ("datasets", "max_train_rows"),
    ("aspects", "#", "labels"),
    ("aspects", "#", "examples"),
    ("dataset_mapping",),
    ("dataset_mapping", "*"),
    ("churn_intent_patterns", "languages"),
}


def _mappings(value: Any, path: tuple[Any, ...] = ()) -> Any:
    """Paths of every mapping in a parsed YAML document."""
    if isinstance(value, dict):
        yield path
        for key, item in value.items():
            yield from _mappings(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _mappings(item, (*path, index))


def test_every_config_file_is_covered() -> None:
    assert set(LOADERS) == {path.name for path in DEFAULT_CONFIG_DIR.glob("*.yaml")}


@pytest.mark.parametrize("file", sorted(LOADERS))
def test_unknown_keys_are_errors_in_every_config_file(tmp_path: Path, file: str) -> None:
    document = yaml.safe_load((DEFAULT_CONFIG_DIR / file).read_text(encoding="utf-8"))
    tried: set[tuple[Any, ...]] = set()
    for path in _mappings(document):
        shape = tuple("#" if isinstance(part, int) else part for part in path)
        generic = (*shape[:-1], "*") if shape else shape
        if shape in tried or shape in FREE_FORM or generic in FREE_FORM:
            continue
        tried.add(shape)
        changed = copy.deepcopy(document)
        node = changed
        for part in path:
            node = node[part]
        # A copy of a sibling's value, so only the key is wrong.
        node["colour"] = copy.deepcopy(next(iter(node.values()), 1))
        (tmp_path / file).write_text(yaml.safe_dump(changed, allow_unicode=True), "utf-8")
        with pytest.raises(ConfigError) as caught:
            LOADERS[file](tmp_path)
        assert caught.value.code in {"E001", "E005"} and "colour" in str(caught.value), shape
    assert tried
