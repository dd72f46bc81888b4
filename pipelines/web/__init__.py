"""The triage web page behind every alert mail: inbox, alert page, audited actions.

``load_web_settings`` reads the signing secret (nothing starts without it, E070) and the
configuration; ``create_app`` builds the FastAPI app; ``run_web`` serves it with uvicorn.
"""

from pipelines.web._app import SESSION_COOKIE, create_app
from pipelines.web._server import run_web, web_server
from pipelines.web._settings import UsersConfig, WebSettings, load_users, load_web_settings
from pipelines.web._views import STATUS_FILTERS, Viewer, can_see

__all__ = [
    "SESSION_COOKIE",
    "STATUS_FILTERS",
    "UsersConfig",
    "Viewer",
    "WebSettings",
    "can_see",
    "create_app",
    "load_users",
    "load_web_settings",
    "run_web",
    "web_server",
]
