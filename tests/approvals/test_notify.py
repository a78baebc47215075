"""The webhook (``notify.url``): one JSON POST per waiting decision, against a
real HTTP receiver on this host: delivered, retried on failures, never twice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg
import msgspec
import pytest

from hyperhive.approvals import notify
from hyperhive.common.config import NotifySettings, Settings
from hyperhive.common.errors import ConfigError
from hyperhive.common.wire.approvals import (
    AnswerRequest,
    ApprovalQueued,
    AskRequest,
    QuestionInfo,
    SpawnToolRequest,
)
from tests import rig
from tests.approvals.conftest import Hive, agent_name


@dataclass
class Receiver:
    """A minimal HTTP server that records each POST and answers with the next
    status of ``statuses`` (200 once they run out)."""

    port: int
    statuses: list[int] = field(default_factory=list)
    posts: list[tuple[dict[str, str], dict[str, object]]] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {
            k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ln)
        }
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        status = self.statuses.pop(0) if self.statuses else 200
        is_json = headers.get("content-type") == "application/json"
        self.posts.append((headers, json.loads(body) if is_json else {"text": body.decode()}))
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".encode()
        )
        await writer.drain()
        writer.close()

    def keys(self) -> list[str]:
        return [str(h.get(notify.HEADER.lower())) for h, _ in self.posts]

    def bodies(self, key: str) -> list[dict[str, object]]:
        return [b for h, b in self.posts if h.get(notify.HEADER.lower()) == key]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def receiver(
    port: int | None = None, statuses: list[int] | None = None
) -> AsyncIterator[Receiver]:
    r = Receiver(port or free_port(), list(statuses or []))
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


def with_webhook(settings: Settings, port: int, fmt: str = "json") -> Settings:
    return msgspec.structs.replace(
        settings,
        notify=NotifySettings(
            url=f"http://127.0.0.1:{port}/hook/secret-topic",
            format=fmt,
            dashboard_url="https://hive.example:7000",
            backoff_s=0.2,
            backoff_max_s=1.0,
            sweep_s=0.2,
            timeout_s=2.0,
        ),
    )


async def rows(settings: Settings) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(settings.database.url)
    try:
        return await conn.fetch(
            "SELECT decision, ref_id, state, attempts, last_error"
            " FROM approvals.notifications ORDER BY id"
        )
    finally:
        await conn.close()


async def ask(hive: Hive, text: str) -> int:
    queued = await hive.tool("ask_operator", AskRequest(question=text), ApprovalQueued)
    return queued.id


async def settle(seconds: float = 1.5) -> None:
    """Lets several sweeps pass (to show that nothing more is sent)."""
    await asyncio.sleep(seconds)


async def test_delivered_once_each(peers: Hive) -> None:
    async with receiver() as r:
        settings = with_webhook(peers.settings, r.port)
        async with rig.running_service("approvals", settings):
            qid = await ask(peers, "Which region should the new agent use?")
            name = agent_name("nt")
            spawn = await peers.tool("request_spawn", SpawnToolRequest(name=name), ApprovalQueued)
            await rig.eventually(lambda: len(r.posts) >= 2, timeout=10, what="two posts")
            await settle()
        assert sorted(r.keys()) == sorted([f"question-{qid}", f"approval-{spawn.id}"])
        (question,) = r.bodies(f"question-{qid}")
        assert question["type"] == "question"
        assert question["message"] == "Which region should the new agent use?"
        assert question["agent"] == "hm1nd"
        assert question["url"] == f"https://hive.example:7000/#question-{qid}"
        (approval,) = r.bodies(f"approval-{spawn.id}")
        assert approval["type"] == "approval" and approval["kind"] == "Spawn"
        assert approval["agent"] == name
        assert name in str(approval["title"]) and approval["url"].endswith(f"#approval-{spawn.id}")
        assert {(x["decision"], x["state"]) for x in await rows(settings)} == {
            ("question", "sent"),
            ("approval", "sent"),
        }


async def test_retried_on_server_error(peers: Hive) -> None:
    async with receiver(statuses=[500, 503]) as r:
        settings = with_webhook(peers.settings, r.port)
        async with rig.running_service("approvals", settings):
            qid = await ask(peers, "retry me")
            await rig.eventually(lambda: len(r.posts) >= 3, timeout=15, what="three tries")
            await settle()
        assert r.keys() == [f"question-{qid}"] * 3
        (row,) = await rows(settings)
        assert (row["state"], row["attempts"]) == ("sent", 3)


async def test_retried_on_connection_refused(peers: Hive) -> None:
    port = free_port()  # nothing listens yet
    settings = with_webhook(peers.settings, port)
    async with rig.running_service("approvals", settings):
        qid = await ask(peers, "is anyone there?")

        async def failed_twice() -> bool:
            found = await rows(settings)  # none until the sender's first sweep
            return any(r["attempts"] >= 2 and "cannot connect" in r["last_error"] for r in found)

        await rig.eventually(failed_twice, timeout=15, what="two refused tries")
        async with receiver(port) as r:
            await rig.eventually(lambda: r.posts, timeout=15, what="a post")
            await settle()
    assert r.keys() == [f"question-{qid}"]
    (row,) = await rows(settings)
    assert row["state"] == "sent"


async def test_not_sent_twice_across_restarts(peers: Hive) -> None:
    async with receiver() as r:
        settings = with_webhook(peers.settings, r.port)
        async with rig.running_service("approvals", settings):
            first = await ask(peers, "before the restart")
            await rig.eventually(lambda: r.posts, timeout=10, what="first post")
        # asked while nothing runs: sent by the next start, once
        async with rig.running_service("approvals", peers.settings):  # no webhook
            second = await ask(peers, "while the webhook is off")
        async with rig.running_service("approvals", settings):
            await rig.eventually(lambda: len(r.posts) >= 2, timeout=10, what="second post")
            await settle()
        async with rig.running_service("approvals", settings):
            await settle()
    assert r.keys() == [f"question-{first}", f"question-{second}"]


async def test_decided_before_sent_is_skipped(peers: Hive) -> None:
    port = free_port()
    settings = with_webhook(peers.settings, port)
    async with rig.running_service("approvals", settings):
        qid = await ask(peers, "answered quickly")

        async def tried() -> bool:  # recorded and refused once (nothing listens yet)
            return any(r["attempts"] >= 1 for r in await rows(settings))

        await rig.eventually(tried, timeout=15, what="a refused try")
        await peers.admin("answer", AnswerRequest(id=qid, answer=["yes"]), QuestionInfo)
        async with receiver(port) as r:

            async def ended() -> bool:
                return any(r["state"] != "pending" for r in await rows(settings))

            await rig.eventually(ended, timeout=15, what="notification ended")
    (row,) = await rows(settings)
    assert row["state"] == "skipped"
    assert r.posts == []


async def test_ntfy_format(peers: Hive) -> None:
    async with receiver() as r:
        settings = with_webhook(peers.settings, r.port, "ntfy")
        async with rig.running_service("approvals", settings):
            qid = await ask(peers, "Ship it tonight?")
            await rig.eventually(lambda: r.posts, timeout=10, what="a post")
    ((headers, body),) = r.posts
    assert body == {"text": "Ship it tonight?"}
    assert headers["title"] == f"Question #{qid} from hm1nd"
    assert headers["click"] == f"https://hive.example:7000/#question-{qid}"
    assert headers["content-type"].startswith("text/plain")


def test_bad_format_refused() -> None:
    with pytest.raises(ConfigError, match=r"notify\.format"):
        notify.check(NotifySettings(format="xml"))


@pytest.mark.parametrize(
    "url", ["ftp://example.org/x", "not a url", "http://", "file:///etc/passwd"]
)
def test_bad_url_refused_at_start(url: str) -> None:
    with pytest.raises(ConfigError, match=r"notify\.url"):
        notify.check(NotifySettings(url=url))


def test_url_redacted_in_logs() -> None:
    assert notify.redact("https://u:p@ntfy.sh/secret-topic?x=1") == "https://ntfy.sh/…"


def test_backoff_doubles_to_cap() -> None:
    s = NotifySettings(backoff_s=2, backoff_max_s=10)
    assert [notify.backoff(s, n) for n in (1, 2, 3, 4)] == [2, 4, 8, 10]
