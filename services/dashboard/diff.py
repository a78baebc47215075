"""A unified ``git diff`` split into files and classed lines for the page."""

from __future__ import annotations

from dataclasses import dataclass, field

NO_CHANGE = "(proposal matches currently-deployed tree)"


@dataclass(slots=True)
class DiffLine:
    kind: str  # add | del | hunk | meta | ctx
    text: str


@dataclass(slots=True)
class DiffFile:
    path: str
    lines: list[DiffLine] = field(default_factory=list)
    added: int = 0
    removed: int = 0


def _path_of(header: str) -> str:
    """``diff --git a/x b/x`` → ``x`` (the new side)."""
    _, _, rest = header.partition(" b/")
    return rest or header.removeprefix("diff --git ")


def parse(diff: str) -> list[DiffFile]:
    """Files of a unified diff, each with classed lines and +/- counts."""
    files: list[DiffFile] = []
    current: DiffFile | None = None
    in_header = False
    for raw in diff.splitlines():
        if raw.startswith("diff --git "):
            current = DiffFile(_path_of(raw))
            files.append(current)
            current.lines.append(DiffLine("meta", raw))
            in_header = True
            continue
        if current is None:  # text before the first file (e.g. a notice)
            current = DiffFile("")
            files.append(current)
        if raw.startswith("@@"):
            in_header = False
            current.lines.append(DiffLine("hunk", raw))
        elif in_header:
            current.lines.append(DiffLine("meta", raw))
        elif raw.startswith("+"):
            current.added += 1
            current.lines.append(DiffLine("add", raw))
        elif raw.startswith("-"):
            current.removed += 1
            current.lines.append(DiffLine("del", raw))
        elif raw.startswith("\\"):
            current.lines.append(DiffLine("meta", raw))
        else:
            current.lines.append(DiffLine("ctx", raw))
    return files
