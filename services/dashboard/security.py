"""The dashboard's guard: the shared web guard (``hyperhive.common.webguard``)
with the dashboard's policy.

- Operator token (optional, ``dashboard.token`` or ``dashboard.token_file``)
  for every page, fragment, API call and SSE stream; the login form is
  ``/login``.
- Host check: only loopback names, the bind address and
  ``dashboard.allowed_hosts`` are answered (DNS rebinding).
- CSRF on every POST. WebSockets (the agent pages' terminals) need the
  operator token, an Origin equal to the page's and the page's CSRF token.
"""

from __future__ import annotations

from pathlib import Path

from hyperhive.common.config import DashboardSettings
from hyperhive.common.errors import ConfigError
from hyperhive.common.webguard import SCOPE_KEY, Guard, Policy, Security

__all__ = ["SCOPE_KEY", "Guard", "Security", "allowed_hosts", "load_operator_token", "policy"]

SESSION_COOKIE = "hive_session"
LOGIN_PATH = "/login"
# No framing, no foreign scripts or connections: the page talks only to us.
CONTENT_SECURITY_POLICY = (
    b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    b"img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
    b"base-uri 'none'; form-action 'self'"
)
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


def policy(settings: DashboardSettings) -> Policy:
    """The guard's policy for these settings."""
    return Policy(
        session_cookie=SESSION_COOKIE,
        session_label=b"hive-dashboard-session",
        content_security_policy=CONTENT_SECURITY_POLICY,
        public_paths=(LOGIN_PATH,),
        hosts=allowed_hosts(settings),
        hosts_hint="dashboard.allowed_hosts",
        websockets=True,
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


def login_cookie(security: Security) -> tuple[str, str]:
    """(name, value) of the session cookie to set after a good login."""
    return SESSION_COOKIE, security.session_value()
