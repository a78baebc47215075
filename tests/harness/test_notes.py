"""The checks on a compaction's answer, and the notes history, without claude
(test_compaction.py runs them through the real CLI)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperhive.common.config import load_settings
from hyperhive.common.notes import NotesHistory, version_name
from hyperhive.harness.claude import RunResult
from hyperhive.harness.config import HarnessConfig, resolve
from hyperhive.harness.notes import SessionLog, apply, check_answer

R30 = range(30)
NOTES = "# Notes\n" + "".join(
    f"- fact {i}: the build server is ci{i}.example\n" for i in range(100)
)


@pytest.mark.parametrize(
    ("answer", "check"),
    [
        ("# Notes\n" + "".join(NOTES.splitlines(keepends=True)[1:30]), ""),
        # the same facts with other list marks and case: still lines in common
        ("NOTES\n" + "".join(f"* FACT {i}: the build server is ci{i}.example\n" for i in R30), ""),
        ("ok\n", "too_small"),
        ("# Notes\n- fact 0: the build server is ci0.example\n", "too_small"),
        (NOTES + "- one more\n", "not_smaller"),
        ("".join(f"- item {i}: unrelated words\n" for i in range(60)), "no_common_line"),
        ("API Error: 500 Internal server error\n", "error_text"),
        ("Invalid API key · Please run /login\n", "error_text"),
        ("Prompt is too long\n", "error_text"),
    ],
)  # fmt: skip
def test_check_answer(answer: str, check: str) -> None:
    assert check_answer(NOTES, answer, 0.1)[0] == check


def test_history_keeps_each_new_content_once_and_never_overwrites(tmp_path: Path) -> None:
    history = NotesHistory(tmp_path)
    assert history.record(b"one\n", "change", turn=1) is not None
    assert history.record(b"one\n", "change", turn=2) is None  # unchanged
    # a version file without its log line (a crash between the two) keeps its number
    (history.dir / version_name(2)).write_bytes(b"orphan\n")
    entry = history.record(b"two\n", "compaction", note="from v1")
    assert entry is not None and entry.v == 3
    assert history.read(2) == b"orphan\n" and history.read(3) == b"two\n"
    assert [(v.v, v.kind, v.turn) for v in history.versions()] == [
        (1, "change", 1),
        (3, "compaction", None),
    ]
    assert history.record(b"one\n", "change") is not None  # back to an older content: kept


def _cfg(tmp_path: Path) -> HarnessConfig:
    env = {"HIVE_HOME": str(tmp_path / "home"), "HIVE_HARNESS_AGENT": "nt"}
    return resolve(load_settings(env, config_file=None))


def _answer(text: str) -> RunResult:
    return RunResult(exit_code=0, result={"type": "result", "is_error": False, "result": text})


def test_a_compaction_replaces_the_notes_only_once_both_versions_are_kept(
    tmp_path: Path,
) -> None:
    cfg = _cfg(tmp_path)
    cfg.notes_path.write_text(NOTES)
    answer = "# Notes\n" + "".join(NOTES.splitlines(keepends=True)[1:30])
    history_dir = NotesHistory(cfg.state_dir).dir
    history_dir.parent.mkdir(parents=True, exist_ok=True)
    history_dir.write_text("in the way")  # the history cannot be written
    out = apply(cfg, NOTES.encode(), _answer(answer), SessionLog())
    assert out.outcome == "failed" and "cannot keep" in out.error
    assert cfg.notes_path.read_text() == NOTES

    history_dir.unlink()
    out = apply(cfg, NOTES.encode(), _answer(answer), SessionLog())
    assert out.replaced and cfg.notes_path.read_text() == answer
    history = NotesHistory(cfg.state_dir)
    assert history.read(out.version_before or 0).decode() == NOTES
    assert history.read(out.version_after or 0).decode() == answer
