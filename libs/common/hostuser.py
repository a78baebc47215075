"""Unprivileged host users for what must not run as root (DESIGN.md section 7).

As root, ``hive up`` runs PostgreSQL as ``hyperhive-pg`` and the process
backend runs every agent harness as ``hyperhive-agent`` (``lifecycle.agent_user``):
system users with no home and no login shell, created on first use.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path

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
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
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
