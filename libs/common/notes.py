"""An agent's notes and every earlier version of them, on disk.

The notes (``<state dir>/notes.md``) are the agent's only memory across
conversations, so every version the harness sees is kept, numbered, in
``<state dir>/.hive-harness/notes-history/``:

- ``000001.md``, ``000002.md``, …: one file per version, never rewritten
  (created with ``O_EXCL``), so nothing the harness does later — a
  compaction above all — can destroy an earlier version;
- ``log.jsonl``: one :class:`~hyperhive.common.wire.lifecycle.NotesVersion`
  per line (number, time, kind, turn, size, sha256, note).

A version is recorded only when the content differs from the newest one.
The harness writes (after each turn, at start, before and after a
compaction); the node agent that keeps the state dir reads, for
``hive notes`` (:func:`read_notes`). The files are plain
Markdown, so an operator can also read them on the host. Nothing prunes
them: an agent that rewrites 30 KiB of notes every turn keeps 30 KiB per
turn (the operator may delete old versions by hand).

Lifecycle reads a dir the agent can write: every path is opened without
following symlinks (:func:`read_file`), sizes are bounded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import time
from pathlib import Path

import msgspec

from hyperhive.common.errors import NotFound
from hyperhive.common.wire.lifecycle import NotesReply, NotesVersion

NOTES_FILE = "notes.md"
# the harness's own files in the state dir; the history is one dir of them
HARNESS_STATE_DIR = ".hive-harness"
HISTORY_DIR = "notes-history"
LOG_FILE = "log.jsonl"
# what a read hands back at most (a reply must fit a NATS message)
MAX_READ_BYTES = 512 * 1024
MAX_LISTED = 2000  # versions listed in one reply (the newest)
# kinds of version
CHANGE = "change"  # the notes as the harness found them (after a turn, at start, …)
COMPACTION = "compaction"  # what a compaction wrote

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(NotesVersion)


def version_name(v: int) -> str:
    return f"{v:06d}.md"


def history_parts() -> tuple[str, str]:
    """The history dir, relative to the state dir, as path components."""
    return (HARNESS_STATE_DIR, HISTORY_DIR)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_log(data: bytes) -> list[NotesVersion]:
    """The versions in a ``log.jsonl`` (lines that do not decode are skipped)."""
    out: list[NotesVersion] = []
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            out.append(_decoder.decode(line))
        except msgspec.DecodeError:
            continue
    return out


class NotesHistory:
    """The harness's side: records versions of the notes of one state dir."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.dir = state_dir.joinpath(*history_parts())
        self.log = self.dir / LOG_FILE

    def versions(self) -> list[NotesVersion]:
        try:
            return parse_log(self.log.read_bytes())
        except OSError:
            return []

    def latest(self) -> NotesVersion | None:
        versions = self.versions()
        return versions[-1] if versions else None

    def read(self, v: int) -> bytes:
        """The content of version ``v``.

        Raises:
            OSError: no such version.
        """
        return (self.dir / version_name(v)).read_bytes()

    def record(
        self, data: bytes, kind: str, *, turn: int | None = None, note: str = ""
    ) -> NotesVersion | None:
        """Keeps ``data`` as a new version unless it equals the newest one.

        Returns the new version, or None when nothing was recorded.

        Raises:
            OSError: the version could not be written (the caller must not
                replace the notes then).
        """
        digest = sha256(data)
        versions = self.versions()
        if versions and versions[-1].sha256 == digest:
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        v = max([x.v for x in versions] + [self._highest_file()]) + 1
        while True:  # a file without a log line (a crash in between) keeps its number
            try:
                fd = os.open(
                    self.dir / version_name(v), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644
                )
                break
            except FileExistsError:
                v += 1
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        entry = NotesVersion(
            v=v, ts=time.time(), kind=kind, turn=turn, bytes=len(data), sha256=digest, note=note
        )
        with open(self.log, "ab") as f:
            f.write(_encoder.encode(entry) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        return entry

    def _highest_file(self) -> int:
        best = 0
        with contextlib.suppress(OSError):
            for p in self.dir.iterdir():
                if p.suffix == ".md" and p.stem.isdigit():
                    best = max(best, int(p.stem))
        return best


def read_file(root: Path, *parts: str, limit: int = MAX_READ_BYTES) -> tuple[bytes, int] | None:
    """Reads ``root/parts…`` without following a symlink anywhere below ``root``.

    For reading a dir that someone else (an agent) can write. Returns the
    first ``limit`` bytes and the file's full size; None when it does not
    exist, is not a regular file, or a component is a symlink.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(root, flags | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        for part in parts[:-1]:
            nxt = os.open(part, flags | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        ffd = os.open(parts[-1], flags | getattr(os, "O_NONBLOCK", 0), dir_fd=fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        st = os.fstat(ffd)
        if not stat.S_ISREG(st.st_mode):
            return None
        chunks: list[bytes] = []
        left = limit
        while left > 0 and (chunk := os.read(ffd, min(left, 1 << 16))):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks), st.st_size
    except OSError:
        return None
    finally:
        os.close(ffd)


def read_notes(state: Path, name: str, history: bool, version: int | None) -> NotesReply:
    """What ``hive notes`` shows of the state dir ``state``: the current
    notes, one kept version, or (``history``) the list of versions."""
    reply = NotesReply(name=name, version=version)
    log = read_file(state, *history_parts(), LOG_FILE, limit=16 * 1024 * 1024)
    versions = parse_log(log[0]) if log else []
    if history:  # the list only (the newest MAX_LISTED), no text
        reply.versions = versions[-MAX_LISTED:]
        reply.exists = bool(versions)
        return reply
    if version is None:
        found = read_file(state, NOTES_FILE)
    elif any(v.v == version for v in versions):
        found = read_file(state, *history_parts(), version_name(version))
    else:
        raise NotFound(f"{name} has no notes version {version}")
    if found is not None:
        data, size = found
        reply.exists = True
        reply.text = data.decode(errors="replace")
        reply.bytes = size
        reply.truncated = size > len(data)
    return reply


__all__ = [
    "CHANGE",
    "COMPACTION",
    "HARNESS_STATE_DIR",
    "HISTORY_DIR",
    "LOG_FILE",
    "MAX_LISTED",
    "MAX_READ_BYTES",
    "NOTES_FILE",
    "NotesHistory",
    "history_parts",
    "parse_log",
    "read_file",
    "read_notes",
    "sha256",
    "version_name",
]
