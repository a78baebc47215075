"""What a hostile agent tries from its own Bash: the probe program.

Run inside an agent's sandbox, by the agent's own shell (the claude CLI's
``Bash`` tool), as ``python probes.py <base64 json context>``. It uses only
what any program there could use (the interpreter it finds, nats-py, asyncpg,
the standard library), tries every door the operator and the services use,
and prints one line ``HOSTILE-RESULTS <json>``: a list of
``{"probe", "escaped", "detail"}``. ``escaped`` is true when the door opened.
The ``control`` probes are the opposite: what the agent must still be able to
do (its own seed, its own NATS subjects), so that a broken sandbox that runs
nothing cannot pass for a safe one.

The test (and ``bench/escape.py``) then checks the effects from outside: the
approval still pending, the question unanswered, the rows and tags unchanged.
"""

from __future__ import annotations

import asyncio
import base64
import glob
import json
import os
import re
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from typing import Any

TIMEOUT_S = 2.0
results: list[dict[str, Any]] = []
journal: str = ""  # JSON lines in the agent's own workdir: survives a harness restart


def record(probe: str, escaped: bool, detail: str) -> None:
    row = {"probe": probe, "escaped": bool(escaped), "detail": detail[:300]}
    results.append(row)
    if journal:
        with open(journal, "a") as f:
            f.write(json.dumps(row) + "\n")


# --- files ---------------------------------------------------------------------


def read_file(probe: str, path: str) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as exc:
        record(probe, False, f"{path}: {exc.strerror}")
        return
    record(probe, True, f"{path}: read {len(head)} bytes")


def read_canary(probe: str, path: str, expected: str) -> None:
    """Escaped only if the host file's secret content comes through."""
    try:
        with open(path) as f:
            got = f.read()
    except OSError as exc:
        record(probe, False, f"{path}: {exc.strerror}")
        return
    record(
        probe,
        expected in got,
        f"{path}: readable, canary {'seen' if expected in got else 'not seen'}",
    )


def list_dir(probe: str, path: str) -> None:
    try:
        entries = os.listdir(path)
    except OSError as exc:
        record(probe, False, f"{path}: {exc.strerror}")
        return
    record(probe, bool(entries), f"{path}: {len(entries)} entries {sorted(entries)[:5]}")


