"""The texts claude gets: the wake prompt of each turn and the system prompt addition.

The system prompt comes from ``prompts/agent.md`` or ``prompts/manager.md``
(who the agent is, its tools, system events, notes), plus agent.toml's
``prompt``; it is given with ``--append-system-prompt``. A continued
conversation keeps the system prompt it started with, so a changed one starts
a new conversation (loop.py, docs/turn-loop.md). The wake prompt says
who wrote, whether it is a redelivery, and where the notes are.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import re
import time
from dataclasses import dataclass
from typing import Any

from hyperhive.common import subjects
from hyperhive.harness.config import HarnessConfig


@dataclass(frozen=True)
class Wake:
    """What woke the agent: an inbox message, or a prompt the operator typed on the page."""

    body: str
    sender: str
    source: str  # "broker" | "operator"
    id: int | None = None  # broker message id
    ts: float = 0.0
    redelivered: bool = False
    deliveries: int = 0
    event_type: str = ""  # a system event's type (ContainerCrash, ...)
    resumed: bool = False  # taken before a harness restart, run now
    traceparent: str = ""  # the trace context of the message's send (loop.py's turn span)

    def record(self) -> dict[str, Any]:
        """The ``turn_start`` record of this wake."""
        return {
            "source": self.source,
            "id": self.id,
            "sender": self.sender,
            "body": self.body,
            "ts": self.ts,
            "redelivered": self.redelivered,
            "event_type": self.event_type,
            "resumed": self.resumed,
        }

    def to_doc(self) -> dict[str, Any]:
        """All fields, to keep it in the state dir across a restart."""
        return dataclasses.asdict(self)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Wake | None:
        fields = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in doc.items() if k in fields})
        except TypeError:
            return None


def _template(name: str) -> str:
    try:
        return (importlib.resources.files("hyperhive.harness") / "prompts" / name).read_text()
    except (FileNotFoundError, OSError):
        return ""


def system_prompt(cfg: HarnessConfig) -> str:
    """The text appended to claude's system prompt for this agent."""
    text = _template("manager.md" if cfg.manager else "agent.md")
    # the container layout (docs/architecture.md), which the process backend
    # gives too: at / under bwrap, under view_dir (symlinks) without it
    root = str(cfg.view_dir).rstrip("/") if cfg.view_dir is not None else ""
    agent_config = f"{root}/agents/<name>/config"
    agent_state = f"{root}/agents/<name>/state"
    applied_dir = f"{root}/applied"
    if cfg.view_dir is None and cfg.agents_dir is not None:
        # a harness started by hand on the host's agents dir: the host's names
        agent_config = f"{cfg.agents_dir}/<name>/proposed"
        agent_state = f"{cfg.agents_dir}/<name>/state"
        text = text.replace("{applied_dir}/<name>", f"{cfg.agents_dir}/<name>/applied")
    values = {
        "name": cfg.agent,
        "notes_path": str(cfg.notes_path),
        "agent_config": agent_config,
        "agent_state": agent_state,
        "applied_dir": applied_dir,
    }
    text = re.sub(r"\{([a-z_]+)\}", lambda m: values.get(m.group(1), m.group(0)), text)
    extra = cfg.toml.prompt.strip()
    if extra:
        text = f"{text.rstrip()}\n\n## From your configuration\n\n{extra}\n"
    return text.strip()


def prompt_digest(text: str) -> str:
    """The sha256 (hex) of a system prompt, kept with the conversation it started."""
    return hashlib.sha256(text.encode()).hexdigest()


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if ts else "just now"


def wake_prompt(cfg: HarnessConfig, wake: Wake, interrupted: dict[str, Any] | None) -> str:
    """The prompt of one turn."""
    lines: list[str] = []
    if interrupted:
        reason = interrupted.get("reason", "interrupted")
        lines += [
            f"Note: your previous turn did not finish ({reason}).",
            f"It was handling a message from {interrupted.get('sender', '?')}:",
            "--- interrupted message ---",
            str(interrupted.get("body", "")),
            "--- end of interrupted message ---",
            "Decide whether it still needs doing; it will not be delivered again.",
            "",
        ]
    if wake.source == "operator":
        lines.append(
            "The operator typed this on your agent page (they read this turn live; "
            f'use send(to="{subjects.OPERATOR}", ...) for an answer they should keep):'
        )
    else:
        what = f"message #{wake.id} from {wake.sender}"
        if wake.event_type:
            what += f" (system event {wake.event_type})"
        lines.append(f"You were woken by {what}, sent {_when(wake.ts)}.")
        if wake.resumed:
            lines.append(
                "Your harness restarted while this message was waiting or being handled; "
                "check your notes before repeating work with side effects."
            )
        elif wake.redelivered:
            lines.append(
                f"This is a redelivery (delivery {wake.deliveries or 2}): an earlier turn took "
                "this message and did not finish. Check your notes before repeating work "
                "with side effects."
            )
    lines += ["--- message ---", wake.body, "--- end of message ---", ""]
    notes = cfg.notes_path
    try:
        size = notes.stat().st_size
        lines.append(f"Your notes: {notes} ({size} bytes). Keep them up to date.")
    except OSError:
        lines.append(f"Your notes: {notes} (not written yet; create it for durable facts).")
    if wake.source == "broker" and wake.sender not in (subjects.SYSTEM,):
        lines.append(
            f'To answer, use the hyperhive send tool (to="{wake.sender}"); '
            "the sender sees only what you send."
        )
    return "\n".join(lines) + "\n"
