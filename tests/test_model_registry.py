"""The model registry on both backends: register, promote, roll back one promotion at a time."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from flows.cli import app
from models.sentiment import (
    DatasetInfo,
    DatasetSplit,
    HeadMetadata,
    LanguageBlend,
    SentimentHead,
    StackedSentiment,
)
from models.sentiment.store_models import (
    GateDecision,
    SentimentModel,
    is_held_back,
    model_artifact_data,
    model_from_artifact,
    promotion_gate,
    score_model,
)
from pipelines._errors import ModelVersionError
from pipelines.storage import (
    Store,
    list_models,
    model_artifact,
    promote_model,
    promoted_model,
    register_model,
    rollback_model,
)
from tests._configs import edited_configs
from tests._tiny_stack import tiny_stack

_START = datetime(2026, 11, 1, tzinfo=UTC)


def _register(store: Store, version: str, hours: int) -> bool:
    return register_model(
        store,
        version=version,
        kind="sentiment",
        head_metadata={"version": version},
        weights=version.encode() * 3,
        metrics={"holdout_macro_f1": 0.5},
        parent_version=None,
        at=_START + timedelta(hours=hours),
    )


def _statuses(store: Store) -> dict[str, str]:
    return {model.version: model.status for model in list_models(store, "sentiment")}


def test_promote_and_roll_back(store: Store) -> None:
    assert _register(store, "v1", 1) and _register(store, "v2", 2) and _register(store, "v3", 3)
    assert not _register(store, "v1", 4)
    assert [model.version for model in list_models(store, "sentiment")] == ["v3", "v2", "v1"]
    assert promoted_model(store, "sentiment") is None
    artifact = model_artifact(store, "v2")
    assert artifact.weights == b"v2v2v2" and artifact.head_metadata == {"version": "v2"}

    assert promote_model(store, "v1", at=_START + timedelta(days=1)) is None
    assert promote_model(store, "v2", at=_START + timedelta(days=2)) == "v1"
    assert promote_model(store, "v3", at=_START + timedelta(days=3)) == "v2"
    assert _statuses(store) == {"v1": "retired", "v2": "retired", "v3": "promoted"}

    assert rollback_model(store, "sentiment") == ("v3", "v2")
    current = promoted_model(store, "sentiment")
    assert current is not None and current.version == "v2"
    # A rolled-back version is never returned to by a later rollback.
    assert rollback_model(store, "sentiment") == ("v2", "v1")
    assert rollback_model(store, "sentiment") == ("v1", None)
    assert promoted_model(store, "sentiment") is None
    assert set(_statuses(store).values()) == {"retired"}
    with pytest.raises(ModelVersionError, match=r"\[E092\] no sentiment model is promoted"):
        rollback_model(store, "sentiment")

    promote_model(store, "v1", at=_START + timedelta(days=4))
    promote_model(store, "v3", at=_START + timedelta(days=5))
    assert rollback_model(store, "sentiment") == ("v3", "v1")


def test_unknown_versions_are_refused(store: Store) -> None:
    with pytest.raises(ModelVersionError, match=r"\[E092\] model v9 is not in the store"):
        promote_model(store, "v9")
    with pytest.raises(ModelVersionError, match="feedback models list"):
        model_artifact(store, "v9")


# --- The promotion gate, on heads and features built here --------------------------------------

_DIRECTIONS = np.eye(3, 384, dtype=np.float32) * 4.0


def _head(version: str, out_weight: np.ndarray) -> SentimentHead:
    metadata = HeadMetadata(version=version, encoder_version="enc-test")
    return SentimentHead({"out.weight": out_weight, "out.bias": np.zeros(3)}, metadata)


def _features(texts: list[str]) -> np.ndarray:
    """Text ``"<label index>-<n>"`` -> a vector pointing at its class, plus a little noise."""
    generator = np.random.default_rng(len(texts))
    vectors = np.stack([_DIRECTIONS[int(text.split("-")[0])] for text in texts])
    return vectors + generator.normal(scale=0.3, size=vectors.shape).astype(np.float32)


def _split(name: str, lang: str) -> DatasetSplit:
    labels = [index for index in range(3) for _ in range(10)]
    frame = pd.DataFrame(
        {
            "id": [f"{name}{n}" for n in range(len(labels))],
            "text": [f"{label}-{n}" for n, label in enumerate(labels)],
            "label": labels,
            "lang": lang,
            "weight": 1.0,
        }
    )
    return DatasetSplit(DatasetInfo(name, Path(name), "test"), "dev", frame)


def test_gate_refuses_a_worse_model_and_passes_a_better_one() -> None:
    dev = [_split("tr_set", "tr"), _split("en_set", "en")]
    holdout = _split("store", "tr").frame
    good = _head("good", _DIRECTIONS)
    # Confuses negative with neutral: worse everywhere.
    worse = _head("worse", _DIRECTIONS[[1, 0, 2]])
    good_scores = score_model(good, dev, holdout, _features)
    worse_scores = score_model(worse, dev, holdout, _features)
    assert good_scores.languages["tr"] > 0.95 and worse_scores.languages["tr"] < 0.5
    assert good_scores.holdout_rows == 30

    refused = promotion_gate(worse_scores, good_scores)
    assert not refused.passed
    assert [reason.split()[0] for reason in refused.reasons] == ["en", "tr", "held-back"]
    assert "drops" in refused.reasons[0] and "does not beat" in refused.reasons[2]
    assert promotion_gate(good_scores, worse_scores) == GateDecision(True, [])

    # Equal is not better; a drop within one point is tolerated; no held-back labels: refused.
    same = promotion_gate(good_scores, good_scores)
    assert len(same.reasons) == 1 and same.reasons[0].startswith("held-back")
    assert good_scores.holdout_macro_f1 is not None
    tolerated = replace(
        good_scores,
        languages={**good_scores.languages, "tr": good_scores.languages["tr"] - 0.009},
        holdout_macro_f1=good_scores.holdout_macro_f1 + 0.01,
    )
    assert promotion_gate(tolerated, good_scores).passed
    unlabelled = score_model(good, dev, holdout.iloc[0:0], _features)
    assert "no held-back human labels" in promotion_gate(unlabelled, unlabelled).reasons[0]


def test_held_back_slice_is_stable_and_about_one_in_five() -> None:
    ids = [f"record-{n}" for n in range(2000)]
    held = [record_id for record_id in ids if is_held_back(record_id)]
    assert 0.17 < len(held) / len(ids) < 0.23
    assert held == [record_id for record_id in ids if is_held_back(record_id)]


def _register_model(
    store: Store, model: SentimentModel, metrics: dict[str, object] | None = None
) -> None:
    weights, metadata = model_artifact_data(model)
    register_model(
        store,
        version=model.version,
        kind="sentiment",
        head_metadata=metadata,
        weights=weights,
        metrics=metrics or {},
        parent_version=None,
    )


def test_heads_and_stacks_round_trip_through_the_registry(store: Store) -> None:
    head = _head("v-good", _DIRECTIONS)
    blend = LanguageBlend(0.5, 0.8, [0.2, -0.1, 0.0])
    stack = tiny_stack(blend, _head("v-stacked", _DIRECTIONS[[0, 2, 1]]), "custom-stack-test")
    _register_model(store, head)
    _register_model(store, stack)
    texts = ["0-1", "1-2", "2-3", "0-terrible service"]
    vectors = _features(texts)

    loaded = model_from_artifact(model_artifact(store, head.version))
    assert isinstance(loaded, SentimentHead) and loaded.metadata == head.metadata
    np.testing.assert_allclose(loaded.predict_proba(vectors), head.predict_proba(vectors))

    restored = model_from_artifact(model_artifact(store, stack.version))
    assert isinstance(restored, StackedSentiment) and restored.version == "custom-stack-test"
    assert restored.head.metadata == stack.head.metadata
    langs = ["en", "en", "tr", "en"]
    expected = stack.predict_proba(vectors, texts, langs)
    np.testing.assert_allclose(restored.predict_proba(vectors, texts, langs), expected)
    # The n-gram blend is part of what was stored: English rows differ from the head alone.
    alone = stack.head.predict_proba(vectors)
    assert not np.allclose(expected[[0, 1, 3]], alone[[0, 1, 3]])
    np.testing.assert_allclose(expected[2], alone[2])


def test_models_cli_refuses_a_candidate_that_failed_its_gate(db_url: str) -> None:
    with Store(db_url) as store:
        for version, gate in (("v-bad", ["tr dev macro-F1 drops 0.050"]), ("v-ok", [])):
            register_model(
                store,
                version=version,
                kind="sentiment",
                head_metadata={},
                weights=b"",
                metrics={"gate": {"passed": not gate, "reasons": gate}},
                parent_version=None,
            )
    runner = CliRunner()
    result = runner.invoke(app, ["models", "promote", "v-bad", "--db", db_url])
    assert result.exit_code == 1
    assert result.output.startswith("Error [E093] v-bad failed its gate at training: tr dev")
    result = runner.invoke(app, ["models", "promote", "v-ok", "--db", db_url])
    assert result.exit_code == 0 and "promoted v-ok" in result.output
    result = runner.invoke(app, ["models", "promote", "v-bad", "--force", "--db", db_url])
    assert result.exit_code == 0 and "promoted v-bad (was v-ok)" in result.output
    result = runner.invoke(app, ["models", "list", "--db", db_url])
    assert result.exit_code == 0 and "v-bad" in result.output and "failed" in result.output
    result = runner.invoke(app, ["models", "rollback", "--db", db_url])
    assert result.exit_code == 0 and "retired v-bad; now using v-ok" in result.output
    runner.invoke(app, ["models", "rollback", "--db", db_url])
    result = runner.invoke(app, ["models", "rollback", "--db", db_url])
    assert result.exit_code == 1 and "Error [E092] no sentiment model is promoted" in result.output
    result = runner.invoke(app, ["models", "promote", "v-404", "--db", db_url])
    assert result.exit_code == 1 and "Error [E092] model v-404 is not in the store" in result.output


def test_promote_and_rollback_say_which_flag_thresholds_apply(db_url: str, tmp_path: Path) -> None:
    stack = tiny_stack(LanguageBlend(0.5, 1.0, [0.0, 0.0, 0.0]), version="custom-stack-flags")
    stack.metadata.metrics = {
        "negative_operating_point": {"en": {"flag_threshold": 0.3, "negative_recall": 0.9}}
    }
    with Store(db_url) as store:
        _register_model(store, stack, {"gate": {"passed": True, "reasons": []}})
    fixed = edited_configs(
        tmp_path / "config",
        "flagging.yaml",
        "thresholds_from_model: true",
        "thresholds_from_model: false",
    )
    runner = CliRunner()

    def said(*args: str) -> str:
        result = runner.invoke(app, [*args, "--db", db_url])
        assert result.exit_code == 0, result.output
        return " ".join(result.output.split())

    # The shipped flagging.yaml: the thresholds follow the model in use.
    output = said("models", "promote", stack.version)
    assert (
        "documents of custom-stack-flags are flagged from negative probability {en: 0.30}" in output
    )
    output = said("models", "rollback")
    assert (
        "documents of the committed model are flagged from negative probability "
        "{en: 0.46, fa: 0.27, ro: 0.52, tr: 0.17}" in output
    )
    # Fixed thresholds (the committed model's, en 0.46): the ones that do not fit are named.
    output = said("models", "promote", stack.version, "--config", str(fixed))
    assert (
        "flag thresholds: custom-stack-flags keeps dev negative recall at its target with "
        "negative_document.min_probability_by_language {en: 0.30};" in output
    )
    assert "differs for {en: 0.46}" in output
    assert "flag thresholds" not in said("models", "rollback", "--config", str(fixed))
