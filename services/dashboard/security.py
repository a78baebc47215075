"""Operator token and CSRF protection, as one ASGI middleware in front of the app.

- Operator token (optional, ``dashboard.token`` or ``dashboard.token_file``):
  every page, fragment, API call and SSE stream needs it, as the session
  cookie set by the login form, an ``Authorization: Bearer`` / ``X-Hive-Token``
  header, or a ``token`` query parameter. Missing: 401 (the login page for a
  browser); wrong: 403. Static assets (CSS, JS, uPlot) are public: they hold
  no data.
- Host check: only loopback names, the bind address and
  ``dashboard.allowed_hosts`` are answered (DNS rebinding).
- CSRF (always): a random ``hive_csrf`` cookie carries a nonce; the page
  embeds ``HMAC(secret, nonce)``. Every POST must send that token in the
  ``X-CSRF-Token`` header or a ``_csrf`` form field, or it is refused with 403
  before the app sees it, so nothing changes.

The raw operator token is never put in a cookie, a page or a log: the
session cookie holds an HMAC derived from it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from hyperhive.common.config import DashboardSettings
from hyperhive.common.errors import ConfigError

CSRF_COOKIE = "hive_csrf"
CSRF_HEADER = b"x-csrf-token"
CSRF_FIELD = "_csrf"
SESSION_COOKIE = "hive_session"
TOKEN_HEADER = b"x-hive-token"
SCOPE_KEY = "hive_csrf_token"  # where handlers find the page's CSRF token
PUBLIC_PREFIXES = ("/static/",)
LOGIN_PATHS = ("/login",)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_FORM_BYTES = 256 * 1024
# No framing, no foreign scripts or connections: the page talks only to us.
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        b"img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
        b"base-uri 'none'; form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)


def load_operator_token(settings: DashboardSettings) -> str:
    """The configured operator token ('' for none).

    Raises:
        ConfigError: ``token_file`` is set but cannot be read or is empty.
    """
    if settings.token:
        return settings.token.strip()
    if settings.token_file:
        try:
            token = Path(settings.token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read dashboard token file {settings.token_file}: {exc.strerror}"
            ) from None
        if not token:
            raise ConfigError(f"dashboard token file {settings.token_file} is empty")
        return token
    return ""


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


def allowed_hosts(settings: DashboardSettings) -> frozenset[str] | None:
    """The Host names to answer (None: any).

    Loopback names and the bind address always; ``allowed_hosts`` adds names.
    Bound to every interface with no list, any name is accepted (the operator
    chose to expose it; the operator token is what protects it then).
    """
    extra = {h.strip().lower() for h in settings.allowed_hosts.split(",") if h.strip()}
    if "*" in extra:
        return None
    host = settings.host.strip().lower().strip("[]")
    if host in WILDCARD_HOSTS and not extra:
        return None
    return frozenset(LOOPBACK_NAMES | extra | ({host} - WILDCARD_HOSTS))


def host_name(header: str | None) -> str:
    """``example.org:7000`` → ``example.org``; ``[::1]:7000`` → ``::1``."""
    if not header:
        return ""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class Security:
    """The secrets behind the cookies; one per process."""

    def __init__(self, operator_token: str, hosts: frozenset[str] | None = None) -> None:
        self.operator_token = operator_token
        self.hosts = hosts
        self._csrf_secret = secrets.token_bytes(32)
        self._session = (
            hmac.new(operator_token.encode(), b"hive-dashboard-session", hashlib.sha256).hexdigest()
            if operator_token
            else ""
        )

    @property
    def token_required(self) -> bool:
        return bool(self.operator_token)

    def csrf_token(self, nonce: str) -> str:
        return hmac.new(self._csrf_secret, nonce.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, nonce: str | None, token: str | None) -> bool:
        if not nonce or not token:
            return False
        return hmac.compare_digest(self.csrf_token(nonce), token)

    def token_ok(self, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self.operator_token.encode())

    def session_value(self) -> str:
        """The session cookie's value after a successful login."""
        return self._session

    def session_ok(self, value: str | None) -> bool:
        return bool(value) and hmac.compare_digest(value.encode(), self._session.encode())


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def _cookies(scope: Scope) -> dict[str, str]:
    raw = _header(scope, b"cookie")
    if not raw:
        return {}
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:  # a malformed cookie header: treat as none
        return {}
    return {k: m.value for k, m in jar.items()}


