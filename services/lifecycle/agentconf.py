"""An agent's config files: the defaults, and checking ``agent.toml``.

``agent.nix`` is the entry point (used by the nixos backend); ``agent.toml``
holds the settings every backend honours. A config that fails these checks is
a failed build: the container keeps its previous config.
"""

from __future__ import annotations

import importlib.resources
import tomllib
from pathlib import Path
from typing import Any

from hyperhive.common.errors import BackendFailed

AGENT_NIX = "agent.nix"
AGENT_TOML = "agent.toml"
CONFIG_FILES = (AGENT_NIX, AGENT_TOML)


def template(name: str) -> str:
    """A file from ``hyperhive.lifecycle/templates``."""
    return (importlib.resources.files("hyperhive.lifecycle") / "templates" / name).read_text()


def default_files() -> dict[str, str]:
    """The config a new agent starts with."""
    return {name: template(name) for name in CONFIG_FILES}


def _check_str_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return [f"{where} must be a list of strings"]
    return []


def _check_mcp_servers(value: Any) -> list[str]:
    if not isinstance(value, dict):
        return ["mcp_servers must be a table of servers"]
    problems: list[str] = []
    for server, spec in value.items():
        where = f"mcp_servers.{server}"
        if server == "hyperhive":
            problems.append(f"{where}: the name 'hyperhive' is reserved")
        if not isinstance(spec, dict):
            problems.append(f"{where} must be a table")
            continue
        unknown = set(spec) - {"command", "args", "env", "defer_tools"}
        if unknown:
            problems.append(f"{where}: unknown keys {', '.join(sorted(unknown))}")
        if not isinstance(spec.get("command"), str) or not spec.get("command"):
            problems.append(f"{where}.command must be a non-empty string")
        if "args" in spec:
            problems += _check_str_list(spec["args"], f"{where}.args")
        if not isinstance(spec.get("defer_tools", False), bool):
            problems.append(f"{where}.defer_tools must be true or false")
        env = spec.get("env", {})
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            problems.append(f"{where}.env must be a table of strings")
    return problems


def check_toml(text: str) -> list[str]:
    """The problems of an ``agent.toml`` (empty when it is valid)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return [f"agent.toml is not valid TOML: {exc}"]
    problems: list[str] = []
    unknown = set(data) - {"model", "allowed_tools", "mcp_servers", "prompt"}
    if unknown:
        problems.append(f"unknown keys: {', '.join(sorted(unknown))}")
    for key in ("model", "prompt"):
        if key in data and not isinstance(data[key], str):
            problems.append(f"{key} must be a string")
    if "allowed_tools" in data:
        tools = data["allowed_tools"]
        problems += _check_str_list(tools, "allowed_tools")
        # claude gets them comma-joined: a comma inside one would split it
        if not problems and any("," in t or not t.strip() for t in tools):
            problems.append("allowed_tools entries must be non-empty and hold no comma")
    if "mcp_servers" in data:
        problems += _check_mcp_servers(data["mcp_servers"])
    return problems


def validate(config_dir: Path) -> None:
    """Checks the config in ``config_dir`` (an applied working tree).

    Raises:
        BackendFailed: a file is missing or ``agent.toml`` is invalid; the
            message lists every problem.
    """
    problems: list[str] = []
    if not (config_dir / AGENT_NIX).is_file():
        problems.append(f"{AGENT_NIX} is missing")
    toml_path = config_dir / AGENT_TOML
    if toml_path.is_file():
        try:
            problems += check_toml(toml_path.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"cannot read {AGENT_TOML}: {exc}")
    if problems:
        raise BackendFailed("config check failed: " + "; ".join(problems))
