"""The operator's message commands, run as ``hive …`` processes against the broker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from hyperhive.cli.cmd_messages import parse_since
from hyperhive.cli.embedded import EmbeddedPostgres
from hyperhive.cli.main import EXIT_BROKEN_PIPE
from hyperhive.common import rpc, subjects
from hyperhive.common.errors import BadRequest, HiveError
from hyperhive.common.wire.base import Ping, Pong
from tests import rig
from tests.broker.conftest import EventLog, Hive, ack, broker_settings, hive_of, recv, send

TIMEOUT = 60


def _env(hive: Hive) -> dict[str, str]:
    return rig.cli_env(rig.operator_settings(hive.settings, hive.nats))


async def hive_cli(hive: Hive, *args: str) -> tuple[int, str, str]:
    return await rig.hive_cli(
        rig.operator_settings(hive.settings, hive.nats), *args, timeout=TIMEOUT
    )


async def test_send_inbox_messages_and_status(hive: Hive):
    a, na = await hive.spawn()
    code, out, err = await hive_cli(hive, "send", a, "hello", "from", "the", "cli", "--json")
    assert code == 0, err
    message_id = json.loads(out)["id"]

    code, out, _ = await hive_cli(hive, "inbox", a, "--json")
    assert code == 0
    assert [(m["id"], m["sender"], m["body"]) for m in json.loads(out)] == [
        (message_id, "operator", "hello from the cli")
    ]
    code, out, _ = await hive_cli(hive, "inbox", a)
    assert code == 0 and "hello from the cli" in out and "committed" in out

    got = await recv(na, a)
    assert got.message is not None and got.message.id == message_id
    await ack(na, a, message_id)
    reply = await send(na, a, "operator", "thanks, operator")

    code, out, _ = await hive_cli(hive, "messages", "--agent", a, "--since", "1h", "--json")
    assert code == 0
    history = json.loads(out)
    assert [(m["id"], m["state"]) for m in history] == [
        (message_id, "acked"),
        (reply.id, "committed"),
    ]
    code, out, _ = await hive_cli(hive, "messages", "--agent", a, "--limit", "1")
    assert code == 0 and "thanks, operator" in out and "hello from the cli" not in out

    code, out, _ = await hive_cli(hive, "message-status", str(message_id), "--json")
    assert code == 0
    status = json.loads(out)
    assert (status["state"], status["deliveries"], status["recipient"]) == ("acked", 1, a)
    code, out, _ = await hive_cli(hive, "message-status", str(message_id))
    assert code == 0 and f"operator -> {a}: acked" in out


def _last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


async def test_errors_are_one_clear_line(hive: Hive):
    code, out, err = await hive_cli(hive, "send", "nobody9", "hi")
    assert code == 1 and out == ""
    assert _last_line(err) == "hive: no agent named 'nobody9'"
    code, _, err = await hive_cli(hive, "message-status", "987654321")
    assert code == 1 and _last_line(err) == "hive: no message with id 987654321"
    code, _, err = await hive_cli(hive, "messages", "--since", "yesterday")
    assert code == 1 and "--since 'yesterday'" in err


async def test_tail_follows_messages_until_interrupted(hive: Hive):
    a, na = await hive.spawn()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hyperhive.cli.main",
        "tail",
        "--agent",
        a,
        env=_env(hive),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(TIMEOUT):
            assert proc.stderr is not None and proc.stdout is not None
            assert b"following messages" in await proc.stderr.readline()
            sent = await send(na, a, "operator", "watch this")
            line = (await proc.stdout.readline()).decode()
            assert f"#{sent.id} {a} -> operator  sent: watch this" in line
            proc.send_signal(signal.SIGINT)
            assert await proc.wait() == 130
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def start_tail(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    """``hive tail <args>`` with the operator's credentials, once it follows."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hyperhive.cli.main",
        "tail",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    if "--json" not in args:
        async with asyncio.timeout(TIMEOUT):
            assert b"following messages" in await proc.stderr.readline()
    return proc


async def read_events(proc: asyncio.subprocess.Process, count: int) -> list[dict[str, object]]:
    """The next ``count`` lines of ``hive tail --json``."""
    assert proc.stdout is not None
    out = []
    async with asyncio.timeout(TIMEOUT):
        while len(out) < count:
            line = await proc.stdout.readline()
            assert line, "hive tail ended"
            out.append(json.loads(line))
    return out


