"""Host users and ownership hand-over (hyperhive.common.hostuser)."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from hyperhive.common.hostuser import chown_tree, closed_ancestor, system_user, unreachable
from tests.rig import shared_tempdir

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@as_root
def test_chown_tree_never_follows_a_planted_symlink(tmp_path: Path):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "shadow"
    secret.write_text("root's")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "file").write_text("x")
    (tree / "link-to-file").symlink_to(secret)
    (tree / "link-to-dir").symlink_to(outside)
    chown_tree(tree, NOBODY, NOBODY)
    for path in (tree, tree / "sub", tree / "sub" / "file", tree / "link-to-file"):
        st = os.lstat(path)
        assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY), path
    assert os.lstat(tree / "link-to-dir").st_uid == NOBODY
    for path in (outside, secret):
        assert os.stat(path).st_uid == 0, path
    chown_tree(tree / "link-to-dir", NOBODY, NOBODY)  # a symlinked top: nothing
    assert os.stat(outside).st_uid == 0


def test_closed_ancestor_and_unreachable():
    root = shared_tempdir("hive-hostuser-")  # 0711 under /tmp
    try:
        closed = root / "closed"
        inner = closed / "open" / "deep"
        inner.mkdir(parents=True)
        os.chmod(closed, 0o700)
        assert closed_ancestor(inner / "x", NOBODY, NOBODY) == closed
        assert closed_ancestor(inner / "x", os.getuid(), os.getgid()) is None  # its owner
        assert closed_ancestor(root / "missing" / "x", NOBODY, NOBODY) is None
        if os.geteuid() == 0:
            reason = unreachable(pwd.getpwuid(NOBODY), [root, inner])
            assert reason.startswith(f"the harness runs as nobody and cannot reach {inner}: ")
            assert f"{closed} is closed to it" in reason
        os.chmod(closed, 0o711)
        assert closed_ancestor(inner / "x", NOBODY, NOBODY) is None
    finally:
        shutil.rmtree(root, ignore_errors=True)


@as_root
def test_system_user_has_a_group_of_its_own_and_no_login():
    name = f"hive-t{uuid.uuid4().hex[:8]}"
    try:
        user = system_user(name)
        assert grp.getgrgid(user.pw_gid).gr_name == name
        assert (user.pw_dir, user.pw_shell) == ("/nonexistent", "/usr/sbin/nologin")
        assert system_user(name) == user  # found, not made again
    finally:
        subprocess.run(["userdel", name], capture_output=True)
        subprocess.run(["groupdel", name], capture_output=True)
