"""The dashboard's masking of secrets: the one rule of :mod:`hyperhive.common.redact`.

Config files, diffs and logs may carry credentials (an MCP server's
``env = { API_TOKEN = "..." }``). The operator sees that such a value is set
or changed, never the value: the git repos keep the truth.
"""

from __future__ import annotations

from hyperhive.common.redact import MASK, mask, mask_diff

__all__ = ["MASK", "mask", "mask_diff"]
