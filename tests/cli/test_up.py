"""``hive up`` end to end as a user runs it, and its one-line failures."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

from hyperhive.cli.embedded import EmbeddedNats, free_port
from tests.rig import hive_run, shared_tempdir

pytestmark = pytest.mark.slow


def _up_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVE_")}
    env["HIVE_HOME"] = str(home)
    env["HIVE_LIFECYCLE_USE_BWRAP"] = "false"
    env["HIVE_LIFECYCLE_AGENT_USER"] = ""  # see tests/lifecycle/test_host_doors.py
    # the real manager needs a claude key; this test is about the stack
    env["HIVE_LIFECYCLE_HARNESS_COMMAND"] = "sleep 3600"
    return env


def _start_up(home: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], list[str]]:
    ports = [str(free_port()) for _ in range(3)]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hyperhive.cli.main",
            "up",
            "--nats-port",
            ports[0],
            "--pg-port",
            ports[1],
            "--dashboard-port",
            ports[2],
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, ports


def _wait_status(env: dict[str, str], proc: subprocess.Popen[str], timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"hive up exited: {proc.stdout.read() if proc.stdout else ''}"
        last = hive_run("status", "--json", "--timeout", "1", env=env)
        if last.returncode == 0:
            return json.loads(last.stdout)
        time.sleep(0.5)
    raise AssertionError(f"hive status never all up: {last.stdout if last else ''}")


def _printed_lines(proc: subprocess.Popen[str]) -> list[str]:
    """What ``hive up`` printed up to its last start line (it is up by then)."""
    assert proc.stdout is not None
    lines = []
    while not lines or lines[-1] != "Ctrl-C stops everything.":
        line = proc.stdout.readline()
        assert line, f"hive up stopped printing: {lines}"
        lines.append(line.rstrip("\n"))
    return lines


def _login_url(lines: list[str], port: str) -> tuple[str, str]:
    """The printed login URL and its token."""
    (line,) = [line for line in lines if line.startswith("  dashboard  ")]
    url = line.split()[-1]
    prefix = f"http://127.0.0.1:{port}/login?token="
    assert url.startswith(prefix), url
    return url, url.removeprefix(prefix)


def _check_operator_token(home: Path, lines: list[str], port: str) -> str:
    """The token ``hive up`` printed is the one in its 0600 file and logs a
    browser in; the dashboard refuses whoever comes without it."""
    url, token = _login_url(lines, port)
    token_file = home / "operator-token"
    assert token_file.read_text().strip() == token and len(token) >= 32
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert any(str(token_file) in line for line in lines)
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=30) as client:
        assert client.get("/").status_code == 401
        r = client.get(url)
        assert r.status_code == 303 and r.headers["location"] == "/"
        assert client.get("/").status_code == 200
    with httpx.Client(base_url=base, timeout=30) as script:
        headers = {"Authorization": f"Bearer {token}"}
        assert script.get("/section/status", headers=headers).status_code == 200
    return token


def _token_nowhere_else(home: Path, token: str, procs: list[psutil.Process]) -> None:
    """Only the file and the one printed line hold the token: no log, no
    service's environment (the dashboard is told the file)."""
    for path in home.rglob("*"):
        if path.is_file() and path.name != "operator-token" and not path.is_symlink():
            with contextlib.suppress(OSError):
                assert token.encode() not in path.read_bytes(), path
    for p in procs:
        with contextlib.suppress(psutil.Error):
            assert not any(token in v for v in p.environ().values()), p.cmdline()


# "Ctrl-C stops everything within a few seconds" (issue 2)
STOP_BOUND_S = 10.0


