"""Alert support leads about flagged records: exactly-once mail delivery over SMTP or an outbox.

``enqueue_alerts`` turns a flagged batch into rows of the ``alerts`` table (idempotent);
``deliver_pending`` mails the due ones (P1 one per record, P2/P3 one digest per lead) through a
``Mailer``; ``ack_alert``/``resolve_alert`` close the loop and ``response_times`` reports it.
"""

from pipelines.delivery.alerts._mailer import (
    DEFAULT_SENDER,
    Mailer,
    OutboxTransport,
    SmtpSettings,
    SmtpTransport,
)
from pipelines.delivery.alerts._messages import build_digest_message, build_p1_message, header_safe
from pipelines.delivery.alerts._queue import (
    ALERT_KINDS,
    ALERT_STATUSES,
    DeliveryPolicy,
    DeliveryReport,
    ack_alert,
    alert_id,
    deliver_pending,
    enqueue_alerts,
    list_alerts,
    resolve_alert,
    response_times,
)
from pipelines.delivery.alerts._stage import AlertStage

__all__ = [
    "ALERT_KINDS",
    "ALERT_STATUSES",
    "DEFAULT_SENDER",
    "AlertStage",
    "DeliveryPolicy",
    "DeliveryReport",
    "Mailer",
    "OutboxTransport",
    "SmtpSettings",
    "SmtpTransport",
    "ack_alert",
    "alert_id",
    "build_digest_message",
    "build_p1_message",
    "deliver_pending",
    "enqueue_alerts",
    "header_safe",
    "list_alerts",
    "resolve_alert",
    "response_times",
]
