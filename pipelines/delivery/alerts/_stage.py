"""The ``alerts`` analysis stage: queue alerts for flagged records, then deliver what is due."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import pandas as pd

from pipelines.delivery.alerts._delivery import DeliveryPolicy, DeliveryReport, deliver_pending
from pipelines.delivery.alerts._mailer import Mailer
from pipelines.delivery.alerts._queue import enqueue_alerts
from pipelines.delivery.links import LinkSigner
from pipelines.delivery.routing import RoutingConfig, load_routing
from pipelines.settings import load_settings
from pipelines.stages import Stage, StageContext

__all__ = ["AlertStage"]


class AlertStage(Stage):
    """Route flagged records to support leads and mail them (SMTP, or ``.eml`` files in the outbox).

    Runs after ``flagging``. ``context.options["resend_alerts"]`` re-arms alerts already sent;
    ``context.options["alert_kinds"]`` (e.g. ``["p1"]`` in the watch flow) delivers only those
    kinds, leaving the others pending for a later run.

    Args:
        routing: Validated routing rules.
        outbox_dir: Folder for ``.eml`` files when ``FEEDBACK_SMTP_HOST`` is unset.
    """

    name: ClassVar[str] = "alerts"

    def __init__(self, routing: RoutingConfig, outbox_dir: Path) -> None:
        self.routing = routing
        self.outbox_dir = outbox_dir
        self.last_delivery: DeliveryReport | None = None

    @classmethod
    def from_config(cls, config_dir: str | os.PathLike[str] | None = None) -> AlertStage:
        """Build the stage from ``routing.yaml`` and ``pipeline.yaml``'s ``outbox_dir``."""
        return cls(load_routing(config_dir), load_settings(config_dir).outbox_dir)

    @property
    def version(self) -> str:
        return "alerts-1"

    def run(self, batch: pd.DataFrame, context: StageContext) -> pd.DataFrame:
        return batch

    def save(self, batch: pd.DataFrame, context: StageContext) -> int:
        """Queue alerts for the batch's flagged rows, then deliver the due ones (``deliver``).

        Returns:
            Number of alerts queued (or re-armed) for this batch.
        """
        queued = 0
        if "flagged" in batch.columns:
            flagged = batch[batch["flagged"].fillna(False).astype(bool)]
            queued = enqueue_alerts(
                flagged,
                context.store,
                self.routing,
                resend=bool(context.options.get("resend_alerts", False)),
            )
        self.deliver(context)
        return queued

    def deliver(self, context: StageContext) -> DeliveryReport:
        """Deliver every due pending alert of the kinds in ``context.options["alert_kinds"]``,
        with signed triage-page links when ``FEEDBACK_WEB_SECRET`` is set.

        Args:
            context: Store and options (``alert_kinds``: all kinds when absent).

        Returns:
            What was sent; also kept in ``last_delivery``.
        """
        self.last_delivery = deliver_pending(
            context.store,
            Mailer.from_env(self.outbox_dir),
            policy=DeliveryPolicy(**self.routing.delivery.model_dump()),
            kinds=context.options.get("alert_kinds"),
            links=LinkSigner.from_env(),
        )
        return self.last_delivery
