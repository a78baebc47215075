"""Jinja templates (autoescaped) and the filters they use."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from hyperhive.dashboard.redact import mask

TEMPLATES = Path(__file__).parent / "templates"


def fmt_ts(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def fmt_clock(ts: float | None) -> str:
    """The clock time, with the date when it is not today."""
    if not ts:
        return "-"
    day = time.strftime("%Y-%m-%d", time.localtime(ts))
    clock = time.strftime("%H:%M:%S", time.localtime(ts))
    return clock if day == time.strftime("%Y-%m-%d") else f"{day} {clock}"


def fmt_span(seconds: float | None) -> str:
    """A duration in the largest fitting unit: 45s, 12m, 3.5h, 2.1d."""
    if seconds is None:
        return "-"
    s = max(0.0, seconds)
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{s / 60:.0f}m"
    if s < 86_400:
        return f"{s / 3600:.1f}h"
    return f"{s / 86_400:.1f}d"


def fmt_ago(ts: float | None) -> str:
    if not ts:
        return "-"
    return f"{fmt_span(time.time() - ts)} ago"


def fmt_bytes(n: int | None) -> str:
    value = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def short(sha: str | None, n: int = 12) -> str:
    return (sha or "")[:n] or "-"


def event_fields(event: msgspec.Struct | None) -> list[tuple[str, str]]:
    """A system event's fields as (name, text) pairs, its type first, the
    empty ones left out: shown beside the text the agent reads."""
    if event is None:
        return []
    data = msgspec.to_builtins(event)
    pairs = [("type", str(data.pop("type", type(event).__name__)))]
    for key, value in data.items():
        if value in (None, "", [], {}):
            continue
        text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        pairs.append((key, fmt_ts(value) if key.endswith(("_at", "since")) else text))
    return pairs


class Renderer:
    """Renders a template to a string."""

    def __init__(self) -> None:
        self.env = Environment(
            loader=FileSystemLoader(TEMPLATES),
            autoescape=select_autoescape(default=True, default_for_string=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(
            ts=fmt_ts,
            ago=fmt_ago,
            clock=fmt_clock,
            span=fmt_span,
            bytes=fmt_bytes,
            short=short,
            mask=mask,
            event_fields=event_fields,
        )

    def __call__(self, template: str, /, **context: Any) -> str:
        return self.env.get_template(template).render(**context)