async def stop_tail(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGINT)
        try:
            async with asyncio.timeout(TIMEOUT):
                assert await proc.wait() == 130
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_tail_since_replays_from_hive_events_then_follows(hive: Hive):
    a, na = await hive.spawn()
    b, nb = await hive.spawn()
    before = await send(na, a, b, "before the tail started")
    got = await recv(nb, b)
    assert got.message is not None
    await ack(nb, b, before.id)
    proc = await start_tail(_env(hive), "--agent", a, "--since", "1h", "--json")
    try:
        replayed = await read_events(proc, 3)
        assert [(e["kind"], e["data"]["id"]) for e in replayed] == [  # type: ignore[index]
            ("message.sent", before.id),
            ("message.delivered", before.id),
            ("message.acked", before.id),
        ]
        live = await send(nb, b, a, "while it follows")
        [event] = await read_events(proc, 1)
        assert (event["kind"], event["data"]["id"]) == ("message.sent", live.id)  # type: ignore[index]
        assert event["data"]["body"] == "while it follows"  # type: ignore[index]
    finally:
        await stop_tail(proc)


@pytest.mark.slow
async def test_tail_leaves_no_gap_when_its_connection_was_down(
    postgres_server: EmbeddedPostgres, tmp_path: Path
):
    """Events published while ``hive tail`` was cut off are shown once it is back."""
    with rig.nats_server() as nats:
        db = await rig.create_database(postgres_server.url)
        settings = broker_settings(nats, db, tmp_path / "home")
        async with hive_of(nats, settings) as h:
            a, na = await h.spawn()
            proc = await start_tail(_env(h), "--agent", a)
            try:
                first = await send(na, a, "operator", "first")
                assert proc.stdout is not None
                async with asyncio.timeout(TIMEOUT):
                    assert f"#{first.id} " in (await proc.stdout.readline()).decode()
                # the tail is frozen while NATS restarts: its connection breaks,
                # and the next events are published before it reconnects
                proc.send_signal(signal.SIGSTOP)
                await asyncio.to_thread(nats.stop)
                await asyncio.to_thread(nats.start)
                await rig.eventually(
                    lambda: _pong(h), timeout=TIMEOUT, interval=0.2, what="broker back"
                )
                later = [await send(na, a, "operator", f"while cut off {i}") for i in range(3)]
                await rig.eventually(
                    lambda: _in_stream(h, later[-1].id), timeout=TIMEOUT, what="events stored"
                )
                proc.send_signal(signal.SIGCONT)
                async with asyncio.timeout(TIMEOUT):
                    lines = [(await proc.stdout.readline()).decode() for _ in later]
                for sent, line in zip(later, lines, strict=True):
                    assert f"#{sent.id} {a} -> operator  sent: while cut off" in line, lines
            finally:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGCONT)
                await stop_tail(proc)


async def _pong(h: Hive) -> bool:
    try:
        pong = await rpc.request(
            h.operator, subjects.admin("broker", "ping"), Ping(), Pong, timeout=2
        )
    except HiveError:
        return False
    return pong.database == "ok"


async def _in_stream(h: Hive, message_id: int) -> bool:
    js = h.service.jetstream()
    try:
        msg = await js.get_last_msg(subjects.EVENTS_STREAM, subjects.event("message.sent"))
    except Exception:
        return False
    return bool(json.loads(msg.data)["data"]["id"] == message_id)


def test_since_takes_unix_time_iso_time_and_ages():
    assert parse_since("1700000000") == 1_700_000_000.0
    assert parse_since("10m", now=1000.0) == 400.0
    assert parse_since("2h", now=10_000.0) == 2800.0
    assert parse_since("2026-01-02T03:04:05+00:00") == 1767323045.0
    with pytest.raises(BadRequest):
        parse_since("last week")


async def test_prune_before_deletes_old_acked_messages_only(hive: Hive):
    a, na = await hive.spawn()
    b, nb = await hive.spawn()
    old = await send(na, a, b, "old, acked")
    pending = await send(na, a, b, "old, never received")
    got = await recv(nb, b)
    assert got.message is not None and got.message.id == old.id
    await ack(nb, b, old.id)
    await asyncio.sleep(0.05)
    cutoff = time.time()
    await asyncio.sleep(0.05)
    new = await send(na, a, b, "new, acked")

    events = await hive.service.subscribe(subjects.event(subjects.EV_MESSAGES_PRUNED))
    code, out, err = await hive_cli(hive, "messages", "--prune-before", str(cutoff), "--json")
    assert code == 0, err
    reply = json.loads(out)
    assert reply["deleted"] >= 1 and reply["before"] == pytest.approx(cutoff)

    code, out, _ = await hive_cli(hive, "messages", "--agent", b, "--json")
    assert code == 0
    assert [m["id"] for m in json.loads(out)] == [pending.id, new.id]
    record = json.loads((await events.next_msg(timeout=TIMEOUT)).data)
    assert record["data"]["by"] == "operator" and record["data"]["deleted"] >= 1
    await events.unsubscribe()

    code, out, _ = await hive_cli(hive, "messages", "--prune-before", "1h")
    assert code == 0 and out.startswith("pruned 0 acked messages created before")
    code, _, err = await hive_cli(hive, "messages", "--prune-before", "1h", "--agent", a)
    assert code != 0 and "--prune-before deletes by time only" in err
    code, _, err = await hive_cli(hive, "messages", "--prune-before", "2999-01-01")
    assert code != 0 and "future" in err


