"""The guard in front of hyperhive's web pages (the dashboard, agent pages included).

One ASGI middleware, configured per app by a :class:`Policy`:

- Operator token (optional): every page, API call and SSE stream needs it, as
  the session cookie set by the app's login form, an ``Authorization: Bearer``
  / ``X-Hive-Token`` header, or a ``token`` query parameter. Missing on a
  page, API read or SSE stream: 401 (the login form for a browser); missing on
  a state-changing request (POST …): 403, like a wrong token, before the app
  sees it, so nothing changes. Static assets are public: they hold
  no data. The raw token never goes into a cookie, a page or a log: the
  session cookie holds an HMAC derived from it.
- Host check (optional): only the names in ``Policy.hosts`` are answered, so
  DNS rebinding cannot turn a foreign page into a same-origin client.
- CSRF (always): a random ``hive_csrf`` cookie carries a nonce and the page
  embeds ``HMAC(secret, nonce)``. Every POST must send that token in the
  ``X-CSRF-Token`` header or a ``_csrf`` form field, or it is refused with 403
  before the app sees it, so nothing changes.
- Loopback-only actions (only where ``Policy.loopback_actions_only``, for an
  app run without a token by explicit opt-out): every state-changing request
  and WebSocket from a client address that is not loopback is refused with
  403 before the app sees it.
- WebSockets (only where ``Policy.websockets``): the operator token as above,
  an ``Origin`` equal to the page's own (``Host``) and the page's CSRF token as
  the ``csrf`` query parameter; otherwise the handshake is refused. An app
  without WebSockets refuses every handshake.
- Headers on every answer: the policy's CSP (:data:`PAGE_CSP` for pages,
  :data:`SANDBOX_CSP` on top for what an agent controls), ``nosniff``, no
  framing, no referrer.

SSE (encoding, fan-out, headers) is :mod:`hyperhive.common.sse`; serving an
app is :mod:`hyperhive.common.webserve`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:  # annotations only: the CLI imports the host names without Litestar
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

CSRF_COOKIE = "hive_csrf"
CSRF_HEADER = b"x-csrf-token"
CSRF_FIELD = "_csrf"
TOKEN_HEADER = b"x-hive-token"
SCOPE_KEY = "hive_csrf_token"  # where handlers find the page's CSRF token
PUBLIC_PREFIXES = ("/static/",)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_FORM_BYTES = 256 * 1024
BASE_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)
# Our pages: no framing, no foreign scripts or connections; they talk only to us.
PAGE_CSP = (
    b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    b"img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
    b"base-uri 'none'; form-action 'self'"
)
# Bytes an agent controls, served on the operator's origin: opened as a
# document, they run nothing and load nothing.
SANDBOX_CSP = b"sandbox; default-src 'none'"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]", ""})  # "bound to every interface"

LoginPage = Callable[[str, str], bytes]  # (csrf token, error) -> the login form's html


@dataclass(frozen=True)
class Policy:
    """What differs between the apps behind a guard."""

    # cookie names are per host, not per port: each app needs its own
    session_cookie: str
    session_label: bytes  # HMAC label deriving the session value from the token
    content_security_policy: bytes
    public_paths: tuple[str, ...] = ()  # besides /static/: the login form
    extra_headers: tuple[tuple[bytes, bytes], ...] = ()
    hosts: frozenset[str] | None = None  # None: any Host
    hosts_hint: str = ""  # named in the refusal of an unknown Host
    websockets: bool = False
    # no token by opt-out: operator actions only from a loopback client
    loopback_actions_only: bool = False


class Security:
    """The secrets behind the cookies; one per process."""

    def __init__(self, operator_token: str, session_label: bytes) -> None:
        self.operator_token = operator_token.strip()
        self._csrf_secret = secrets.token_bytes(32)
        self._session = (
            hmac.new(self.operator_token.encode(), session_label, hashlib.sha256).hexdigest()
            if self.operator_token
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
        """The session cookie's value after a good token."""
        return self._session

    def session_ok(self, value: str | None) -> bool:
        return bool(value) and hmac.compare_digest((value or "").encode(), self._session.encode())


