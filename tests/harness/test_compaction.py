"""Notes compaction between turns, with the real claude CLI against the scripted API.

A notes file past ``harness.notes_compact_bytes`` is given to a side claude
session (not the agent's conversation, no tools); its answer is untrusted:
it replaces the file only when it is a plausible compaction (docs/notes.md).
A failed (API error, claude crash), empty, cut-off, error-text, useless or
unrelated answer leaves the notes as they were, and every version of the
notes stays in the history that ``hive notes`` shows.
"""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from hyperhive.common.notes import NotesHistory
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


def plausible(original: str, keep: int = 12) -> str:
    """A compaction a careful model could give: a heading, some lines kept, a summary."""
    lines = original.splitlines(keepends=True)
    return "# Notes\n" + "".join(lines[:keep]) + f"- and {len(lines) - keep} more, merged\n"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


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
    original = big_notes("old")
    compacted = plausible(original)
    held = api.reply(compacted, when=IS_COMPACTION, hold=True)
    api.reply("noted alpha", when=last_user_mentions("remember-alpha"))
    api.reply("second answer", when=last_user_mentions("second-question"))
    async with running_harness(settings) as h:
        path = h.harness.cfg.notes_path
        # a turn first: its conversation must survive the compaction untouched
        await stack.send(name, "remember-alpha")
        await h.turn_end(1)

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
        # both versions are kept: the notes compacted, then what replaced them
        *_, before, after = NotesHistory(h.harness.cfg.state_dir).versions()
        assert (before.kind, before.sha256, before.bytes) == (
            "change",
            sha(original),
            len(original),
        )
        assert (after.kind, after.sha256) == ("compaction", sha(compacted))
        assert (end["version_before"], end["version_after"]) == (before.v, after.v)
        assert f"compacted from v{before.v}" in after.note
        assert end["history"] == f"hive notes {name} --history"
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


