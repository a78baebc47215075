"""The node agent's verbs refuse bad input, and its deployed trees stay inside."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from hyperhive.common import subjects
from hyperhive.common.errors import BadRequest
from hyperhive.common.wire.node import MAX_TREE_BYTES
from hyperhive.lifecycle.node import pack_tree, unpack_tree
from tests.lifecycle.helpers import serving


def _tar(add) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        add(tar)
    return buf.getvalue()


def _member(name: str, data: bytes = b"x", **kw: object):  # type: ignore[no-untyped-def]
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        for key, value in kw.items():
            setattr(info, key, value)
        tar.addfile(info, io.BytesIO(data) if info.isreg() else None)

    return add


def test_a_packed_tree_unpacks_as_it_was(tmp_path: Path) -> None:
    files = {"agent.toml": b'model = "x"\n', "prompts/extra.md": b"be brief\n"}
    target = tmp_path / "applied"
    target.mkdir()
    (target / "stale.txt").write_text("from the previous deploy")
    unpack_tree(pack_tree(files), target)
    got = {
        p.relative_to(target).as_posix(): p.read_bytes() for p in target.rglob("*") if p.is_file()
    }
    assert got == files


@pytest.mark.parametrize(
    "tree",
    [
        _tar(_member("../escape.txt")),
        _tar(_member("/etc/escape.txt")),
        _tar(_member("link", type=tarfile.SYMTYPE, linkname="/etc/passwd")),
        _tar(_member("dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3)),
        b"not a tar at all",
        b"\x1f\x8b" + b"\x00" * (MAX_TREE_BYTES + 1),
    ],
    ids=["dotdot", "absolute", "symlink-out", "device", "garbage", "too-large"],
)
def test_a_bad_tree_is_refused_and_leaves_the_old_one(tmp_path: Path, tree: bytes) -> None:
    target = tmp_path / "applied"
    target.mkdir()
    (target / "agent.toml").write_text("kept")
    with pytest.raises(BadRequest):
        unpack_tree(tree, target)
    assert (target / "agent.toml").read_text() == "kept"
    assert not (tmp_path / "escape.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["applied"]


async def test_node_verbs_refuse_bad_input(lc_settings, operator_nc, service_nc):
    good = {"name": "nodebad"}
    bad = [
        ("start", {}),
        ("start", {"agent": {"name": "Not Ok"}}),
        ("start", {"agent": {"name": "hm1nd-x-too-long"}}),
        ("state", {"agent": {"name": "../x"}}),
        ("stop", {"agent": good, "kill": "yes"}),
        ("logs", {"agent": good, "lines": "many"}),
        ("expose", {"name": "hm1nd"}),  # the manager is no agent to show itself
        # the hub's node shares the hub's repos: a tree sent to it is refused
        ("create", {"agent": good, "tree": "H4sIAAAAAAAAA2NgGAWjYBSMAggAAKZ4c+AAAgAA"}),
        ("destroy", {"agent": {"name": "hive"}}),
    ]
    async with serving("lifecycle", lc_settings, operator_nc):
        for verb, payload in bad:
            msg = await service_nc.request(
                subjects.node("hub", verb), json.dumps(payload).encode(), timeout=10
            )
            assert json.loads(msg.data)["error"]["code"] == "bad_request", (verb, payload)
        msg = await service_nc.request(subjects.node("hub", "list"), b"{}", timeout=10)
        assert json.loads(msg.data) == {"node": "hub", "containers": []}
