"""``hive serve``, ``hive up``, ``hive status``."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from hyperhive.cli.client import operator_nats, print_json, print_table, run_command
from hyperhive.common import rpc, subjects
from hyperhive.common.config import Settings, default_home, load_settings
from hyperhive.common.errors import HiveError
from hyperhive.common.wire.base import Ping, Pong


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run one service (what each systemd unit runs)")
    p.add_argument("part", choices=subjects.SERVICES)
    p.set_defaults(func=_serve)

    p = sub.add_parser("up", help="run the whole hive here: embedded NATS + Postgres + services")
    p.add_argument("--home", help="data dir (default: $HIVE_HOME or ~/.local/share/hyperhive)")
    p.add_argument("--nats-url", help="use this NATS server instead of an embedded one")
    p.add_argument("--nats-seed", help="nkey seed file for --nats-url (if it needs auth)")
    p.add_argument("--database-url", help="use this PostgreSQL instead of an embedded one")
    p.add_argument("--nats-port", type=int, default=None, help="embedded NATS port (4222)")
    p.add_argument("--pg-port", type=int, default=None, help="embedded PostgreSQL port (5433)")
    p.add_argument("--dashboard-port", type=int, default=None, help="dashboard port (7000)")
    p.add_argument("--dashboard-host", default=None, help="dashboard bind address (127.0.0.1)")
    p.add_argument("--no-agents", action="store_true", help="do not start the manager agent")
    p.add_argument(
        "--brokers", type=_instances, default=1, help="broker instances to run (default 1)"
    )
    p.set_defaults(func=_up)

    p = sub.add_parser("status", help="which services answer; NATS and Postgres reachability")
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait per service")
    p.set_defaults(func=_status)


def _serve(args: argparse.Namespace) -> int:
    from hyperhive.common.errors import ConfigError
    from hyperhive.common.service import serve_main

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"hive serve {args.part}: {exc}")
        return 1
    return serve_main(args.part, settings)


def _up(args: argparse.Namespace) -> int:
    from hyperhive.cli.devstack import DEFAULT_NATS_PORT, DEFAULT_PG_PORT, UpOptions, up

    home = Path(args.home or os.environ.get("HIVE_HOME") or default_home()).expanduser()
    return up(
        UpOptions(
            home=home.absolute(),
            nats_url=args.nats_url,
            nats_seed=args.nats_seed,
            database_url=args.database_url,
            nats_port=args.nats_port or DEFAULT_NATS_PORT,
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
    report: dict[str, object] = {"nats": {"url": settings.nats.url, "reachable": False}}
    try:
        nc = await operator_nats(settings, attempts=1)
    except HiveError as exc:
        report["nats"] = {"url": settings.nats.url, "reachable": False, "error": str(exc)}
        report["services"] = {
            part: {"up": False, "error": "NATS unreachable"} for part in subjects.SERVICES
        }
        report["postgres"] = {"reachable": False, "error": "unknown: NATS unreachable"}
        return report
    report["nats"] = {"url": settings.nats.url, "reachable": True}

    async def ping(part: str) -> dict[str, object]:
        try:
            pong = await rpc.request(
                nc, subjects.admin(part, "ping"), Ping(), Pong, timeout=timeout
            )
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
    if not db_states:
        report["postgres"] = {"reachable": False, "error": "no service with a database answers"}
    elif "ok" in db_states:
        report["postgres"] = {"reachable": True}
    else:
        report["postgres"] = {"reachable": False, "error": db_states[0]}
    return report


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
            rows: list[list[object]] = [
                ["nats", "up" if nats["reachable"] else "DOWN", nats.get("error") or nats["url"]],
                ["postgres", "up" if pg["reachable"] else "DOWN", pg.get("error", "")],
            ]
            for part, s in services.items():
                detail = f"pid {s['pid']} v{s['version']}" if s["up"] else s.get("error", "")
                rows.append([part, "up" if s["up"] else "DOWN", detail])
            print_table(["part", "state", "detail"], rows)
        all_up = all(s["up"] for s in services.values())
        return 0 if all_up else 1

    return run_command(body)
