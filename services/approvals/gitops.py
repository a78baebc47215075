"""Git operations on an agent's proposed and applied repos (GitPython, no shell).

The applied repo is the audit trail: ``main`` is what is deployed, and each
approval leaves tags there (``proposal/<id>``, then ``deployed/<id>``,
``failed/<id>`` or ``denied/<id>``). Refs that come from the manager are
checked by :func:`check_ref` and always passed after ``--end-of-options`` or
``--``, so no value can become a git option. Every function here is blocking;
callers run them in a thread.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import git

from hyperhive.common import gitrepo
from hyperhive.common.errors import BadRequest, Conflict, Internal, NotFound

MAIN: Final = gitrepo.MAIN_REF
# the tree of no files (sha1 repos); the diff base of a spawn commit
EMPTY_TREE: Final = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
NO_CHANGES: Final = "(proposal matches currently-deployed tree)"
MAX_REF_LEN: Final = 200
MAX_TAG_MESSAGE: Final = 32_000  # one argv element stays well under the kernel's limit

# A branch or tag name, or a (possibly abbreviated) hex sha: a conservative
# subset of what git accepts, and nothing git could read as an option or path.
_REF: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
_SHA: Final = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def check_ref(ref: object) -> str:
    """Returns ``ref`` if it is a safe branch, tag or sha.

    Raises:
        BadRequest: empty, too long, or a character or shape that could reach
            git as an option, a path, or a revision expression.
    """
    if not isinstance(ref, str) or not ref:
        raise BadRequest("commit_ref is required")
    if (
        len(ref) > MAX_REF_LEN
        or not _REF.fullmatch(ref)
        or ".." in ref
        or "//" in ref
        or "/." in ref
        or ref.endswith(("/", ".", ".lock"))
    ):
        raise BadRequest(
            f"invalid commit_ref {ref!r}: use a branch, tag or commit sha "
            "(letters, digits, '.', '_', '/', '-'; not starting with '-')"
        )
    return ref


def tag_name(state: str, approval_id: int) -> str:
    """``<state>/<id>``: ``proposal``, ``deployed``, ``failed`` or ``denied``."""
    return f"{state}/{int(approval_id)}"


DECIDED_BY: Final = "Decided-by"
DECIDED_AT: Final = "Decided-at"


def decision_message(body: str, decided_by: str, decided_at: datetime | None) -> str:
    """An end tag's message: ``body``, then git trailers saying who decided and when."""
    when = decided_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if decided_at else "-"
    who = " ".join(decided_by.split()) or "-"
    return f"{body.rstrip()}\n\n{DECIDED_BY}: {who}\n{DECIDED_AT}: {when}"


def message_body(message: str) -> str:
    """A tag message without the trailers of :func:`decision_message`."""
    body, sep, trailers = message.rpartition("\n\n")
    if sep and trailers.startswith(f"{DECIDED_BY}: "):
        return body
    return message


def resolve_commit(proposed: Path, ref: str) -> str:
    """The full sha of the commit ``ref`` names in the proposed repo.

    Raises:
        BadRequest: an unsafe ref.
        NotFound: no proposed repo, or no such commit in it.
    """
    check_ref(ref)
    repo = gitrepo.open_repo(proposed, "proposed")
    with repo:
        sha = gitrepo.try_run(
            repo, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"
        )
    if not sha or not _SHA.fullmatch(sha.strip()):
        raise NotFound(f"no commit {ref!r} in the proposed repo")
    return sha.strip()


# tree entry modes git records besides regular files and directories
_SYMLINK: Final = "120000"
_GITLINK: Final = "160000"  # a submodule
MAX_LISTED: Final = 5


