"""The process backend: the harness as a host process (``hive up``, tests).

Each harness runs in its own session (process group) with a pid file
(``<pid> <start time>``) in the agent's ``run/`` dir and its output appended
to ``run/harness.log``. A restarted lifecycle adopts harnesses from their pid
files after checking ``/proc`` that the pid is still the same process, so it
never starts a duplicate. With ``bwrap`` installed (and ``use_bwrap``) the
harness sees the host read-only, with the data dir hidden except its own
dirs, in its own PID namespace and without capabilities. Lifecycle binds the
agent page's unix socket (``run/page.sock``) on the host and passes it to
the harness (fd ``HIVE_HARNESS_SOCKET_FD``): the run dir is read-only in the
sandbox, and no other agent's run dir is visible there, so an agent reaches
only its own page (the dashboard proxies it for the operator). The manager sees
the other agents in the container layout of the nixos backend (see
:func:`manager_binds`); without ``bwrap`` it gets the same layout as a dir
of symlinks (:func:`view_dir`), since nothing isolates it then.

Run as root, lifecycle never leaves a harness root: each runs as the
unprivileged system user ``lifecycle.agent_user`` (``hyperhive-agent``),
switched to with ``setpriv`` (no_new_privs, no capabilities, no
supplementary groups) inside the sandbox, or before the harness without
one. That user gets exactly what the agent writes: its state, credentials
and work dirs, its NATS seed, and for the manager the other agents' state
and proposed repos (whose ``.git/config`` and hooks stay root's, see
:func:`share_repo`). Under bwrap the sandbox also binds, read-only, what the
harness needs to run wherever it is installed (interpreter, venv, an
editable checkout, claude and node; :func:`runtime_paths`), also from under
``/tmp`` (a fresh tmpfs in the sandbox) or a dir the agent user cannot
search (masked by an empty tmpfs first).

Agents without a login of their own (no ``.credentials.json`` or
``hive-credentials.json`` in their credentials dir; claude's sessions there
do not count) get the operator's ``ANTHROPIC_API_KEY``, ``ANTHROPIC_BASE_URL``
and ``CLAUDE_CODE_OAUTH_TOKEN`` from lifecycle's environment; nothing of
lifecycle's environment named ``HIVE_*`` reaches them (it holds the services'
NATS seed).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import hyperhive
from hyperhive.common import subjects
from hyperhive.common.config import Settings
from hyperhive.common.errors import BackendFailed, ConfigError
from hyperhive.common.hostuser import (
    chown_tree,
    closed_ancestor,
    installed_at,
    isolation_gaps,
    program_path,
    runtime_paths,
    system_user,
    unreachable,
)
from hyperhive.common.names import is_agent_name
from hyperhive.common.paths import AgentPaths, nats_dir
from hyperhive.common.webserve import bind_unix
from hyperhive.common.wire.lifecycle import LogsReply
from hyperhive.lifecycle import agentconf
from hyperhive.lifecycle.backends.base import (
    MISSING,
    RUNNING,
    STOPPED,
    VIEW_AGENTS,
    VIEW_APPLIED,
    AgentSpec,
    Backend,
    Exit,
    manager_binds,
    manager_view_agents,
)

log = logging.getLogger(__name__)

PASS_THROUGH = ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "CLAUDE_CODE_OAUTH_TOKEN")
# an agent's own login: claude's file, or what the agent page's login stored
LOGIN_FILES = (".credentials.json", "hive-credentials.json")
LOG_TAIL_BYTES = 512 * 1024
LOG_CHUNK_BYTES = 1024 * 1024

# Under bwrap, the agents dir itself sits read-only at this path inside the
# manager's sandbox, under a tmpfs of mode 0000 remounted read-only. Only
# lifecycle, entering the sandbox's namespaces with capabilities there, can
# pass it (to bind agents created after the manager started, as ``machinectl
# bind`` does for the nixos backend); see ProcessBackend.expose_to_manager.
STAGE = "/.hive-agents"
STAGE_AGENTS = f"{STAGE}/agents"
NSENTER_TIMEOUT_S = 30.0
NS_GET_USERNS = 0xB701  # ioctl on a namespace fd: the user namespace owning it
# bind one agent's dirs into a running sandbox; $1 = name, $2 = STAGE_AGENTS
_BIND_SCRIPT = """set -eu
n=$1 src=$2/$1
for d in /agents/$n /agents/$n/config /agents/$n/state /applied/$n; do
    if [ -L "$d" ]; then echo "refusing: $d is a symlink" >&2; exit 3; fi