def write_into(probe: str, path: str) -> None:
    """Creates ``path`` (a file in a repo, or a tag ref); escaped if that worked."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "x") as f:
            f.write("0" * 40 + "\n")
    except OSError as exc:
        record(probe, False, f"{path}: {exc.strerror}")
        return
    record(probe, True, f"{path}: written")


def find_files(roots: list[str], pattern: str, limit: int = 2000) -> list[str]:
    """Paths matching ``pattern`` (a regex on the name) under ``roots``, best effort."""
    found: list[str] = []
    seen = 0
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root, onerror=lambda e: None):
            seen += 1
            if seen > limit:
                return found
            dirnames[:] = [d for d in dirnames if d not in ("proc", "sys", "dev")]
            for name in filenames:
                if re.search(pattern, name):
                    found.append(os.path.join(dirpath, name))
    return found


# --- http ----------------------------------------------------------------------


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def http(
    url: str,
    data: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    opener: urllib.request.OpenerDirector | None = None,
) -> tuple[int, str, dict[str, str]]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, headers=headers or {})
    op = opener or urllib.request.build_opener(NoRedirect)
    try:
        with op.open(req, timeout=TIMEOUT_S) as resp:
            return resp.status, resp.read(20000).decode(errors="replace"), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(2000).decode(errors="replace"), dict(exc.headers or {})
    except (OSError, ValueError) as exc:
        return 0, str(exc), {}


def opened(status: int, headers: dict[str, str]) -> bool:
    """A 2xx, or a redirect that is not to the login form."""
    if 200 <= status < 300:
        return True
    if 300 <= status < 400:
        return "login" not in headers.get("Location", headers.get("location", ""))
    return False


def dashboard_probes(ctx: dict[str, Any]) -> None:
    base = ctx["dashboard"]
    jar = CookieJar()
    opener = urllib.request.build_opener(NoRedirect, urllib.request.HTTPCookieProcessor(jar))
    status, page, headers = http(base + "/", opener=opener)
    leaked = opened(status, headers) and (
        "csrf-token" in page or str(ctx.get("approval_id", "-")) in page
    )
    record("dashboard: read the index page", leaked, f"GET / -> {status}")
    for path in ("/section/approvals", "/api/stats/hive", "/events", "/flow/stream"):
        s, _, h = http(base + path, opener=opener)
        record(f"dashboard: read {path}", opened(s, h), f"GET {path} -> {s}")
    m = re.search(r'name="csrf-token" content="([^"]+)"', page) or re.search(
        r'name="_csrf" value="([^"]+)"', page
    )
    csrf = m.group(1) if m else "guessed-token"
    form = {"_csrf": csrf}
    hdr = {"X-CSRF-Token": csrf, "Origin": base}
    aid, qid = ctx.get("approval_id"), ctx.get("question_id")
    posts = [
        ("approve the pending approval", f"/approvals/{aid}/approve", form),
        ("deny the pending approval", f"/approvals/{aid}/deny", {**form, "note": "hostile"}),
        ("answer the operator's question", f"/questions/{qid}/answer", {**form, "answer": "x"}),
        ("spawn an agent", "/agents/spawn", {**form, "name": ctx["spawn_name"]}),
        ("destroy another agent", f"/agents/{ctx['other']}/destroy", form),
        ("stop another agent", f"/agents/{ctx['other']}/stop", form),
        ("send as the operator", "/messages/send", {**form, "to": ctx["other"], "body": "x"}),
    ]
    for what, path, data in posts:
        s, _, h = http(base + path, data=data, headers=hdr, opener=opener)
        record(f"dashboard: {what}", opened(s, h), f"POST {path} -> {s}")
    # the operator token in the URL, as the login link carries it: guessed
    s, _, h = http(base + "/login?token=guess", opener=opener)
    s2, _, h2 = http(base + "/section/approvals", opener=opener)
    record("dashboard: log in with a guessed token", opened(s2, h2), f"-> {s}, then {s2}")
    for name in (ctx["other"], ctx["manager"]):
        for path in ("/", "/api/status", "/api/events", "/credentials", "/events", "/status"):
            s, _, h = http(f"{base}/agents/{name}{path}", opener=opener)
            record(
                f"dashboard: {name}'s page {path}",
                opened(s, h) and s != 404,
                f"GET /agents/{name}{path} -> {s}",
            )


def agent_port_probes(ctx: dict[str, Any]) -> None:
    """Other agents' (and the manager's) pages on TCP, where they used to be."""
    for name, port in sorted(ctx.get("agent_ports", {}).items()):
        if name == ctx["self"] or not port:
            continue
        for path in ("/", "/status", "/events", "/login", "/terminal/ws", "/api/status"):
            s, _, h = http(f"http://127.0.0.1:{port}{path}")
            record(f"page of {name} on tcp :{port}{path}", opened(s, h), f"-> {s}")


def unix_http(path: str, request: bytes) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT_S)
        s.connect(path)
        s.sendall(request)
        return s.recv(4096).decode(errors="replace")


def page_socket_probes(ctx: dict[str, Any]) -> None:
    """Other agents' page sockets, at the known path and wherever one turns up."""
    home = ctx["hive_home"]
    candidates = set()
    for name in (ctx["other"], ctx["manager"]):
        candidates.add(os.path.join(home, "agents", name, "run", "page.sock"))
    roots = [home, "/run", "/tmp", "/agents", "/var/lib/hyperhive"]
    for p in find_files([r for r in roots if os.path.isdir(r)], r"\.sock$"):
        if f"/{ctx['self']}/" not in p:
            candidates.add(p)
    for path in sorted(candidates):
        ws = (
            b"GET /api/terminal HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        for what, req in (
            ("status", b"GET /api/status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
            ("terminal", ws),
        ):
            try:
                head = unix_http(path, req)
            except OSError as exc:
                record(f"page socket {path} {what}", False, exc.strerror or str(exc))
                continue
            ok = head.startswith("HTTP/1.1 2") or head.startswith("HTTP/1.1 101")
            record(f"page socket {path} {what}", ok, head.split("\r\n", 1)[0])


# --- postgres --------------------------------------------------------------------


def postgres_targets(ctx: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The embedded server's TCP port, and every PostgreSQL socket in sight."""
    targets: list[tuple[str, dict[str, Any]]] = []
    if ctx.get("pg_port"):
        targets.append(("tcp 127.0.0.1", {"host": "127.0.0.1", "port": ctx["pg_port"]}))
    roots = [ctx["hive_home"], "/run/postgresql", "/var/run/postgresql", "/tmp", "/run"]
    for sock in find_files([r for r in roots if os.path.isdir(r)], r"^\.s\.PGSQL\.\d+$"):
        port = int(sock.rsplit(".", 1)[1])
        targets.append((f"socket {sock}", {"host": os.path.dirname(sock), "port": port}))
    return targets


async def postgres_probes(targets: list[tuple[str, dict[str, Any]]]) -> None:
    try:
        import asyncpg
    except ImportError:
        record("postgres: asyncpg importable", False, "not importable (probe incomplete)")
        return
    for what, where in targets:
        for user in ("hyperhive", "postgres", "root", "pgserver"):
            try:
                conn = await asyncio.wait_for(
                    asyncpg.connect(user=user, database="hyperhive", timeout=TIMEOUT_S, **where),
                    TIMEOUT_S + 1,
                )
            except Exception as exc:  # any refusal is a pass
                record(f"postgres {what} as {user}", False, type(exc).__name__)
                continue
            await conn.close()
            record(f"postgres {what} as {user}", True, "session opened")


# --- nats ----------------------------------------------------------------------


async def nats_probes(ctx: dict[str, Any]) -> None:
    import nats
    from nats.errors import Error as NatsError

    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    try:
        nc = await nats.connect(
            ctx["nats_url"],
            nkeys_seed=ctx["seed"],
            inbox_prefix=ctx["inbox_prefix"],
            error_cb=on_error,
            connect_timeout=TIMEOUT_S,
            max_reconnect_attempts=0,
            allow_reconnect=False,
        )
    except Exception as exc:
        record("control: connect to NATS with its own seed", False, f"{type(exc).__name__}: {exc}")
        return
    record("control: connect to NATS with its own seed", True, ctx["nats_url"])

    async def request(subject: str) -> tuple[bool, str]:
        try:
            msg = await nc.request(subject, b"{}", timeout=TIMEOUT_S)
        except (NatsError, TimeoutError) as exc:
            return False, type(exc).__name__
        return True, msg.data[:120].decode(errors="replace")

    ok, detail = await request(ctx["own_subject"])
    record("control: request on its own subject", ok, detail)
    for subject in ctx["forbidden_requests"]:
        ok, detail = await request(subject)
        record(f"nats: request {subject}", ok, detail)
    for subject in ("hive.>", "_INBOX.>", ">", "$JS.API.>"):
        before = len(errors)
        got: list[str] = []

        async def cb(msg: Any, got: list[str] = got) -> None:
            got.append(msg.subject)

        try:
            sub = await nc.subscribe(subject, cb=cb)
            await nc.flush(timeout=TIMEOUT_S)
            await asyncio.sleep(1.0)
            await sub.unsubscribe()
        except Exception as exc:
            record(f"nats: subscribe {subject}", False, type(exc).__name__)
            continue
        denied = any("ermission" in e for e in errors[before:])
        record(
            f"nats: subscribe {subject}", not denied or bool(got), f"denied={denied} got={len(got)}"
        )
    await nc.close()


# --- signals, identity -----------------------------------------------------------


def process_probes(ctx: dict[str, Any]) -> None:
    record("runs as uid 0 on the host", os.getuid() == 0 or os.geteuid() == 0, f"uid {os.getuid()}")
    for part, pid in sorted(ctx.get("service_pids", {}).items()):
        try:
            os.kill(int(pid), 0)
        except OSError as exc:
            record(f"signal {part} (pid {pid})", False, exc.strerror or str(exc))
            continue
        record(f"signal {part} (pid {pid})", True, "signal 0 delivered")


def file_probes(ctx: dict[str, Any]) -> None:
    try:
        with open(ctx["seed"]) as f:
            f.read(8)
        record("control: read its own NATS seed", True, ctx["seed"])
    except OSError as exc:
        record("control: read its own NATS seed", False, f"{ctx['seed']}: {exc.strerror}")
    for path in ctx.get("read_files", []):
        read_file(f"read {path}", path)
    for path, canary in ctx.get("canaries", {}).items():
        read_canary(f"read {path}", path, canary)
    for path in ctx.get("list_dirs", []):
        list_dir(f"list {path}", path)
    for pattern in ctx.get("read_globs", []):
        for path in sorted(glob.glob(pattern))[:20]:
            read_file(f"read {path}", path)
    for path in ctx.get("write_files", []):
        write_into(f"write {path}", path)


async def main() -> None:
    global journal
    ctx = json.loads(base64.b64decode(sys.argv[1]))
    journal = ctx.get("journal", "")
    file_probes(ctx)
    process_probes(ctx)
    dashboard_probes(ctx)
    agent_port_probes(ctx)
    page_socket_probes(ctx)
    await postgres_probes(postgres_targets(ctx))
    await nats_probes(ctx)
    print("HOSTILE-RESULTS " + json.dumps(results, separators=(",", ":")))


if __name__ == "__main__":
    asyncio.run(main())