def check_tree(repo_path: Path, sha: str, what: str) -> None:
    """Refuses a commit whose tree holds a symlink or a submodule.

    A config is regular files: a symlink in the applied tree could point the
    deploy (or the manager's read-only mirror) at files outside the repo, and
    a submodule would fetch from elsewhere.

    Raises:
        BadRequest: the tree has a symlink or a submodule (the paths are named).
        NotFound: no repo at ``repo_path`` (the ``what`` repo).
        Internal: git could not list the tree.
    """
    _check_sha(sha)
    repo = gitrepo.open_repo(repo_path, what)
    with repo:
        try:
            out = gitrepo.run(repo, "ls-tree", "-r", "-z", "--full-tree", sha)
        except git.GitCommandError as exc:
            raise Internal(f"could not list the tree of {sha}: {gitrepo.stderr(exc)}") from None
    bad: dict[str, list[str]] = {_SYMLINK: [], _GITLINK: []}
    for entry in out.split("\x00"):
        meta, _, path = entry.partition("\t")
        mode = meta.split(" ", 1)[0]
        if mode in bad:
            bad[mode].append(path)
    problems = [
        f"{what} {', '.join(repr(p) for p in paths[:MAX_LISTED])}"
        + (f" and {len(paths) - MAX_LISTED} more" if len(paths) > MAX_LISTED else "")
        for what, paths in (("symlinks", bad[_SYMLINK]), ("submodules", bad[_GITLINK]))
        if paths
    ]
    if problems:
        raise BadRequest(
            f"commit {sha} has {'; '.join(problems)}: a config holds regular files only"
        )


def fetch_commit(applied: Path, proposed: Path, sha: str) -> None:
    """Copies commit ``sha`` (and its history) from the proposed repo into applied.

    Raises:
        NotFound: no applied repo.
        Internal: git could not fetch the commit.
    """
    _check_sha(sha)
    repo = gitrepo.open_repo(applied, "applied")
    with repo:
        try:
            gitrepo.run(
                repo,
                "fetch",
                "--quiet",
                "--no-tags",
                "--no-write-fetch-head",
                "--no-recurse-submodules",
                "--",
                str(proposed.absolute()),
                sha,
            )
        except git.GitCommandError as exc:
            raise Internal(
                f"could not fetch {sha} into the applied repo: {gitrepo.stderr(exc)}"
            ) from None
        if gitrepo.try_run(repo, "cat-file", "-e", f"{sha}^{{commit}}") is None:
            raise Internal(f"commit {sha} missing from the applied repo after fetch")


def _check_sha(sha: str) -> str:
    if not _SHA.fullmatch(sha):
        raise Internal(f"not a full sha: {sha!r}")
    return sha


def main_sha(applied: Path) -> str:
    """The commit ``main`` points at, or ``""`` if the repo has no main yet."""
    repo = gitrepo.open_repo(applied, "applied")
    with repo:
        out = gitrepo.try_run(repo, "rev-parse", "--verify", "--quiet", f"{MAIN}^{{commit}}")
    return (out or "").strip()


def tag_sha(applied: Path, name: str) -> str:
    """The commit tag ``name`` points at, or ``""`` if there is no such tag."""
    repo = gitrepo.open_repo(applied, "applied")
    with repo:
        out = gitrepo.try_run(
            repo, "rev-parse", "--verify", "--quiet", f"refs/tags/{name}^{{commit}}"
        )
    return (out or "").strip()


def tag_message(applied: Path, name: str) -> str:
    """The message of annotated tag ``name`` (``""`` if none)."""
    repo = gitrepo.open_repo(applied, "applied")
    with repo:
        out = gitrepo.try_run(repo, "tag", "-l", "--format=%(contents)", "--", name)
    return (out or "").strip()


def create_tag(applied: Path, name: str, sha: str, message: str | None = None) -> None:
    """Tags ``sha`` as ``name``: annotated when ``message`` is given. Idempotent
    when the tag already points at ``sha``.

    Raises:
        Internal: the tag exists elsewhere, or git failed.
    """
    _check_sha(sha)
    repo = gitrepo.open_repo(applied, "applied")
    with repo:
        existing = gitrepo.try_run(
            repo, "rev-parse", "--verify", "--quiet", f"refs/tags/{name}^{{commit}}"
        )
        if existing is not None and existing.strip():
            if existing.strip() != sha:
                raise Internal(f"tag {name} already points at {existing.strip()}")
            return
        args = ["tag"]
        if message is not None:
            text = message.replace("\x00", "")[:MAX_TAG_MESSAGE] or name
            args += ["-a", "--cleanup=verbatim", "-m", text]
        try:
            gitrepo.run(repo, *args, name, sha)
        except git.GitCommandError as exc:
            raise Internal(f"could not tag {name}: {gitrepo.stderr(exc)}") from None


# A hunk's header names the TOML table it starts in (``@@ … @@ [mcp_servers.x.env]``),
# never a line of the file: the masking of secrets (hyperhive.common.redact)
# reads it to know that a hunk's lines are an env table's values.
TABLE_FUNCNAME = r"diff.default.xfuncname=^[ \t]*\[\[?[^]]+\]\]?[ \t]*(#.*)?$"


