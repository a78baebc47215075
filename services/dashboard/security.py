"""The dashboard's guard: the shared web guard (``hyperhive.common.webguard``)
with the dashboard's policy.

- Operator token (required: ``dashboard.token``, ``dashboard.token_file``,
  or the systemd credential ``operator-token``) for every page, fragment, API
  call and SSE stream; the login form is ``/login``, and
  ``/login?token=…`` (the URL ``hive up`` prints) logs a browser in and
  redirects to ``/``. Without a token the dashboard does not start, unless
  ``dashboard.insecure_no_token`` is set: then every page is open and every
  operator action (POST) from a non-loopback client is refused.
- Host check: only loopback names, the bind address and
  ``dashboard.allowed_hosts`` are answered (DNS rebinding).
- CSRF on every POST. WebSockets (the agent pages' terminals) need the
  operator token, an Origin equal to the page's and the page's CSRF token.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

from hyperhive.common.config import DashboardSettings
from hyperhive.common.errors import ConfigError
from hyperhive.common.webguard import (
    PAGE_CSP,
    SCOPE_KEY,
    Guard,
    Policy,
    Security,
    host_allow_list,
)
from hyperhive.dashboard.routes_app import PUBLIC_PATHS

__all__ = [
    "SCOPE_KEY",
    "Guard",
    "Security",
    "allowed_hosts",
    "load_operator_token",
    "operator_security",
    "policy",
]

log = logging.getLogger(__name__)

SESSION_COOKIE = "hive_session"
LOGIN_PATH = "/login"
# the systemd credential (LoadCredential=operator-token:…) the NixOS module passes
CREDENTIAL_NAME = "operator-token"
# a token label goes into git tag messages and the approval row: one short line
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._@+-]{0,63}")


def policy(settings: DashboardSettings) -> Policy:
    """The guard's policy for these settings."""
    return Policy(
        session_cookie=SESSION_COOKIE,
        session_label=b"hive-dashboard-session",
        content_security_policy=PAGE_CSP,
        public_paths=(LOGIN_PATH, *PUBLIC_PATHS),
        hosts=allowed_hosts(settings),
        hosts_hint="dashboard.allowed_hosts",
        websockets=True,
    )


def load_operator_token(
    settings: DashboardSettings, environ: Mapping[str, str] | None = None
) -> str:
    """The configured operator token ('' for none): ``token``, else the file
    ``token_file``, else ``$CREDENTIALS_DIRECTORY/operator-token`` if it exists.

    Raises:
        ConfigError: ``token_file`` is set but cannot be read or is empty.
    """
    if settings.token.strip():
        return settings.token.strip()
    token_file = settings.token_file
    if not token_file:
        creds = (os.environ if environ is None else environ).get("CREDENTIALS_DIRECTORY", "")
        candidate = Path(creds) / CREDENTIAL_NAME if creds else None
        if candidate is None or not candidate.is_file():
            return ""
        token_file = str(candidate)
    try:
        token = Path(token_file).read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"cannot read dashboard token file {token_file}: {exc.strerror}"
        ) from None
    if not token:
        raise ConfigError(f"dashboard token file {token_file} is empty")
    return token


def operator_security(
    settings: DashboardSettings, session_label: bytes, *, warn: bool = True
) -> Security:
    """The guard's secrets: the operator token is required (``warn``: log the
    opt-out's warning when there is none).

    Raises:
        ConfigError: no token and no explicit opt-out, a bad ``token_label``,
            or an unreadable token file.
    """
    if not _LABEL.fullmatch(settings.token_label):
        raise ConfigError(
            f"bad setting dashboard.token_label {settings.token_label!r}: 1-64 letters, digits,"
            " spaces or ._@+- (it names the token in the record of each decision)"
        )
    token = load_operator_token(settings)
    if not token and not settings.insecure_no_token:
        raise ConfigError(
            "no operator token: set dashboard.token_file (HIVE_DASHBOARD_TOKEN_FILE; `hive up`"
            " creates $HIVE_HOME/operator-token) or, to run without one, "
            "HIVE_DASHBOARD_INSECURE_NO_TOKEN=true"
        )
    if not token and warn:
        log.warning(
            "INSECURE: the dashboard runs WITHOUT an operator token "
            "(dashboard.insecure_no_token): anyone who reaches %s:%s reads every page, and "
            "every program on this host (agents included) can act as the operator; operator "
            "actions from non-loopback addresses are refused",
            settings.host,
            settings.port,
        )
    return Security(token, session_label)


def decided_by(settings: DashboardSettings, security: Security, client: str) -> str:
    """Who an action from this dashboard is recorded as (never the token itself)."""
    if security.token_required:
        return f'operator via dashboard (token "{settings.token_label}")'
    return f"operator via dashboard (no token, from {client or 'unknown address'})"


def allowed_hosts(settings: DashboardSettings) -> frozenset[str] | None:
    """The Host names to answer (None: any); see ``webguard.host_allow_list``."""
    return host_allow_list(settings.host, settings.allowed_hosts)


def login_cookie(security: Security) -> tuple[str, str]:
    """(name, value) of the session cookie to set after a good login."""
    return SESSION_COOKIE, security.session_value()
