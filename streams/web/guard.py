"""Who may call what on the worker's web server: one aiohttp middleware in front of every route.

It runs before every handler, Faust's built-in ones and unknown paths included, so a route added
later is operator-only until it is listed below (tests/test_http_auth.py walks the router to hold
that). The rules:

| route | credential | more, for writes (POST, PUT, PATCH, DELETE) |
|---|---|---|
| GET `/`, `/static/*` | none: the page holds no data, it asks for a login | - |
| POST `/login`, `/logout` | none (`/login` checks the token it is given) | JSON, Origin, Host |
| POST `/collect`, `/catalogue` | API key | JSON, Origin |
| GET `/recommendations/{user_id}` | API key or operator | - |
| GET `/metrics` | metrics token (`WHARF_WEB_METRICS_TOKENS`) or operator | - |
| every other path | operator token or login cookie | JSON, Origin, Host |

Credentials: `Authorization: Bearer <key or token>`, `X-API-Key: <key>`, or the login cookie. A
header that is present but wrong is refused, whatever cookie comes with it. Anything else: 401.

Writes, against a page in an operator's browser acting for them (CSRF) or a rebound DNS name:
- JSON: `Content-Type: application/json`, else 415. A page on another site cannot send that
  without a CORS preflight, which this server never grants.
- Origin: when the header is sent it must be one of the worker's own origins (http or https on
  its advertised address, its bind address, localhost, 127.0.0.1, [::1], at its web port) or
  one of `WHARF_WEB_ALLOWED_ORIGINS`, else 403.
- Host: writes not made with an API key must name one of those addresses in `Host`, else 403.
  Services (API keys) are exempt: they reach workers through names a worker cannot know, and a
  browser page cannot hold their key.
The login cookie is also HttpOnly and SameSite=Strict, so another site's page never sends it.

Errors: an exception in a handler becomes a 500 `{"error": "internal error", "id": ...}`; the id
is logged with the trace. Nothing a client sent (credentials, query strings) is logged.
"""

from __future__ import annotations

import enum
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from streams.web.credentials import Credentials, matches, split_keys
from schemas.settings import EVERY_INTERFACE, Settings

log = logging.getLogger(__name__)

COOKIE = "wharf_session"
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK = ("localhost", "127.0.0.1", "[::1]")


class Access(enum.Enum):
    PUBLIC = "no credential"
    SERVICE = "an API key"
    SERVICE_OR_OPERATOR = "an API key or an operator credential"
    OPERATOR = "an operator credential (token or login)"
    SCRAPER = "a metrics token or an operator credential"


# Route templates (aiohttp's canonical form) that are not operator-only. Everything else is.
ROUTES: dict[str, Access] = {
    "/": Access.PUBLIC,
    "/static": Access.PUBLIC,
    "/login": Access.PUBLIC,
    "/logout": Access.PUBLIC,
    "/collect": Access.SERVICE,
    "/catalogue": Access.SERVICE,
    "/recommendations/{user_id}": Access.SERVICE_OR_OPERATOR,
    "/metrics": Access.SCRAPER,
}


def route_access(canonical: str | None) -> Access:
    return ROUTES.get(canonical or "", Access.OPERATOR)


def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def failure(status: int, message: str, exc: BaseException | None = None) -> web.Response:
    """A JSON error that names no internals: the details go to the log under the id it returns."""
    eid = secrets.token_hex(6)
    log.error("%s (error id %s)", message, eid, exc_info=exc)
    return web.json_response({"error": message, "id": eid}, status=status)


def _host(h: str) -> str:
    return f"[{h}]" if ":" in h and not h.startswith("[") else h


