"""``hive serve``, ``hive harness``, ``hive up``, ``hive status``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

from hyperhive.cli.client import operator_nats, print_json, print_table, run_command
from hyperhive.common import endpoints as E
from hyperhive.common import rpc, subjects
from hyperhive.common.config import Settings, default_home, load_settings
from hyperhive.common.errors import HiveError
from hyperhive.common.redact import mask
from hyperhive.common.wire.base import Ping


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run one service (what each systemd unit runs)")
    p.add_argument("part", choices=(*subjects.SERVICES, subjects.NODE_SERVICE))
    p.set_defaults(func=_serve)

    harness = sub.add_parser("harness", help="run an agent's harness (inside its container)")
    verbs = harness.add_subparsers(dest="harness_command", metavar="VERB")
    verbs.required = True
    p = verbs.add_parser(
        "serve",
        help="the turn loop and the agent page (settings from HIVE_HARNESS_* and HIVE_NATS_*)",
    )
    p.set_defaults(func=_serve, part="harness")
    p = verbs.add_parser("mcp", help="the stdio MCP server 'hyperhive' that claude starts")
    p.set_defaults(func=_serve, part="harness-mcp")

    p = sub.add_parser("up", help="run the whole hive here: embedded NATS + Postgres + services")
    p.add_argument("--home", help="data dir (default: $HIVE_HOME or ~/.local/share/hyperhive)")
    p.add_argument("--nats-url", help="use this NATS server instead of an embedded one")
    p.add_argument("--nats-seed", help="nkey seed file for --nats-url (if it needs auth)")
    p.add_argument("--database-url", help="use this PostgreSQL instead of an embedded one")
    p.add_argument("--nats-port", type=int, default=None, help="embedded NATS port (4222)")
    p.add_argument(
        "--nats-host",
        default=None,
        help="address the embedded NATS listens on (127.0.0.1); a hive with "
        "nodes on other machines needs one they reach (see docs/multihost.md)",
    )
    p.add_argument(
        "--pg-port",
        type=int,
        default=None,
        help="embedded PostgreSQL socket number (5433; no TCP port)",
    )
    p.add_argument("--dashboard-port", type=int, default=None, help="dashboard port (7000)")
    p.add_argument("--dashboard-host", default=None, help="dashboard bind address (127.0.0.1)")
    p.add_argument("--no-agents", action="store_true", help="do not start the manager agent")
    p.add_argument(
        "--brokers", type=_instances, default=1, help="broker instances to run (default 1)"
    )
    p.set_defaults(func=_up)

    p = sub.add_parser(
        "status",
        help="which services answer; NATS and Postgres reachability (exit 0: all up)",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait per service")
    p.set_defaults(func=_status)

    p = sub.add_parser(
        "dashboard-url", help="the dashboard's login URL, with the operator token (keep it secret)"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_dashboard_url)


def _serve(args: argparse.Namespace) -> int:
    """Runs ``args.part``, found in the one table of what can run (``PARTS``)."""
    from hyperhive.common.service import PARTS, serve_main

    try:
        settings = load_settings()
    except HiveError as exc:
        print(f"{PARTS[args.part].started_by}: {exc}", file=sys.stderr)
        return 1
    return serve_main(args.part, settings)


def _up(args: argparse.Namespace) -> int:
    from hyperhive.cli.devstack import (
        DEFAULT_NATS_HOST,
        DEFAULT_NATS_PORT,
        DEFAULT_PG_PORT,
        UpOptions,
        up,
    )

    home = Path(args.home or os.environ.get("HIVE_HOME") or default_home()).expanduser()
    return up(
        UpOptions(
            home=home.absolute(),
            nats_url=args.nats_url,
            nats_seed=args.nats_seed,
            database_url=args.database_url,
            nats_port=args.nats_port or DEFAULT_NATS_PORT,
            nats_host=args.nats_host or DEFAULT_NATS_HOST,
            pg_port=args.pg_port or DEFAULT_PG_PORT,
            dashboard_port=args.dashboard_port,
            dashboard_host=args.dashboard_host,
            no_agents=args.no_agents,
            brokers=args.brokers,
        )
    )


def _instances(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= 64:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of instances (1-64)")
    return n


async def gather_status(settings: Settings, timeout: float) -> dict[str, object]:
    """Pings every service. Returns a JSON-able report."""
    url = mask(settings.nats.url)  # a password in the URL is not shown
    report: dict[str, object] = {"nats": {"url": url, "reachable": False}}
    try:
        nc = await operator_nats(settings, attempts=1)
    except HiveError as exc:
        report["nats"] = {"url": url, "reachable": False, "error": mask(str(exc))}
        report["services"] = {
            part: {"up": False, "error": "NATS unreachable"} for part in subjects.SERVICES
        }
        report["postgres"] = {"reachable": False, "error": "unknown: NATS unreachable"}
        return report
    report["nats"] = {"url": url, "reachable": True}

    async def ping(part: str) -> dict[str, object]:
        try:
            pong = await rpc.call(nc, E.PING[part], Ping(), timeout=timeout)
        except HiveError as exc:
            return {"up": False, "error": str(exc)}
        return {"up": True, "pid": pong.pid, "version": pong.version, "database": pong.database}

    try:
        results = await asyncio.gather(*(ping(p) for p in subjects.SERVICES))
    finally:
        await nc.close()
    services = dict(zip(subjects.SERVICES, results, strict=True))
    report["services"] = services
    db_states = [s.get("database") for s in services.values() if s.get("database")]
    failing = [state for state in db_states if state != "ok"]
    if not db_states:
        report["postgres"] = {"reachable": False, "error": "no service with a database answers"}
    elif not failing:
        report["postgres"] = {"reachable": True}
    else:
        # reachable only when every service's pool works: right after a
        # PostgreSQL restart one pool may still be reconnecting
        report["postgres"] = {"reachable": False, "error": failing[0]}
    _add_restarts(report, settings)
    return report


def _add_restarts(report: dict[str, object], settings: Settings) -> None:
    """Adds what the ``hive up`` running on this home restarted (its state file):
    ``restarts`` and ``last_exit`` on the servers' and services' entries."""
    from hyperhive.cli.supervisor import read_state

    parts = read_state(Path(settings.paths.home))
    services = report.get("services")
    for name, record in parts.items():
        entry = report.get(name) if name in ("nats", "postgres") else None
        if entry is None and isinstance(services, dict):
            entry = services.get(name)
        if isinstance(entry, dict):
            entry["restarts"] = record.get("restarts", 0)
            entry["last_exit"] = record.get("last_exit", "")
            entry["last_exit_at"] = record.get("last_exit_at", 0.0)
            if record.get("state") not in (None, "running"):
                entry["supervisor"] = record["state"]


def _restarts_text(entry: dict[str, object]) -> str:
    """``; restarted 2x, last: killed by SIGKILL at 18:52:01`` (empty if never)."""
    if not entry.get("restarts") and not entry.get("last_exit"):
        return ""
    at = entry.get("last_exit_at")
    when = time.strftime(" at %H:%M:%S", time.localtime(at)) if isinstance(at, float) else ""
    text = f"; restarted {entry.get('restarts', 0)}x, last: {entry.get('last_exit')}{when}"
    if entry.get("supervisor"):
        text += f" ({entry['supervisor']})"
    return text


def _dashboard_url(args: argparse.Namespace) -> int:
    """Prints the login URL ``hive up`` printed (it reads the token, not the hive)."""
    from hyperhive.cli import operator_token as ot
    from hyperhive.common.errors import ConfigError

    try:
        settings = load_settings()
        base = ot.base_url(settings.dashboard)
        token_file = ot.configured_token_file(settings)
        try:
            url = ot.login_url(base, ot.operator_token(settings))
        except ConfigError:
            if not settings.dashboard.insecure_no_token:
                raise
            url = base  # no token by explicit opt-out: the page itself
    except ConfigError as exc:
        print(f"hive dashboard-url: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print_json(
            {"url": base, "login_url": url, "token_file": str(token_file) if token_file else None}
        )
    else:
        print(url)
    return 0


def _status(args: argparse.Namespace) -> int:
    async def body(settings: Settings) -> int:
        report = await gather_status(settings, args.timeout)
        services = report["services"]
        assert isinstance(services, dict)
        if args.json:
            print_json(report)
        else:
            nats = report["nats"]
            pg = report["postgres"]
            assert isinstance(nats, dict) and isinstance(pg, dict)
            nats_detail = str(nats.get("error") or nats["url"]) + _restarts_text(nats)
            pg_detail = str(pg.get("error", "")) + _restarts_text(pg)
            rows: list[list[object]] = [
                ["nats", "up" if nats["reachable"] else "DOWN", nats_detail],
                ["postgres", "up" if pg["reachable"] else "DOWN", pg_detail.lstrip("; ")],
            ]
            for part, s in services.items():
                detail = f"pid {s['pid']} v{s['version']}" if s["up"] else s.get("error", "")
                rows.append([part, "up" if s["up"] else "DOWN", detail + _restarts_text(s)])
            print_table(["part", "state", "detail"], rows)
        postgres = report["postgres"]
        assert isinstance(postgres, dict)
        all_up = all(s["up"] for s in services.values()) and bool(postgres["reachable"])
        return 0 if all_up else 1

    return run_command(body)
