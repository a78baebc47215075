"""The one git layer under lifecycle's repos and approvals' tag machine.

Both services keep their own git operations (lifecycle makes and reads the
per-agent repos, approvals moves ``main`` and writes tags), but they open
repos, run commands and sign what they write the same way, from here:

- one identity: every commit and tag hyperhive writes is by ``hyperhive``,
  never by whoever's git config happens to be on the host;
- one branch name, ``main``;
- commands run through GitPython with an explicit argv (no shell) and an
  environment that stops git from prompting.

Every function here is blocking; callers run them in a thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import git

from hyperhive.common.errors import NotFound

BRANCH: Final = "main"
MAIN_REF: Final = f"refs/heads/{BRANCH}"
IDENTITY_NAME: Final = "hyperhive"
IDENTITY_EMAIL: Final = "hyperhive@localhost"
AUTHOR: Final = git.Actor(IDENTITY_NAME, IDENTITY_EMAIL)

# what every git command sees: the fixed identity, and no terminal prompt
ENV: Final = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_COMMITTER_NAME": IDENTITY_NAME,
    "GIT_COMMITTER_EMAIL": IDENTITY_EMAIL,
    "GIT_AUTHOR_NAME": IDENTITY_NAME,
    "GIT_AUTHOR_EMAIL": IDENTITY_EMAIL,
}


def exists(path: Path) -> bool:
    """Whether ``path`` holds a (non-bare) repo."""
    return (path / ".git").is_dir()


def open_repo(path: Path, what: str) -> git.Repo:
    """The repo at ``path`` (close it after use; it is a context manager).

    Raises:
        NotFound: no repo there (``what`` names it in the message).
    """
    try:
        return git.Repo(path)
    except (git.NoSuchPathError, git.InvalidGitRepositoryError):
        raise NotFound(f"no {what} repo at {path}") from None


def run(repo: git.Repo, *args: str) -> str:
    """``git <args>`` in ``repo`` with hyperhive's environment; its stdout.

    Raises:
        git.GitCommandError: git exited non-zero.
    """
    with repo.git.custom_environment(**ENV):
        return str(repo.git.execute(["git", *args]))


def try_run(repo: git.Repo, *args: str) -> str | None:
    """Output of a git command, or None when it exits non-zero."""
    try:
        return run(repo, *args)
    except git.GitCommandError:
        return None


def stderr(exc: git.GitCommandError) -> str:
    """What git said when it failed, for an error message."""
    return str(exc.stderr or exc).strip()


def rev(path: Path, ref: str = BRANCH) -> str:
    """The commit ``ref`` points at in the repo at ``path``, or ``""`` (no
    repo, unborn branch, no such ref)."""
    if not exists(path):
        return ""
    with git.Repo(path) as repo:
        try:
            return repo.commit(ref).hexsha
        except (git.BadName, ValueError, git.GitCommandError):
            return ""
