"""Notes compaction: a long ``notes.md`` is rewritten shorter by a side claude session.

The side session is one short claude run of the harness's own (not
``--continue``, no session saved, no MCP servers, no tools, cwd a private
empty dir); its prompt is the notes and "compact this, keep every durable
fact". Its answer is untrusted input: :func:`check_answer` says whether it
is a plausible compaction of the notes. What the loop does with it, and how
every version of the notes is kept, is in ``docs/notes.md``.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyperhive.common.notes import CHANGE, COMPACTION, NotesHistory
from hyperhive.harness.claude import ClaudeRun, RunResult
from hyperhive.harness.config import HarnessConfig

log = logging.getLogger(__name__)

COMPACTED, REFUSED, EMPTY, FAILED, CHANGED = "compacted", "refused", "empty", "failed", "changed"
# why an answer was refused (Outcome.check)
NOT_SMALLER, TOO_SMALL, NO_COMMON_LINE, ERROR_TEXT, TRUNCATED = (
    "not_smaller",
    "too_small",
    "no_common_line",
    "error_text",
    "truncated",
)
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
# what the claude CLI or the API answer with instead of a model's text
_ERROR_TEXT = re.compile(
    r"\A\s*(api error\b|error:|invalid api key|credit balance is too low|"
    r"claude ai usage limit|prompt is too long|request timed out|execution error|"
    r"overloaded|unable to connect|no response from|please run /login)",
    re.IGNORECASE,
)
_WORD = re.compile(r"\w{3,}")


@dataclass(frozen=True)
class Outcome:
    """What one compaction did (the ``compaction`` record's end fields)."""

    outcome: str  # compacted | refused | empty | failed | changed
    before: int
    after: int | None = None  # size of claude's answer, if there was one
    error: str = ""
    check: str = ""  # refused: which check the answer failed (NOT_SMALLER, TOO_SMALL, …)
    version_before: int | None = None  # the history's version of the notes compacted
    version_after: int | None = None  # the history's version the compaction wrote

    @property
    def replaced(self) -> bool:
        return self.outcome == COMPACTED


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


def history(cfg: HarnessConfig) -> NotesHistory:
    return NotesHistory(cfg.state_dir)


def record_change(cfg: HarnessConfig, turn: int | None = None) -> bool:
    """Keeps the notes as a new version if they changed since the newest one.

    Returns False when they could not be kept (logged; the caller tries
    again later), True otherwise (kept, unchanged, or no notes).
    """
    try:
        data = cfg.notes_path.read_bytes()
    except OSError:
        return True
    try:
        history(cfg).record(data, CHANGE, turn=turn)
    except OSError as exc:
        log.warning("notes version not kept: %s", exc)
        return False
    return True


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


class SessionLog:
    """What the side session's stream said beyond its result (``on_event``).

    A session without tools has exactly one user message, the prompt: any
    other is the CLI continuing the model's answer (e.g. "Output token limit
    hit. Resume directly"), and then the result holds only the last piece.
    """

    def __init__(self) -> None:
        self.continuations = 0

    async def on_event(self, event: dict[str, Any]) -> None:
        if event.get("type") == "user":
            self.continuations += 1


def answer_text(res: RunResult) -> str:
    """The new notes from a finished run ("" when it failed or said nothing)."""
    if not res.ok or res.result is None:
        return ""
    text = str(res.result.get("result") or "").strip()
    m = _FENCE.match(text)
    if m:  # the whole answer wrapped in one code fence: the file is inside
        text = m.group("body").strip()
    return text + "\n" if text else ""


def _lines(text: str) -> set[str]:
    """Lines that carry words, normalised (case, spacing, list and heading marks)."""
    out = set()
    for line in text.splitlines():
        norm = " ".join(line.strip().lstrip("#-*+>0123456789.) \t").split()).lower()
        if _WORD.search(norm):
            out.add(norm)
    return out


def check_answer(original: str, answer: str, min_ratio: float) -> tuple[str, str]:
    """Whether ``answer`` is a plausible compaction of ``original``.

    Returns ``("", "")`` when it is, else ``(check, why)``: the answer is the
    CLI's or the API's error text, not smaller, smaller than ``min_ratio`` of
    the notes, or shares no line with them.
    """
    before, after = len(original.encode()), len(answer.encode())
    if _ERROR_TEXT.match(answer):
        first = answer.strip().splitlines()[0][:200]
        return ERROR_TEXT, f"the answer is an error message, not notes: {first!r}"
    if after >= before:
        return NOT_SMALLER, "the answer is not smaller than the notes"
    if after < before * min_ratio:
        return TOO_SMALL, (
            f"the answer is {after} bytes, {after / before:.1%} of the notes "
            f"(less than {min_ratio:.0%} is not a compaction): {answer.strip()[:80]!r}"
        )
    if not _lines(original) & _lines(answer):
        return NO_COMMON_LINE, "the answer shares no line with the notes"
    return "", ""


def apply(cfg: HarnessConfig, original: bytes, res: RunResult, session: SessionLog) -> Outcome:
    """Replaces the notes with the run's answer when it is a plausible compaction.

    ``original`` is the file as given to claude: if the file changed since
    (the agent's terminal, the manager), nothing is replaced. Both the
    original and the answer are kept in the history before the file is
    replaced; if they cannot be kept, the file is not replaced.
    """
    before = len(original)
    if not res.ok:
        return Outcome(FAILED, before, error=res.error or "claude failed")
    answer = answer_text(res)
    new = answer.encode()
    if not new:
        return Outcome(EMPTY, before, 0, "the compaction answered nothing")
    if session.continuations:
        return Outcome(
            REFUSED,
            before,
            len(new),
            "the answer was cut off (the model hit its output limit and was asked to go on)",
            TRUNCATED,
        )
    check, why = check_answer(
        original.decode(errors="replace"), answer, cfg.settings.harness.notes_compact_min_ratio
    )
    if check:
        return Outcome(REFUSED, before, len(new), why, check)
    path = cfg.notes_path
    hist = history(cfg)
    try:
        if path.read_bytes() != original:
            return Outcome(CHANGED, before, len(new), "the notes changed during compaction")
        hist.record(original, CHANGE)
        v_before = hist.latest()
        entry = hist.record(
            new,
            COMPACTION,
            note=f"compacted from v{v_before.v if v_before else '?'}: {before} → {len(new)} bytes",
        )
        _write(path, new, like=path)
    except OSError as exc:
        return Outcome(FAILED, before, len(new), f"cannot keep or write the notes: {exc}")
    return Outcome(
        COMPACTED,
        before,
        len(new),
        version_before=v_before.v if v_before else None,
        version_after=entry.v if entry else None,
    )


def _write(path: Path, data: bytes, like: Path) -> None:
    """Atomic write keeping ``like``'s permission bits."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    try:
        os.chmod(tmp, like.stat().st_mode & 0o7777)
    except OSError:
        pass
    os.replace(tmp, path)
