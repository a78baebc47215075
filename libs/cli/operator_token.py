"""The operator token of a ``hive up`` stack and the dashboard's login URL.

``hive up`` creates ``$HIVE_HOME/operator-token`` at its first start (random,
mode 0600, in a dir no agent sees) and reuses it later; only the dashboard
is told where it is. The token appears in one printed line (the login URL,
as Jupyter prints its ``?token=`` URL) and in that file: never in a log, an
event or a service's environment.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path
from urllib.parse import quote

from hyperhive.common.config import DashboardSettings, Settings
from hyperhive.common.errors import ConfigError
from hyperhive.common.webguard import WILDCARD_HOSTS

TOKEN_FILE = "operator-token"
TOKEN_BYTES = 32


def token_path(home: Path) -> Path:
    """Where ``hive up`` keeps the operator token."""
    return home / TOKEN_FILE


def ensure_token(home: Path) -> tuple[Path, bool]:
    """The token file under ``home``, created (0600) if missing.

    Returns:
        The file and whether it was created now.

    Raises:
        ConfigError: it cannot be written, or it exists but is empty or unreadable.
    """
    return ensure_token_file(token_path(home))


def ensure_token_file(path: Path) -> tuple[Path, bool]:
    """:func:`ensure_token` for any path (the NixOS module's ``hive setup-token``)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        with contextlib.suppress(OSError):
            if stat.S_IMODE(path.stat().st_mode) & 0o077:
                path.chmod(0o600)  # nobody else may read it, whatever made it
        read_token_file(path)
        return path, False
    except OSError as exc:
        raise ConfigError(f"cannot create the operator token {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(TOKEN_BYTES) + "\n")
    return path, True


def read_token_file(path: Path) -> str:
    """The token in ``path``.

    Raises:
        ConfigError: missing, unreadable or empty.
    """
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(
            f"no operator token at {path}: `hive up` creates it at its first start"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the operator token {path}: {exc.strerror}") from None
    if not token:
        raise ConfigError(f"the operator token {path} is empty; delete it for a new one")
    return token


def configured_token_file(settings: Settings) -> Path | None:
    """The token file the settings name (None: the token is given inline, or none is)."""
    ds = settings.dashboard
    if ds.token.strip():
        return None
    return Path(ds.token_file) if ds.token_file else token_path(Path(settings.paths.home))


def operator_token(settings: Settings) -> str:
    """The token the dashboard of these settings requires.

    Raises:
        ConfigError: none can be read.
    """
    path = configured_token_file(settings)
    return settings.dashboard.token.strip() if path is None else read_token_file(path)


def base_url(ds: DashboardSettings, host: str | None = None, port: int | None = None) -> str:
    """``http://host:port/`` of the dashboard (a wildcard bind: localhost)."""
    host = ds.host if host is None else host
    host = "127.0.0.1" if host.strip() in WILDCARD_HOSTS else host.strip()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{ds.port if port is None else port}/"


def login_url(base: str, token: str) -> str:
    """The URL that logs a browser in and redirects to the dashboard."""
    return f"{base}login?token={quote(token, safe='')}"
