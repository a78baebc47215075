"""Runs ``nix-instantiate`` for the Nix tests; they skip where it is missing.

Debian's ``nix-bin`` (installed by scripts/install.sh) provides it. nixpkgs
cannot be fetched here, so the modules are evaluated with the stand-ins of
``standin.nix``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
NIX_INSTANTIATE = shutil.which("nix-instantiate")

needs_nix = pytest.mark.skipif(
    NIX_INSTANTIATE is None, reason="nix-instantiate not installed (Debian: nix-bin)"
)


def _env() -> dict[str, str]:
    # Debian's nix.conf names a build group that does not exist: say none
    # instead of printing a warning on every call.
    return {**os.environ, "NIX_CONFIG": "build-users-group ="}


def run(args: list[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """``nix-instantiate ARGS`` (asserting it is installed)."""
    assert NIX_INSTANTIATE is not None
    return subprocess.run(
        [NIX_INSTANTIATE, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        cwd=REPO,
    )


def eval_file(path: Path, **args: str) -> Any:
    """Evaluates ``path`` (a function of ``args``, given as Nix expressions) to JSON."""
    argv = ["--eval", "--strict", "--json", str(path)]
    for name, expr in args.items():
        argv += ["--arg", name, expr]
    proc = run(argv)
    if proc.returncode != 0:
        raise AssertionError(f"nix-instantiate failed on {path}:\n{proc.stderr}")
    return json.loads(proc.stdout)


def eval_expr(expr: str) -> Any:
    """Evaluates a Nix expression (relative paths resolve from the repo root)."""
    proc = run(["--eval", "--strict", "--json", "-E", expr])
    if proc.returncode != 0:
        raise AssertionError(f"nix-instantiate failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


def nix_str(value: str) -> str:
    """A Nix string literal."""
    return json.dumps(value)
