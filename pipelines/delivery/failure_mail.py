"""A mail to the data team when a nightly or rerun run fails or crashes.

Sent with the alerts' SMTP settings (or written to the outbox without a server) to
``failure_mail_to`` of ``pipeline.yaml``: the error code, what went wrong, a link to the run in
the Prefect UI and the command that reruns it. The error text is redacted like everything else.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from pipelines.delivery.alerts import Mailer
from pipelines.ingest.privacy import scrub_text

__all__ = ["RunFailure", "error_code", "failure_message", "mail_failure", "rerun_command"]


@dataclass(frozen=True)
class RunFailure:
    """A run that failed or crashed.

    Attributes:
        flow: ``nightly`` or ``rerun``.
        run_id: The run.
        status: ``failed`` or ``crashed``.
        error: What went wrong (``[E0xx] ...`` for expected errors).
        code: The error code, or ``unexpected`` for a bug.
        rerun: The command that runs it again.
        link: Where to see the run (Prefect UI, or ``feedback runs``).
    """

    flow: str
    run_id: str
    status: str
    error: str
    code: str
    rerun: str
    link: str


def error_code(error: str) -> str:
    """The ``E0xx`` an error message starts with, else ``unexpected``."""
    text = error.strip()
    if text.startswith("[") and "]" in text[:8]:
        return text[1 : text.index("]")]
    return "unexpected"


def rerun_command(
    flow: str, parameters: Mapping[str, Any], config: str | None, db: str | None
) -> str:
    """The ``feedback`` command that runs a failed run again with its parameters.

    Args:
        flow: ``nightly`` or ``rerun``.
        parameters: The run's recorded parameters (``runs.parameters``).
        config: ``--config`` folder of the run, if any.
        db: ``--db`` of the run, if any (a URL with a password is left out: use the env).

    Returns:
        The command line.
    """
    words = ["feedback", "rerun" if flow == "rerun" else "run"]
    if flow == "rerun":
        words += ["--since", str(parameters.get("since"))]
        if parameters.get("until"):
            words += ["--until", str(parameters["until"])]
        for stage in parameters.get("stages") or []:
            words += ["--stage", stage]
        if parameters.get("reanalyze"):
            words.append("--reanalyze")
        if not parameters.get("read_sources", True):
            words.append("--no-read")
    elif parameters.get("since"):
        words += ["--since", str(parameters["since"])]
    for source in parameters.get("sources") or []:
        words += ["--source", source]
    if parameters.get("resend_alerts"):
        words.append("--resend-alerts" if flow == "rerun" else "--resend")
    if config:
        words += ["--config", config]
    if db and "://" not in db:
        words += ["--db", db]
    return shlex.join(words)


def failure_message(failure: RunFailure, sender: str, recipients: Sequence[str]) -> EmailMessage:
    """The mail about one failed or crashed run.

    Args:
        failure: The run.
        sender: From address.
        recipients: To addresses.

    Returns:
        The message.
    """
    message = EmailMessage()
    message["Subject"] = (
        f"[feedback-pipeline] {failure.flow} run {failure.status}: {failure.code} "
        f"({failure.run_id[:8]})"
    )
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain="feedback-pipeline")
    message["X-Feedback-Run"] = failure.run_id
    message["X-Feedback-Error-Code"] = failure.code
    message.set_content(
        f"The {failure.flow} run {failure.run_id} {failure.status}.\n\n"
        f"Error code: {failure.code}\n"
        f"What happened: {failure.error}\n\n"
        f"The run: {failure.link}\n\n"
        "Once the cause is fixed, run it again with:\n\n"
        f"    {failure.rerun}\n\n"
        "Records stored before the failure are kept; the rerun reads and analyses only what is "
        "missing.\n"
    )
    return message


def mail_failure(
    failure: RunFailure, recipients: Sequence[str], outbox_dir: str | os.PathLike[str]
) -> dict[str, tuple[int, str]]:
    """Send the failure mail (SMTP from ``FEEDBACK_SMTP_*``, else the outbox folder).

    Args:
        failure: The run; its error is redacted before it is mailed.
        recipients: The data team.
        outbox_dir: Outbox used without an SMTP server.

    Returns:
        Recipients the server refused, with code and reply.
    """
    redacted = RunFailure(**{**failure.__dict__, "error": scrub_text(failure.error)})
    mailer = Mailer.from_env(outbox_dir)
    with mailer.connect() as send:
        return send(failure_message(redacted, mailer.sender, recipients), list(recipients))
