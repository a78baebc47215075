"""The agent page's guard: the shared web guard (``hyperhive.common.webguard``)
with the agent page's policy: optional operator token (``harness.token``),
CSRF on every POST, WebSockets for the terminal, the token form on ``/auth``."""

from __future__ import annotations

from hyperhive.common.webguard import CSRF_COOKIE, SCOPE_KEY, Guard, Policy, Security

__all__ = ["CSRF_COOKIE", "POLICY", "SCOPE_KEY", "Guard", "Security", "security"]

POLICY = Policy(
    session_cookie="hive_agent_session",
    session_label=b"hive-agent-session",
    # styles may be inline: xterm.js (the terminal) writes its own <style>
    # elements; scripts stay 'self' only, and the page inserts no markup
    content_security_policy=(
        b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        b"img-src 'self' data:; "
        b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    public_paths=("/auth",),
    extra_headers=((b"cache-control", b"no-store"),),
    websockets=True,
)


def security(operator_token: str) -> Security:
    """The page's secrets for ``operator_token`` ('' for none)."""
    return Security(operator_token, POLICY.session_label)