@dataclass
class Guard:
    credentials: Credentials
    origins: frozenset[str]  # scheme://host:port, lower case
    hosts: frozenset[str]  # host:port as sent in a Host header, lower case
    secure_cookie: bool = False
    metrics_tokens: tuple[str, ...] = ()  # Prometheus' bearer tokens: `GET /metrics` only

    @classmethod
    def from_settings(cls, settings: Settings) -> Guard:
        names = {settings.advertised_web_host(), *LOOPBACK}
        if settings.web_host not in EVERY_INTERFACE:
            names.add(settings.web_host)
        own = {f"{_host(h).lower()}:{settings.web_port}" for h in names}
        extra = {o.strip().rstrip("/").lower() for o in settings.web_allowed_origins.split(",") if o.strip()}
        origins = {f"{scheme}://{h}" for h in own for scheme in ("http", "https")} | extra
        hosts = own | {o.split("://", 1)[-1] for o in extra}
        return cls(Credentials.from_settings(settings), frozenset(origins), frozenset(hosts),
                   metrics_tokens=split_keys(settings.web_metrics_tokens.get_secret_value()))

    # --- who is asking -----------------------------------------------------------------------------------
    def caller(self, request: web.Request) -> str | None:
        """'operator', 'service', 'scraper' or None (no valid credential)."""
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        value = value.strip()
        if scheme:
            if scheme.lower() != "bearer" or not value:
                return None
            if self.credentials.is_operator(value):
                return "operator"
            if self.credentials.is_api_key(value):
                return "service"
            return "scraper" if self.metrics_tokens and matches(value, self.metrics_tokens) else None
        if "X-API-Key" in request.headers:
            return "service" if self.credentials.is_api_key(request.headers["X-API-Key"].strip()) else None
        cookie = request.cookies.get(COOKIE, "")
        return "operator" if cookie and self.credentials.session_ok(cookie) else None

    # --- the rules ---------------------------------------------------------------------------------------
    def refusal(self, request: web.Request) -> web.Response | None:
        resource = request.match_info.route.resource
        access = route_access(resource.canonical if resource is not None else None)
        who = None if access is Access.PUBLIC else self.caller(request)
        allowed = {Access.PUBLIC: True, Access.SERVICE: who == "service",
                   Access.SERVICE_OR_OPERATOR: who in ("service", "operator"), Access.OPERATOR: who == "operator",
                   Access.SCRAPER: who in ("scraper", "operator")}[access]
        if not allowed:
            return error(401, f"this endpoint needs {access.value}", {"WWW-Authenticate": "Bearer"})
        if request.method in WRITES:
            return self.write_refusal(request, by_service=who == "service")
        return None

    def write_refusal(self, request: web.Request, by_service: bool) -> web.Response | None:
        if request.content_type != "application/json":
            return error(415, "writes need Content-Type: application/json")
        origin = request.headers.get("Origin")
        if origin is not None and origin.strip().rstrip("/").lower() not in self.origins:
            return error(403, "requests from this origin may not write here (WHARF_WEB_ALLOWED_ORIGINS)")
        if not by_service and request.headers.get("Host", "").strip().lower() not in self.hosts:
            return error(403, "this host name is not one of the worker's addresses (WHARF_WEB_ALLOWED_ORIGINS)")
        return None

    # --- the middleware ------------------------------------------------------------------------------------
    @web.middleware
    async def middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        try:
            refused = self.refusal(request)
            if refused is not None:
                return refused
            return await handler(request)
        except web.HTTPException:
            raise  # aiohttp's own answers: 404, 405, 413 ...
        except Exception as exc:  # noqa: BLE001 - a generic answer; the trace goes to the log under its id
            return failure(500, "internal error", exc)

    def session_cookie(self, response: web.StreamResponse, token: str, secure: bool) -> None:
        response.set_cookie(COOKIE, self.credentials.sessions.issue(token), max_age=int(self.credentials.sessions.lifetime_s),
                            path="/", httponly=True, samesite="Strict", secure=secure)

    def warn_if_closed(self) -> None:
        if not self.credentials.operator_tokens.configured():
            log.warning("no operator token is configured (WHARF_WEB_OPERATOR_TOKENS[_FILE]): the dashboard, acks and stats refuse everyone")
        if not self.credentials.api_keys.configured():
            log.warning("no API key is configured (WHARF_WEB_API_KEYS[_FILE]): POST /collect and /catalogue refuse everyone")


INSTALLED = web.AppKey("wharf_guard", Guard)


def install(app: Any, settings: Settings) -> Guard:
    """Put the guard in front of every route of a Faust app's aiohttp server (before the server starts)."""
    guard = Guard.from_settings(settings)
    app.web.web_app.middlewares.append(guard.middleware)
    app.web.web_app[INSTALLED] = guard
    guard.warn_if_closed()
    return guard


def installed(app: Any) -> Guard:
    """The guard `install` put in front of this Faust app's routes (views that log in use its credentials)."""
    return app.web.web_app[INSTALLED]