def _is_html(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(k.lower() == b"content-type" and v.startswith(b"text/html") for k, v in headers)


def host_name(header: str | None) -> str:
    """``example.org:7000`` → ``example.org``; ``[::1]:7000`` → ``::1``."""
    if not header:
        return ""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def host_allow_list(bind_host: str, extra: str) -> frozenset[str] | None:
    """The Host names an app answers (None: any), against DNS rebinding.

    Loopback names and the bind address always; ``extra`` (comma-separated)
    adds names, ``*`` allows any. Bound to every interface with no list, any
    name is accepted (the operator chose to expose it; the operator token is
    what protects it then).
    """
    names = {h.strip().lower() for h in extra.split(",") if h.strip()}
    if "*" in names:
        return None
    host = bind_host.strip().lower().strip("[]")
    if host in WILDCARD_HOSTS and not names:
        return None
    return frozenset(LOOPBACK_NAMES | names | ({host} - WILDCARD_HOSTS))


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def cookies(scope: Scope) -> dict[str, str]:
    raw = header(scope, b"cookie")
    if not raw:
        return {}
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:  # a malformed cookie header counts as none
        return {}
    return {k: m.value for k, m in jar.items()}


def from_loopback(scope: Scope) -> bool:
    """The client's address is a loopback one (no address, e.g. a unix socket: no)."""
    client = scope.get("client")
    if not client:
        return False
    try:
        address = ipaddress.ip_address(str(client[0]).split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


LOOPBACK_ONLY = "403: operator actions are refused from a non-loopback address (no operator token)"


def _same_origin(scope: Scope) -> bool:
    """The request's ``Origin`` names the host it was sent to (browsers always send it)."""
    origin, host = header(scope, b"origin"), header(scope, b"host")
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
    """ASGI middleware: Host, then operator token, then CSRF."""

    def __init__(
        self, app: ASGIApp, security: Security, policy: Policy, login_page: LoginPage
    ) -> None:
        self.app = app
        self.security = security
        self.policy = policy
        self.login_page = login_page
        self._headers = (
            (b"content-security-policy", policy.content_security_policy),
            *BASE_HEADERS,
            *policy.extra_headers,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":  # lifespan
            await self.app(scope, receive, send)
            return
        if not self._host_ok(scope):
            hint = f"; see {self.policy.hosts_hint}" if self.policy.hosts_hint else ""
            await _plain(send, 403, f"403: unknown Host{hint}")
            return
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
                headers = [*message.get("headers", []), *self._headers]
                # Only a page carries the token derived from a new nonce: a
                # fetch, stream or asset answered meanwhile (the previous
                # page's, right after its cookies were cleared) must not
                # replace the nonce the page's forms were rendered with.
                if new_cookie is not None and _is_html(headers):
                    headers.append((b"set-cookie", new_cookie))
                message = {**message, "headers": headers}  # type: ignore[typeddict-item]
            await inner(message)

        send = send_with_headers
        path: str = scope["path"]
        public = path.startswith(PUBLIC_PREFIXES) or path in self.policy.public_paths
        if self.security.token_required and not public:
            status = self._authenticate(scope, jar)
            if status is not None:
                missing = status == 401
                if scope["method"] not in SAFE_METHODS:
                    status = 403  # a change without the token is forbidden, not a login prompt
                await self._refuse(scope, send, status, missing)
                return
        if scope["method"] not in SAFE_METHODS:
            if self.policy.loopback_actions_only and not from_loopback(scope):
                await _plain(send, 403, LOOPBACK_ONLY)
                return
            receive, supplied = await self._csrf_from_request(scope, receive)
            if not self.security.csrf_ok(jar.get(CSRF_COOKIE), supplied):
                await _plain(send, 403, "403: CSRF token missing or invalid; reload the page")
                return
        await self.app(scope, receive, send)

    def _host_ok(self, scope: Scope) -> bool:
        hosts = self.policy.hosts
        return hosts is None or host_name(header(scope, b"host")) in hosts

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Token, same origin and CSRF token, or the handshake is refused."""
        jar = cookies(scope)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        reason = ""
        if not self.policy.websockets:
            reason = "no WebSockets here"
        elif not self._host_ok(scope):
            reason = "unknown Host"
        elif self.security.token_required and self._authenticate(scope, jar) is not None:
            reason = "operator token required"
        elif self.policy.loopback_actions_only and not from_loopback(scope):
            reason = "refused from a non-loopback address (no operator token)"
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
        """None when authorised, else the status to refuse with (401/403)."""
        if self.security.session_ok(jar.get(self.policy.session_cookie)):
            return None
        supplied = None
        auth = header(scope, b"authorization")
        if auth and auth.lower().startswith("bearer "):
            supplied = auth[7:].strip()
        supplied = supplied or header(scope, TOKEN_HEADER)
        if supplied is None:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            if "token" in query:
                supplied = query["token"][0]
        if supplied is None:
            return 401  # a stale session cookie is as good as none: log in again
        return None if self.security.token_ok(supplied) else 403

    async def _refuse(self, scope: Scope, send: Send, status: int, missing: bool) -> None:
        accept = header(scope, b"accept") or ""
        if scope["method"] == "GET" and "text/html" in accept:
            error = "" if missing else "wrong token"
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
        text = f"{status}: " + ("operator token required" if missing else "wrong operator token")
        await _plain(send, status, text)

    async def _csrf_from_request(
        self, scope: Scope, receive: Receive
    ) -> tuple[Receive, str | None]:
        """The CSRF token from the header or the form body (the body is replayed)."""
        supplied = header(scope, CSRF_HEADER)
        if supplied:
            return receive, supplied
        ctype = header(scope, b"content-type") or ""
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
