"""The agent page's guard: optional operator token, CSRF on every POST.

- Operator token (``harness.token``; empty: none): every page, API call and
  SSE stream needs it, as the session cookie set by ``/auth``, an
  ``Authorization: Bearer`` / ``X-Hive-Token`` header, or a ``token`` query
  parameter. Missing: 401 (the token form for a browser); wrong: 403. Static
  assets are public: they hold no data. The raw token never goes into a
  cookie: the session cookie holds an HMAC derived from it.
- CSRF (always): a random ``hive_csrf`` cookie holds a nonce, the page embeds
  ``HMAC(secret, nonce)``; a POST without that token (``X-CSRF-Token`` header
  or ``_csrf`` form field) is refused with 403 before the app sees it.
- WebSockets (the terminal): the operator token as above, an ``Origin``
  equal to the page's own (``Host``), and the page's CSRF token as the
  ``csrf`` query parameter; otherwise the handshake is refused (403) before
  the app sees it. A browser cannot be made to open one from another site.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

from litestar.types import ASGIApp, Message, Receive, Scope, Send

CSRF_COOKIE = "hive_csrf"
CSRF_HEADER = b"x-csrf-token"
CSRF_FIELD = "_csrf"
SESSION_COOKIE = "hive_agent_session"
TOKEN_HEADER = b"x-hive-token"
SCOPE_KEY = "hive_csrf_token"
PUBLIC_PREFIXES = ("/static/",)
PUBLIC_PATHS = ("/auth",)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_FORM_BYTES = 256 * 1024
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (
        b"content-security-policy",
        # styles may be inline: xterm.js (the terminal) writes its own <style>
        # elements; scripts stay 'self' only, and the page inserts no markup
        b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        b"img-src 'self' data:; "
        b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
)


class Security:
    """The secrets behind the cookies; one per process."""

    def __init__(self, operator_token: str) -> None:
        self.operator_token = operator_token.strip()
        self._csrf_secret = secrets.token_bytes(32)
        self._session = (
            hmac.new(
                self.operator_token.encode(), b"hive-agent-session", hashlib.sha256
            ).hexdigest()
            if self.operator_token
            else ""
        )

    @property
    def token_required(self) -> bool:
        return bool(self.operator_token)

    def csrf_token(self, nonce: str) -> str:
        return hmac.new(self._csrf_secret, nonce.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, nonce: str | None, token: str | None) -> bool:
        return bool(nonce and token) and hmac.compare_digest(self.csrf_token(nonce), token or "")

    def token_ok(self, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self.operator_token.encode())

    def session_ok(self, value: str | None) -> bool:
        return bool(value) and hmac.compare_digest((value or "").encode(), self._session.encode())

    def session_cookie(self) -> str:
        """The ``Set-Cookie`` value after a good token."""
        return f"{SESSION_COOKIE}={self._session}; Path=/; HttpOnly; SameSite=Strict"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def cookies(scope: Scope) -> dict[str, str]:
    raw = _header(scope, b"cookie")
    if not raw:
        return {}
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:  # a malformed cookie header counts as none
        return {}
    return {k: m.value for k, m in jar.items()}


def _same_origin(scope: Scope) -> bool:
    """The request's ``Origin`` names the host it was sent to (browsers always send it)."""
    origin, host = _header(scope, b"origin"), _header(scope, b"host")
    if not origin or not host:
        return False
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return False
    return hmac.compare_digest(netloc.lower().encode(), host.lower().encode())


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

    def __init__(
        self, app: ASGIApp, security: Security, token_page: Callable[[str, str], bytes]
    ) -> None:
        self.app = app
        self.security = security
        self.token_page = token_page  # (csrf, error) -> html of the token form

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        jar = cookies(scope)
        nonce = jar.get(CSRF_COOKIE)
        new_cookie: bytes | None = None
        if not nonce or len(nonce) > 64:
            nonce = secrets.token_hex(16)
            new_cookie = f"{CSRF_COOKIE}={nonce}; Path=/; HttpOnly; SameSite=Strict".encode()
        scope[SCOPE_KEY] = self.security.csrf_token(nonce)  # type: ignore[literal-required]
        inner = send

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.extend(SECURITY_HEADERS)
                if new_cookie is not None:
                    headers.append((b"set-cookie", new_cookie))
                message = {**message, "headers": headers}  # type: ignore[typeddict-item]
            await inner(message)

        send = send_with_headers
        public = path.startswith(PUBLIC_PREFIXES) or path in PUBLIC_PATHS
        if self.security.token_required and not public:
            status = self._authenticate(scope, jar)
            if status is not None:
                await self._refuse(scope, send, status)
                return
        if scope["method"] not in SAFE_METHODS:
            receive, supplied = await self._csrf_from_request(scope, receive)
            if not self.security.csrf_ok(jar.get(CSRF_COOKIE), supplied):
                await _plain(send, 403, "403: CSRF token missing or invalid; reload the page")
                return
        await self.app(scope, receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Token, same origin and CSRF token, or the handshake is refused."""
        jar = cookies(scope)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        reason = ""
        if self.security.token_required and self._authenticate(scope, jar) is not None:
            reason = "operator token required"
        elif not _same_origin(scope):
            reason = "cross-origin WebSocket refused"
        elif not self.security.csrf_ok(jar.get(CSRF_COOKIE), (query.get("csrf") or [None])[0]):
            reason = "CSRF token missing or invalid; reload the page"
        if reason:
            message = await receive()  # websocket.connect
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.close", "code": 1008, "reason": reason})
            return
        await self.app(scope, receive, send)

    def _authenticate(self, scope: Scope, jar: dict[str, str]) -> int | None:
        if self.security.session_ok(jar.get(SESSION_COOKIE)):
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
            return 401
        return None if self.security.token_ok(supplied) else 403

    async def _refuse(self, scope: Scope, send: Send, status: int) -> None:
        accept = _header(scope, b"accept") or ""
        if scope["method"] == "GET" and "text/html" in accept:
            body = self.token_page(
                scope[SCOPE_KEY],  # type: ignore[literal-required]
                "wrong token" if status == 403 else "",
            )
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
        """The CSRF token from the header or the form body (the body is replayed)."""
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

        values = parse_qs(body.decode("utf-8", "replace")).get(CSRF_FIELD)
        return replay, (values[0] if values else None)