def diff(applied: Path, base: str, target: str) -> tuple[str, list[str]]:
    """``git diff base..target`` of every file, and the changed paths.

    ``base`` is a commit (``""``: the empty tree, for an agent with no main yet).
    """
    repo = gitrepo.open_repo(applied, "applied")
    base = base or EMPTY_TREE
    opts = ["--no-color", "--no-ext-diff", "--no-textconv", "--find-renames"]
    with repo:
        try:
            text = gitrepo.run(repo, "-c", TABLE_FUNCNAME, "diff", *opts, base, target, "--")
            names = gitrepo.run(
                repo, "diff", "--name-only", "-z", "--no-renames", base, target, "--"
            )
        except git.GitCommandError as exc:
            raise Internal(f"git diff failed: {gitrepo.stderr(exc)}") from None
    files = [n for n in names.split("\x00") if n]
    return (text + "\n" if text else NO_CHANGES), files


def checkout_detached(applied: Path, sha: str) -> None:
    """Moves the applied working tree (and index) to ``sha``; ``main`` stays."""
    _check_sha(sha)
    repo = gitrepo.open_repo(applied, "applied")
    with repo:
        try:
            gitrepo.run(repo, "checkout", "--quiet", "--force", "--detach", sha, "--")
        except git.GitCommandError as exc:
            raise Internal(f"could not check out {sha}: {gitrepo.stderr(exc)}") from None


def is_ancestor(applied: Path, ancestor: str, descendant: str) -> bool:
    """Whether commit ``ancestor`` is ``descendant`` or in its history (False
    when either is missing)."""
    _check_sha(ancestor)
    _check_sha(descendant)
    repo = gitrepo.open_repo(applied, "applied")
    with repo:
        return (
            gitrepo.try_run(repo, "merge-base", "--is-ancestor", ancestor, descendant) is not None
        )


def advance_main(applied: Path, sha: str, base: str) -> None:
    """Fast-forwards ``main`` from ``base`` to ``sha`` and points HEAD at it
    (the tree is already there). Idempotent: ``main`` already at ``sha`` is fine.

    ``base == ""``: the repo had no main (a spawn commit).

    Raises:
        Conflict: ``sha`` does not descend from ``base`` (nothing is moved).
        Internal: ``main`` is neither at ``base`` nor at ``sha``, or git failed.
    """
    _check_sha(sha)
    current = main_sha(applied)
    if current != sha:
        if current != base:
            raise Internal(f"main moved to {current or '(none)'} during the deploy of {sha}")
        if base and not is_ancestor(applied, base, sha):
            raise Conflict(f"{sha} does not descend from main ({base}): not a fast-forward")
    repo = gitrepo.open_repo(applied, "applied")
    with repo:
        try:
            # compare-and-swap: only from the main checked above
            old = current or "0" * len(sha)
            gitrepo.run(repo, "update-ref", "-m", "hyperhive: deployed", MAIN, sha, old)
            gitrepo.run(repo, "symbolic-ref", "HEAD", MAIN)
            gitrepo.run(repo, "reset", "--quiet", "--hard", MAIN)
        except git.GitCommandError as exc:
            raise Internal(f"could not move main to {sha}: {gitrepo.stderr(exc)}") from None


def restore_main(applied: Path, base: str) -> None:
    """Puts ``main``, HEAD, index and working tree back at ``base``.

    ``base == ""``: the repo had no main (a spawn commit): remove main if it
    exists and empty the index and the tracked files.
    """
    repo = gitrepo.open_repo(applied, "applied")
    with repo:
        try:
            if base:
                _check_sha(base)
                gitrepo.run(repo, "update-ref", "-m", "hyperhive: rollback", MAIN, base)
                gitrepo.run(repo, "symbolic-ref", "HEAD", MAIN)
                gitrepo.run(repo, "reset", "--quiet", "--hard", MAIN)
            else:
                gitrepo.try_run(repo, "update-ref", "-d", MAIN)
                gitrepo.run(repo, "symbolic-ref", "HEAD", MAIN)
                gitrepo.run(repo, "rm", "-r", "-f", "-q", "--ignore-unmatch", "--", ".")
        except git.GitCommandError as exc:
            raise Internal(f"could not restore the applied repo: {gitrepo.stderr(exc)}") from None
