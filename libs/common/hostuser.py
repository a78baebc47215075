"""Unprivileged host users for what must not run as root (docs/operations.md, threat model).

As root, ``hive up`` runs PostgreSQL as ``hyperhive-pg`` and the process
backend runs every agent harness as ``hyperhive-agent`` (``lifecycle.agent_user``):
system users with no home and no login shell, created on first use. What a
harness runs from (:func:`runtime_paths`) must be reachable by that user, or
bound into its sandbox.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import site
import stat
import subprocess
import sys
from pathlib import Path

import hyperhive
from hyperhive.common.config import Settings
from hyperhive.common.errors import ConfigError


def system_user(name: str) -> pwd.struct_passwd:
    """The system user ``name``, created (no home, no shell) if it does not exist.

    Raises:
        ConfigError: it does not exist and ``useradd`` cannot create it.
    """
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    try:
        grp.getgrnam(name)
        group = ["--gid", name]  # a group of that name exists: its own group
    except KeyError:
        group = ["--user-group"]  # never a shared one such as `users`
    try:
        subprocess.run(
            [
                "useradd",
                "--system",
                *group,
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise ConfigError(f"cannot create the system user {name}: {detail.strip()}") from None
    return pwd.getpwnam(name)


def closed_ancestor(path: Path, uid: int, gid: int) -> Path | None:
    """The outermost dir on the way to ``path`` that ``uid``/``gid`` cannot search.

    Only the ancestors of ``path`` are checked (not ``path`` itself); a dir
    that does not exist ends the walk (nothing beyond it can be closed yet).
    """
    for parent in reversed(Path(os.path.abspath(path)).parents):
        try:
            st = parent.stat()
        except OSError:
            return None
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return parent
    return None


def chown_tree(top: Path, uid: int, gid: int) -> None:
    """Gives ``top`` and everything under it to ``uid``/``gid``.

    Walks with directory fds and never follows a symlink (``os.fwalk``), so a
    symlink or a swapped dir planted by the tree's owner cannot turn this into
    a chown of a file elsewhere. Entries already owned are left untouched.
    """
    if not top.is_dir() or top.is_symlink():
        return
    for _dirpath, dirnames, filenames, dirfd in os.fwalk(top, follow_symlinks=False):
        st = os.fstat(dirfd)
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.fchown(dirfd, uid, gid)
        for name in (*filenames, *(d for d in dirnames if _is_link(d, dirfd))):
            try:
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                if (st.st_uid, st.st_gid) != (uid, gid):
                    os.chown(name, uid, gid, dir_fd=dirfd, follow_symlinks=False)
            except FileNotFoundError:
                continue


def _is_link(name: str, dirfd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def isolation_gaps(settings: Settings) -> list[str]:
    """One line per layer of agent isolation the process backend lacks here
    (logged by lifecycle, printed by ``hive up``); none with bwrap as root."""
    if settings.lifecycle.backend != "process":
        return []
    lines = []
    root = os.geteuid() == 0
    if root and not settings.lifecycle.agent_user:
        lines.append("agents run as root: lifecycle.agent_user is empty")
    if not (settings.lifecycle.use_bwrap and shutil.which("bwrap")):
        why = "bwrap is not installed" if settings.lifecycle.use_bwrap else "use_bwrap is off"
        lines.append(
            f"agents run without a sandbox ({why}): they share one uid, so each can read "
            "the others' files and signal their processes"
            + ("" if root else "; as your uid, also all of $HIVE_HOME and the services")
        )
    return lines


def program_path(argv0: str) -> str | None:
    """The file a command's ``argv[0]`` runs (a path as given, else from PATH)."""
    return argv0 if "/" in argv0 else shutil.which(argv0)


def checkout() -> Path | None:
    """The source checkout of an editable install, if hyperhive runs from one."""
    try:
        root = Path(hyperhive.__file__).resolve().parents[2]
    except (IndexError, TypeError):
        return None
    return root if (root / "pyproject.toml").is_file() else None


def installed_at(program: str) -> list[Path]:
    """Dirs that make ``program`` (a path) run: its dir, its real file's, the
    prefix of a ``bin/`` dir, a ``node_modules`` tree it sits in."""
    found: list[Path] = []
    for path in {Path(os.path.abspath(program)), Path(os.path.realpath(program))}:
        parent = path.parent
        found.append(parent.parent if parent.name == "bin" else parent)
        parts = path.parts
        if "node_modules" in parts:
            cut = len(parts) - 1 - parts[::-1].index("node_modules")
            found.append(Path(*parts[: cut + 1]))
    return found


def runtime_paths(argv: list[str], claude: str) -> list[Path]:
    """What a harness needs to run, wherever it is installed: this Python's
    prefix and base prefix, its site dirs, an editable checkout, the harness
    command's program, the claude CLI and node."""
    paths = [Path(sys.prefix), Path(sys.base_prefix), *installed_at(sys.executable)]
    paths += [Path(d) for d in site.getsitepackages()]
    source = checkout()
    if source is not None:
        paths.append(source)
    programs = [program_path(argv[0]) if argv else None, claude or None, shutil.which("node")]
    for program in programs:
        if program:
            paths += installed_at(program)
    real = {Path(os.path.realpath(p)) for p in paths if p.is_absolute()}
    return sorted({*real, *(p for p in paths if p.is_absolute())})


def unreachable(user: pwd.struct_passwd, paths: list[Path]) -> str:
    """Why ``user`` cannot run a harness that needs ``paths`` without a
    sandbox (one line), or ``""`` when every one of them is reachable."""
    for path in paths:
        closed = closed_ancestor(path / "x", user.pw_uid, user.pw_gid)
        if closed is not None:
            return (
                f"the harness runs as {user.pw_name} and cannot reach {path}: {closed} is "
                "closed to it; install bubblewrap (the sandbox binds what it needs) or "
                "move it where that user can read it"
            )
    return ""
