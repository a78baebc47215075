"""The one rule for masking secrets in text the operator or the event log sees.

Config files, diffs, build errors, logs, messages and events may carry
credentials (an MCP server's ``env = { API_TOKEN = "..." }``). The dashboard,
the CLI (unless the operator passes ``--show-secrets``), the live tail and
HIVE_EVENTS show that such a value is set or changed, never the value: the
git repos keep the truth.

What counts as a secret:

- every value of an environment table: a TOML table or inline table whose
  dotted path has a segment ``env`` (``[mcp_servers.x.env]``,
  ``env = { … }``, ``env.FOO = …``), and the same blocks in Nix or JSON
  (``env = { … };``, ``"env": { … }``), and Nix ``variables`` /
  ``sessionVariables``;
- the value of any key whose name has a word ``token``, ``secret``,
  ``password`` (``passwd``, ``pwd``, ``passphrase``), ``key`` (``apikey``,
  ``privatekey``), ``credential(s)``, ``seed``, ``nkey``, ``authorization``
  or ``cookie`` (words split at ``_ - .`` and camelCase), except a name that
  ends in ``file``, ``path`` or ``dir`` (it says where a secret is, not what);
  ``tokens`` (a count) is not such a word;
- wherever they appear: Anthropic API keys and OAuth tokens (``sk-ant-…``),
  other ``sk-…`` keys, GitHub, GitLab and Slack tokens, AWS access key ids,
  JWTs, ``Bearer``/``Basic`` credentials, a URL's password
  (``scheme://user:pass@``), NATS nkey seeds (``SU…``, ``SA…``, ``SO…``, …),
  and PEM private key blocks.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MASK", "is_secret_key", "mask", "mask_data", "mask_diff"]

MASK = "••••••"

_SECRET_WORDS = frozenset(
    {
        "token",
        "secret",
        "secrets",
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "key",
        "apikey",
        "privatekey",
        "credential",
        "credentials",
        "seed",
        "nkey",
        "authorization",
        "cookie",
    }
)
_LOCATION_WORDS = frozenset({"file", "path", "dir"})
# names with a secret word that hold no secret (words joined)
_NOT_SECRET = frozenset({"idempotencykey", "maxtokens", "primarykey", "sortkey", "keyid"})
_ENV_SEGMENTS = frozenset({"env", "variables", "sessionvariables"})
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")

# --- values that are secrets wherever they appear ----------------------------
_VALUE_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    # Anthropic API keys (sk-ant-api03-…) and OAuth tokens (sk-ant-oat01-…)
    (re.compile(r"\bsk-ant-[\w-]+"), "sk-ant-" + MASK),
    (re.compile(r"\bsk-(?:proj-)?[A-Za-z0-9_-]{20,}"), "sk-" + MASK),
    (re.compile(r"\b(gh[pousr]_|github_pat_|glpat-|xox[abposr]-)[\w-]{10,}"), r"\1" + MASK),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), "AKIA" + MASK),
    (re.compile(r"\beyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]*"), "eyJ" + MASK),
    (re.compile(r"\b((?i:bearer|basic))(\s+)[\w.~+/=-]{8,}"), r"\1\2" + MASK),
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s:/@\"']+:)[^\s@/\"']+@"), r"\1" + MASK + "@"),
    # NATS nkey seeds: S + the key's type (User, Account, Operator, Node, Cluster, curve X)
    (re.compile(r"\bS[UAONCX][A-Z2-7]{50,}\b"), "S" + MASK + " (nkey seed)"),
)
# Cheap gates (literal searches) in front of the rules: most text holds none
# of these, and a regex that does not start with a literal tries every position.
_VALUE_LITERALS = ("sk-", "gh", "github_pat_", "glpat-", "xox", "AKIA", "eyJ", "://")
_VALUE_LITERALS_LOWER = ("bearer", "basic")
_SEED_GATE = re.compile(r"S[UAONCX][A-Z2-7]{50}")
# words (lower case) without which no key on a line can name a secret or an env table
_PAIR_WORDS = (
    "token", "secret", "passw", "pwd", "passphrase", "key", "credential", "seed",
    "authorization", "cookie", "env", "variables",
)  # fmt: skip
_PEM_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----")
_PEM_END = re.compile(r"-----END [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----")

# --- key/value pairs: TOML, Nix, JSON, YAML, shell and log ``k=v`` -----------
_KEY = r"""(?:"(?:[^"\\\n]|\\.)*"|'[^'\n]*'|[A-Za-z_$][\w$-]*)"""
_PAIR = re.compile(
    rf"""
    (?P<key>{_KEY}(?:\s*\.\s*{_KEY})*)      # a key, maybe dotted
    (?P<sep>\s*(?:=|:(?!//))\s*)           # = or :, not a URL's ://
    (?P<value>
        \"\"\"|'''                          # a multi-line string opens
      | "(?:[^"\\\n]|\\.)*"?                # a string (its end may be on a later line)
      | '[^'\n]*'?
      | \{{ | \[                            # a table / array opens
      | [^\s,;{{}}\[\]]+                    # a bare value
    )
    """,
    re.VERBOSE,
)
_TABLE_HEADER = re.compile(r"""^\s*\[\[?\s*(?P<path>[\w\s."'$-]+?)\s*\]\]?\s*(?:#.*)?$""")
_HUNK = re.compile(r"^@@ -(?P<old>\d+)(?:,\d+)? \+(?P<new>\d+)(?:,\d+)? @@ ?(?P<func>.*)$")