# --- issue 16: unknown agents, stdin bodies, broken pipes, through the real `hive` ---


async def exe(hive: Hive, *args: str, **kw: object) -> tuple[int, str, str]:
    """The installed ``hive`` executable with the operator's credentials."""
    settings = rig.operator_settings(hive.settings, hive.nats)
    return await rig.hive_exe_cli(settings, *args, timeout=TIMEOUT, **kw)  # type: ignore[arg-type]


GHOST_COMMANDS = [
    ("inbox", "ghost"),
    ("send", "ghost", "hi"),
    ("messages", "--agent", "ghost"),
    ("tail", "--agent", "ghost"),
    ("logs", "ghost"),
    ("config", "ghost"),
    ("start", "ghost"),
    ("stop", "ghost"),
    ("restart", "ghost"),
    ("kill", "ghost"),
    ("update", "ghost"),
    ("destroy", "ghost"),
    ("purge", "ghost"),
]


@pytest.mark.parametrize("args", GHOST_COMMANDS, ids=[" ".join(a) for a in GHOST_COMMANDS])
async def test_unknown_agent_is_an_error_naming_it(hive: Hive, args: tuple[str, ...]):
    code, out, err = await exe(hive, *args)
    assert (code, out) == (1, ""), (code, out, err)
    assert _last_line(err) == "hive: no agent named 'ghost'"


async def test_agent_names_checked_once_for_every_command(hive: Hive):
    code, _, err = await exe(hive, "inbox", "Bad_Name")
    assert code == 1 and _last_line(err).startswith("hive: invalid agent name 'Bad_Name'")
    a, _ = await hive.spawn()
    code, out, _ = await exe(hive, "inbox", a)
    assert (code, out.strip()) == (0, f"{a}: inbox empty")
    # the operator and the system are no agents, but their messages are history
    code, _, err = await exe(hive, "messages", "--agent", "operator", "--limit", "1")
    assert code == 0, err
    # a destroyed agent's history stays readable; it takes no new message
    b, _ = await hive.spawn()
    await hive.destroy(b)
    code, out, err = await exe(hive, "inbox", b)
    assert (code, out.strip()) == (0, f"{b}: inbox empty"), err
    code, _, err = await exe(hive, "send", b, "hi")
    assert code == 1 and _last_line(err) == f"hive: agent '{b}' is destroyed"


async def test_send_reads_the_body_from_stdin(hive: Hive):
    a, na = await hive.spawn()
    # longer than any argument list allows in one word, with lines and unicode
    body = "".join(f"line {i}: größer als ein Argument\n" for i in range(1500))
    assert 40_000 < len(body.encode()) <= 64 * 1024
    code, out, err = await exe(hive, "send", a, "-", "--json", stdin=body.encode())
    assert code == 0, err
    got = await recv(na, a)
    assert got.message is not None and got.message.id == json.loads(out)["id"]
    assert got.message.body == body.removesuffix("\n")  # one trailing newline dropped
    await ack(na, a, got.message.id)

    # over the limit: one clear line, nothing stored
    limit = hive.settings.broker.max_body_bytes
    code, out, err = await exe(hive, "send", a, "-", stdin=b"x" * (limit + 1))
    assert (code, out) == (1, "")
    assert _last_line(err) == (
        f"hive: the message on stdin is over the limit of {limit} bytes"
        " (HIVE_BROKER_MAX_BODY_BYTES)"
    )
    code, _, err = await exe(hive, "send", a, "-", stdin=b"\xff\xfe binary")
    assert code == 1 and _last_line(err) == "hive: the message on stdin is not UTF-8 text"
    code, _, err = await exe(hive, "send", a, "-", stdin=b"")
    assert code == 1 and _last_line(err) == "hive: message body is empty"
    # "-" among other words is a word, not stdin
    code, _, err = await exe(hive, "send", a, "a", "-", "b", stdin=b"ignored")
    assert code == 0, err
    got = await recv(na, a)
    assert got.message is not None and got.message.body == "a - b"
    await ack(na, a, got.message.id)
    assert (await recv(na, a)).message is None