done
mkdir -p /agents/$n/config /agents/$n/state /applied/$n
mount --bind "$src/proposed" /agents/$n/config
mount -o remount,bind,rw /agents/$n/config
mount --bind "$src/state" /agents/$n/state
mount -o remount,bind,rw /agents/$n/state
mount --bind "$src/applied" /applied/$n
mount -o remount,bind,ro /applied/$n
"""


# capabilities the sandbox keeps only until setpriv has switched to the agent
# user (switching uid away from 0 clears the rest; setpriv then also empties
# the bounding set)
DROP_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP")


def drop_argv(setpriv: str, user: pwd.struct_passwd) -> list[str]:
    """The prefix that runs a command as ``user``, for real: uid, gid, no
    supplementary groups, no capabilities, no_new_privs (no setuid way back)."""
    return [
        setpriv,
        f"--reuid={user.pw_uid}",
        f"--regid={user.pw_gid}",
        "--clear-groups",
        "--no-new-privs",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
    ]


def _open_dirs(path: Path, tops: list[Path]) -> list[str]:
    """``--dir`` (mode 0755) for each dir bwrap would make on the way to
    ``path`` below the innermost of ``tops`` holding it: bwrap makes them
    0700, which the agent user could not pass."""
    holders = [t for t in tops if t in path.parents]
    if not holders:
        return []
    top = max(holders, key=lambda t: len(t.parts))
    args: list[str] = []
    for d in reversed(path.parents):
        if top in d.parents:
            args += ["--perms", "0755", "--dir", str(d)]
    return args


def _under(path: Path, tops: set[Path] | list[Path]) -> bool:
    return any(path == t or t in path.parents for t in tops)


def share_repo(repo: Path, user: pwd.struct_passwd) -> None:
    """Lets ``user`` (the manager) commit in a proposed repo root operates on.

    The worktree's top dir and ``.git`` stay root's (git as root refuses a repo
    another uid owns) but group-writable by the agent user's group, setgid and
    sticky: the user can add entries and replace its own, never root's.
    ``.git/config`` and ``.git/hooks`` stay root's and read-only to it, and a
    root-owned ``.git/commondir`` of ``.`` keeps it from pointing git at a
    config of its own, so nothing it writes becomes a command that root's git
    runs. Everything else is the user's.
    """
    gitdir = repo / ".git"
    if not gitdir.is_dir() or repo.is_symlink() or gitdir.is_symlink():
        return
    commondir = gitdir / "commondir"
    if commondir.is_symlink() or (commondir.exists() and commondir.stat().st_uid != 0):
        commondir.unlink()  # the user's: it may name a config of its own
    if not commondir.exists():
        commondir.write_text(".\n")
    os.chmod(commondir, 0o644)
    keep = {gitdir / "config", gitdir / "hooks", commondir}
    for entry in (*repo.iterdir(), *gitdir.iterdir()):
        if entry == gitdir or entry in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            chown_tree(entry, user.pw_uid, user.pw_gid)
        else:
            os.chown(entry, user.pw_uid, user.pw_gid, follow_symlinks=False)
    for d in (repo, gitdir):
        os.chown(d, 0, user.pw_gid)
        os.chmod(d, 0o3775)
    chown_tree(gitdir / "hooks", 0, 0)
    if (gitdir / "config").exists():
        os.chown(gitdir / "config", 0, 0, follow_symlinks=False)
        os.chmod(gitdir / "config", 0o644, follow_symlinks=False)


def default_harness_command() -> list[str]:
    return [sys.executable, "-m", "hyperhive.cli.main", "harness", "serve"]


def repo_claude() -> Path | None:
    """The claude CLI pinned in a source checkout (``tools/claude``), if any."""
    try:
        root = Path(hyperhive.__file__).resolve().parents[2]
    except (IndexError, TypeError):
        return None
    path = root / "tools" / "claude" / "node_modules" / ".bin" / "claude"
    return path if path.exists() else None


def find_claude(settings: Settings) -> str:
    """The configured claude CLI, else ``claude`` on PATH, else the repo's; ``""`` if none."""
    if settings.harness.claude_bin:
        return settings.harness.claude_bin
    found = shutil.which("claude")
    if found:
        return found
    pinned = repo_claude()
    return str(pinned) if pinned else ""