def _segments(dotted: str) -> list[str]:
    parts = re.findall(r""""(?:[^"\\]|\\.)*"|'[^']*'|[^.\s]+""", dotted)
    return [p.strip("\"'").lower() for p in parts]


@functools.lru_cache(maxsize=4096)
def is_secret_key(name: str) -> bool:
    """Whether a key (an env var, a config key, a JSON field) names a secret.

    Its last dotted segment is split into words (``_ - .`` and camelCase);
    a secret word makes it secret unless the name ends in a location word.
    """
    last = name.strip().rsplit(".", 1)[-1].strip("\"' ")
    words = [w.lower() for part in re.split(r"[_\-\s]+", last) for w in _WORD.findall(part)]
    if not words or words[-1] in _LOCATION_WORDS or "".join(words) in _NOT_SECRET:
        return False
    return any(w in _SECRET_WORDS for w in words) or "".join(words) in _SECRET_WORDS


def _mask_value(value: str) -> str:
    if value[:1] in "\"'":
        return value[0] + MASK + value[0]
    return MASK


def _mask_values_in(text: str) -> str:
    """Every value of every ``k = v`` in ``text`` masked (an env table's body)."""

    def sub(m: re.Match[str]) -> str:
        value = m.group("value")
        if value in ("{", "["):
            return m.group(0)
        return m.group("key") + m.group("sep") + _mask_value(value)

    return _PAIR.sub(sub, text)


def _value_rules(text: str) -> str:
    if not (
        any(x in text for x in _VALUE_LITERALS)
        or _SEED_GATE.search(text)
        or any(x in text.lower() for x in _VALUE_LITERALS_LOWER)
    ):
        return text
    for pattern, replacement in _VALUE_RULES:
        text = pattern.sub(lambda m, r=replacement: m.expand(r), text)
    return text


@dataclass(slots=True)
class _State:
    """What the lines before say about the next one (one per side of a diff)."""

    table: list[str] = field(default_factory=list)
    unknown_table: bool = False  # a diff hunk whose table is not known
    braces: int = 0  # depth inside a multi-line env/secret block
    closer: str = ""  # the end of an open multi-line secret string
    pem: bool = False

    def in_env(self) -> bool:
        return self.unknown_table or any(s in _ENV_SEGMENTS for s in self.table)


def _mask_line(line: str, st: _State) -> str:
    """One line masked; ``st`` moves past it."""
    if st.pem:
        end = _PEM_END.search(line)
        if end is None:
            return MASK if line.strip() else line
        st.pem = False
        return MASK + line[end.start() :]
    if st.closer:
        end = line.find(st.closer)
        if end < 0:
            return MASK if line.strip() else line
        st.closer = ""
        line = MASK + line[end:]
    begin = _PEM_BEGIN.search(line)
    if begin:
        end = _PEM_END.search(line, begin.end())
        st.pem = end is None
        return line[: begin.end()] + MASK + (line[end.start() :] if end else "")
    line = _value_rules(line)
    header = _TABLE_HEADER.match(line)
    if header and st.braces == 0:
        st.table = _segments(header.group("path"))
        st.unknown_table = False
        return line
    if not (st.braces or st.in_env() or any(w in line.lower() for w in _PAIR_WORDS)):
        return line  # no key here can name a secret, and no env table holds it
    out: list[str] = []
    pos = 0
    while m := _PAIR.search(line, pos):
        out.append(line[pos : m.start()])
        pos = m.end()
        key, value = m.group("key"), m.group("value")
        path = _segments(key)
        in_env = st.braces > 0 or st.in_env() or any(s in _ENV_SEGMENTS for s in path[:-1])
        secret = in_env or is_secret_key(key)
        if value in ("{", "["):
            out.append(m.group(0))
            if value == "{" and (secret or path[-1] in _ENV_SEGMENTS):
                end, depth = _through_braces(line, pos)
                out.append(_mask_values_in(line[pos:end]))
                pos = end
                st.braces += depth  # > 0: the block goes on over the next lines
            continue
        if not secret:
            out.append(m.group(0))
            continue
        out.append(key + m.group("sep") + _mask_value(value))
        if value in ('"""', "'''"):
            st.closer = value
            return "".join(out)
        if value[:1] in "\"'" and (len(value) == 1 or value[-1] != value[0]):
            st.closer = value[0]  # a string whose end is on a later line
            return "".join(out)
    tail = line[pos:]
    if st.braces > 0:
        st.braces = max(0, st.braces + tail.count("{") - tail.count("}"))
    out.append(tail)
    return "".join(out)