def _stop_up(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, out


def _wait_manager_harness(env: dict[str, str], proc: subprocess.Popen[str], home: Path) -> int:
    """Waits until lifecycle reports hm1nd running and its harness process lives.

    Returns:
        The harness's pid.
    """
    pid_file = home / "agents" / "hm1nd" / "run" / "harness.pid"
    deadline = time.monotonic() + 60
    last = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"hive up exited: {proc.stdout.read() if proc.stdout else ''}"
        last = hive_run("agents", "--json", env=env)
        if last.returncode == 0:
            manager = {a["name"]: a for a in json.loads(last.stdout)}.get("hm1nd")
            if manager and manager["state"] == "running" and pid_file.exists():
                pid = int(pid_file.read_text().split()[0])
                if psutil.pid_exists(pid):
                    return pid
        time.sleep(0.5)
    raise AssertionError(f"hm1nd never running: {last.stdout if last else ''}")


def _still_alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """The processes of ``procs`` that still run (zombies count as gone)."""
    alive = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            continue
    return alive


def test_up_serves_status_and_ctrl_c_leaves_no_process(tmp_path):
    home = shared_tempdir("hive-up-") / "home"
    env = _up_env(home)
    proc, ports = _start_up(home, env)
    marker = f"kept across restarts {uuid.uuid4().hex}"
    try:
        printed = _printed_lines(proc)
        report = _wait_status(env, proc)
        token = _check_operator_token(home, printed, ports[2])
        assert report["nats"]["reachable"] is True
        assert report["postgres"]["reachable"] is True
        assert set(report["services"]) == {
            "broker",
            "lifecycle",
            "approvals",
            "crash-watch",
            "dashboard",
        }
        assert all(s["up"] for s in report["services"].values())
        table = hive_run("status", env=env)
        assert table.returncode == 0
        assert "crash-watch" in table.stdout and "DOWN" not in table.stdout
        # the manager's harness is the last thing `hive up` brings up: only
        # once it runs is every process there to be watched
        harness_pid = _wait_manager_harness(env, proc, home)
        # its page: a unix socket in its run dir, nothing listening on TCP
        assert (home / "agents" / "hm1nd" / "run" / "page.sock").is_socket()
        harness = psutil.Process(harness_pid)
        listening = [
            c
            for p in (harness, *harness.children(recursive=True))
            for c in p.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        ]
        assert not listening, listening
        sent = hive_run("send", "hm1nd", marker, "--json", env=env)
        assert sent.returncode == 0, sent.stderr
        sent_id = json.loads(sent.stdout)["id"]

        children = psutil.Process(proc.pid).children(recursive=True)
        # postgres daemonizes away from us: find it by its data dir
        pg = [
            p
            for p in psutil.process_iter(["cmdline"])
            if p.info["cmdline"]
            and "postgres" in p.info["cmdline"][0]
            and str(home.resolve()) in " ".join(p.info["cmdline"])
        ]
        watched = children + pg
        names = {p.pid: " ".join(p.cmdline()) for p in children}
        assert harness_pid in names, f"harness {harness_pid} not under hive up: {names}"
        assert sum("nats-server" in c for c in names.values()) == 1
        for part in ("broker", "lifecycle", "approvals", "crash-watch", "dashboard"):
            assert any(c.endswith(f"serve {part}") for c in names.values()), (part, names)
        assert pg, "no postgres process found"
        _token_nowhere_else(home, token, children)
        # `hive dashboard-url` prints the URL again (the port from up.toml)
        again = hive_run("dashboard-url", env=env)
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip() == f"http://127.0.0.1:{ports[2]}/login?token={token}"
        again = hive_run("dashboard-url", "--json", env=env)
        assert json.loads(again.stdout) == {
            "url": f"http://127.0.0.1:{ports[2]}/",
            "login_url": f"http://127.0.0.1:{ports[2]}/login?token={token}",
            "token_file": str(home / "operator-token"),
        }
        # the embedded PostgreSQL has no TCP listener: --pg-port names its socket
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", int(ports[1]))) != 0, "PostgreSQL on TCP"
        assert not any(
            c.laddr and c.laddr.port == int(ports[1])
            for p in pg
            for c in p.net_connections(kind="inet")
        )
    finally:
        t0 = time.monotonic()
        code, out = _stop_up(proc)
        stopped_in = time.monotonic() - t0
    assert code == 0, out
    # the manager's page is the dashboard's
    start = "\n".join(printed)
    assert re.search(r"manager\s+http://127\.0\.0\.1:\d+/agents/hm1nd/", start), start
    assert stopped_in < STOP_BOUND_S, f"hive up took {stopped_in:.1f}s to stop"
    while _still_alive(watched) and time.monotonic() < t0 + STOP_BOUND_S:
        time.sleep(0.05)
    alive = _still_alive(watched)
    assert not alive, f"left behind: {[(p.pid, p.cmdline()) for p in alive]}"
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", int(ports[0]))) != 0, "NATS still listening"

    assert token not in out  # printed once, at the start (read above)
    _token_nowhere_else(home, token, [])

    # a second `hive up` on the same HIVE_HOME finds the earlier data, and
    # reuses the token
    proc, ports = _start_up(home, env)
    try:
        printed = _printed_lines(proc)
        _wait_status(env, proc)
        assert _check_operator_token(home, printed, ports[2]) == token
        history = hive_run("messages", "--agent", "hm1nd", "--json", env=env)
        assert history.returncode == 0, history.stderr
        found = [m for m in json.loads(history.stdout) if m["id"] == sent_id]
        assert found and found[0]["body"] == marker, history.stdout
        _wait_manager_harness(env, proc, home)  # the manager is back too
    finally:
        code, out = _stop_up(proc)
    assert code == 0, out


def _fast_retries(env: dict[str, str]) -> dict[str, str]:
    env.update(
        HIVE_NATS_CONNECT_ATTEMPTS="2",
        HIVE_NATS_CONNECT_BACKOFF_S="0.1",
        HIVE_DATABASE_CONNECT_ATTEMPTS="2",
        HIVE_DATABASE_CONNECT_BACKOFF_S="0.1",
    )
    return env


def _procs_of(home: Path) -> list[psutil.Process]:
    """Live processes started for ``home`` (its path in their command line or env)."""
    needle = str(home)
    found = []
    for p in psutil.process_iter(["cmdline", "environ", "status"]):
        if p.pid == os.getpid() or p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        env = p.info["environ"] or {}
        if needle in " ".join(p.info["cmdline"] or []) or env.get("HIVE_HOME") == needle:
            found.append(p)
    return found


def _assert_refused(result: subprocess.CompletedProcess[str], line: str, home: Path) -> None:
    """``hive up`` printed exactly ``line`` (and nothing on stdout) and left nothing."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.strip().splitlines() == [line]
    assert result.stdout == "", result.stdout  # never said it was up
    assert not _procs_of(home), f"left behind: {_procs_of(home)}"


def _assert_refused_with(result: subprocess.CompletedProcess[str], prefix: str, home: Path) -> None:
    """:func:`_assert_refused` for one line that starts with ``prefix`` (the
    rest is the underlying error's own words)."""
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(prefix), line
    _assert_refused(result, line, home)


def _up_args(*extra: str, dashboard: bool = True) -> list[str]:
    """``up`` on free ports, so that only ``extra`` can be wrong (a later flag wins)."""
    args = ["up", "--nats-port", str(free_port()), "--pg-port", str(free_port())]
    if dashboard:
        args += ["--dashboard-port", str(free_port())]
    return [*args, *extra]


def test_unreachable_nats_url_is_one_line(tmp_path):
    home = tmp_path / "home"
    env = _fast_retries(_up_env(home))
    url = f"nats://127.0.0.1:{free_port()}"
    result = hive_run(*_up_args("--nats-url", url), env=env, timeout=60)
    _assert_refused_with(result, f"hive up: cannot reach NATS at {url} after 2 attempts: ", home)


def test_nats_url_without_jetstream_is_one_line(tmp_path):
    from hyperhive.cli.embedded import nats_server_binary, wait_port

    home = tmp_path / "home"
    env = _fast_retries(_up_env(home))
    port = free_port()
    plain = subprocess.Popen(
        [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, 10, plain, "nats-server")
        url = f"nats://127.0.0.1:{port}"
        result = hive_run(*_up_args("--nats-url", url), env=env, timeout=60)
    finally:
        plain.terminate()
        plain.wait(10)
    _assert_refused_with(result, f"hive up: NATS at {url} has no usable JetStream: ", home)


def test_unreachable_database_url_is_one_line(tmp_path):
    home = tmp_path / "home"
    env = _fast_retries(_up_env(home))
    url = f"postgresql://hyperhive:secret@127.0.0.1:{free_port()}/hyperhive"
    result = hive_run(*_up_args("--database-url", url), env=env, timeout=60)
    shown = url.replace(":secret@", ":***@")
    prefix = f"hive up: cannot reach PostgreSQL at {shown} after 2 attempts: "
    _assert_refused_with(result, prefix, home)
    assert "secret" not in result.stderr
    # nothing was started: not even the embedded NATS
    assert not (home / "nats" / "nats.pid").exists()


@pytest.mark.parametrize("how", ["default", "flag", "setting"])
def test_dashboard_port_taken_is_one_line(tmp_path, how):
    home = tmp_path / "home"
    env = _fast_retries(_up_env(home))
    with socket.socket() as blocker:
        if how == "default":  # nothing configured: the dashboard's :7000
            port = 7000
            with contextlib.suppress(OSError):  # already taken by someone: as good
                blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                blocker.bind(("127.0.0.1", port))
                blocker.listen()
        else:
            blocker.bind(("127.0.0.1", 0))
            blocker.listen()
            port = blocker.getsockname()[1]
        extra = ["--dashboard-port", str(port)] if how == "flag" else []
        if how == "setting":
            env["HIVE_DASHBOARD_PORT"] = str(port)
        result = hive_run(*_up_args(*extra, dashboard=False), env=env)
    line = f"hive up: port {port} for the dashboard is already in use on 127.0.0.1"
    _assert_refused(result, line, home)


def up_on_given_servers(
    env: dict[str, str], nats: EmbeddedNats, database_url: str, *extra: str
) -> subprocess.Popen[str]:
    """``hive up`` on servers it did not start (``--nats-url``, ``--database-url``,
    no agents), ``extra`` flags after; its output piped."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hyperhive.cli.main",
            *_up_args(
                "--nats-url",
                nats.url,
                "--nats-seed",
                str(nats.service_seed),
                "--database-url",
                database_url,
                "--no-agents",
                *extra,
            ),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_up_with_given_nats_and_database_urls(nats_server, database_url, tmp_path):
    """The compose-dev.yml way: the checks pass on servers that answer, and the
    services run against them."""
    home = tmp_path / "home"
    env = _fast_retries(_up_env(home))
    proc = up_on_given_servers(env, nats_server, database_url)
    try:
        report = _wait_status(env, proc)
        assert report["nats"] == {"url": nats_server.url, "reachable": True}
        assert report["postgres"]["reachable"] is True
    finally:
        code, out = _stop_up(proc)
    assert code == 0, out
    assert "hyperhive is up" in out and f"nats       {nats_server.url}" in out
    assert not _procs_of(home), f"left behind: {_procs_of(home)}"


def test_failed_second_up_leaves_the_running_one_alone(tmp_path):
    """A `hive up` refused for a taken port must not stop the agents of the one
    running on the same HIVE_HOME (they share ``agents/*/run/harness.pid``)."""
    home = tmp_path / "home"
    env = _fast_retries(_up_env(home))
    run_dir = home / "agents" / "hm1nd" / "run"
    run_dir.mkdir(parents=True)
    harness = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        (run_dir / "harness.pid").write_text(f"{harness.pid} 0\n")
        with socket.socket() as blocker:
            blocker.bind(("127.0.0.1", 0))
            blocker.listen()
            port = blocker.getsockname()[1]
            result = hive_run(*_up_args("--nats-port", str(port)), env=env)
        assert result.returncode == 1, result.stderr
        assert harness.poll() is None, "the refused `hive up` stopped a running harness"
    finally:
        harness.kill()
        harness.wait()


def test_port_already_taken_is_one_line(tmp_path):
    home = tmp_path / "home"
    env = _up_env(home)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        result = hive_run("up", "--nats-port", str(port), "--pg-port", str(free_port()), env=env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines == [f"hive up: port {port} for NATS is already in use on 127.0.0.1"]


def test_unwritable_home_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a dir")
    env = _up_env(blocker / "home")
    result = hive_run("up", env=env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not writable" in lines[0] and str(blocker) in lines[0]


def test_serve_with_unreachable_nats_exits_with_one_line(settings, tmp_path):
    env = _up_env(tmp_path)
    env.update(
        HIVE_NATS_URL=f"nats://127.0.0.1:{free_port()}",
        HIVE_NATS_CONNECT_ATTEMPTS="2",
        HIVE_NATS_CONNECT_BACKOFF_S="0.1",
    )
    result = hive_run("serve", "broker", env=env)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("hive serve broker: cannot reach NATS at nats://127.0.0.1:")


def test_serve_with_unreachable_postgres_exits_with_one_line(settings, nats_server, tmp_path):
    env = _up_env(tmp_path)
    env.update(
        HIVE_NATS_URL=nats_server.url,
        HIVE_NATS_SEED_FILE=str(nats_server.service_seed),
        HIVE_DATABASE_URL=f"postgresql://hyperhive@127.0.0.1:{free_port()}/hyperhive",
        HIVE_DATABASE_CONNECT_ATTEMPTS="2",
        HIVE_DATABASE_CONNECT_BACKOFF_S="0.1",
    )
    result = hive_run("serve", "broker", env=env)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("hive serve broker: cannot reach PostgreSQL at postgresql://")


def test_bad_setting_stops_serve_with_one_line(tmp_path):
    env = _up_env(tmp_path)
    env["HIVE_BROKER_MAX_BODY_BYTES"] = "huge"
    result = hive_run("serve", "broker", env=env)
    assert result.returncode == 1
    assert "broker.max_body_bytes" in (result.stdout + result.stderr)


def test_status_without_a_hive_says_nats_is_down(tmp_path):
    env = _up_env(tmp_path)
    env.update(HIVE_NATS_URL=f"nats://127.0.0.1:{free_port()}", HIVE_NATS_CONNECT_ATTEMPTS="1")
    result = hive_run("status", "--json", env=env)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["nats"]["reachable"] is False
    assert not any(s["up"] for s in report["services"].values())


@pytest.mark.parametrize(
    ("part", "sig"),
    [("crash-watch", signal.SIGTERM), ("crash-watch", signal.SIGINT), ("broker", signal.SIGINT)],
    ids=["crash-watch-sigterm", "crash-watch-sigint", "broker-sigint"],
)
def test_serve_stops_cleanly_on_a_signal(settings, tmp_path, part, sig):
    from tests.rig import start_service_process

    proc = start_service_process(part, settings, tmp_path)
    try:
        deadline = time.monotonic() + 30
        while "serving" not in proc.output():
            assert proc.proc.poll() is None, proc.output()
            assert time.monotonic() < deadline, proc.output()
            time.sleep(0.1)
    finally:
        code = proc.stop(sig, timeout=15)
    assert code == 0, proc.output()
    assert "stopping" in proc.output()  # the graceful drain, not a KeyboardInterrupt
    assert "Traceback" not in proc.output()
