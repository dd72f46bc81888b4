"""The model registry on both backends: register, promote, roll back one promotion at a time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

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