def _closed_pipe() -> int:
    """The write end of a pipe whose reader is gone (``| head -1`` that ended)."""
    r, w = os.pipe()
    os.close(r)
    return w


@pytest.mark.parametrize(
    "args",
    [("messages",), ("messages", "--json"), ("agents",), ("--help",), ("inbox", "{a}")],
)
async def test_broken_pipe_ends_quietly(hive: Hive, args: tuple[str, ...]):
    a, na = await hive.spawn()
    for i in range(3):
        await send(na, a, "operator", f"message {i}")
    await send(na, a, a, "to self")  # something in a's inbox
    w = _closed_pipe()
    try:
        code, _, err = await exe(hive, *(x.format(a=a) for x in args), stdout=w)
    finally:
        os.close(w)
    # argparse's help drops a failed write itself (and exits 0)
    expected = 0 if args == ("--help",) else EXIT_BROKEN_PIPE
    assert err == "" and code == expected, (code, err)


async def test_piped_into_head_there_is_no_traceback(hive: Hive):
    a, na = await hive.spawn()
    for i in range(200):  # more than one buffer of output
        await send(na, a, "operator", f"message {i} " + "x" * 200)
    settings = rig.operator_settings(hive.settings, hive.nats)
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        f"set -o pipefail; '{rig.hive_exe()}' messages --limit 200 | head -1",
        env=rig.cli_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(TIMEOUT):
        out, err = await proc.communicate()
    assert out.decode().startswith("ID ")
    assert err.decode() == "" and proc.returncode in (0, EXIT_BROKEN_PIPE)


async def test_tail_into_a_closed_pipe_ends_at_its_first_line(hive: Hive):
    a, na = await hive.spawn()
    w = _closed_pipe()
    settings = rig.operator_settings(hive.settings, hive.nats)
    proc = await asyncio.create_subprocess_exec(
        rig.hive_exe(),
        "tail",
        "--agent",
        a,
        env=rig.cli_env(settings),
        stdout=w,
        stderr=asyncio.subprocess.PIPE,
    )
    os.close(w)
    try:
        async with asyncio.timeout(TIMEOUT):
            assert proc.stderr is not None
            assert b"following messages" in await proc.stderr.readline()
            await send(na, a, "operator", "nobody reads this")
            assert await proc.wait() == EXIT_BROKEN_PIPE
            assert await proc.stderr.read() == b""
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_secrets_in_messages_are_masked_in_history_and_tail(hive: Hive, events: EventLog):
    a, na = await hive.spawn()
    secret = "s3cr3t-value-42"
    sent = await send(na, a, "operator", f'my config: env = {{ EXTRA_TOKEN = "{secret}" }}')
    # the record itself, as HIVE_EVENTS stores it, holds no secret
    await events.wait_for(sent.id, ["message.sent"])
    (record,) = [e for e in events.events if e.data.get("id") == sent.id]
    assert "EXTRA_TOKEN" in record.data["body"] and secret not in record.data["body"]
    for args in (("messages", "--agent", a), ("messages", "--agent", a, "--json")):
        code, out, err = await exe(hive, *args)
        assert code == 0 and "EXTRA_TOKEN" in out and secret not in out, (out, err)
    code, out, _ = await exe(hive, "messages", "--agent", a, "--json", "--show-secrets")
    assert code == 0 and secret in out
    # HIVE_EVENTS keeps the masked text: hive tail has nothing clear to show
    proc = await start_tail(_env(hive), "--agent", a, "--since", "1h", "--json")
    try:
        (event,) = await read_events(proc, 1)
        assert event["data"]["id"] == sent.id  # type: ignore[index]
        assert "EXTRA_TOKEN" in event["data"]["body"]  # type: ignore[index]
        assert secret not in json.dumps(event)
    finally:
        await stop_tail(proc)


async def test_agent_check_warns_and_goes_on_when_lifecycle_is_down(
    postgres_server: EmbeddedPostgres, tmp_path: Path
):
    """With the broker up and lifecycle down, an inbox is still readable."""
    with rig.nats_server() as nats:
        db = await rig.create_database(postgres_server.url)
        settings = broker_settings(nats, db, tmp_path / "home")
        async with rig.running_service("broker", settings):
            code, out, err = await rig.hive_exe_cli(
                rig.operator_settings(settings, nats), "inbox", "anyone", timeout=TIMEOUT
            )
    assert (code, out.strip()) == (0, "anyone: inbox empty"), err
    assert "hive: warning: agent 'anyone' not checked: no service answers" in err
