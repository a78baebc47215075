"""Escape bench: how many doors a hostile agent finds open in a default ``hive up``.

Starts ``hive up`` on a fresh ``$HIVE_HOME`` (embedded NATS and PostgreSQL, the
five services, the manager, the process backend) with claude pointed at the
scripted Anthropic API, spawns two agents, stages a pending config change and
an open question, then has a plain agent and the manager run every probe of
tests/security/probes.py through their real ``Bash`` tool. Prints the probes
that opened, then one JSON object on the last line::

    {"probes": N, "escapes": 0, "by_attacker": {...}, "escaped": [...], ...}

Run: ``python bench/escape.py`` (as root, and as a normal user where the
interpreter is reachable).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.security.hostile import (  # the repo root is on the path now
    MANAGER,
    controls_failed,
    escapes,
    hostile_hive,
)


def main() -> None:
    figures: dict[str, Any] = {"probes": 0, "escapes": 0, "uid": os.getuid()}
    started = time.monotonic()
    try:
        home = Path(tempfile.mkdtemp(prefix="hive-escape-"))
        os.chmod(home, 0o711)
        with hostile_hive(home / "home") as h:
            tag = f"{os.getpid() % 100}"
            x, y = f"x{tag}", f"y{tag}"
            h.spawn(x)
            h.spawn(y)
            approval, question = h.stage(x)
            ids = {"approval_id": approval, "question_id": question}
            by: dict[str, Any] = {}
            opened_all: list[dict[str, Any]] = []
            for me, other in ((x, y), (MANAGER, x)):
                results = h.attack(me, h.probe_context(me, other, ids))
                opened = escapes(results)
                by[me] = {
                    "probes": len(results),
                    "escapes": len(opened),
                    "controls_failed": len(controls_failed(results)),
                }
                opened_all += [{"attacker": me, **r} for r in opened]
                for r in opened:
                    print(f"ESCAPE {me}: {r['probe']}: {r['detail']}")
            state = {a["id"]: a["state"] for a in h.snapshot()["approvals"]}
            figures.update(
                probes=sum(b["probes"] for b in by.values()),
                escapes=len(opened_all),
                by_attacker=by,
                approval_still_pending=state.get(approval) == "pending",
                escaped=[f"{r['attacker']}: {r['probe']}" for r in opened_all],
            )
    except Exception as exc:  # the JSON line comes last even when a phase fails
        traceback.print_exc()
        figures["error"] = f"{type(exc).__name__}: {exc}"
    figures["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
