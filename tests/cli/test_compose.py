"""compose-dev.yml and the ``hive up --nats-url … --database-url …`` line beside it.

PyYAML comes with litestar (a dependency of hyperhive); the documented
command is a comment, so it is read from the text.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from hyperhive.cli import cmd_core
from hyperhive.cli.main import build_parser

COMPOSE = Path(__file__).resolve().parents[2] / "compose-dev.yml"


def _documented_up() -> list[str]:
    """The ``hive up …`` command in the file's comments, as argv."""
    commands = []
    for line in COMPOSE.read_text().splitlines():
        text = line.strip()
        if text.startswith("#") and text.lstrip("# ").startswith("hive up"):
            commands.append(shlex.split(text.lstrip("# ")))
    assert len(commands) == 1, f"expected one documented `hive up` line, found {commands}"
    return commands[0]


def _published(service: dict, container_port: int) -> int:
    """The host port that ``127.0.0.1:<host>:<container>`` publishes."""
    for mapping in service["ports"]:
        host_ip, host_port, port = str(mapping).split(":")
        if int(port) == container_port:
            assert host_ip == "127.0.0.1", f"{mapping}: published beyond localhost"
            return int(host_port)
    raise AssertionError(f"port {container_port} not published: {service['ports']}")


def _up_flags(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string the ``up`` subcommand declares."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {flag for action in sub.choices["up"]._actions for flag in action.option_strings}


def test_documented_hive_up_uses_real_flags_and_the_composed_servers():
    argv = _documented_up()
    assert argv[:2] == ["hive", "up"]
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv[1:])
    assert unknown == [], f"flags `hive up` does not take: {unknown}"
    # spelled out, not an abbreviation argparse happens to accept
    flags = {a.split("=", 1)[0] for a in argv[2:] if a.startswith("-")}
    assert flags <= _up_flags(parser), flags - _up_flags(parser)
    assert args.func is cmd_core._up
    assert args.nats_url and args.database_url

    services = yaml.safe_load(COMPOSE.read_text())["services"]
    nats = services["nats"]
    assert "--jetstream" in nats["command"] or "-js" in nats["command"]
    nats_url = urlsplit(args.nats_url)
    assert nats_url.scheme == "nats" and nats_url.hostname == "127.0.0.1"
    assert nats_url.port == _published(nats, 4222)

    pg = services["postgres"]
    env = pg["environment"]
    db_url = urlsplit(args.database_url)
    assert db_url.scheme in ("postgresql", "postgres") and db_url.hostname == "127.0.0.1"
    assert db_url.port == _published(pg, 5432)
    assert db_url.username == env["POSTGRES_USER"]
    assert db_url.password == env["POSTGRES_PASSWORD"]
    assert db_url.path.lstrip("/") == env["POSTGRES_DB"]
