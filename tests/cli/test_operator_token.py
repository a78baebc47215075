"""The operator token file of ``hive up`` and ``hive dashboard-url``, without a hive."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hyperhive.cli import operator_token as ot
from hyperhive.common.config import load_settings
from hyperhive.common.errors import ConfigError


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_created_once_0600_and_reused(tmp_path: Path) -> None:
    path, created = ot.ensure_token(tmp_path)
    assert created and path == tmp_path / "operator-token" and _mode(path) == 0o600
    token = ot.read_token_file(path)
    assert len(token) >= 32
    again, created = ot.ensure_token(tmp_path)
    assert (again, created) == (path, False)
    assert ot.read_token_file(path) == token
    # a file others may read is tightened, not trusted as it is
    path.chmod(0o644)
    ot.ensure_token(tmp_path)
    assert _mode(path) == 0o600 and ot.read_token_file(path) == token
    path.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        ot.ensure_token(tmp_path)


def test_login_url_quotes_the_token_and_names_localhost_for_a_wildcard_bind() -> None:
    ds = load_settings({"HIVE_DASHBOARD_HOST": "0.0.0.0"}, config_file=None).dashboard
    assert ot.base_url(ds) == "http://127.0.0.1:7000/"
    assert ot.base_url(ds, "::1", 7100) == "http://[::1]:7100/"
    assert ot.login_url("http://h:1/", "a+b/c=") == "http://h:1/login?token=a%2Bb%2Fc%3D"


def _dashboard_url(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HIVE_")}
    return subprocess.run(
        [sys.executable, "-m", "hyperhive.cli.main", "dashboard-url", *args],
        env={**clean, "HIVE_HOME": str(home), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_dashboard_url_without_a_token_is_one_line(tmp_path: Path) -> None:
    result = _dashboard_url(tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"hive dashboard-url: no operator token at {tmp_path / 'operator-token'}:"
        " `hive up` creates it at its first start"
    ]


def test_dashboard_url_reads_the_configured_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "elsewhere"
    token_file.write_text("t0k3n\n")
    result = _dashboard_url(
        tmp_path, "--json", HIVE_DASHBOARD_TOKEN_FILE=str(token_file), HIVE_DASHBOARD_PORT="7300"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "url": "http://127.0.0.1:7300/",
        "login_url": "http://127.0.0.1:7300/login?token=t0k3n",
        "token_file": str(token_file),
    }
