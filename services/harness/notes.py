"""Notes compaction: a long ``notes.md`` is rewritten shorter by a side claude session.

Between turns, when the agent's notes file is larger than
``harness.notes_compact_bytes``, the harness runs one short claude session
of its own: not ``--continue`` (the agent's conversation is untouched), no
session saved, no MCP servers and no tools, cwd a private empty dir. Its
prompt is the notes and "compact this, keep every durable fact"; its answer
is the new file. The file is replaced only if the answer is non-empty and
smaller, and only if nobody changed the notes meanwhile; the previous
version is kept beside it as ``notes.md.prev``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from hyperhive.harness.claude import ClaudeRun, RunResult
from hyperhive.harness.config import HarnessConfig

PREV_SUFFIX = ".prev"
COMPACTED, REFUSED, EMPTY, FAILED, CHANGED = "compacted", "refused", "empty", "failed", "changed"
SYSTEM = (
    "You compact the notes file of an AI agent. The agent's memory across "
    "conversations is this file alone, so losing a fact loses it for good."
)
INSTRUCTIONS = """\
Compact the notes file below: keep every durable fact, drop only what is
redundant or superseded.

Keep: names, ids (messages, approvals, questions, commits), paths, decisions
and their reasons, what others asked for and what is still pending, open
problems, how things are done here. Merge repeated entries, rewrite stale
ones with their current state, drop chatter and step-by-step logs whose
outcome is already recorded.

Answer with the new content of the file only: Markdown, no preamble, no
commentary, no code fences around it.

--- notes.md ---
{notes}
--- end of notes.md ---
"""
_FENCE = re.compile(r"\A```[a-zA-Z]*\n(?P<body>.*)\n```\s*\Z", re.DOTALL)


@dataclass(frozen=True)
class Outcome:
    """What one compaction did (the ``compaction`` record's end fields)."""

    outcome: str  # compacted | refused (not smaller) | empty | failed | changed
    before: int
    after: int | None = None  # size of claude's answer, if there was one
    error: str = ""

    @property
    def replaced(self) -> bool:
        return self.outcome == COMPACTED


def prev_path(cfg: HarnessConfig) -> Path:
    return cfg.notes_path.with_name(cfg.notes_path.name + PREV_SUFFIX)


def over_limit(cfg: HarnessConfig) -> tuple[int, int] | None:
    """``(size, mtime_ns)`` of the notes when they exceed the limit, else None."""
    limit = cfg.settings.harness.notes_compact_bytes
    if limit <= 0:
        return None
    try:
        st = cfg.notes_path.stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns) if st.st_size > limit else None


def compaction_run(cfg: HarnessConfig, notes: str, model: str = "") -> ClaudeRun:
    """The side session for ``notes`` (not started)."""
    cwd = cfg.private_dir / "compaction"  # empty: no CLAUDE.md or project files
    cwd.mkdir(parents=True, exist_ok=True)
    return ClaudeRun(
        cfg,
        INSTRUCTIONS.format(notes=notes.rstrip("\n")),
        resume=False,
        model=model,
        tools=False,
        cwd=cwd,
        extra_args=["--no-session-persistence", "--tools", "", "--system-prompt", SYSTEM],
    )


def answer_text(res: RunResult) -> str:
    """The new notes from a finished run ("" when it failed or said nothing)."""
    if not res.ok or res.result is None:
        return ""
    text = str(res.result.get("result") or "").strip()
    m = _FENCE.match(text)
    if m:  # the whole answer wrapped in one code fence: the file is inside
        text = m.group("body").strip()
    return text + "\n" if text else ""


def apply(cfg: HarnessConfig, original: bytes, res: RunResult) -> Outcome:
    """Replaces the notes with the run's answer when it is non-empty and smaller.

    ``original`` is the file as given to claude: if the file changed since
    (the agent's terminal, the manager), nothing is replaced.
    """
    before = len(original)
    if not res.ok:
        return Outcome(FAILED, before, error=res.error or "claude failed")
    new = answer_text(res).encode()
    if not new:
        return Outcome(EMPTY, before, 0, "the compaction answered nothing")
    if len(new) >= before:
        return Outcome(REFUSED, before, len(new), "the answer is not smaller than the notes")
    path = cfg.notes_path
    try:
        if path.read_bytes() != original:
            return Outcome(CHANGED, before, len(new), "the notes changed during compaction")
        _write(prev_path(cfg), original, like=path)
        _write(path, new, like=path)
    except OSError as exc:
        return Outcome(FAILED, before, len(new), f"cannot write the notes: {exc}")
    return Outcome(COMPACTED, before, len(new))


def _write(path: Path, data: bytes, like: Path) -> None:
    """Atomic write keeping ``like``'s permission bits."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    try:
        os.chmod(tmp, like.stat().st_mode & 0o7777)
    except OSError:
        pass
    os.replace(tmp, path)
