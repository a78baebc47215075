"""nix/package.nix builds hyperhive with exactly the dependencies pyproject names."""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

from tests.nix.nixeval import HERE, REPO, eval_expr, eval_file, needs_nix

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


def package(nix_dir: Path | None = None) -> dict[str, Any]:
    """What ``nix_dir``/package.nix (default: the repo's) builds, evaluated
    with stand-ins (eval-package.nix)."""
    arg = "{ }" if nix_dir is None else f"{{ nixDir = {nix_dir}; }}"
    return eval_expr(f"import {HERE / 'eval-package.nix'} {arg}")


def test_package_takes_its_version_and_dependencies_from_pyproject(tmp_path: Path) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    built = package()
    assert built["pname"] == "hyperhive"
    assert built["version"] == project["version"]
    assert built["description"] == project["description"]
    assert built["mainProgram"] == "hive"
    # every listed dependency, then uvicorn[standard]'s extras
    listed = eval_file(REPO / "nix" / "python-deps.nix")
    assert built["dependencies"] == [*listed, "websockets", "httptools"]
    assert "hyperhive.crashwatch" in built["pythonImportsCheck"]

    # a copy beside another pyproject and another list builds what they say:
    # nothing of the above is written into package.nix itself
    shutil.copytree(REPO / "nix", tmp_path / "nix")
    other = dict(project, version="9.8.7", description="elsewhere")
    (tmp_path / "pyproject.toml").write_text(
        f"[project]\nname = {json.dumps(other['name'])}\n"
        f"version = {json.dumps(other['version'])}\n"
        f"description = {json.dumps(other['description'])}\n"
    )
    (tmp_path / "nix" / "python-deps.nix").write_text('[ "msgspec" ]\n')
    moved = package(tmp_path / "nix")
    assert (moved["version"], moved["description"]) == ("9.8.7", "elsewhere")
    assert moved["dependencies"] == ["msgspec", "websockets", "httptools"]
