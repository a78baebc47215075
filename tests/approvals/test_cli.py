"""The operator's CLI verbs, run as the ``hive`` command against the services."""

from __future__ import annotations

import json
import re
import socket

from hyperhive.approvals import gitops
from hyperhive.cli.client import decided_by
from hyperhive.cli.embedded import EmbeddedNats
from hyperhive.common.wire.approvals import (
    ApplyCommitRequest,
    ApprovalQueued,
    AskRequest,
    SpawnToolRequest,
)
from hyperhive.common.wire.events import OperatorAnswered
from hyperhive.common.wire.lifecycle import DraftInfo
from tests import rig
from tests.approvals.conftest import Hive, agent_name


async def hive_cli(hive: Hive, nats: EmbeddedNats, *args: str) -> tuple[int, str, str]:
    return await rig.hive_cli(rig.operator_settings(hive.settings, nats), *args)


async def test_operator_cli_round_trip(hive: Hive, nats_server: EmbeddedNats) -> None:
    name = agent_name("cl")
    await hive.spawn(name)
    ids = []
    for n in (1, 2):
        sha = hive.commit(name, {"agent.toml": f'model = "m{n}"\n', f"f{n}.txt": "x\n"}, f"c{n}")
        q = await hive.tool(
            "request_apply_commit", ApplyCommitRequest(name=name, commit_ref=sha), ApprovalQueued
        )
        ids.append(q.id)

    async def cli(*args: str) -> tuple[int, str, str]:
        return await hive_cli(hive, nats_server, *args)

    code, out, _ = await cli("approvals", "--json")
    assert code == 0
    assert [(a["id"], a["state"]) for a in json.loads(out)] == [
        (ids[1], "pending"),
        (ids[0], "pending"),
    ]
    code, out, _ = await cli("diff", str(ids[0]))
    assert code == 0 and '+model = "m1"' in out and "f1.txt" in out

    code, out, _ = await cli("approve", str(ids[0]))
    assert code == 0 and f"approval {ids[0]} (ApplyCommit {name}): deployed" in out
    code, _, err = await cli("approve", str(ids[0]))
    assert code == 1 and f"hive: approval {ids[0]} is already deployed" in err

    code, out, _ = await cli("deny", str(ids[1]), "--note", "one change at a time")
    assert code == 0 and "denied" in out
    code, out, _ = await cli("approvals")
    assert code == 0 and out.strip() == "no pending approvals"
    code, out, _ = await cli("approvals", "--all")
    assert code == 0 and "one change at a time" in out and "deployed" in out
    # who decided each, and when: this user on this host, through the CLI
    by = decided_by()
    assert by.startswith("operator via cli (") and by.endswith(f"@{socket.gethostname()})")
    header, *rows = out.splitlines()
    assert "DECIDED BY" in header and "DECIDED AT" in header
    for approval_id in ids:
        (row,) = [r for r in rows if r.split()[0] == str(approval_id)]
        assert by in row, row
        assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", row.split(by, 1)[1]), row
    code, out, _ = await cli("approvals", "--all", "--json")
    decided = {a["id"]: a for a in json.loads(out)}
    for approval_id in ids:
        assert decided[approval_id]["decided_by"] == by and decided[approval_id]["decided_at"]
    applied = hive.paths(name).applied
    assert f"Decided-by: {by}" in gitops.tag_message(applied, f"deployed/{ids[0]}")
    assert f"Decided-by: {by}" in gitops.tag_message(applied, f"denied/{ids[1]}")

    q = await hive.tool(
        "ask_operator", AskRequest(question="which?", options=["a", "b"]), ApprovalQueued
    )
    code, out, _ = await cli("questions", "--json")
    assert code == 0 and json.loads(out)[0]["options"] == ["a", "b"]
    code, _, err = await cli("answer", str(q.id))
    assert code == 2 and "one of TEXT, --choice (repeatable) or --none" in err
    code, out, _ = await cli("answer", str(q.id), "--choice", "b")
    assert code == 0 and f"question {q.id} answered: b" in out
    code, out, _ = await cli("questions", "--all", "--json")
    assert {x["id"]: x for x in json.loads(out)}[q.id]["answered_by"] == by
    code, out, _ = await cli("questions", "--all")
    assert "ANSWERED BY" in out.splitlines()[0]
    assert by in next(r for r in out.splitlines() if r.split()[0] == str(q.id))
    code, out, _ = await cli("questions")
    assert code == 0 and out.strip() == "no open questions"