async def test_useless_cut_off_or_failed_compaction_leaves_notes_untouched(
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

    def api_error(_notes: str) -> None:  # 400: claude retries twice, then gives up
        for _ in range(4):
            api.error(400, "the scripted API refuses", when=IS_COMPACTION)

    def empty(_notes: str) -> None:  # claude asks once more after an answer without text
        for _ in range(3):
            api.reply("   ", when=IS_COMPACTION)

    def cut_off(notes_text: str) -> None:
        # the answer stops at max_tokens mid-line; the CLI asks the model to go
        # on and its result is only the second piece (which alone looks fine)
        half = len(notes_text) // 2 + 7
        api.reply(notes_text[:half], when=IS_COMPACTION, stop="max_tokens")
        api.reply(notes_text[half:-200], when=IS_COMPACTION)

    def unrelated(_notes: str) -> None:
        api.reply(
            "".join(f"* item {i}: something else entirely\n" for i in range(30)),
            when=IS_COMPACTION,
        )

    cases = [
        ("api-error", api_error, "failed", ""),
        ("empty", empty, "empty", ""),
        ("useless", lambda _n: api.reply("ok", when=IS_COMPACTION), "refused", "too_small"),
        ("cutoff", cut_off, "refused", "truncated"),
        (
            "errortext",
            lambda _n: api.reply(
                'API Error: 529 {"type":"error","error":{"type":"overloaded_error",'
                '"message":"Overloaded"}}',
                when=IS_COMPACTION,
            ),
            "refused",
            "error_text",
        ),
        ("unrelated", unrelated, "refused", "no_common_line"),
        (
            "longer",
            lambda _n: api.reply(_echo_longer, when=IS_COMPACTION),
            "refused",
            "not_smaller",
        ),
        ("crash", lambda _n: crash.touch(), "failed", ""),  # claude killed mid-stream
    ]
    async with running_harness(settings) as h:
        path = h.harness.cfg.notes_path
        history = NotesHistory(h.harness.cfg.state_dir)
        for i, (tag, script, outcome, check) in enumerate(cases, start=1):
            original = big_notes(tag)
            script(original)
            path.write_text(original)
            end = await compaction_end(h, i)
            api.clear()  # what the step did not use
            assert (end["outcome"], end["check"]) == (outcome, check), (tag, end)
            assert not end["replaced"] and end["error"], (tag, end)
            assert path.read_text() == original, tag
            # the notes given to the compaction are kept; nothing it said is
            latest = history.latest()
            assert latest is not None and latest.sha256 == sha(original), tag
            assert all(v.kind == "change" for v in history.versions()), tag
        by_tag = dict(zip([c[0] for c in cases], ends(h), strict=True))
        assert "claude exited with" in by_tag["crash"]["error"]
        assert "3 bytes" in by_tag["useless"]["error"] and "'ok'" in by_tag["useless"]["error"]
        assert "API Error: 529" in by_tag["errortext"]["error"]
        assert "cut off" in by_tag["cutoff"]["error"]
        # the CLI did ask the cut-off model to go on
        assert any("Output token limit hit" in r.last_user_text() for r in api.requests)
        # every case's notes are a version of their own
        assert {v.sha256 for v in history.versions()} >= {sha(big_notes(c[0])) for c in cases}

        # a compaction that did not replace the notes is not retried until they
        # change: a whole turn (loop iterations) goes by without one
        api.reply("pong", when=last_user_mentions("ping-after"))
        await stack.send(name, "ping-after")
        assert (await h.turn_end(1))["outcome"] == "ok"
        assert len(ends(h)) == len(cases)
        crash.unlink()
        final = big_notes("final")
        api.reply(plausible(final), when=IS_COMPACTION)
        path.write_text(final)
        end = await compaction_end(h, len(cases) + 1)
        assert end["outcome"] == "compacted", end
        assert path.read_text() == plausible(final)
        *_, before, after = history.versions()
        assert (before.sha256, after.sha256) == (sha(final), sha(plausible(final)))
        assert history.read(before.v).decode() == final
        # the crash never reached the API
        assert not any("crash fact" in r.last_user_text() for r in api.requests)


async def test_no_compaction_destroys_a_fact(stack: Stack, api: ScriptedAnthropic) -> None:
    """The field report: 700 facts, a compaction answering ``ok``, then more
    compactions; every version stays readable with ``hive notes``."""
    name = agent_name("nk")
    await stack.spawn(name)
    settings = stack.harness_settings(name)  # the default limit, 32 KiB
    facts = "".join(
        f"- fact {i:03d}: the release of component {i} is signed by key k{i:03d}, see ops/{i}.md\n"
        for i in range(700)
    )
    assert len(facts) > settings.harness.notes_compact_bytes
    api.reply("ok", when=IS_COMPACTION)
    async with running_harness(settings) as h:
        path = h.harness.cfg.notes_path
        path.write_text(facts)
        end = await compaction_end(h, 1)
        assert (end["outcome"], end["check"]) == ("refused", "too_small"), end
        assert path.read_text() == facts

        # two real compactions in a row: neither can lose the 700 facts
        first = plausible(facts, keep=300)
        api.reply(first, when=IS_COMPACTION)
        grown = first + big_notes("later", 400)
        path.write_text(facts + "- one more fact\n")  # the file changed: tried again
        assert (await compaction_end(h, 2))["outcome"] == "compacted"
        second = plausible(grown, keep=200)
        api.reply(second, when=IS_COMPACTION)
        path.write_text(grown)
        assert (await compaction_end(h, 3))["outcome"] == "compacted"
        assert path.read_text() == second

    op = rig.operator_settings(stack.settings, stack.nats)
    code, out, err = await rig.hive_cli(op, "notes", name, "--history", "--json")
    assert code == 0, err
    versions = json.loads(out)["versions"]
    kinds = [(v["kind"], v["bytes"]) for v in versions]
    assert kinds[0] == ("change", len(facts)), kinds
    assert [k for k, _ in kinds].count("compaction") == 2, kinds
    assert versions[-1]["sha256"] == sha(second)
    v1 = versions[0]["v"]
    code, out, _ = await rig.hive_cli(op, "notes", name, "--version", str(v1))
    assert code == 0 and out == facts
    code, out, _ = await rig.hive_cli(op, "notes", name)
    assert code == 0 and out == second
    code, out, _ = await rig.hive_cli(op, "notes", name, "--history")
    assert code == 0 and out.splitlines()[0].split() == [
        "V",
        "TIME",
        "KIND",
        "TURN",
        "BYTES",
        "NOTE",
    ]
    assert v1 == 1 and "compacted from v2: " in out and "compacted from v4: " in out
    code, _, err = await rig.hive_cli(op, "notes", name, "--version", "999")
    assert code == 1 and err.strip().splitlines()[-1] == f"hive: {name} has no notes version 999"


def _echo_longer(req: Request) -> Block:
    """The notes given, plus a line."""
    body = req.last_user_text().split("--- notes.md ---\n", 1)[-1]
    return text(body + "\n- and one more line that makes it longer\n")
