"""``feedback label`` and ``feedback labels import`` on both backends; weak labels from stars."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from pipelines.storage import (
    RATING_LABEL_MIN_CHARS,
    Store,
    labelled_texts,
    latest_labels,
    rating_sentiment,
    record_rating_labels,
    schema,
)

_TEXT = "Uygulama ödeme adımında sürekli çöküyor, param iki kez çekildi."


def _records(db_url: str, rows: list[tuple[str, str, int | None, str]]) -> None:
    """Store records (id, external_id, rating, text) of source ``reviews``."""
    now = datetime.now(UTC)
    with Store(db_url) as store:
        store.insert_ignore(
            schema.feedback,
            [
                {
                    "id": record_id,
                    "source": "reviews",
                    "channel": "review",
                    "external_id": external_id,
                    "created_at": now,
                    "text": text,
                    "rating": rating,
                    "lang": "tr",
                    "text_hash": record_id,
                    "run_id": "run-1",
                    "ingested_at": now,
                }
                for record_id, external_id, rating, text in rows
            ],
        )


def _labels(db_url: str) -> list[dict[str, object]]:
    with Store(db_url) as store:
        frame = latest_labels(store)
    return frame.sort_values("record_id").to_dict(orient="records")


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_label_one_record(db_url: str) -> None:
    _records(db_url, [("r1", "ext-1", None, _TEXT)])
    code, output = _invoke(
        "label",
        "r1",
        "--sentiment",
        "neg",
        "--aspect",
        "app_website_checkout:negative",
        "--by",
        "lead@example.test",
        "--db",
        db_url,
    )
    assert code == 0, output
    [label] = _labels(db_url)
    assert label["sentiment"] == "negative" and label["kind"] == "human"
    assert label["aspects"] == {"app_website_checkout": "negative"}
    assert label["labelled_by"] == "lead@example.test"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["r-missing", "--sentiment", "negative"], "r-missing: no such record"),
        (["r1", "--sentiment", "furious"], "'furious' is not negative, neutral or positive"),
        (["r1", "--aspect", "teleport:negative"], "unknown aspect 'teleport'"),
        (["r1", "--aspect", "price_value"], "'price_value' is not name:polarity"),
        (["r1"], "gives no sentiment, aspect or not-a-complaint"),
    ],
)
def test_label_refuses_bad_ids_and_values(db_url: str, args: list[str], expected: str) -> None:
    _records(db_url, [("r1", "ext-1", None, _TEXT)])
    code, output = _invoke("label", *args, "--db", db_url)
    assert code == 1
    [line] = output.strip().splitlines()
    assert line.startswith("Error [E090]") and expected in line and "Traceback" not in output
    assert _labels(db_url) == []


def test_import_csv_and_jsonl(db_url: str, tmp_path: Path) -> None:
    _records(db_url, [("r1", "ext-1", None, _TEXT), ("r2", "ext-2", None, _TEXT)])
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text(
        "id,source,external_id,sentiment,aspects\n"
        'r1,,,negative,"app_website_checkout:neg;price_value:negative"\n'
        ",reviews,ext-2,pos,\n",
        encoding="utf-8",
    )
    code, output = _invoke("labels", "import", str(csv_file), "--db", db_url)
    assert code == 0, output
    assert "imported 2 label(s)" in output
    by_id = {label["record_id"]: label for label in _labels(db_url)}
    assert by_id["r1"]["aspects"] == {
        "app_website_checkout": "negative",
        "price_value": "negative",
    }
    assert by_id["r2"]["sentiment"] == "positive" and by_id["r2"]["labelled_by"] == "labels.csv"

    jsonl_file = tmp_path / "more.jsonl"
    jsonl_file.write_text(
        json.dumps({"source": "reviews", "external_id": "ext-1", "sentiment": "neutral"})
        + "\n"
        + json.dumps(
            {"id": "r2", "aspects": {"delivery_shipping": "negative"}, "not_complaint": True}
        )
        + "\n",
        encoding="utf-8",
    )
    code, output = _invoke("labels", "import", str(jsonl_file), "--by", "ana", "--db", db_url)
    assert code == 0, output
    by_id = {label["record_id"]: label for label in _labels(db_url)}
    assert by_id["r1"]["sentiment"] == "neutral" and by_id["r1"]["labelled_by"] == "ana"
    assert by_id["r2"]["not_complaint"] and by_id["r2"]["aspects"] == {
        "delivery_shipping": "negative"
    }


def test_import_refuses_the_whole_file_naming_the_rows(db_url: str, tmp_path: Path) -> None:
    _records(db_url, [("r1", "ext-1", None, _TEXT)])
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text(
        "id,source,external_id,sentiment,aspects\n"
        "r1,,,negative,\n"
        "r-missing,,,negative,\n"
        ",reviews,ext-404,positive,\n"
        "r1,,,angry,\n"
        "r1,,,,teleport:neg\n"
        ",,,negative,\n",
        encoding="utf-8",
    )
    code, output = _invoke("labels", "import", str(csv_file), "--db", db_url)
    assert code == 1
    [line] = output.strip().splitlines()
    assert line.startswith("Error [E091] labels.csv: 5 problem(s), nothing written")
    for expected in (
        "line 3: no record with id 'r-missing'",
        "line 4: no record with source/external_id reviews/ext-404",
        "line 5: 'angry' is not negative",
        "line 6: unknown aspect 'teleport'",
        "line 7: give id, or source and external_id",
    ):
        assert expected in line
    assert _labels(db_url) == []

    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"id": "r1", "sentiment": "negative"}\n[1, 2]\n', encoding="utf-8")
    code, output = _invoke("labels", "import", str(bad_json), "--db", db_url)
    assert code == 1 and "Error [E091] bad.jsonl line 2: not a JSON object" in output
    code, output = _invoke("labels", "import", str(tmp_path / "labels.txt"), "--db", db_url)
    assert code == 1 and "use a .csv or .jsonl file" in output
    assert _labels(db_url) == []


@pytest.mark.parametrize(
    ("stars", "expected"),
    [
        *[(1, "negative"), (2, "negative"), (3, "neutral"), (4, "positive"), (5, "positive")],
        *[(0, None), (6, None), (2.5, None), (None, None), (True, None)],
    ],
)
def test_star_ratings_map_to_weak_sentiment(stars: object, expected: str | None) -> None:
    assert rating_sentiment(stars) == expected


def test_rated_records_become_weak_labels_once(store: Store) -> None:
    short = "x" * (RATING_LABEL_MIN_CHARS - 1)
    long = "y" * RATING_LABEL_MIN_CHARS
    _records(
        store.url,
        [
            ("r1", "e1", 1, long),
            ("r2", "e2", 3, long),
            ("r3", "e3", 5, long),
            ("r4", "e4", 1, short),
            ("r5", "e5", None, long),
        ],
    )
    assert record_rating_labels(store) == 3
    assert record_rating_labels(store) == 0
    weak = latest_labels(store, kinds=["rating"]).set_index("record_id")
    assert weak["sentiment"].to_dict() == {"r1": "negative", "r2": "neutral", "r3": "positive"}
    assert set(weak["labelled_by"]) == {"stars"}

    # A person's label outranks the stars; texts come along for training.
    from pipelines.storage import Label, record_labels

    record_labels(store, [Label("r1", sentiment="neutral", labelled_by="ana")])
    texts = labelled_texts(store).set_index("record_id")
    assert texts.loc["r1", "sentiment"] == "neutral" and texts.loc["r1", "kind"] == "human"
    assert texts.loc["r3", "text"] == long and texts.loc["r3", "lang"] == "tr"


def test_store_labels_become_weighted_training_rows_and_a_held_back_slice(store: Store) -> None:
    from models.sentiment.store_models import is_held_back
    from models.sentiment.store_training import HUMAN_WEIGHT, RATING_WEIGHT, store_label_sets
    from pipelines.storage import Label, record_labels

    long = "z" * RATING_LABEL_MIN_CHARS
    _records(store.url, [(f"r{n}", f"e{n}", 2, long) for n in range(12)])
    record_labels(store, [Label(f"r{n}", sentiment="positive") for n in range(6)])
    record_rating_labels(store)
    with store.begin() as connection:  # a record in a language the model does not support
        connection.execute(
            schema.feedback.update().where(schema.feedback.c.id == "r11").values(lang="de")
        )
    sets = store_label_sets(store)
    held = {f"r{n}" for n in range(6) if is_held_back(f"r{n}")}
    assert held and set(sets.holdout["id"]) == held
    assert set(sets.holdout["label"]) == {2}
    train = sets.train.set_index("id")
    assert set(train.index) == {f"r{n}" for n in range(11)} - held
    assert set(train.loc[train["kind"] == "human", "weight"]) == {HUMAN_WEIGHT}
    rated = train[train["kind"] == "rating"]
    assert set(rated.index) == {f"r{n}" for n in range(6, 11)}
    assert set(rated["weight"]) == {RATING_WEIGHT} and set(rated["label"]) == {0}
