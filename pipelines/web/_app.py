"""The triage web app: routes, sessions, CSRF, access checks. Server-rendered, no JavaScript.

Security model, in one place:

- Sign-in is by signed, expiring link only (``pipelines.delivery.links``): alert mails carry
  one per lead, alert and action; the sign-in page mails a fresh one to an address a route or
  ``users.yaml`` names, with the same answer for any address, rate-limited per address and per
  client. Opening a link starts a session: a signed cookie (HttpOnly, SameSite=Lax, Secure over
  https) naming the lead, valid ``session_ttl``; the lead must still be known at every request.
- A link that changes state (acknowledge, resolve) only opens a confirm page; the change is a
  POST, so mail scanners that prefetch links change nothing.
- Every POST carries a CSRF token (an HMAC of the session's nonce); every value is escaped by
  Jinja2's autoescape; pages send a strict Content-Security-Policy (no script at all).
- A lead sees the alerts routed or assigned to them; any other alert id answers 404, exactly
  like an id that does not exist. Every action lands in the audit log.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Annotated, Any

from fastapi import BackgroundTasks, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipelines._errors import LabelError, WebError
from pipelines.delivery.alerts import (
    Mailer,
    acknowledge,
    assign,
    correct_labels,
    resolve,
)
from pipelines.delivery.links import LinkSigner
from pipelines.storage import (
    POLARITIES,
    Store,
    TriageEvent,
    count_login_attempts,
    note_login_attempt,
    record_event,
    triage_alerts,
)
from pipelines.web._settings import WebSettings
from pipelines.web._views import STATUS_FILTERS, Viewer, alert_page, can_see, inbox_page

__all__ = ["SESSION_COOKIE", "create_app"]

SESSION_COOKIE = "feedback_session"
_ANON_COOKIE = "feedback_anon"
_TEMPLATES = Path(__file__).resolve().parent / "templates"
_ALERT_ID = re.compile(r"^[0-9a-f]{16}$")
_NOTE_CHARS = 2000
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_STATUS_OF_CODE = {"E071": 403, "E072": 403, "E073": 403, "E074": 403, "E075": 429}
logger = logging.getLogger("feedback.web")


class _SignIn(Exception):
    """No valid session: the request goes to the sign-in page."""


def _now() -> datetime:
    return datetime.now(UTC)


def _note(value: str | None) -> str | None:
    text = (value or "").strip()
    return text[:_NOTE_CHARS] or None


def create_app(settings: WebSettings) -> FastAPI:
    """The triage web app over the settings' database.

    Args:
        settings: Secret, URL, database, leads and admins (``load_web_settings``).

    Returns:
        A FastAPI app; serve it with uvicorn (``run_web``).
    """
    signer = LinkSigner(settings.secret, settings.base_url, settings.link_ttl)
    store = Store(settings.db_url)
    templates = Environment(loader=FileSystemLoader(_TEMPLATES), autoescape=True)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        store.close()

    app = FastAPI(
        title="Feedback triage", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        for name, value in _HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    # --- sessions and CSRF -------------------------------------------------------------------

    def viewer_of(request: Request) -> Viewer | None:
        token = request.cookies.get(SESSION_COOKIE)
        if not token:
            return None
        try:
            email, expires, nonce = signer.unsign("session", token).split("\x1f", 2)
        except (WebError, ValueError):
            return None
        if int(expires) <= _now().timestamp() or not settings.is_known(email):
            return None
        return Viewer(email, settings.is_admin(email), signer.mac_hex("csrf", nonce))

    def anonymous_csrf(request: Request) -> tuple[str, str]:
        nonce = request.cookies.get(_ANON_COOKIE) or secrets.token_urlsafe(24)
        return nonce, signer.mac_hex("csrf-anon", nonce)

    def start_session(response: Response, email: str) -> None:
        expires = int((_now() + settings.session_ttl).timestamp())
        nonce = secrets.token_urlsafe(24)
        response.set_cookie(
            SESSION_COOKIE,
            signer.sign("session", f"{email.casefold()}\x1f{expires}\x1f{nonce}"),
            max_age=int(settings.session_ttl.total_seconds()),
            httponly=True,
            samesite="lax",
            secure=settings.secure_cookies,
            path="/",
        )

    def require_csrf(expected: str, given: str | None) -> None:
        if not given or not secrets.compare_digest(expected.encode(), given.encode()):
            raise WebError(
                "the form's security token is missing or stale; reload the page and try again",
                code="E074",
            )

    # --- rendering ---------------------------------------------------------------------------

    def render(
        name: str, viewer: Viewer | None, status_code: int = 200, **context: Any
    ) -> HTMLResponse:
        page = templates.get_template(name).render(viewer=viewer, **context)
        return HTMLResponse(page, status_code=status_code)

    def problem(request: Request, message: str, status_code: int) -> HTMLResponse:
        return render(
            "message.html.j2",
            viewer_of(request),
            status_code,
            title="Not possible",
            message=message,
        )

    @app.exception_handler(WebError)
    async def web_error(request: Request, error: WebError) -> HTMLResponse:
        return problem(request, str(error), _STATUS_OF_CODE.get(error.code, 400))

    @app.exception_handler(LabelError)
    async def label_error(request: Request, error: LabelError) -> HTMLResponse:
        return problem(request, str(error), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> HTMLResponse:
        return problem(request, "There is nothing here, or it is not yours.", error.status_code)

    def signed_in(request: Request) -> Viewer:
        viewer = viewer_of(request)
        if viewer is None:
            raise _SignIn()
        return viewer

    @app.exception_handler(_SignIn)
    async def sign_in_first(request: Request, _: _SignIn) -> RedirectResponse:
        return RedirectResponse("/login", status_code=303)

    def visible_alert(alert_id: str, viewer: Viewer) -> dict[str, Any]:
        if not _ALERT_ID.match(alert_id):
            raise StarletteHTTPException(404)
        found = triage_alerts(store, [alert_id])
        if not found or not can_see(found[0], viewer):
            raise StarletteHTTPException(404)
        return found[0]

    # --- sign-in -----------------------------------------------------------------------------

    @app.get("/", response_model=None)
    def home(request: Request) -> RedirectResponse:
        return RedirectResponse("/inbox" if viewer_of(request) else "/login", status_code=303)

    @app.get("/static/app.css")
    def stylesheet() -> Response:
        return Response((_TEMPLATES / "app.css").read_bytes(), media_type="text/css")

    @app.get("/login")
    def login_form(request: Request) -> HTMLResponse:
        nonce, token = anonymous_csrf(request)
        response = render("login.html.j2", viewer_of(request), csrf=token, sent=False)
        response.set_cookie(
            _ANON_COOKIE,
            nonce,
            httponly=True,
            samesite="lax",
            secure=settings.secure_cookies,
            path="/",
        )
        return response

    mailer = Mailer.from_env(settings.outbox_dir)

    def send_sign_in_link(email: str) -> None:
        moment = _now()
        link = signer.inbox_url(email, moment)
        message = EmailMessage(policy=SMTP)
        message["From"] = mailer.sender
        message["To"] = email
        message["Subject"] = "Your sign-in link to the feedback triage page"
        message["Date"] = format_datetime(moment)
        message["Message-ID"] = make_msgid(domain="feedback-pipeline.local")
        message["Auto-Submitted"] = "auto-generated"
        message.set_content(
            f"Open this link to sign in (it works until "
            f"{moment + settings.link_ttl:%Y-%m-%d %H:%M} UTC):\n\n{link}\n\n"
            "If you did not ask for it, ignore this mail.\n"
        )
        try:
            with mailer.connect() as send:
                send(message, [email])
        except OSError as exc:
            logger.warning("sign-in mail not sent: %s", type(exc).__name__)

    @app.post("/login")
    def login_request(
        request: Request,
        background: BackgroundTasks,
        email: Annotated[str, Form(max_length=320)] = "",
        csrf: Annotated[str, Form(max_length=200)] = "",
    ) -> HTMLResponse:
        _, expected = anonymous_csrf(request)
        require_csrf(expected, csrf)
        address = email.strip().casefold()
        client = request.client.host if request.client else "unknown"
        keys = [signer.mac_hex("login-address", address), signer.mac_hex("login-client", client)]
        moment = _now()
        since = moment - settings.login_window
        limits = (settings.login_per_address, settings.login_per_client)
        if any(
            count_login_attempts(store, key, since) >= limit
            for key, limit in zip(keys, limits, strict=True)
        ):
            raise WebError(
                "too many sign-in requests; wait a quarter of an hour, then ask again",
                code="E075",
            )
        note_login_attempt(store, keys, moment)
        if settings.is_known(address):
            record_event(store, TriageEvent(address, "login_link", at=moment))
            background.add_task(send_sign_in_link, address)
        return render("login.html.j2", viewer_of(request), csrf=expected, sent=True)

    @app.get("/l/{token}", response_model=None)
    def open_link(request: Request, token: str) -> RedirectResponse:
        claim = signer.verify(token)
        if not settings.is_known(claim.recipient):
            raise WebError(
                "this address no longer receives alerts here; ask the data team", code="E073"
            )
        targets = {
            "inbox": "/inbox",
            "open": f"/alerts/{claim.alert_id}",
            "ack": f"/alerts/{claim.alert_id}/confirm/ack",
            "resolve": f"/alerts/{claim.alert_id}/confirm/resolve",
        }
        response = RedirectResponse(targets[claim.action], status_code=303)
        start_session(response, claim.recipient)
        record_event(
            store,
            TriageEvent(
                claim.recipient.casefold(),
                "signin",
                claim.alert_id or None,
                detail={"link": claim.action},
            ),
        )
        return response

    @app.post("/logout", response_model=None)
    def logout(
        request: Request, csrf: Annotated[str, Form(max_length=200)] = ""
    ) -> RedirectResponse:
        viewer = signed_in(request)
        require_csrf(viewer.csrf, csrf)
        record_event(store, TriageEvent(viewer.email, "logout"))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # --- pages -------------------------------------------------------------------------------

    @app.get("/inbox")
    def inbox(
        request: Request,
        status: str = "unresolved",
        priority: str = "",
        language: str = "",
        channel: str = "",
        aspect: str = "",
        lead: str = "",
    ) -> HTMLResponse:
        viewer = signed_in(request)
        filters = {
            "status": status if status in STATUS_FILTERS else "unresolved",
            "priority": priority,
            "language": language,
            "channel": channel,
            "aspect": aspect,
            "lead": lead,
        }
        page = inbox_page(triage_alerts(store), viewer, filters, _now())
        return render("inbox.html.j2", viewer, filters=filters, **page)

    @app.get("/alerts/{alert_id}")
    def alert_view(request: Request, alert_id: str, done: str = "") -> HTMLResponse:
        viewer = signed_in(request)
        alert = visible_alert(alert_id, viewer)
        page = alert_page(store, alert, viewer, _now())
        return render(
            "alert.html.j2",
            viewer,
            done=done if done in ("ack", "resolve", "assign", "label") else "",
            leads=[lead for lead in settings.leads() if lead != alert.get("assignee")],
            known_aspects=settings.aspects,
            polarities=POLARITIES,
            **page,
        )

    @app.get("/alerts/{alert_id}/confirm/{action}")
    def confirm(request: Request, alert_id: str, action: str) -> HTMLResponse:
        viewer = signed_in(request)
        if action not in ("ack", "resolve"):
            raise StarletteHTTPException(404)
        alert = visible_alert(alert_id, viewer)
        page = alert_page(store, alert, viewer, _now())
        return render("confirm.html.j2", viewer, action=action, **page)

    # --- actions -----------------------------------------------------------------------------

    def back(alert_id: str, done: str) -> RedirectResponse:
        return RedirectResponse(f"/alerts/{alert_id}?done={done}", status_code=303)

    @app.post("/alerts/{alert_id}/ack", response_model=None)
    def ack(
        request: Request,
        alert_id: str,
        csrf: Annotated[str, Form(max_length=200)] = "",
        note: Annotated[str, Form(max_length=_NOTE_CHARS)] = "",
    ) -> RedirectResponse:
        viewer = signed_in(request)
        require_csrf(viewer.csrf, csrf)
        visible_alert(alert_id, viewer)
        acknowledge(store, alert_id, viewer.email, note=_note(note))
        return back(alert_id, "ack")

    @app.post("/alerts/{alert_id}/resolve", response_model=None)
    def resolve_view(
        request: Request,
        alert_id: str,
        csrf: Annotated[str, Form(max_length=200)] = "",
        note: Annotated[str, Form(max_length=_NOTE_CHARS)] = "",
    ) -> RedirectResponse:
        viewer = signed_in(request)
        require_csrf(viewer.csrf, csrf)
        visible_alert(alert_id, viewer)
        resolve(store, alert_id, viewer.email, note=_note(note))
        return back(alert_id, "resolve")

    @app.post("/alerts/{alert_id}/assign", response_model=None)
    def assign_view(
        request: Request,
        alert_id: str,
        csrf: Annotated[str, Form(max_length=200)] = "",
        assignee: Annotated[str, Form(max_length=320)] = "",
        note: Annotated[str, Form(max_length=_NOTE_CHARS)] = "",
    ) -> RedirectResponse:
        viewer = signed_in(request)
        require_csrf(viewer.csrf, csrf)
        visible_alert(alert_id, viewer)
        if not settings.is_known(assignee):
            raise WebError(
                "assign to a lead named in routing.yaml or an admin in users.yaml", code="E076"
            )
        assign(store, alert_id, assignee.strip().casefold(), viewer.email, note=_note(note))
        return back(alert_id, "assign")

    @app.post("/alerts/{alert_id}/labels", response_model=None)
    async def labels_view(request: Request, alert_id: str) -> RedirectResponse:
        viewer = signed_in(request)
        form = await request.form()
        require_csrf(viewer.csrf, str(form.get("csrf") or ""))
        alert = visible_alert(alert_id, viewer)
        sentiment = str(form.get("sentiment") or "") or None
        aspects = {
            name: str(form.get(f"aspect:{name}"))
            for name in settings.aspects
            if form.get(f"aspect:{name}")
        }
        correct_labels(
            store,
            alert_id,
            alert["record_id"],
            viewer.email,
            sentiment=sentiment,
            aspects=aspects,
            not_complaint=form.get("not_complaint") == "on",
            note=_note(str(form.get("note") or "")),
            known_aspects=settings.aspects,
        )
        return back(alert_id, "label")

    return app
