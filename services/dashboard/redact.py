"""Masks secret-looking values before text reaches the page.

Config files, diffs and logs may carry credentials (an MCP server's
``env = { API_TOKEN = "..." }``). The operator sees that such a value is set
or changed, never the value: the git repos keep the truth.
"""

from __future__ import annotations

import re

MASK = '"••••••"'
_SECRET = re.compile(
    r"""(?ix)
    (\b[\w.-]*(?:token|secret|passw(?:or)?d|api[_-]?key|credential|private[_-]?key|nkey|seed)
       (?![a-z])[\w.-]*"?\s*[=:]\s*)  # a key that names a secret, then = or :
    ("[^"\n]*"|'[^'\n]*'|[^\s,}\]]+)  # its value
    """
)
# nkey seeds (user "SU…", account "SA…", operator "SO…") wherever they appear
_NKEY_SEED = re.compile(r"\bS[UAO][A-Z2-7]{50,}\b")


def mask(text: str) -> str:
    """``text`` with every secret-looking value replaced by a mask."""
    text = _SECRET.sub(lambda m: m.group(1) + MASK, text)
    return _NKEY_SEED.sub("S•••••• (nkey seed)", text)
