"""``hive.admin.lifecycle.notes``: an agent's notes and their kept versions.

The state dir is the agent's to write: lifecycle reads it without following
symlinks and bounds what it hands back.
"""

from __future__ import annotations

import json
import os

import pytest

from hyperhive.common import rpc
from hyperhive.common.errors import BadRequest, NotFound
from hyperhive.common.notes import MAX_READ_BYTES, NotesHistory, history_parts
from hyperhive.common.paths import AgentPaths
from hyperhive.common.wire.lifecycle import NotesReply, NotesRequest
from tests.lifecycle.helpers import Operator, admin, serving


async def notes(nc, name: str, **kw) -> NotesReply:  # type: ignore[no-untyped-def]
    return await rpc.request(
        nc, admin("notes"), NotesRequest(name=name, **kw), NotesReply, timeout=30
    )


async def test_notes_versions_and_kept_state(lc_settings, operator_nc):
    op = Operator(operator_nc)
    async with serving("lifecycle", lc_settings, operator_nc):
        await op.spawn("nota")
        state = AgentPaths.of(lc_settings, "nota").state
        reply = await notes(operator_nc, "nota")
        assert not reply.exists and reply.text == ""
        assert (await notes(operator_nc, "nota", history=True)).versions == []

        history = NotesHistory(state)
        history.record(b"# one\n", "change", turn=3)
        history.record(b"# one\n", "change", turn=4)  # unchanged: not a version
        history.record(b"# two\n", "compaction", note="compacted from v1")
        (state / "notes.md").write_text("# two\n")

        reply = await notes(operator_nc, "nota")
        assert (reply.exists, reply.text, reply.bytes, reply.truncated) == (
            True,
            "# two\n",
            6,
            False,
        )
        listed = (await notes(operator_nc, "nota", history=True)).versions
        assert [(v.v, v.kind, v.turn, v.bytes) for v in listed] == [
            (1, "change", 3, 6),
            (2, "compaction", None, 6),
        ]
        assert (await notes(operator_nc, "nota", version=1)).text == "# one\n"
        with pytest.raises(NotFound, match="no notes version 9"):
            await notes(operator_nc, "nota", version=9)

        # large notes: the first MAX_READ_BYTES, and the full size
        (state / "notes.md").write_bytes(b"x" * (MAX_READ_BYTES + 10))
        reply = await notes(operator_nc, "nota")
        assert reply.truncated and reply.bytes == MAX_READ_BYTES + 10
        assert len(reply.text) == MAX_READ_BYTES

        # a destroyed agent whose state was kept: its notes are still there
        await op.destroy("nota")
        assert (await notes(operator_nc, "nota", version=2)).text == "# two\n"


async def test_notes_do_not_follow_symlinks(lc_settings, operator_nc, tmp_path):
    op = Operator(operator_nc)
    secret = tmp_path / "secret"
    secret.write_text("host secret\n")
    async with serving("lifecycle", lc_settings, operator_nc):
        await op.spawn("notb")
        state = AgentPaths.of(lc_settings, "notb").state
        os.symlink(secret, state / "notes.md")
        reply = await notes(operator_nc, "notb")
        assert not reply.exists and reply.text == ""
        # a history dir (or log) that is a symlink is not read either
        hist = state.joinpath(*history_parts())
        hist.parent.mkdir(parents=True, exist_ok=True)
        NotesHistory(tmp_path / "other").record(b"# not yours\n", "change")
        os.symlink(tmp_path / "other" / history_parts()[0] / history_parts()[1], hist)
        assert (await notes(operator_nc, "notb", history=True)).versions == []
        with pytest.raises(NotFound):
            await notes(operator_nc, "notb", version=1)


async def test_notes_bad_requests(lc_settings, operator_nc):
    async with serving("lifecycle", lc_settings, operator_nc):
        for bad in ("", "A", "../x", "a.b"):
            with pytest.raises(BadRequest):
                await notes(operator_nc, bad)
        with pytest.raises(NotFound, match="no agent"):
            await notes(operator_nc, "nobody")
        for payload in (b'{"name": "x", "version": 0}', b'{"name": 5}', b"{"):
            msg = await operator_nc.request(admin("notes"), payload, timeout=10)
            assert json.loads(msg.data)["error"]["code"] == "bad_request", payload