async def test_answer_text_none_and_deny_edge_cases(hive: Hive, nats_server: EmbeddedNats) -> None:
    async def cli(*args: str) -> tuple[int, str, str]:
        return await hive_cli(hive, nats_server, *args)

    free = await hive.tool("ask_operator", AskRequest(question="why?"), ApprovalQueued)
    ask = AskRequest(question="which?", options=["a", "b"], multi=True)
    boxes = await hive.tool("ask_operator", ask, ApprovalQueued)
    radio = await hive.tool(
        "ask_operator", AskRequest(question="one?", options=["x", "y"]), ApprovalQueued
    )
    code, out, _ = await cli("answer", str(free.id), "because it is faster")
    assert code == 0 and f"question {free.id} answered: because it is faster" in out
    # a checkbox question answered with nothing ticked
    code, out, _ = await cli("answer", str(boxes.id), "--none", "--json")
    assert code == 0 and json.loads(out)["answer"] == []
    # --none is no answer to a radio question, nor does it go with others
    code, _, err = await cli("answer", str(radio.id), "--none")
    assert code == 1 and "choose exactly one option" in err
    code, _, err = await cli("answer", str(radio.id), "--none", "--choice", "x")
    assert code == 2 and "one of TEXT" in err
    code, _, err = await cli("answer", str(free.id), "again")
    assert code == 1 and f"question {free.id} is already answered" in err
    inbox = await hive.inbox()
    answers = {e.question_id: e.answer for e in inbox if isinstance(e, OperatorAnswered)}
    assert answers == {free.id: ["because it is faster"], boxes.id: []}

    name = agent_name("cl")
    await hive.spawn(name)
    sha = hive.commit(name, {"agent.toml": 'model = "m"\n'})
    q = await hive.tool(
        "request_apply_commit", ApplyCommitRequest(name=name, commit_ref=sha), ApprovalQueued
    )
    # the note is required (it is the tag's message and what the manager reads)
    code, _, err = await cli("deny", str(q.id))
    assert code == 2 and "the following arguments are required: --note" in err
    code, _, err = await cli("deny", str(q.id), "--note", "  ")
    assert code == 2 and "--note must say why" in err
    code, out, _ = await cli("deny", str(q.id), "--note", "not this one")
    assert code == 0 and f"approval {q.id} (ApplyCommit {name}): denied  tag denied/{q.id}" in out
    code, _, err = await cli("deny", str(q.id), "--note", "again")
    assert code == 1 and f"hive: approval {q.id} is already denied" in err


SECRET = "s3cr3t-value"
DEEP_ENV = "".join(f'REGION_{i} = "eu-west-{i}"\n' for i in range(12))


async def test_secrets_are_masked_in_diff_and_config(hive: Hive, nats_server: EmbeddedNats) -> None:
    """``hive diff`` and ``hive config`` (text and --json) mask an MCP server's
    env values, also in a hunk far below its table header; --show-secrets
    prints them. Run as the installed ``hive`` executable."""
    settings = rig.operator_settings(hive.settings, nats_server)

    async def cli(*args: str) -> tuple[int, str, str]:
        return await rig.hive_exe_cli(settings, *args)

    name = agent_name("sc")
    await hive.spawn(name)
    toml = (
        'model = "m1"\n\n[mcp_servers.tools]\ncommand = "tools-mcp"\n'
        f'env = {{ EXTRA_TOKEN = "{SECRET}" }}\n\n[mcp_servers.geo]\ncommand = "geo-mcp"\n\n'
        f"[mcp_servers.geo.env]\n{DEEP_ENV}"
    )
    sha = hive.commit(name, {"agent.toml": toml}, "tools")
    first = await hive.tool(
        "request_apply_commit", ApplyCommitRequest(name=name, commit_ref=sha), ApprovalQueued
    )
    for args in (("diff", str(first.id)), ("diff", str(first.id), "--json")):
        code, out, err = await cli(*args)
        assert code == 0, err
        assert "EXTRA_TOKEN" in out and "tools-mcp" in out and "REGION_9" in out
        assert SECRET not in out and "eu-west-" not in out, out
    code, out, _ = await cli("diff", str(first.id), "--show-secrets")
    assert code == 0 and f'+env = {{ EXTRA_TOKEN = "{SECRET}" }}' in out and "eu-west-9" in out
    code, out, _ = await cli("approve", str(first.id))
    assert code == 0 and "deployed" in out

    # a change deep in the env table: its hunk starts far below the header
    sha = hive.commit(name, {"agent.toml": toml.replace("eu-west-9", "eu-north-9")}, "move")
    second = await hive.tool(
        "request_apply_commit", ApplyCommitRequest(name=name, commit_ref=sha), ApprovalQueued
    )
    code, out, _ = await cli("diff", str(second.id))
    assert code == 0 and "-REGION_9 = " in out and "+REGION_9 = " in out
    assert "eu-north-9" not in out and "eu-west-" not in out, out
    code, out, _ = await cli("diff", str(second.id), "--show-secrets")
    assert code == 0 and '+REGION_9 = "eu-north-9"' in out

    for args in (("config", name), ("config", name, "--json")):
        code, out, err = await cli(*args)
        assert code == 0, err
        assert "EXTRA_TOKEN" in out and "m1" in out and "geo-mcp" in out
        assert SECRET not in out and "eu-west-" not in out, out
    code, out, _ = await cli("config", name, "--show-secrets")
    assert code == 0 and f'EXTRA_TOKEN = "{SECRET}"' in out and 'REGION_3 = "eu-west-3"' in out


async def test_a_draft_is_an_agent_to_the_cli(hive: Hive, nats_server: EmbeddedNats) -> None:
    """The one agent-name check knows drafts: ``hive destroy`` discards one."""
    settings = rig.operator_settings(hive.settings, nats_server)
    name = agent_name("dr")
    await hive.tool("request_spawn_draft", SpawnToolRequest(name=name), DraftInfo)
    code, out, err = await rig.hive_exe_cli(settings, "inbox", name)
    assert (code, out.strip()) == (0, f"{name}: inbox empty"), err
    code, out, err = await rig.hive_exe_cli(settings, "destroy", name)
    assert code == 0 and out.startswith(f"destroyed {name}"), err
    code, _, err = await rig.hive_exe_cli(settings, "destroy", name)
    assert code == 1 and err.strip().splitlines()[-1] == f"hive: agent '{name}' is destroyed"
