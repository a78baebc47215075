"""The agent's claude credentials, given by the operator on the login page.

They are written only into the agent's credentials dir (``/root/.claude`` in
a container), with mode 0600, and never read back out to a page or a log:
the page only learns *whether* credentials are set and of which kind.

Kinds:
- ``api_key``: an Anthropic API key, given to claude as ``ANTHROPIC_API_KEY``.
- ``oauth_token``: a long-lived token from ``claude setup-token``, given as
  ``CLAUDE_CODE_OAUTH_TOKEN``.
- ``credentials_json``: the contents of a ``.credentials.json`` from a
  logged-in claude, written where claude itself looks for it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

KINDS = ("api_key", "oauth_token", "credentials_json")
SECRET_FILE = "hive-credentials.json"  # api_key / oauth_token
CLAUDE_CREDENTIALS = ".credentials.json"  # claude's own file
MAX_SECRET_CHARS = 64 * 1024


class CredentialsError(ValueError):
    """The operator's input cannot be stored as credentials."""


def _write_private(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(data)
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def store(creds_dir: Path, kind: str, secret: str) -> None:
    """Stores the credentials (replacing any of the other kinds).

    Raises:
        CredentialsError: unknown kind, empty or malformed secret.
    """
    secret = secret.strip()
    if kind not in KINDS:
        raise CredentialsError(f"unknown credentials kind {kind!r}")
    if not secret:
        raise CredentialsError("the credentials are empty")
    if len(secret) > MAX_SECRET_CHARS:
        raise CredentialsError("the credentials are too long")
    if kind == "credentials_json":
        try:
            doc = json.loads(secret)
        except ValueError:
            raise CredentialsError("that is not valid JSON") from None
        if not isinstance(doc, dict):
            raise CredentialsError("expected a JSON object like claude's .credentials.json")
        _write_private(creds_dir / CLAUDE_CREDENTIALS, json.dumps(doc))
        (creds_dir / SECRET_FILE).unlink(missing_ok=True)
        return
    if any(c.isspace() for c in secret):
        raise CredentialsError("a key or token has no spaces or line breaks")
    _write_private(creds_dir / SECRET_FILE, json.dumps({"kind": kind, "secret": secret}))


def kind(creds_dir: Path) -> str:
    """Which credentials are set ("" for none)."""
    try:
        doc = json.loads((creds_dir / SECRET_FILE).read_text())
        if doc.get("kind") in KINDS and doc.get("secret"):
            return str(doc["kind"])
    except (OSError, ValueError, AttributeError):
        pass
    if (creds_dir / CLAUDE_CREDENTIALS).is_file():
        return "credentials_json"
    return ""


def claude_env(creds_dir: Path) -> dict[str, str]:
    """Environment for claude from the stored credentials ({} if none)."""
    try:
        doc = json.loads((creds_dir / SECRET_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict):
        return {}
    match doc.get("kind"):
        case "api_key":
            return {"ANTHROPIC_API_KEY": str(doc.get("secret", ""))}
        case "oauth_token":
            return {"CLAUDE_CODE_OAUTH_TOKEN": str(doc.get("secret", ""))}
    return {}


def fingerprint(creds_dir: Path) -> tuple[tuple[int, int], ...]:
    """Changes whenever credentials are stored or claude logs in again: the
    turn loop waits for it after the API refused the credentials."""
    out = []
    for name in (SECRET_FILE, CLAUDE_CREDENTIALS):
        try:
            st = (creds_dir / name).stat()
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((0, -1))
    return tuple(out)
