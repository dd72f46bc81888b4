"""One exception hierarchy for the whole pipeline, with stable error codes.

Every error carries a code (``E0xx``) that stays the same across releases so that
runbooks and alerts can match on it, and a message that says how to fix the problem.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "CountBalanceError",
    "DeliveryWarning",
    "FeedbackError",
    "LabelError",
    "LabelFileError",
    "ModelError",
    "ModelVersionError",
    "PrivacyError",
    "PromotionRefused",
    "SourceError",
    "StoreError",
    "WebError",
]


class FeedbackError(Exception):
    """Base class of every error raised by feedback-pipeline.

    Args:
        message: What went wrong and how to fix it.
        code: Stable error code; subclasses set a default.
    """

    code: str = "E000"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        if code is not None:
            self.code = code
        super().__init__(f"[{self.code}] {message}")

    def __reduce__(self) -> tuple[object, ...]:
        """Pickle with its code (errors cross process boundaries, e.g. ingest's reader)."""
        return (_restore, (type(self), str(self), self.code))


def _restore(kind: type[FeedbackError], text: str, code: str) -> FeedbackError:
    error = kind.__new__(kind)
    Exception.__init__(error, text)
    error.code = code
    return error


class ConfigError(FeedbackError):
    """A YAML configuration file is missing, malformed or fails validation."""

    code = "E001"


class SourceError(FeedbackError):
    """A source could not be read at all (as opposed to one bad row, which is quarantined)."""

    code = "E010"


class StoreError(FeedbackError):
    """The database could not be opened, migrated or written."""

    code = "E020"


class CountBalanceError(FeedbackError):
    """Rows read != stored + duplicates + quarantined for a source: something was silently lost."""

    code = "E021"


class ModelError(FeedbackError):
    """A model folder, head or encoder is missing, corrupt or incompatible."""

    code = "E030"


class DeliveryWarning(FeedbackError):
    """Alert mail not (yet) delivered: server unreachable, or recipients refused.

    Not raised (a run completes), but shown with its code in run summaries, the run's final log
    line and ``feedback status``.
    """

    code = "E040"


class PrivacyError(ConfigError):
    """Personal-data settings are invalid (pseudonym key, ``keep_in_clear``)."""

    code = "E050"


class LabelError(FeedbackError):
    """A label names an unknown record, sentiment, aspect or polarity; nothing was written."""

    code = "E090"


class WebError(FeedbackError):
    """The triage web page cannot start or refused a request (secret, link, session, CSRF)."""

    code = "E070"


class LabelFileError(LabelError):
    """A label file cannot be read, or one of its rows is malformed; nothing was written."""

    code = "E091"


class ModelVersionError(FeedbackError):
    """A model version is not in the store, or there is nothing to promote or roll back."""

    code = "E092"


class PromotionRefused(FeedbackError):
    """A candidate model failed the promotion gate; the model in use stays."""

    code = "E093"
