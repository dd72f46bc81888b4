"""Flag negative experiences and give each a priority (P1/P2/P3) with human-readable reasons.

The rules are data (``configs/flagging.yaml``): each signal that fires adds points and a reason;
a record is flagged when at least one *triggering* signal fires (negative sentiment, low rating,
NPS detractor, churn intent, ... as configured); its priority is the highest level whose minimum
points the total reaches, raised to the ``min_priority`` of any fired signal. ``summarize`` turns
the result into one line such as ``"P1: public post, 12k followers, churn intent, negative 0.97"``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipelines._errors import ConfigError, ModelVersionError
from pipelines.analysis.churn import ChurnDetector, ChurnMatch, ChurnRules
from pipelines.config import config_path, load_yaml_model
from pipelines.stages import Stage, StageContext
from pipelines.storage import Store, negative_customer_records, schema
from pipelines.text import SupportedLanguage

__all__ = [
    "FLAG_COLUMNS",
    "PRIORITIES",
    "Flag",
    "FlaggingRules",
    "FlaggingStage",
    "Priority",
    "committed_model_thresholds",
    "flag_batch",
    "load_flagging_rules",
    "summarize",
]

Priority = Literal["P1", "P2", "P3"]
PRIORITIES: tuple[Priority, ...] = ("P1", "P2", "P3")
FLAG_COLUMNS: tuple[str, ...] = ("flagged", "priority", "reasons", "churn_intent")
_SNIPPET_CHARS = 60


class _Signal(BaseModel):
    model_config = ConfigDict(extra="forbid")

    points: int = Field(ge=0, description="points added when the signal fires")
    triggers: bool = Field(
        default=False, description="whether this signal alone makes a record flagged"
    )
    min_priority: Priority | None = Field(
        default=None, description="the priority is at least this when the signal fires"
    )


_Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class _NegativeSignal(_Signal):
    triggers: bool = True
    min_probability: float = Field(ge=0.0, le=1.0)
    min_probability_by_language: dict[
        SupportedLanguage, Annotated[float, Field(ge=0.0, le=1.0)]
    ] = Field(
        default_factory=dict,
        description="language code -> threshold used instead of min_probability for that "
        "language (the sentiment model card gives the values keeping negative recall >= 0.90)",
    )

    def threshold(self, lang: object) -> float:
        """The negative probability that fires the signal for a record in ``lang``."""
        if isinstance(lang, str):
            return self.min_probability_by_language.get(lang, self.min_probability)
        return self.min_probability


class _NegativeDocumentSignal(_NegativeSignal):
    thresholds_from_model: bool = Field(
        default=False,
        description="per language, use the threshold stored with the sentiment model that "
        "scored the record (the one keeping its dev negative recall at 0.90), so a promoted model "
        "brings its own; min_probability_by_language, then min_probability, serve the languages "
        "and models that store none",
    )

    def model_threshold(self, lang: object, model_thresholds: Mapping[str, float]) -> float:
        """The negative probability that fires the signal for a record in ``lang`` scored by a
        model whose stored thresholds are ``model_thresholds``."""
        if self.thresholds_from_model and isinstance(lang, str) and lang in model_thresholds:
            return model_thresholds[lang]
        return self.threshold(lang)


class _LowRatingSignal(_Signal):
    triggers: bool = True
    max_rating: int = Field(ge=1, le=5)


class _NpsSignal(_Signal):
    triggers: bool = True
    max_score: int = Field(ge=0, le=10)


class _ChurnSignal(_Signal):
    triggers: bool = True


class _PublicChannelSignal(_Signal):
    channels: list[str]


class _ReachTier(_Signal):
    min_followers: int = Field(ge=0)


class _ValueTier(_Signal):
    min_value: float
    label: str


class _RepeatComplainerSignal(_Signal):
    min_negatives: int = Field(ge=2)
    within_days: int = Field(ge=1)


class _AspectSignal(_Signal):
    label: str


class FlaggingRules(BaseModel):
    """``configs/flagging.yaml``: every signal, its points and the priority thresholds."""

    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1, description="stored with every flag; bump on any change")
    priority_min_points: dict[Priority, int]
    negative_document: _NegativeDocumentSignal
    negative_sentence: _NegativeSignal
    low_rating: _LowRatingSignal
    nps_detractor: _NpsSignal
    churn_intent: _ChurnSignal
    public_channel: _PublicChannelSignal
    reach_tiers: list[_ReachTier] = Field(default_factory=list)
    customer_value_tiers: list[_ValueTier] = Field(default_factory=list)
    repeat_complainer: _RepeatComplainerSignal
    aspects: dict[str, _AspectSignal] = Field(default_factory=dict)
    emerging: _Signal
    churn_intent_patterns: ChurnRules

    @model_validator(mode="after")
    def _check_thresholds(self) -> FlaggingRules:
        missing = [level for level in PRIORITIES if level not in self.priority_min_points]
        if missing:
            raise ValueError(
                f"priority_min_points lacks {missing}; give minimum points for P1, P2 and P3, "
                "e.g. {P1: 8, P2: 5, P3: 0}"
            )
        points = [self.priority_min_points[level] for level in PRIORITIES]
        if points != sorted(points, reverse=True):
            raise ValueError(
                f"priority_min_points must satisfy P1 >= P2 >= P3 (got {points}); "
                "P1 is the most urgent level"
            )
        self.reach_tiers.sort(key=lambda tier: tier.min_followers)
        self.customer_value_tiers.sort(key=lambda tier: tier.min_value)
        return self


def load_flagging_rules(config_dir: str | os.PathLike[str] | None = None) -> FlaggingRules:
    """Load and validate ``flagging.yaml``.

    Args:
        config_dir: Folder with the YAML files (``--config``); embedded defaults when None.

    Returns:
        The validated rules.

    Raises:
        ConfigError: The file is missing or invalid; E005 when ``aspects`` names an aspect
            ``aspects.yaml`` lacks (it would never score). The message names the key and the fix.
    """
    from pipelines.analysis.aspects import load_aspect_config  # spaCy and torch: load lazily

    file = config_path("flagging.yaml", config_dir)
    rules = load_yaml_model(file, FlaggingRules)
    known = [aspect.name for aspect in load_aspect_config(config_dir).aspects]
    unknown = [f"aspects.{name}" for name in rules.aspects if name not in known]
    if unknown:
        raise ConfigError(
            f"{file}: key(s) {', '.join(unknown)} name no aspect of aspects.yaml, so they would "
            f"never score. Use aspect names from aspects.yaml: {', '.join(known)}.",
            code="E005",
        )
    return rules


def committed_model_thresholds(
    config_dir: str | os.PathLike[str] | None = None,
) -> dict[str, dict[str, float]]:
    """The flag thresholds stored with sentiment.yaml's committed stack, by its version.

    Args:
        config_dir: Folder with the YAML files; embedded defaults when None.

    Returns:
        ``{version: {language: threshold}}``; empty when the model stores none.
    """
    from models.sentiment import StackMetadata
    from models.sentiment.store_models import flag_thresholds
    from pipelines.analysis.sentiment import load_sentiment_config

    config = load_sentiment_config(config_dir)
    path = config.e5_head.stack_path if config.backend == "e5_head" else None
    if path is None:
        return {}
    metadata = StackMetadata.read(path)
    return {metadata.version: flag_thresholds(metadata)}


@dataclass(frozen=True)
class Flag:
    """The flagging decision for one record.

    Attributes:
        flagged: Whether the record is a negative experience someone must look at.
        priority: P1 (most urgent) to P3; None when not flagged.
        reasons: Why, one short phrase per fired signal, highest points first.
        churn_intent: Whether the text expresses churn intent (reported even when not flagged).
        points: Total points of the fired signals.
        churn_matches: The churn phrases found.
    """

    flagged: bool
    priority: Priority | None
    reasons: list[str]
    churn_intent: bool
    points: int
    churn_matches: list[ChurnMatch] = field(default_factory=list)


def summarize(priority: str | None, reasons: Sequence[str]) -> str:
    """One line explaining a flag.

    Args:
        priority: P1/P2/P3 or None.
        reasons: The reasons of the flag.

    Returns:
        E.g. ``"P1: public post, 12k followers, churn intent, negative 0.97"``, or
        ``"not flagged"``.
    """
    if priority is None:
        return "not flagged"
    return f"{priority}: {', '.join(reasons)}"


def _missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def _number(value: Any) -> float | None:
    if _missing(value):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _human_count(count: float) -> str:
    for limit, suffix in ((1_000_000, "M"), (1_000, "k")):
        if count >= limit:
            scaled = count / limit
            text = f"{scaled:.0f}" if scaled >= 10 or scaled.is_integer() else f"{scaled:.1f}"
            return text + suffix
    return f"{count:.0f}"


def _negative_probability(scores: Any) -> float | None:
    if isinstance(scores, Mapping):
        return _number(scores.get("negative"))
    return None


def _list(value: Any) -> list[Any]:
    if _missing(value) or isinstance(value, str | bytes):
        return []
    try:
        return list(value)
    except TypeError:
        return []


def _snippet(text: Any) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= _SNIPPET_CHARS else flat[: _SNIPPET_CHARS - 1] + "…"


class _Evaluation:
    """Accumulates fired signals for one record."""

    def __init__(self) -> None:
        self.fired: list[tuple[int, str, _Signal]] = []

    def add(self, signal: _Signal, reason: str) -> None:
        self.fired.append((signal.points, reason, signal))

    def decide(self, rules: FlaggingRules, churn_matches: list[ChurnMatch]) -> Flag:
        flagged = any(signal.triggers for _, _, signal in self.fired)
        points = sum(points for points, _, _ in self.fired)
        if not flagged:
            return Flag(False, None, [], bool(churn_matches), points, churn_matches)
        by_points = next(
            (level for level in PRIORITIES if points >= rules.priority_min_points[level]), "P3"
        )
        floors = [signal.min_priority for _, _, signal in self.fired if signal.min_priority]
        priority = min([by_points, *floors], key=PRIORITIES.index)
        ordered = sorted(self.fired, key=lambda item: -item[0])
        return Flag(
            True,
            priority,
            [reason for _, reason, _ in ordered],
            bool(churn_matches),
            points,
            churn_matches,
        )


def _evaluate(
    row: Mapping[str, Any],
    rules: FlaggingRules,
    detector: ChurnDetector,
    repeat_negatives: int,
    model_thresholds: Mapping[str, float],
) -> Flag:
    evaluation = _Evaluation()

    document_negative = _negative_probability(row.get("sentiment_scores"))
    if document_negative is not None:
        threshold = rules.negative_document.model_threshold(row.get("lang"), model_thresholds)
        negative_document = document_negative >= threshold
        if negative_document:
            evaluation.add(rules.negative_document, f"negative {document_negative:.2f}")
    else:
        negative_document = row.get("sentiment") == "negative"
        if negative_document:
            evaluation.add(rules.negative_document, "negative sentiment")

    worst: tuple[float, str] | None = None
    for sentence in _list(row.get("sentences")):
        if not isinstance(sentence, Mapping):
            continue
        probability = _negative_probability(sentence.get("sentiment_scores"))
        if probability is not None and (worst is None or probability > worst[0]):
            worst = (probability, str(sentence.get("text", "")))
    # A negative sentence adds evidence only where the document as a whole did not read negative
    # (the angry sentence inside a positive review); otherwise it would count one signal twice.
    if (
        not negative_document
        and worst is not None
        and worst[0] >= rules.negative_sentence.threshold(row.get("lang"))
    ):
        evaluation.add(
            rules.negative_sentence, f'negative sentence {worst[0]:.2f} ("{_snippet(worst[1])}")'
        )

    rating = _number(row.get("rating"))
    if rating is not None and rating <= rules.low_rating.max_rating:
        evaluation.add(rules.low_rating, f"rating {rating:.0f}/5")

    nps = _number(row.get("nps"))
    if nps is not None and nps <= rules.nps_detractor.max_score:
        evaluation.add(rules.nps_detractor, f"NPS detractor ({nps:.0f})")

    text = row.get("text")
    lang = row.get("lang")
    churn_matches = detector.find(
        text if isinstance(text, str) else "", lang if isinstance(lang, str) else None
    )
    if churn_matches:
        evaluation.add(rules.churn_intent, f'churn intent ("{churn_matches[0].phrase}")')

    channel = row.get("channel")
    if isinstance(channel, str) and channel in rules.public_channel.channels:
        platform = row.get("platform")
        where = f" on {platform}" if isinstance(platform, str) and platform else ""
        evaluation.add(rules.public_channel, f"public post{where}")

    followers = _number(row.get("author_followers"))
    if followers is not None:
        reached = [tier for tier in rules.reach_tiers if followers >= tier.min_followers]
        if reached:
            evaluation.add(reached[-1], f"{_human_count(followers)} followers")

    value = _number(row.get("customer_value"))
    if value is not None:
        tiers = [tier for tier in rules.customer_value_tiers if value >= tier.min_value]
        if tiers:
            evaluation.add(tiers[-1], f"{tiers[-1].label} (value {value:,.0f})")

    if repeat_negatives >= rules.repeat_complainer.min_negatives:
        evaluation.add(
            rules.repeat_complainer,
            f"repeat complainer ({repeat_negatives} negatives in "
            f"{rules.repeat_complainer.within_days} days)",
        )

    negative_aspects = {
        str(item.get("aspect"))
        for item in _list(row.get("aspects"))
        if isinstance(item, Mapping) and item.get("polarity") == "negative"
    }
    for aspect, signal in rules.aspects.items():
        if aspect in negative_aspects:
            evaluation.add(signal, signal.label)

    emerging = [str(name) for name in _list(row.get("emerging"))]
    if emerging:
        evaluation.add(rules.emerging, f"emerging topic: {', '.join(emerging)}")

    return evaluation.decide(rules, churn_matches)


def _timestamps(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values, utc=True, errors="coerce")


def _repeat_negative_counts(
    batch: pd.DataFrame, rules: FlaggingRules, store: Store | None
) -> list[int]:
    """Per row: distinct negative records of the same customer within the window (row included)."""
    window = timedelta(days=rules.repeat_complainer.within_days)
    if "customer_id" not in batch.columns:
        return [0] * len(batch)
    created = (
        _timestamps(batch["created_at"])
        if "created_at" in batch.columns
        else pd.Series(pd.NaT, index=batch.index, dtype="datetime64[ns, UTC]")
    )
    customers = batch["customer_id"].map(lambda value: None if _missing(value) else str(value))
    known = customers.dropna()
    if known.empty:
        return [0] * len(batch)

    record_ids = (
        [str(value) for value in batch["id"]]
        if "id" in batch.columns
        else [str(value) for value in batch.index]
    )
    labels = batch["sentiment"] if "sentiment" in batch.columns else [None] * len(batch)
    negatives: list[tuple[str, str, pd.Timestamp]] = [
        (record, customer, stamp)
        for record, customer, stamp, label in zip(
            record_ids, customers, created, labels, strict=True
        )
        if customer is not None and label == "negative" and not pd.isna(stamp)
    ]
    valid_times = created.dropna()
    if store is not None and not valid_times.empty:
        stored = negative_customer_records(
            store,
            known.tolist(),
            (valid_times.min() - window).to_pydatetime(),
            valid_times.max().to_pydatetime(),
        )
        for record, customer, stamp in stored:
            moment = pd.Timestamp(stamp)
            moment = moment.tz_localize(UTC) if moment.tzinfo is None else moment
            negatives.append((str(record), str(customer), moment))

    counts = []
    for record, customer, stamp in zip(record_ids, customers, created, strict=True):
        if customer is None or pd.isna(stamp):
            counts.append(0)
            continue
        ids = {
            other
            for other, other_customer, moment in negatives
            if other_customer == customer and stamp - window <= moment <= stamp
        }
        ids.add(record)
        counts.append(len(ids))
    return counts


def flag_batch(
    batch: pd.DataFrame,
    rules: FlaggingRules,
    store: Store | None = None,
    detector: ChurnDetector | None = None,
    model_thresholds: Mapping[str, Mapping[str, float]] | None = None,
) -> pd.DataFrame:
    """Flag every row of ``batch``.

    Args:
        batch: Feedback records with any of the columns ``text``, ``lang``, ``sentiment``,
            ``sentiment_scores``, ``sentences``, ``rating``, ``nps``, ``channel``, ``platform``,
            ``author_followers``, ``customer_id``, ``customer_value``, ``created_at``,
            ``aspects``, ``emerging``; missing columns and missing values are simply signals
            that do not fire.
        rules: Validated flagging rules.
        store: Database for the repeat-complainer look-up; None uses the batch alone (e.g.
            ``feedback analyze`` on a file).
        detector: Churn detector; built from ``rules`` when None.
        model_thresholds: Sentiment model version -> its per-language flag thresholds, used
            for a row by its ``model_version`` when ``negative_document.thresholds_from_model``
            is set.

    Returns:
        A copy of ``batch`` with ``flagged`` (bool), ``priority`` (P1/P2/P3 or None),
        ``reasons`` (list of str) and ``churn_intent`` (bool) added.
    """
    churn = detector or ChurnDetector(rules.churn_intent_patterns)
    repeat_counts = _repeat_negative_counts(batch, rules, store)
    by_version = model_thresholds or {}
    flags = [
        _evaluate(row, rules, churn, repeat, by_version.get(str(row.get("model_version")), {}))
        for row, repeat in zip(batch.to_dict(orient="records"), repeat_counts, strict=True)
    ]
    result = batch.copy()
    result["flagged"] = pd.Series([flag.flagged for flag in flags], index=batch.index, dtype=bool)
    result["priority"] = pd.Series(
        [flag.priority for flag in flags], index=batch.index, dtype=object
    )
    result["reasons"] = pd.Series([flag.reasons for flag in flags], index=batch.index, dtype=object)
    result["churn_intent"] = pd.Series(
        [flag.churn_intent for flag in flags], index=batch.index, dtype=bool
    )
    result["flag_points"] = pd.Series([flag.points for flag in flags], index=batch.index, dtype=int)
    return result


class FlaggingStage(Stage):
    """Analysis stage adding ``flagged``, ``priority``, ``reasons``, ``churn_intent`` (and
    ``flag_points``) and storing them in the ``flags`` table.

    With ``negative_document.thresholds_from_model``, a record's document threshold is the one
    stored with the sentiment model that scored it (its ``model_version``): the committed
    stack's, or a registered model's, read from the run's store once per version.

    Args:
        rules: Validated flagging rules.
        model_thresholds: Sentiment model version -> per-language thresholds already known
            (the committed model's).
    """

    name = "flagging"

    def __init__(
        self,
        rules: FlaggingRules,
        model_thresholds: Mapping[str, Mapping[str, float]] | None = None,
    ) -> None:
        self.rules = rules
        self.detector = ChurnDetector(rules.churn_intent_patterns)
        self.model_thresholds = {
            version: dict(thresholds) for version, thresholds in (model_thresholds or {}).items()
        }

    @classmethod
    def from_config(cls, config_dir: str | os.PathLike[str] | None = None) -> FlaggingStage:
        """Build the stage from ``flagging.yaml`` (and, when the thresholds follow the model,
        the committed sentiment model's thresholds).

        Args:
            config_dir: Folder with the YAML files; embedded defaults when None.

        Returns:
            The stage.
        """
        rules = load_flagging_rules(config_dir)
        if not rules.negative_document.thresholds_from_model:
            return cls(rules)
        return cls(rules, committed_model_thresholds(config_dir))

    @property
    def version(self) -> str:
        """The rules version from ``flagging.yaml``."""
        return self.rules.version

    def run(self, batch: pd.DataFrame, context: StageContext) -> pd.DataFrame:
        """Flag the batch (see ``flag_batch``); repeat complainers are looked up in the store.

        Args:
            batch: Feedback records plus the sentiment (and optionally aspects) columns.
            context: Store and run id.

        Returns:
            The batch with the flag columns.
        """
        return flag_batch(
            batch, self.rules, context.store, self.detector, self._thresholds(batch, context.store)
        )

    def _thresholds(
        self, batch: pd.DataFrame, store: Store
    ) -> Mapping[str, Mapping[str, float]] | None:
        """The thresholds of every sentiment model version in ``batch``; a version not seen
        before is looked up in the store's registry (none stored for an unknown one)."""
        if not self.rules.negative_document.thresholds_from_model or "model_version" not in batch:
            return None
        from models.sentiment.store_models import flag_thresholds
        from pipelines.storage import model_artifact

        for version in batch["model_version"].dropna().unique().tolist():
            if str(version) not in self.model_thresholds:
                try:
                    found = flag_thresholds(model_artifact(store, str(version)))
                except ModelVersionError:
                    found = {}
                self.model_thresholds[str(version)] = found
        return self.model_thresholds

    def save(self, batch: pd.DataFrame, context: StageContext) -> int:
        """Upsert one ``flags`` row per record of ``batch`` (flagged or not).

        Args:
            batch: Output of ``run``.
            context: Store and run id.

        Returns:
            Number of rows written.
        """
        now = datetime.now(UTC)
        rows = [
            {
                "record_id": str(row["id"]),
                "rules_version": self.version,
                "flagged": bool(row["flagged"]),
                "priority": row["priority"],
                "points": int(row["flag_points"]),
                "reasons": list(row["reasons"]),
                "churn_intent": bool(row["churn_intent"]),
                "run_id": context.run_id,
                "created_at": now,
            }
            for row in batch.to_dict(orient="records")
        ]
        context.store.upsert(schema.flags, rows)
        return len(rows)