def _cookie_header(name: str, value: str, *, max_age: int | None = None) -> tuple[bytes, bytes]:
    attrs = f"{name}={value}; Path=/; HttpOnly; SameSite=Strict"
    if max_age is not None:
        attrs += f"; Max-Age={max_age}"
    return (b"set-cookie", attrs.encode())


async def _plain(send: Send, status: int, text: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain; charset=utf-8")],
        }
    )
    await send({"type": "http.response.body", "body": text.encode()})


class Guard:
    """ASGI middleware: operator token first, then CSRF."""

    def __init__(self, app: ASGIApp, security: Security, login_page: Any) -> None:
        self.app = app
        self.security = security
        # renders the login form for a browser without a session:
        # (csrf_token, error) -> html bytes
        self.login_page = login_page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        method: str = scope["method"]
        if self.security.hosts is not None:
            if host_name(_header(scope, b"host")) not in self.security.hosts:
                # DNS rebinding: a foreign name pointing at us must not get a
                # same-origin page (and with it a valid CSRF pair)
                await _plain(send, 403, "403: unknown Host; see dashboard.allowed_hosts")
                return
        cookies = _cookies(scope)
        nonce = cookies.get(CSRF_COOKIE)
        new_cookie: tuple[bytes, bytes] | None = None
        if not nonce or len(nonce) > 64:
            nonce = secrets.token_hex(16)
            new_cookie = _cookie_header(CSRF_COOKIE, nonce)
        scope[SCOPE_KEY] = self.security.csrf_token(nonce)  # type: ignore[literal-required]

        inner_send = send

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.extend(SECURITY_HEADERS)
                if new_cookie is not None:
                    headers.append(new_cookie)
                message = {**message, "headers": headers}  # type: ignore[typeddict-item]
            await inner_send(message)

        send = send_with_headers

        public = path.startswith(PUBLIC_PREFIXES) or path in LOGIN_PATHS
        if self.security.token_required and not public:
            verdict = self._authenticate(scope, cookies)
            if verdict is not None:
                await self._refuse(scope, send, verdict)
                return

        if method not in SAFE_METHODS:
            receive, supplied = await self._csrf_from_request(scope, receive)
            if not self.security.csrf_ok(cookies.get(CSRF_COOKIE), supplied):
                await _plain(send, 403, "403: CSRF token missing or invalid; reload the page")
                return
        await self.app(scope, receive, send)

    def _authenticate(self, scope: Scope, cookies: dict[str, str]) -> int | None:
        """None when authorised, else the status to refuse with (401/403)."""
        if self.security.session_ok(cookies.get(SESSION_COOKIE)):
            return None
        supplied = None
        auth = _header(scope, b"authorization")
        if auth and auth.lower().startswith("bearer "):
            supplied = auth[7:].strip()
        supplied = supplied or _header(scope, TOKEN_HEADER)
        if supplied is None:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            if "token" in query:
                supplied = query["token"][0]
        if supplied is None:
            # a stale session cookie is as good as none: log in again
            return 401
        return None if self.security.token_ok(supplied) else 403

    async def _refuse(self, scope: Scope, send: Send, status: int) -> None:
        accept = _header(scope, b"accept") or ""
        if scope["method"] == "GET" and "text/html" in accept:
            error = "wrong token" if status == 403 else ""
            body = self.login_page(scope[SCOPE_KEY], error)  # type: ignore[literal-required]
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [(b"content-type", b"text/html; charset=utf-8")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        text = "401: operator token required" if status == 401 else "403: wrong operator token"
        await _plain(send, status, text)

    async def _csrf_from_request(
        self, scope: Scope, receive: Receive
    ) -> tuple[Receive, str | None]:
        """The CSRF token from the header or the form body (body replayed)."""
        header = _header(scope, CSRF_HEADER)
        if header:
            return receive, header
        ctype = _header(scope, b"content-type") or ""
        if not ctype.startswith("application/x-www-form-urlencoded"):
            return receive, None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_FORM_BYTES:
                return receive, None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        fields = parse_qs(body.decode("utf-8", "replace"))
        values = fields.get(CSRF_FIELD)
        return replay, (values[0] if values else None)


def login_cookie(security: Security) -> tuple[str, str]:
    """(name, value) of the session cookie to set after a good login."""
    return SESSION_COOKIE, security.session_value()
