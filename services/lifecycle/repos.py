"""The per-agent git repos: ``proposed`` (the manager edits) and ``applied``.

``applied``'s ``main`` is what is deployed. Names reach these functions only
after :func:`hyperhive.common.names.check_agent_name`, and paths are built
from them, so nothing an agent controls reaches git's command line.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import git

from hyperhive.common import gitrepo
from hyperhive.common.gitrepo import AUTHOR, BRANCH, exists

MAX_CONFIG_FILE_BYTES = 256 * 1024


def init_with_files(path: Path, files: dict[str, str], message: str) -> str:
    """A new repo at ``path`` whose one commit on ``main`` holds ``files``.

    Returns:
        The commit's sha.
    """
    path.mkdir(parents=True, exist_ok=True)
    repo = git.Repo.init(path, initial_branch=BRANCH)
    with repo:
        for rel, text in files.items():
            (path / rel).write_text(text)
        repo.index.add(list(files))
        commit = repo.index.commit(message, author=AUTHOR, committer=AUTHOR)
        return commit.hexsha


def init_empty(path: Path) -> None:
    """A repo with no commits (``main`` unborn): approvals fetches into it."""
    path.mkdir(parents=True, exist_ok=True)
    git.Repo.init(path, initial_branch=BRANCH).close()


def head(path: Path, ref: str = BRANCH) -> str:
    """The sha ``ref`` points at, or ``""`` (no repo, unborn branch)."""
    return gitrepo.rev(path, ref)


def root_commit(path: Path, ref: str = BRANCH) -> str:
    """The first commit of ``ref`` (a new agent's default config)."""
    with git.Repo(path) as repo:
        return repo.git.rev_list("--max-parents=0", ref).split()[-1]


def deploy_default(applied: Path, proposed: Path) -> str:
    """Puts the proposed repo's initial commit on ``applied``'s ``main``, checked out.

    Returns:
        The sha now on ``main``.
    """
    sha = root_commit(proposed)
    if not exists(applied):
        init_empty(applied)
    with git.Repo(applied) as repo:
        gitrepo.run(repo, "fetch", "--quiet", "--no-tags", "--", str(proposed), sha)
        gitrepo.run(repo, "checkout", "--quiet", "-f", "-B", BRANCH, sha)
    return sha


def read_tree(path: Path, ref: str = BRANCH) -> tuple[str, dict[str, str]]:
    """``(sha, {file: text})`` of the files committed at ``ref``.

    Binary or oversized files are listed with a placeholder, not their bytes.
    """
    with git.Repo(path) as repo:
        try:
            commit = repo.commit(ref)
        except (git.BadName, ValueError, git.GitCommandError):
            return "", {}
        files: dict[str, str] = {}
        for blob in commit.tree.traverse():
            if blob.type != "blob":
                continue
            if blob.size > MAX_CONFIG_FILE_BYTES:
                files[blob.path] = f"({blob.size} bytes, not shown)"
                continue
            data = blob.data_stream.read()
            try:
                files[blob.path] = data.decode()
            except UnicodeDecodeError:
                files[blob.path] = f"(binary, {len(data)} bytes)"
        return commit.hexsha, files


def worktree_files(path: Path) -> tuple[str, dict[str, bytes]]:
    """``(HEAD sha, {file: bytes})`` of the checked-out tree (what a backend
    on this host builds from), ``.git`` and symlinks aside: the deployed tree
    a node on another host receives."""
    files: dict[str, bytes] = {}
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path)
        if rel.parts[0] == ".git" or p.is_symlink() or not p.is_file():
            continue
        files[rel.as_posix()] = p.read_bytes()
    return head(path, "HEAD"), files


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