def proc_start_time(pid: int) -> str | None:
    """The start time of a live (not zombie) process from ``/proc``, else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return fields[19]


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except OSError:
        pass


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc's children lists of all its threads."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            found += kids
            todo += kids
    return found


def _terminate_sandbox(bwrap_pid: int) -> None:
    """SIGTERM to what runs inside bwrap's sandbox, not to bwrap itself.

    bwrap passes no signal on: a SIGTERM to the whole group ends the outer
    bwrap at once, which looks like the harness exiting, and the SIGKILL that
    clears the group would then cut its graceful stop short. The sandbox's
    pid 1 (bwrap again) ends by itself once the harness has.
    """
    try:
        wrapped = Path(f"/proc/{bwrap_pid}/comm").read_text().strip() == "bwrap"
    except OSError:
        wrapped = False
    inner = _sandbox_pid(bwrap_pid) if wrapped else None
    targets = _descendants(inner) if inner is not None else []
    if not targets:
        _killpg(bwrap_pid, signal.SIGTERM)
        return
    for pid in targets:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass


def view_dir(manager: AgentPaths) -> Path:
    """Without bwrap: the manager's layout as symlinks (``view/agents``, ``view/applied``)."""
    return manager.root / "view"


def _link_view(view: Path, agents: list[AgentPaths]) -> None:
    """Points ``view``'s symlinks at each agent's dirs (replacing stale ones)."""
    for paths in agents:
        for src, dst, _ro in manager_binds(paths, str(view)):
            link = Path(dst)
            link.parent.mkdir(parents=True, exist_ok=True)
            tmp = link.with_name(f".{link.name}.tmp")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(src)
            tmp.replace(link)


def _host_root() -> list[str]:
    """The host's root, read-only, entry by entry on a tmpfs root (so that
    ``/agents`` and ``/applied`` can be made; ``--ro-bind / /`` cannot)."""
    args: list[str] = []
    for entry in sorted(os.scandir("/"), key=lambda e: e.name):
        path = f"/{entry.name}"
        if entry.name in ("dev", "proc", "tmp"):
            continue
        if entry.is_symlink():
            args += ["--symlink", os.readlink(path), path]
        elif entry.is_dir(follow_symlinks=False) or entry.is_file(follow_symlinks=False):
            args += ["--ro-bind", path, path]
    # /tmp is the sandbox's own, writable by whoever the harness runs as
    return [*args, "--dev", "/dev", "--proc", "/proc", "--perms", "1777", "--tmpfs", "/tmp"]


