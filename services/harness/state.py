"""What the harness keeps across restarts.

In ``<state dir>/.hive-harness/`` (beside the agent's notes, docs/architecture.md):
- ``model``: the operator's ``/model`` override ("" = agent.toml's / the default).
- ``fresh``: present when the next turn starts a new claude session (``/clear``).
- ``turn``: the number of the last turn, so numbering continues after a restart.
- ``last_turn.json``: how the last turn ended (duration, model, outcome), so
  the page's "last turn" chip says it after a restart.
- ``conversation_prompt``: the sha256 of the system prompt the current claude
  conversation was started with (a continued conversation keeps it and
  ignores a new ``--append-system-prompt``): a turn whose prompt differs
  starts a new conversation (see loop.py).

In ``<credentials dir>/.hive-harness/``, which no other agent can reach (the
manager may write other agents' state dirs, and must not be able to slip a
message with a forged sender into one):
- ``interrupted.json``: the message of a turn that was cancelled or failed; the
  next wake prompt carries it, so the agent still sees it (see loop.py).
- ``pending.json``: messages this agent was handed but had not finished when
  the harness stopped (not acked); the next harness run takes them first.
- ``usage.json``: the cumulative usage each recent claude session last
  reported (see usage.py), so a run's own share is known after a restart.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MODEL_MAX_CHARS = 200


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def check_model(name: str) -> str:
    """A model name as typed after ``/model`` (no spaces, bounded).

    Raises:
        ValueError: empty, too long or containing whitespace/control characters.
    """
    name = name.strip()
    if not name:
        raise ValueError("give a model name, e.g. /model claude-sonnet-4-5")
    if len(name) > MODEL_MAX_CHARS or any(c.isspace() or ord(c) < 32 for c in name):
        raise ValueError(f"not a model name: {name[:40]!r}")
    return name


class HarnessState:
    """Small files in the harness dirs; every write is atomic."""

    def __init__(self, directory: Path, private: Path) -> None:
        self.dir = directory
        self.private = private  # made on first write
        self.dir.mkdir(parents=True, exist_ok=True)

    def _read(self, name: str, private: bool = False) -> str:
        try:
            return ((self.private if private else self.dir) / name).read_text().strip()
        except OSError:
            return ""

    @property
    def model(self) -> str:
        return self._read("model")

    def set_model(self, name: str) -> None:
        _atomic_write(self.dir / "model", check_model(name) + "\n")

    def reset_model(self) -> None:
        (self.dir / "model").unlink(missing_ok=True)

    @property
    def fresh(self) -> bool:
        return (self.dir / "fresh").exists()

    def set_fresh(self, value: bool) -> None:
        if value:
            (self.dir / "fresh").touch()
        else:
            (self.dir / "fresh").unlink(missing_ok=True)

    @property
    def turn(self) -> int:
        try:
            return int(self._read("turn") or 0)
        except ValueError:
            return 0

    def set_turn(self, n: int) -> None:
        _atomic_write(self.dir / "turn", f"{n}\n")

    @property
    def last_turn(self) -> dict[str, Any]:
        text = self._read("last_turn.json")
        try:
            doc = json.loads(text) if text else {}
        except ValueError:
            return {}
        return doc if isinstance(doc, dict) else {}

    def set_last_turn(self, doc: dict[str, Any]) -> None:
        _atomic_write(self.dir / "last_turn.json", json.dumps(doc))

    @property
    def conversation_prompt(self) -> str:
        return self._read("conversation_prompt")

    def set_conversation_prompt(self, digest: str) -> None:
        _atomic_write(self.dir / "conversation_prompt", digest + "\n")

    @property
    def interrupted(self) -> dict[str, Any] | None:
        text = self._read("interrupted.json", private=True)
        if not text:
            return None
        try:
            doc = json.loads(text)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    def set_interrupted(self, doc: dict[str, Any] | None) -> None:
        if doc is None:
            (self.private / "interrupted.json").unlink(missing_ok=True)
        else:
            _atomic_write(self.private / "interrupted.json", json.dumps(doc))

    @property
    def pending(self) -> list[dict[str, Any]]:
        text = self._read("pending.json", private=True)
        try:
            docs = json.loads(text) if text else []
        except ValueError:
            return []
        return [d for d in docs if isinstance(d, dict)] if isinstance(docs, list) else []

    def set_pending(self, docs: list[dict[str, Any]]) -> None:
        if docs:
            _atomic_write(self.private / "pending.json", json.dumps(docs))
        else:
            (self.private / "pending.json").unlink(missing_ok=True)

    @property
    def usage_snapshots(self) -> dict[str, Any]:
        text = self._read("usage.json", private=True)
        try:
            doc = json.loads(text) if text else {}
        except ValueError:
            return {}
        return doc if isinstance(doc, dict) else {}

    def set_usage_snapshots(self, doc: dict[str, Any]) -> None:
        _atomic_write(self.private / "usage.json", json.dumps(doc))
