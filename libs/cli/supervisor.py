"""``hive up``'s supervisor: restarts what exits, NATS and PostgreSQL included.

Every supervised part (the embedded nats-server, the embedded PostgreSQL,
the five services) is watched from ``hive up``'s main loop. A part that exits
is started again on the same port and data dir through its own ``start()``:
nats-server recovers its JetStream store, PostgreSQL runs crash recovery
(a stale ``postmaster.pid`` is cleared first). The first restart within the
window is immediate, later ones wait ``backoff_s`` doubling up to
``backoff_cap_s``; a part restarted ``limit`` times within ``window_s``
is not restarted again. For a server that is fatal: the supervisor raises
:class:`GaveUp` (one line saying what to do) and ``hive up`` stops
everything. A service at its cap stays down (``hive status`` shows it).

Each restart is one line on stderr and in ``$HIVE_HOME/logs/up.log``; the
counts and last exits are kept in ``$HIVE_HOME/up.state.json`` (rewritten on
every change, with ``hive up``'s pid and each part's), which ``hive status``
reads.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hyperhive.common import retry
from hyperhive.common.config import UpSettings
from hyperhive.common.errors import HiveError, Unavailable

if TYPE_CHECKING:
    from hyperhive.cli.embedded import EmbeddedNats, EmbeddedPostgres

STATE_FILE = "up.state.json"
# a supervised part of ``hive up`` (the file's ``state``, ``hive status`` shows it)
PartState = Literal["running", "restarting", "given up"]
LOG_FILE = "up.log"
NATS = "nats"
POSTGRES = "postgres"
SERVERS = (NATS, POSTGRES)
# how long a restart of PostgreSQL waits for the backends of the dead
# postmaster to notice and exit before it ends them
ORPHAN_WAIT_S = 3.0


class GaveUp(Unavailable):
    """A server could not be brought back; the hive must stop."""


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """How often a part may be restarted (``HIVE_UP_RESTART_*``, :class:`UpSettings`)."""

    limit: int = 5
    window_s: float = 60.0
    backoff_s: float = 0.5
    backoff_cap_s: float = 5.0

    @classmethod
    def of(cls, settings: UpSettings) -> RestartPolicy:
        return cls(
            limit=max(0, settings.restart_limit),
            window_s=settings.restart_window_s,
            backoff_s=max(0.0, settings.restart_backoff_s),
        )

    def delay(self, recent: int) -> float:
        """The wait before a restart when ``recent`` restarts happened in the window."""
        if recent <= 0:
            return 0.0
        return retry.Backoff(self.backoff_s, self.backoff_cap_s, jitter=False).delay(recent)


def describe_returncode(code: int | None) -> str:
    """``killed by SIGKILL`` / ``exited with code 1`` / ``exited``."""
    if code is None:
        return "exited"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie is gone; one of ours is reaped)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def children_of(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(stat.parent.name))
    return found


@dataclass
class Part:
    """One supervised thing: how to tell it exited, how to start it again."""

    name: str
    # None while it runs, else how it ended ("killed by SIGKILL")
    exited: Callable[[], str | None]
    restart: Callable[[], None]  # raises HiveError when it cannot start
    server: bool  # a server: giving up stops the hive
    hint: str  # what the operator should look at when it cannot be restarted
    pid: Callable[[], int | None] = lambda: None  # its process now, if known
    restarts: int = 0
    times: list[float] = field(default_factory=list)
    last_exit: str = ""
    last_exit_at: float = 0.0
    state: PartState = "running"
    next_try: float = 0.0
    pending: str = ""  # why it is down, while a restart waits for its backoff

    def report(self) -> dict[str, object]:
        return {
            "pid": self.pid() if self.state == "running" else None,
            "state": self.state,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "last_exit_at": self.last_exit_at,
        }


class Supervisor:
    """Watches the parts; call :meth:`check` from the main loop."""

    def __init__(
        self, home: Path, policy: RestartPolicy, *, out: Callable[[str], None] | None = None
    ) -> None:
        self.home = home
        self.policy = policy
        self.parts: dict[str, Part] = {}
        self._out = out or _stderr

    def add(self, part: Part) -> None:
        self.parts[part.name] = part
        self.save()

    def say(self, line: str) -> None:
        """One line on ``hive up``'s output and in its log."""
        self._out(line)
        log_dir = self.home / "logs"
        with contextlib.suppress(OSError):
            log_dir.mkdir(parents=True, exist_ok=True)
            with open(log_dir / LOG_FILE, "a") as f:
                f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")

    def check(self) -> None:
        """Restarts what exited (when its backoff allows).

        Raises:
            GaveUp: a server exited and cannot be restarted.
        """
        now = time.monotonic()
        for part in self.parts.values():
            if part.state == "given up":
                continue
            if part.state == "running":
                how = part.exited()
                if how is None:
                    continue
                part.last_exit, part.last_exit_at = how, time.time()
                part.state = "restarting"
                part.pending = how
                part.times = [t for t in part.times if now - t < self.policy.window_s]
                part.next_try = now + self.policy.delay(len(part.times))
                self.save()
            if now < part.next_try:
                continue
            self._try_restart(part)

    def _try_restart(self, part: Part) -> None:
        now = time.monotonic()
        part.times = [t for t in part.times if now - t < self.policy.window_s]
        if len(part.times) >= self.policy.limit:
            part.state = "given up"
            self.save()
            window = f"{self.policy.window_s:g}s"
            if part.server:
                hint = part.hint[:1].upper() + part.hint[1:]
                raise GaveUp(
                    f"{part.name} cannot be kept up ({len(part.times)} restarts within "
                    f"{window}; last: {part.pending}); stopping the hive. {hint}, "
                    "then run `hive up` again"
                )
            self.say(
                f"hive up: {part.name} {part.pending}; restarted {len(part.times)} times "
                f"within {window}, leaving it down ({part.hint})"
            )
            return
        part.times.append(now)
        try:
            part.restart()
        except HiveError as exc:
            part.pending = f"failed to restart: {exc}"
            part.last_exit, part.last_exit_at = part.pending, time.time()
            part.next_try = time.monotonic() + self.policy.delay(len(part.times))
            self.say(f"hive up: {part.name} {part.pending}; trying again")
            self.save()
            return
        part.restarts += 1
        part.state = "running"
        self.say(
            f"hive up: {part.name} {part.pending}; restarted "
            f"(restart {len(part.times)} of {self.policy.limit} "
            f"allowed within {self.policy.window_s:g}s)"
        )
        part.pending = ""
        self.save()

    def save(self) -> None:
        """Writes the state file ``hive status`` reads (atomically)."""
        data = {
            "pid": os.getpid(),
            "updated": time.time(),
            "parts": {name: p.report() for name, p in self.parts.items()},
        }
        path = self.home / STATE_FILE
        tmp = path.with_suffix(".tmp")
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps(data))
            tmp.replace(path)

    def forget(self) -> None:
        """Removes the state file (``hive up`` has stopped)."""
        with contextlib.suppress(OSError):
            (self.home / STATE_FILE).unlink()


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def read_state(home: Path) -> dict[str, dict[str, object]]:
    """The parts' restart records of the ``hive up`` running on ``home``
    (empty when none runs or it left no state)."""
    try:
        data = json.loads((home / STATE_FILE).read_text())
        pid = int(data["pid"])
        parts = data["parts"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    if not pid_alive(pid) or not isinstance(parts, dict):
        return {}
    return {k: v for k, v in parts.items() if isinstance(v, dict)}


# --- the embedded servers as parts ----------------------------------------------


def nats_part(server: EmbeddedNats) -> Part:
    """The embedded nats-server (``EmbeddedNats``): restarted through its ``start()``."""

    def exited() -> str | None:
        proc = server.proc
        if proc is None or proc.poll() is None:
            return None
        return describe_returncode(proc.returncode)

    def restart() -> None:
        server.proc = None
        server.start()

    return Part(
        name=NATS,
        exited=exited,
        restart=restart,
        server=True,
        hint=f"see {server.root / 'nats.log'}",
        pid=lambda: server.proc.pid if server.proc is not None else None,
    )


def postmaster_pid(data_dir: Path) -> int | None:
    """The pid in ``postmaster.pid`` (None when there is none)."""
    return postmaster_pid_in(data_dir / "postmaster.pid")


def postmaster_pid_in(lock: Path) -> int | None:
    """The pid on the first line of a PostgreSQL lock file (None when there is none)."""
    try:
        return int(lock.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


class _Postmaster:
    """Follows the embedded PostgreSQL's postmaster (``pg_ctl`` daemonizes it,
    so it is not our child): its pid and, refreshed now and then, its backends."""

    def __init__(self, server: EmbeddedPostgres) -> None:
        self.server = server
        self.pid = postmaster_pid(server.data_dir)
        self.children: list[int] = []
        self._looked = 0.0

    def exited(self) -> str | None:
        if self.pid is None:
            self.pid = postmaster_pid(self.server.data_dir)
            return None
        if pid_alive(self.pid):
            now = time.monotonic()
            if now - self._looked > 2.0:
                self.children = children_of(self.pid)
                self._looked = now
            return None
        return f"postmaster (pid {self.pid}) is gone"

    def restart(self) -> None:
        data_dir: Path = self.server.data_dir
        # backends of the dead postmaster exit when they notice; until they do
        # the shared memory is in use and a new postmaster refuses to start
        deadline = time.monotonic() + ORPHAN_WAIT_S
        orphans = [p for p in self.children if pid_alive(p)]
        while orphans and time.monotonic() < deadline:
            time.sleep(0.05)
            orphans = [p for p in orphans if pid_alive(p)]
        for pid in orphans:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        # lock files naming a dead postmaster: PostgreSQL itself refuses them
        # while that pid is a zombie nobody reaps (pid 1 of a container may not)
        locks = [data_dir / "postmaster.pid", *self.server.socket_dir.glob(".s.PGSQL.*.lock")]
        for lock in locks:
            stale = postmaster_pid_in(lock)
            if stale is not None and not pid_alive(stale):
                with contextlib.suppress(OSError):
                    lock.unlink()
        try:
            self.server.start()
        except HiveError:
            raise
        except OSError as exc:  # e.g. the data dir vanished
            raise Unavailable(f"PostgreSQL did not start: {exc}") from None
        self.pid = postmaster_pid(data_dir)
        self.children = []
        self._looked = 0.0


def postgres_part(server: EmbeddedPostgres) -> Part:
    """The embedded PostgreSQL (``EmbeddedPostgres``): restarted through its ``start()``."""
    postmaster = _Postmaster(server)
    return Part(
        name=POSTGRES,
        exited=postmaster.exited,
        restart=postmaster.restart,
        server=True,
        pid=lambda: postmaster.pid,
        hint=(
            f"see {server.data_dir / 'postgres.log'} (a damaged data dir needs the "
            "restore in docs/operations.md)"
        ),
    )


def process_part(name: str, get: Callable[[], Any], start: Callable[[], None], log: Path) -> Part:
    """A service child process (a ``Popen`` that ``get`` returns; ``start`` spawns anew)."""

    def exited() -> str | None:
        proc = get()
        if proc is None or proc.poll() is None:
            return None
        return describe_returncode(proc.returncode)

    def restart() -> None:
        try:
            start()
        except OSError as exc:
            raise Unavailable(f"cannot start: {exc}") from None

    def pid() -> int | None:
        proc = get()
        return proc.pid if proc is not None else None

    return Part(name=name, exited=exited, restart=restart, server=False, hint=f"see {log}", pid=pid)
