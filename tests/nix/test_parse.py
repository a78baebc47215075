"""Every .nix file in the repository parses."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.nix.nixeval import REPO, needs_nix, run

SKIP_DIRS = {".git", "node_modules", ".venv", ".venv-nix", "build", "dist"}


def nix_files() -> list[Path]:
    found = []
    for path in sorted(REPO.rglob("*.nix")):
        if not SKIP_DIRS.intersection(path.relative_to(REPO).parts):
            found.append(path)
    return found


def test_the_nix_files_are_found() -> None:
    names = {p.relative_to(REPO).as_posix() for p in nix_files()}
    for expected in (
        "flake.nix",
        "nix/module.nix",
        "nix/services.nix",
        "nix/package.nix",
        "nix/harness-base.nix",
        "nix/agent.nix",
    ):
        assert expected in names


@needs_nix
@pytest.mark.parametrize("path", nix_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_parses(path: Path) -> None:
    proc = run(["--parse", str(path)])
    assert proc.returncode == 0, proc.stderr


@needs_nix
def test_a_syntax_error_is_reported(tmp_path: Path) -> None:
    """The check above would catch a broken file (nix-instantiate exits non-zero)."""
    bad = tmp_path / "bad.nix"
    bad.write_text("{ a = 1; b = ; }\n")
    proc = run(["--parse", str(bad)])
    assert proc.returncode != 0
    assert "syntax error" in proc.stderr