def _through_braces(line: str, start: int) -> tuple[int, int]:
    """Where the ``{`` block opened before ``start`` closes in ``line`` (its
    end, 0) or, when it stays open, (the line's end, its depth there)."""
    depth = 1
    quote = ""
    for i in range(start, len(line)):
        c = line[i]
        if quote:
            if c == quote and line[i - 1] != "\\":
                quote = ""
        elif c in "\"'":
            quote = c
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i, 0
    return len(line), depth


def mask(text: str) -> str:
    """``text`` (a config file, a log, an error, a message) with every secret
    masked; lines are read as one document (a table header holds until the
    next)."""
    if not text:
        return text
    st = _State()
    return "\n".join(_mask_line(line, st) for line in text.split("\n"))


def mask_diff(diff: str) -> str:
    """A unified ``git diff`` with every secret masked.

    Each file is read on both sides (old: context and ``-`` lines, new:
    context and ``+`` lines). A hunk starts in the TOML table its header
    names (approvals asks git for the table header as the hunk's function
    context); a hunk that starts after line 1 in a table it cannot tell has
    every value masked.
    """
    out: list[str] = []
    old, new = _State(), _State()
    for raw in diff.split("\n"):
        if raw.startswith("diff --git "):
            old, new = _State(), _State()
            out.append(_value_rules(raw))
            continue
        hunk = _HUNK.match(raw)
        if hunk:
            old, new = _hunk_start(hunk, old), _hunk_start(hunk, new)
            func = hunk.group("func")
            head = raw[: len(raw) - len(func)]
            out.append(head + (_mask_line(func, _State(unknown_table=True)) if func else ""))
            continue
        tag, body = raw[:1], raw[1:]
        if tag == " ":
            # both sides read the line: mask it as the side that masks more
            a, b = _mask_line(body, old), _mask_line(body, new)
            out.append(tag + (a if a.count(MASK) >= b.count(MASK) else b))
        elif tag == "-":
            out.append(tag + _mask_line(body, old))
        elif tag == "+":
            out.append(tag + _mask_line(body, new))
        else:  # file headers, "\ No newline", notices
            out.append(_value_rules(raw))
    return "\n".join(out)


def _hunk_start(hunk: re.Match[str], before: _State) -> _State:
    """The state at a hunk's first line, from its function context: a TOML
    table header (approvals' git setting), nothing (no table header precedes
    the hunk: the root table), or another line (git ran without that
    setting: the table is unknown)."""
    func = hunk.group("func").strip()
    header = _TABLE_HEADER.match(func) if func else None
    st = _State(braces=before.braces, pem=before.pem)
    if header:
        st.table = _segments(header.group("path"))
    else:
        # an env table left open by an earlier hunk of this side may go on
        # (over-masking is the safe side)
        st.unknown_table = bool(func) or before.in_env()
    return st


def mask_data(value: Any, key: str = "") -> Any:
    """A JSON-like value (an event's data, a reply) with every secret masked:
    strings through :func:`mask`, values of secret-named keys and ``env``
    tables replaced whole."""
    if isinstance(value, dict):
        if key.lower() in _ENV_SEGMENTS:
            return {k: MASK for k in value}
        return {k: mask_data(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_data(v, key) for v in value]
    if isinstance(value, str):
        if key and is_secret_key(key) and value:
            return MASK
        return mask(value)
    return value
