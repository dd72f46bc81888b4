"""Alert support leads about flagged records: exactly-once mail delivery over SMTP or an outbox.

``enqueue_alerts`` turns a flagged batch into rows of the ``alerts`` table (idempotent), with
one delivery row per recipient; ``deliver_pending`` mails the due ones (P1 one per record, P2/P3
one digest per lead) through a ``Mailer``, retrying refused recipients alone;
``delivery_backlog`` says what is not delivered yet; ``ack_alert``/``resolve_alert`` close the
loop and ``response_times`` reports it; ``acknowledge``/``resolve``/``assign``/``correct_labels``
are the audited triage actions the web page and the CLI share.
"""

from pipelines.delivery.alerts._delivery import (
    ALERT_KINDS,
    DeliveryPolicy,
    DeliveryReport,
    deliver_pending,
)
from pipelines.delivery.alerts._ledger import (
    DeliveryBacklog,
    delivery_backlog,
    describe_reply,
    rearm_alerts,
    retry_failed,
)
from pipelines.delivery.alerts._mailer import (
    DEFAULT_SENDER,
    Mailer,
    OutboxTransport,
    SmtpSettings,
    SmtpTransport,
)
from pipelines.delivery.alerts._messages import build_digest_message, build_p1_message, header_safe
from pipelines.delivery.alerts._queue import (
    ALERT_STATUSES,
    ack_alert,
    alert_id,
    enqueue_alerts,
    list_alerts,
    resolve_alert,
    response_times,
)
from pipelines.delivery.alerts._stage import AlertStage
from pipelines.delivery.alerts._triage import (
    TRIAGE_STATUSES,
    acknowledge,
    assign,
    cli_actor,
    correct_labels,
    resolve,
    triage_status,
)

__all__ = [
    "ALERT_KINDS",
    "ALERT_STATUSES",
    "DEFAULT_SENDER",
    "TRIAGE_STATUSES",
    "AlertStage",
    "DeliveryBacklog",
    "DeliveryPolicy",
    "DeliveryReport",
    "Mailer",
    "OutboxTransport",
    "SmtpSettings",
    "SmtpTransport",
    "ack_alert",
    "acknowledge",
    "alert_id",
    "assign",
    "build_digest_message",
    "build_p1_message",
    "cli_actor",
    "correct_labels",
    "deliver_pending",
    "delivery_backlog",
    "describe_reply",
    "enqueue_alerts",
    "header_safe",
    "list_alerts",
    "rearm_alerts",
    "resolve",
    "resolve_alert",
    "response_times",
    "retry_failed",
    "triage_status",
]
