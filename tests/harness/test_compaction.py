"""Notes compaction between turns, with the real claude CLI against the scripted API.

A notes file past ``harness.notes_compact_bytes`` is given to a side claude
session (not the agent's conversation, no tools); its answer replaces the
file only when non-empty and smaller, the old file kept as ``notes.md.prev``.
A failed (API error, claude crash), empty or not smaller answer leaves the
notes as they were.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from hyperhive.harness import notes
from tests import rig
from tests.harness.conftest import (
    CLAUDE,
    Running,
    Stack,
    agent_name,
    page_client,
    running_harness,
)
from tests.scripted_anthropic import (
    Block,
    Request,
    ScriptedAnthropic,
    last_user_mentions,
    mentions,
    text,
)

pytestmark = pytest.mark.claude

LIMIT = 2000
IS_COMPACTION = mentions("--- notes.md ---")


def big_notes(tag: str, lines: int = 80) -> str:
    return "".join(f"- {tag} fact {i}: the build server is ci{i}.example\n" for i in range(lines))


def crashing_claude(tmp: Path) -> tuple[Path, Path]:
    """A claude that crashes in compaction sessions while ``<tmp>/crash`` exists,
    and is the real CLI otherwise."""
    marker = tmp / "crash"
    script = tmp / "claude"
    script.write_text(
        "#!/bin/bash\n"
        f'if [ -e "{marker}" ] && [[ " $* " == *" --no-session-persistence "* ]]; then\n'
        '  echo \'{"type":"system","subtype":"init"}\'\n'
        "  kill -KILL $$\n"
        "fi\n"
        f'exec "{CLAUDE}" "$@"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, marker


def ends(h: Running) -> list[dict[str, Any]]:
    return [r.event for r in h.records("compaction") if r.event.get("phase") == "end"]


async def compaction_end(h: Running, n: int, timeout: float = 60) -> dict[str, Any]:
    """The ``n``-th (1-based) compaction end record of this harness run."""

    def check() -> dict[str, Any] | None:
        done = ends(h)
        return done[n - 1] if len(done) >= n else None

    return await rig.eventually(check, timeout=timeout, what=f"compaction {n} ends")


async def test_large_notes_are_compacted_between_turns(
    stack: Stack, api: ScriptedAnthropic, tmp_path: Path
) -> None:
    name = agent_name("nc")
    await stack.spawn(name)
    settings = stack.harness_settings(name, HIVE_HARNESS_NOTES_COMPACT_BYTES=str(LIMIT))
    compacted = "# Notes\n- build servers: ci0..ci79.example\n"
    held = api.reply(compacted, when=IS_COMPACTION, hold=True)
    api.reply("noted alpha", when=last_user_mentions("remember-alpha"))
    api.reply("second answer", when=last_user_mentions("second-question"))
    async with running_harness(settings) as h:
        path = h.harness.cfg.notes_path
        # a turn first: its conversation must survive the compaction untouched
        await stack.send(name, "remember-alpha")
        await h.turn_end(1)

        original = big_notes("old")
        path.write_text(original)
        await rig.eventually(
            lambda: h.harness.state == "compacting", timeout=60, what="badge says compacting"
        )
        async with page_client(h.socket) as page:
            assert (await page.get("/api/status")).json()["state"] == "compacting"
        start = [r.event for r in h.records("compaction") if r.event["phase"] == "start"]
        assert start[0]["bytes"] == len(original) and start[0]["limit"] == LIMIT
        held.release()

        end = await compaction_end(h, 1)
        assert end["outcome"] == "compacted" and end["replaced"], end
        assert end["before"] == len(original) and end["after"] == len(compacted)
        assert path.read_text() == compacted
        assert notes.prev_path(h.harness.cfg).read_text() == original
        await rig.eventually(lambda: h.harness.state == "idle", timeout=30, what="idle again")
        states = [r.event["state"] for r in h.records("state")]
        assert "compacting" in states

        # a side session: no tools, its own system prompt, the notes in the prompt
        (req,) = api.matching(IS_COMPACTION)
        assert req.tool_names == []
        assert "compact the notes file" in req.system_text()
        assert "old fact 79" in req.last_user_text()

        # the agent's next turn continues its own conversation, not the compaction's
        await stack.send(name, "second-question")
        assert (await h.turn_end(2))["outcome"] == "ok"
        turn2 = api.matching(last_user_mentions("second-question"))[-1]
        assert any("remember-alpha" in t for t in turn2.user_texts())
        assert "--- notes.md ---" not in turn2.dump()


async def test_failed_empty_or_larger_compaction_leaves_notes_untouched(
    stack: Stack, api: ScriptedAnthropic, tmp_path: Path
) -> None:
    name = agent_name("nf")
    await stack.spawn(name)
    claude, crash = crashing_claude(tmp_path)
    settings = stack.harness_settings(
        name,
        HIVE_HARNESS_NOTES_COMPACT_BYTES=str(LIMIT),
        HIVE_HARNESS_CLAUDE_BIN=str(claude),
    )

    def api_error() -> None:  # 400: claude retries twice, then gives up
        for _ in range(4):
            api.error(400, "the scripted API refuses", when=IS_COMPACTION)

    def empty() -> None:  # claude asks once more after an answer without visible text
        for _ in range(3):
            api.reply("   ", when=IS_COMPACTION)

    cases = [
        ("api-error", api_error, "failed"),
        ("empty", empty, "empty"),
        ("longer", lambda: api.reply(_echo_longer, when=IS_COMPACTION), "refused"),
        ("crash", crash.touch, "failed"),  # claude killed mid-stream
    ]
    async with running_harness(settings) as h:
        path = h.harness.cfg.notes_path
        prev = notes.prev_path(h.harness.cfg)
        for i, (tag, script, outcome) in enumerate(cases, start=1):
            script()
            original = big_notes(tag)
            path.write_text(original)
            end = await compaction_end(h, i)
            api.clear()  # what the step did not use
            assert end["outcome"] == outcome, (tag, end)
            assert not end["replaced"] and end["error"], (tag, end)
            assert path.read_text() == original, tag
            assert not prev.exists(), tag
        crashed = ends(h)[-1]
        assert "claude exited with" in crashed["error"], crashed

        # a compaction that did not replace the notes is not retried until they
        # change: a whole turn (loop iterations) goes by without one
        api.reply("pong", when=last_user_mentions("ping-after"))
        await stack.send(name, "ping-after")
        assert (await h.turn_end(1))["outcome"] == "ok"
        assert len(ends(h)) == len(cases)
        crash.unlink()
        api.reply("# Notes\n- short\n", when=IS_COMPACTION)
        path.write_text(big_notes("final"))
        end = await compaction_end(h, len(cases) + 1)
        assert end["outcome"] == "compacted", end
        assert path.read_text() == "# Notes\n- short\n"
        assert prev.read_text() == big_notes("final")
        # the crash never reached the API
        assert not any("crash fact" in r.last_user_text() for r in api.requests)


def _echo_longer(req: Request) -> Block:
    """The notes given, plus a line."""
    body = req.last_user_text().split("--- notes.md ---\n", 1)[-1]
    return text(body + "\n- and one more line that makes it longer\n")
