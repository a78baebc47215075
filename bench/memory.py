"""Memory bench: the resident memory of each service and of an agent's harness, idle.

Starts ``hive up`` on a fresh ``$HIVE_HOME`` as a user would (embedded NATS
and PostgreSQL, the five services, the manager under the process backend,
claude pointed at a scripted Anthropic API), spawns one agent, lets the hive
settle, then samples the RSS of every service and every harness
(``hive harness serve``) for a few seconds and keeps each process's highest
sample. Then it sends the agent one message, waits for the turn to end, and
samples the harnesses again: a harness is mostly waiting between turns, and
that is the figure the target is about.

Targets (issue 17): a harness <= 60 MB RSS idle, each service <= 80 MB idle.

Usage: python bench/memory.py [--settle 5] [--samples 5]
The last line printed is one JSON object with every figure (and ``error`` if
a phase failed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.rig import hive_run  # the repo root is on the path now
from tests.security.hostile import MANAGER, HostileHive, hostile_hive

TARGETS = {"harness_idle_rss_mb": 60.0, "service_idle_rss_mb": 80.0}


def harness_pids(h: HostileHive) -> dict[str, int]:
    """Each agent's ``hive harness serve`` process, by agent name."""
    assert h.proc is not None
    out: dict[str, int] = {}
    for p in psutil.Process(h.proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            cmd = p.cmdline()
            if "harness" in cmd and "serve" in cmd and p.name() != "bwrap":
                agent = p.environ().get("HIVE_HARNESS_AGENT", str(p.pid))
                out[agent] = p.pid
    return out


def sample_rss(pids: dict[str, int], samples: int) -> dict[str, float]:
    """The highest RSS (MB) of each process over ``samples`` reads a second apart."""
    peak: dict[str, float] = {}
    for i in range(samples):
        for name, pid in pids.items():
            with contextlib.suppress(psutil.Error):
                rss = psutil.Process(pid).memory_info().rss / 1e6
                peak[name] = round(max(peak.get(name, 0.0), rss), 1)
        if i + 1 < samples:
            time.sleep(1.0)
    return peak


def wait_idle(h: HostileHive, agent: str, after: float, timeout: float = 180.0) -> None:
    """Until ``agent``'s turn that started after ``after`` (epoch s) has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = hive_run("messages", "--agent", agent, "--json", env=h.env, timeout=30)
        if done.returncode == 0:
            reply = json.loads(done.stdout)
            items = reply.get("messages", reply) if isinstance(reply, dict) else reply
            if any(m.get("ts", 0) >= after and m.get("state") == "acked" for m in items):
                return
        time.sleep(1.0)
    raise TimeoutError(f"{agent}'s turn did not end within {timeout:g}s")


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settle", type=float, default=5.0, help="seconds idle before sampling")
    parser.add_argument("--samples", type=int, default=5, help="RSS reads, a second apart")
    args = parser.parse_args()
    figures: dict[str, Any] = {}
    home = Path(tempfile.mkdtemp(prefix="hive-memory-"))
    os.chmod(home, 0o711)
    with hostile_hive(home / "home") as h:
        agent = f"m{os.getpid() % 1000}"
        h.spawn(agent)
        time.sleep(args.settle)
        services = sample_rss(
            {k: v for k, v in h.service_pids().items() if k not in ("nats-server", "postgres")},
            args.samples,
        )
        for name, mb in sorted(services.items()):
            print(f"service {name:12s} idle RSS {mb:6.1f} MB")
        harnesses = sample_rss(harness_pids(h), args.samples)
        for name, mb in sorted(harnesses.items()):
            print(f"harness {name:12s} idle RSS {mb:6.1f} MB (started, no turn yet)")
        sent = time.time()
        done = hive_run("send", agent, "hello, a turn to measure after", env=h.env, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"hive send failed: {done.stdout}{done.stderr}")
        wait_idle(h, agent, sent)
        time.sleep(args.settle)
        after = sample_rss(harness_pids(h), args.samples)
        for name, mb in sorted(after.items()):
            print(f"harness {name:12s} idle RSS {mb:6.1f} MB (after a turn)")
        figures.update(
            service_rss_mb=services,
            harness_started_rss_mb=harnesses,
            harness_after_turn_rss_mb=after,
            service_idle_rss_mb=max(services.values(), default=None),
            harness_idle_rss_mb=max([*harnesses.values(), *after.values()], default=None),
            manager=MANAGER,
        )
    return figures


def run() -> int:
    figures: dict[str, Any] = {}
    try:
        figures = main()
    except SystemExit:  # --help, or a bad argument
        raise
    except BaseException as exc:  # the JSON line comes last even when a phase fails
        traceback.print_exc()
        figures["error"] = f"{type(exc).__name__}: {exc}"
    figures["targets"] = {k: f"<= {v:g}" for k, v in TARGETS.items()}
    figures["targets_met"] = {
        k: None if not isinstance(figures.get(k), float) else figures[k] <= v
        for k, v in TARGETS.items()
    }
    print(json.dumps(figures), flush=True)
    return 1 if "error" in figures else 0


if __name__ == "__main__":
    sys.exit(run())
