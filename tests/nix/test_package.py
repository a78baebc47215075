"""nix/package.nix builds hyperhive with exactly the dependencies pyproject names."""

from __future__ import annotations

import re
import tomllib

from tests.nix.nixeval import REPO, eval_file, needs_nix

pytestmark = needs_nix

# PyPI name → nixpkgs python3Packages attribute, where they differ
NIXPKGS_NAME = {"gitpython": "gitpython"}


def requirement_name(req: str) -> str:
    """``uvicorn[standard]>=0.30`` → ``uvicorn`` (PEP 503 normalized)."""
    name = re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def test_python_deps_match_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [requirement_name(r) for r in project["dependencies"]]
    listed = eval_file(REPO / "nix" / "python-deps.nix")
    assert sorted(listed) == sorted(NIXPKGS_NAME.get(n, n) for n in wanted)


def test_package_takes_its_version_from_pyproject() -> None:
    text = (REPO / "nix" / "package.nix").read_text()
    assert "builtins.fromTOML (builtins.readFile ../pyproject.toml)" in text
    assert "inherit (pyproject.project) version;" in text
    assert "map (name: ps.${name}) (import ./python-deps.nix)" in text