def _bwrap_help(bwrap: str) -> str:
    try:
        out = subprocess.run(
            [bwrap, "--help"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout + out.stderr


def _bwrap_can_disable_userns(bwrap: str) -> bool:
    return "--disable-userns" in _bwrap_help(bwrap)


def _sandbox_pid(bwrap_pid: int) -> int | None:
    """A process inside the sandbox: bwrap's first child."""
    try:
        children = Path(f"/proc/{bwrap_pid}/task/{bwrap_pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def _bind_into_sandbox(nsenter: str, bwrap_pid: int, name: str) -> None:
    """Binds agent ``name``'s dirs into the running manager sandbox of ``bwrap_pid``.

    Enters the sandbox's mount namespace, through the user namespace that owns
    it when that is not ours (bwrap without root): lifecycle created it, so it
    has capabilities there. Blocking.

    Raises:
        BackendFailed: no sandbox, or nsenter or mount failed.
    """
    pid = _sandbox_pid(bwrap_pid)
    if pid is None:
        raise BackendFailed(f"no sandboxed process under bwrap pid {bwrap_pid}")
    mnt = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    owner = -1
    try:
        argv = [nsenter, f"--mount=/proc/{pid}/ns/mnt"]
        try:
            owner = fcntl.ioctl(mnt, NS_GET_USERNS)
        except OSError as exc:
            raise BackendFailed(f"cannot read the sandbox's user namespace: {exc}") from None
        if os.fstat(owner).st_ino != os.stat("/proc/self/ns/user").st_ino:
            argv += [f"--user=/proc/self/fd/{owner}", "--preserve-credentials"]
        argv += ["--", "sh", "-c", _BIND_SCRIPT, "sh", name, STAGE_AGENTS]
        try:
            proc = subprocess.run(
                argv,
                pass_fds=(owner,),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=NSENTER_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BackendFailed(f"nsenter: {exc}") from None
        if proc.returncode != 0:
            raise BackendFailed(
                f"binding {name} into the manager's sandbox failed (exit {proc.returncode}): "
                + (proc.stderr or proc.stdout).strip()[-2000:]
            )
    finally:
        os.close(mnt)
        if owner >= 0:
            os.close(owner)


class ProcessBackend(Backend):
    name = "process"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.poll_interval_s = settings.lifecycle.monitor_interval_s
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._exits: dict[str, Exit] = {}
        try:
            command = settings.lifecycle.harness_command
            self._argv = shlex.split(command) if command else default_harness_command()
        except ValueError as exc:
            raise ConfigError(f"lifecycle.harness_command: {exc}") from None
        self._bwrap = shutil.which("bwrap") if settings.lifecycle.use_bwrap else None
        self._user = _agent_user(settings)
        # the manager's staging dir needs a sandbox that cannot make user
        # namespaces (in one, it would have capabilities over its own files
        # and could read the 0000 dir); bwrap < 0.8 cannot promise that. As
        # the agent user, the dir (root's) is closed by plain permissions: a
        # user namespace of its own maps no root, so it gains nothing there
        # (and the sandbox may not be a user namespace itself: setpriv could
        # not switch to an unmapped uid)
        self._stage = bool(self._bwrap) and (
            self._user is not None or _bwrap_can_disable_userns(self._bwrap)
        )
        self._nsenter = shutil.which("nsenter")
        if self._bwrap and "--perms" not in _bwrap_help(self._bwrap):
            # the sandbox's /tmp (1777) and the dirs on the way to its binds
            # (0755) need it; without, an agent user could start nothing
            raise ConfigError(
                f"{self._bwrap} is too old (no --perms): install bubblewrap >= 0.5, "
                "or set lifecycle.use_bwrap = false"
            )
        self._drop: list[str] = []
        if self._user is not None:
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                raise ConfigError(
                    "setpriv (util-linux) not found: needed to run harnesses as "
                    f"{self._user.pw_name} instead of root"
                )
            self._drop = drop_argv(setpriv, self._user)
        if settings.lifecycle.backend == self.name:
            for line in isolation_gaps(settings):
                log.warning("%s", line)

    # --- liveness -------------------------------------------------------------

    def _read_pid_file(self, paths: AgentPaths) -> tuple[int, str] | None:
        try:
            pid_s, start = paths.pid_file.read_text().split()[:2]
            return int(pid_s), start
        except (OSError, ValueError):
            return None

    def pid(self, spec: AgentSpec) -> int | None:
        """The harness's pid if it runs (own child or adopted from the pid file)."""
        child = self._children.get(spec.name)
        if child is not None:
            if child.poll() is None:
                return child.pid
            self._children.pop(spec.name, None)
            self._exits[spec.name] = Exit(
                code=child.returncode, detail=_describe_exit(child.returncode)
            )
            _killpg(child.pid, signal.SIGKILL)  # what the harness left behind
            return None
        recorded = self._read_pid_file(spec.paths)
        if recorded is None:
            return None
        pid, start = recorded
        if proc_start_time(pid) == start:
            return pid
        return None

    async def state(self, spec: AgentSpec) -> str:
        if self.pid(spec) is not None:
            return RUNNING
        return STOPPED if spec.paths.applied.exists() else MISSING

    def last_exit(self, spec: AgentSpec) -> Exit:
        return self._exits.get(spec.name, Exit(detail="harness process is gone"))

    # --- lifecycle ------------------------------------------------------------

    async def create(self, spec: AgentSpec) -> None:
        await asyncio.to_thread(agentconf.validate, spec.paths.applied)
        for d in (spec.paths.state, spec.paths.creds, spec.paths.run, spec.paths.workdir):
            d.mkdir(parents=True, exist_ok=True)

    async def update(self, spec: AgentSpec, *, running: bool) -> None:
        await asyncio.to_thread(agentconf.validate, spec.paths.applied)
        if running:
            await self.restart(spec)

    async def start(self, spec: AgentSpec) -> None:
        if self.pid(spec) is not None:
            return  # already running (perhaps adopted): never a duplicate
        paths = spec.paths
        for d in (paths.state, paths.creds, paths.run, paths.workdir):
            d.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            try:
                await asyncio.to_thread(self._hand_over, spec)
            except OSError as exc:
                raise BackendFailed(
                    f"cannot give {spec.name}'s files to {self._user.pw_name}: {exc}"
                ) from None
        if spec.manager and not self._bwrap:
            await asyncio.to_thread(self._rebuild_view, spec)
        argv = self.command(spec)
        env = self.environment(spec)
        # the page's socket is bound here, on the host: the run dir is
        # read-only inside the sandbox (the pid file and log are lifecycle's)
        try:
            sock = bind_unix(paths.page_socket, f"agent page of {spec.name}")
        except ConfigError as exc:
            raise BackendFailed(str(exc)) from None
        env["HIVE_HARNESS_SOCKET_FD"] = str(sock.fileno())
        try:
            proc = await asyncio.to_thread(_popen, argv, env, paths, sock.fileno())
        finally:
            sock.close()  # the harness holds its own copy
        start = proc_start_time(proc.pid) or "0"
        tmp = paths.pid_file.with_suffix(".tmp")
        tmp.write_text(f"{proc.pid} {start}\n")
        tmp.replace(paths.pid_file)
        self._children[spec.name] = proc
        self._exits.pop(spec.name, None)
        deadline = time.monotonic() + self.settings.lifecycle.start_grace_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        if proc.poll() is not None:
            self._children.pop(spec.name, None)
            paths.pid_file.unlink(missing_ok=True)
            raise BackendFailed(
                f"harness exited at start ({_describe_exit(proc.returncode)}):\n"
                + self._tail(paths, 30)
            )

    async def stop(self, spec: AgentSpec, *, kill: bool = False) -> None:
        pid = self.pid(spec)
        if pid is not None:
            if kill:
                _killpg(pid, signal.SIGKILL)
            elif self._bwrap:
                _terminate_sandbox(pid)
            else:
                _killpg(pid, signal.SIGTERM)
            if not await self._wait_gone(spec, self.settings.lifecycle.stop_timeout_s):
                _killpg(pid, signal.SIGKILL)
                if not await self._wait_gone(spec, 10.0):
                    raise BackendFailed(f"harness of {spec.name} (pid {pid}) does not die")
            _killpg(pid, signal.SIGKILL)  # anything left in its group
        self._children.pop(spec.name, None)
        spec.paths.pid_file.unlink(missing_ok=True)

    async def _wait_gone(self, spec: AgentSpec, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.pid(spec) is not None:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def destroy(self, spec: AgentSpec) -> None:
        await self.stop(spec)
        self._exits.pop(spec.name, None)

    # --- the harness's command and environment --------------------------------

    def command(self, spec: AgentSpec) -> list[str]:
        """The harness argv, wrapped in ``bwrap`` when that is in use."""
        if not self._bwrap:
            return [*self._drop, *self._argv]
        return [self._bwrap, *self._bwrap_args(spec), "--", *self._drop, *self._argv]

    # --- what the agent user owns ---------------------------------------------

    def _hand_over(self, spec: AgentSpec) -> None:
        """Gives the agent user what the harness writes (blocking).

        Raises:
            BackendFailed: without bwrap, a dir on the way to the agent's own
                dirs is closed to the agent user (nothing could bind them).
        """
        user = self._user
        assert user is not None
        paths = spec.paths
        for d in (paths.state, paths.creds, paths.workdir):
            chown_tree(d, user.pw_uid, user.pw_gid)
        os.chmod(paths.creds, 0o700)  # its claude login
        if paths.nats_seed.exists():
            os.chown(paths.nats_seed, user.pw_uid, user.pw_gid, follow_symlinks=False)
            os.chmod(paths.nats_seed, 0o400, follow_symlinks=False)
        if spec.manager:
            for name in manager_view_agents(self.settings, spec.name):
                self._share_with_manager(AgentPaths(self.settings.paths.agents_dir / name))
        if self._bwrap:
            return
        program = program_path(self._argv[0])
        needed = [paths.workdir, *(installed_at(program) if program else [])]
        if self._argv == default_harness_command():
            needed += runtime_paths(self._argv, find_claude(self.settings))
        reason = unreachable(user, needed)
        if reason:
            raise BackendFailed(reason)

    def _share_with_manager(self, paths: AgentPaths) -> None:
        user = self._user
        assert user is not None
        chown_tree(paths.state, user.pw_uid, user.pw_gid)
        share_repo(paths.proposed, user)

    def _bwrap_args(self, spec: AgentSpec) -> list[str]:
        s = self.settings
        paths = spec.paths
        agents = s.paths.agents_dir
        # no capabilities (bwrap run as root keeps them otherwise: it could
        # unmount what hides the data dir) and its own PID namespace (else
        # /proc/<pid>/root of any host process of the same user is the host)
        args = [*_host_root(), "--unshare-pid", "--cap-drop", "ALL"]
        if self._user is not None:
            for cap in DROP_CAPS:
                args += ["--cap-add", cap]
        # hide the data dir (other agents, NATS seeds, the database), outermost
        # first; as the agent user, also empty every dir on the way that it
        # cannot search (/root, another user's home), then bind back what the
        # harness needs to run from there or from under the host's /tmp
        hidden = {Path(s.paths.home), nats_dir(s), agents}
        masks = {d for d in hidden if d.exists()}
        runtime = runtime_paths(self._argv, find_claude(s))
        if self._user is not None:
            uid, gid = self._user.pw_uid, self._user.pw_gid
            for path in (Path(s.paths.home) / "x", *(p / "x" for p in runtime)):
                closed = closed_ancestor(path, uid, gid)
                # below an empty tmpfs every dir on the way is bwrap's (0755)
                if closed is not None and not _under(closed, [Path("/tmp")]):
                    masks.add(closed)
        binds = [
            p
            for p in runtime
            if p.exists() and _under(p, {Path("/tmp"), *masks}) and not _under(p, hidden)
        ]
        binds = [p for p in binds if not _under(p, [b for b in binds if b != p])]
        mounts = [(d, "--tmpfs") for d in masks] + [(b, "--ro-bind") for b in binds]
        tops = [Path("/tmp"), *masks]
        for d, how in sorted(mounts, key=lambda m: (len(m[0].parts), m[1] == "--ro-bind")):
            target = [str(d)] if how == "--tmpfs" else [str(d), str(d)]
            args += [*_open_dirs(d, tops), how, *target]
        if spec.manager:
            args += self._manager_args(spec)
        for d in (paths.state, paths.creds, paths.workdir):
            args += [*_open_dirs(d, tops), "--bind", str(d), str(d)]
        for d in (paths.applied, paths.run):
            args += [*_open_dirs(d, tops), "--ro-bind", str(d), str(d)]
        args += ["--remount-ro", "/", "--chdir", str(paths.workdir)]
        return args

    def _manager_args(self, spec: AgentSpec) -> list[str]:
        """The manager's view of the other agents inside its sandbox.

        bwrap's binds are fixed at start, but agents appear while the manager
        runs (its own ``request_spawn_draft``, in the middle of a turn, must
        show the draft at once: a restart then would kill that turn). Binding
        the agents dir itself would show every agent's creds/ and run/ (claude
        login, NATS seed). So the agents that exist get their three binds
        here; later ones are bound into the running sandbox by
        :meth:`expose_to_manager` from the staging dir, which the manager
        cannot read: mode 0000 on a read-only tmpfs, no capabilities, no user
        namespaces of its own.
        """
        agents = self.settings.paths.agents_dir
        args = ["--tmpfs", f"/{VIEW_AGENTS}", "--tmpfs", f"/{VIEW_APPLIED}"]
        if self._stage and agents.is_dir():
            if self._user is None:
                args += ["--unshare-user", "--disable-userns"]
            args += ["--tmpfs", STAGE]
            args += ["--ro-bind", str(agents), STAGE_AGENTS]
            args += ["--chmod", "0000", STAGE, "--remount-ro", STAGE]
        for name in manager_view_agents(self.settings, spec.name):
            for src, dst, ro in manager_binds(AgentPaths(agents / name)):
                if src.is_dir():
                    args += _open_dirs(
                        Path(dst), [Path(f"/{VIEW_AGENTS}"), Path(f"/{VIEW_APPLIED}")]
                    )
                    args += ["--ro-bind" if ro else "--bind", str(src), dst]
        return args

    def _rebuild_view(self, spec: AgentSpec) -> None:
        """Without bwrap: the manager's symlink view, stale entries removed."""
        view = view_dir(spec.paths)
        shutil.rmtree(view, ignore_errors=True)
        names = manager_view_agents(self.settings, spec.name)
        _link_view(view, [AgentPaths.of(self.settings, n) for n in names])

    async def expose_to_manager(self, name: str) -> None:
        """Shows agent ``name`` (new since the manager started) to the manager.

        Under bwrap its dirs are bind-mounted into the running sandbox;
        without, the manager's symlink view gets its links. If the binds fail
        the agent shows up at the manager's next start (logged).
        """
        manager = self.settings.lifecycle.manager
        if not manager or name == manager or not is_agent_name(name):
            return
        mpaths = AgentPaths.of(self.settings, manager)
        if self._user is not None:
            agent = AgentPaths.of(self.settings, name)
            try:
                await asyncio.to_thread(self._share_with_manager, agent)
            except OSError as exc:
                log.warning(
                    "%s's files stay closed to the manager until it restarts: %s", name, exc
                )
        if not self._bwrap:
            if mpaths.root.is_dir():
                agent = AgentPaths.of(self.settings, name)
                await asyncio.to_thread(_link_view, view_dir(mpaths), [agent])
            return
        pid = self.pid(AgentSpec(name=manager, port=0, manager=True, paths=mpaths))
        if pid is None:
            return  # not running: its next start binds every agent
        if not (self._stage and self._nsenter):
            log.warning(
                "%s appears in the manager's sandbox at its next start "
                "(needs nsenter and bwrap >= 0.8 to bind it now)",
                name,
            )
            return
        try:
            await asyncio.to_thread(_bind_into_sandbox, self._nsenter, pid, name)
        except BackendFailed as exc:
            log.warning("%s appears in the manager's sandbox at its next start: %s", name, exc)

    def environment(self, spec: AgentSpec) -> dict[str, str]:
        """The harness environment of the contract (nothing else of ``HIVE_*``)."""
        s = self.settings
        paths = spec.paths
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("HIVE_") and k not in PASS_THROUGH
        }
        if not any((paths.creds / f).exists() for f in LOGIN_FILES):
            for key in PASS_THROUGH:
                if os.environ.get(key):
                    env[key] = os.environ[key]
        env.update(
            {
                "HOME": str(paths.workdir),
                "HIVE_HOME": s.paths.home,
                "HIVE_HARNESS_AGENT": spec.name,
                "HIVE_HARNESS_SOCKET": str(paths.page_socket),
                "HIVE_HARNESS_WORKDIR": str(paths.workdir),
                "HIVE_HARNESS_STATE_DIR": str(paths.state),
                "HIVE_HARNESS_CREDS_DIR": str(paths.creds),
                "HIVE_HARNESS_CONFIG_DIR": str(paths.applied),
                "HIVE_HARNESS_CLAUDE_BIN": find_claude(s),
                "HIVE_HARNESS_HEARTBEAT_INTERVAL_S": str(s.harness.heartbeat_interval_s),
                "HIVE_HARNESS_NOTES_COMPACT_BYTES": str(s.harness.notes_compact_bytes),
                "HIVE_HARNESS_NOTES_COMPACT_MIN_RATIO": str(s.harness.notes_compact_min_ratio),
                "HIVE_NATS_URL": s.nats.url,
                "HIVE_NATS_SEED_FILE": str(paths.nats_seed),
                "HIVE_NATS_INBOX_PREFIX": subjects.inbox_prefix(spec.name),
                "HIVE_NATS_REQUEST_TIMEOUT_S": str(s.nats.request_timeout_s),
                "HIVE_LOG_LEVEL": s.log.level,
                "HIVE_LOG_FORMAT": s.log.format,
                "HIVE_TELEMETRY_EXPORTER": s.telemetry.exporter,
                "HIVE_TELEMETRY_OTLP_ENDPOINT": s.telemetry.otlp_endpoint,
                "HIVE_TELEMETRY_SERVICE_NAMESPACE": s.telemetry.service_namespace,
            }
        )
        if self._user is not None:
            env["USER"] = env["LOGNAME"] = self._user.pw_name
            # the repos it reads and the manager's proposed repos are root's:
            # its own git must not refuse them (the trust is the agent's own)
            env.update(
                {
                    "GIT_CONFIG_COUNT": "1",
                    "GIT_CONFIG_KEY_0": "safe.directory",
                    "GIT_CONFIG_VALUE_0": "*",
                }
            )
        if s.harness.model:
            env["HIVE_HARNESS_MODEL"] = s.harness.model
        if spec.manager and not self._bwrap:
            # the container layout under a dir of its own (no sandbox to put it at /)
            env["HIVE_HARNESS_VIEW_DIR"] = str(view_dir(paths))
        return env

    # --- logs -----------------------------------------------------------------

    def _tail(self, paths: AgentPaths, lines: int) -> str:
        return "\n".join(_read_tail(paths.log_file, lines)[0])

    async def logs(
        self, spec: AgentSpec, lines: int, after: int | None, after_cursor: str
    ) -> LogsReply:
        path = spec.paths.log_file
        if after is None:
            tail, size = await asyncio.to_thread(_read_tail, path, lines)
            return LogsReply(lines=tail, cursor=size)
        return await asyncio.to_thread(_read_after, path, after)


def _agent_user(settings: Settings) -> pwd.struct_passwd | None:
    """The user harnesses run as when lifecycle is root; None when it is not
    (they then run as lifecycle's own uid) or when the setting is empty."""
    if os.geteuid() != 0 or not settings.lifecycle.agent_user:
        return None
    return system_user(settings.lifecycle.agent_user)


def _popen(
    argv: list[str], env: dict[str, str], paths: AgentPaths, listen_fd: int
) -> subprocess.Popen[bytes]:
    """Starts the harness in its own session, output appended to its log,
    with the page's listening socket ``listen_fd`` inherited."""
    with open(paths.log_file, "ab") as log:
        log.write(f"--- hyperhive: harness start {time.ctime()} ---\n".encode())
        log.flush()
        try:
            return subprocess.Popen(
                argv,
                env=env,
                cwd=paths.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=(listen_fd,),
            )
        except OSError as exc:
            raise BackendFailed(
                f"cannot run the harness ({shlex.join(argv)}): {exc.strerror or exc}"
            ) from None


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _read_tail(path: Path, lines: int) -> tuple[list[str], int]:
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - LOG_TAIL_BYTES))
            data = f.read()
    except OSError:
        return [], 0
    text = data.decode(errors="replace").splitlines()
    return text[-lines:] if lines > 0 else [], size


def _read_after(path: Path, after: int) -> LogsReply:
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if after > size:  # the file was replaced: start over
                after = 0
            f.seek(after)
            data = f.read(LOG_CHUNK_BYTES)
    except OSError:
        return LogsReply(lines=[], cursor=after)
    end = data.rfind(b"\n")
    if end < 0:
        return LogsReply(lines=[], cursor=after)
    complete = data[: end + 1]
    return LogsReply(
        lines=complete.decode(errors="replace").splitlines(), cursor=after + len(complete)
    )
