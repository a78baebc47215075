"""The webhook: one JSON POST per decision that waits for the operator.

When ``notify.url`` is set, the sender loop records each pending approval and
open question in the ``notifications`` table (once: the decision is its key),
POSTs it, and marks it ``sent`` on a 2xx answer. A failure (connection
refused, timeout, any other status) is retried with a doubling backoff up to
``max_attempts``; a decision taken before its notification went out is
``skipped``. The table outlives restarts, so a restarted service neither
repeats nor forgets a notification. The one window left is a crash between
the receiver's 2xx and the ``sent`` mark; the ``X-Hive-Notification`` header
(``approval-<id>`` / ``question-<id>``) lets a receiver drop that repeat.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Final

import asyncpg

from hyperhive.approvals import store
from hyperhive.common import retry
from hyperhive.common.config import NotifySettings
from hyperhive.common.errors import ConfigError

log = logging.getLogger(__name__)

HEADER: Final = "X-Hive-Notification"
FORMATS: Final = ("json", "ntfy")
BATCH: Final = 32
MAX_BODY_TEXT: Final = 1000


def check(settings: NotifySettings) -> None:
    """Raises ConfigError for a URL the sender cannot POST to."""
    for name, value in (("url", settings.url), ("dashboard_url", settings.dashboard_url)):
        if not value:
            continue
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"notify.{name} must be an http(s) URL, not {redact(value)!r}")
    if settings.format not in FORMATS:
        raise ConfigError(
            f"notify.format must be one of {', '.join(FORMATS)}, not {settings.format!r}"
        )
    if settings.max_attempts < 1 or settings.backoff_s <= 0 or settings.timeout_s <= 0:
        raise ConfigError("notify: max_attempts ≥ 1, backoff_s > 0 and timeout_s > 0")


def redact(url: str) -> str:
    """The URL without its path, query or credentials (a topic or token may be secret)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/…"


def backoff(settings: NotifySettings, attempts: int) -> float:
    """Delay after the ``attempts``-th failed try."""
    return retry.Backoff(settings.backoff_s, settings.backoff_max_s, jitter=False).delay(attempts)


def _link(settings: NotifySettings, anchor: str) -> str:
    if not settings.dashboard_url:
        return ""
    return f"{settings.dashboard_url.rstrip('/')}/#{anchor}"


def approval_payload(settings: NotifySettings, row: asyncpg.Record) -> dict[str, Any]:
    """The document POSTed for a pending approval."""
    info = store.approval_info(row)
    if info.kind == store.SPAWN and not info.fetched_sha:
        what = f"spawn a new agent {info.agent} with the default config"
    elif info.kind == store.SPAWN:
        what = f"spawn a new agent {info.agent} at {info.fetched_sha[:12]}"
    else:
        what = f"deploy {info.fetched_sha[:12]} to {info.agent}"
    return {
        "type": "approval",
        "id": info.id,
        "key": f"approval-{info.id}",
        "title": f"Approval #{info.id} waits: {info.kind} {info.agent}",
        "message": f"The manager asks to {what}.",
        "agent": info.agent,
        "kind": info.kind,
        "sha": info.fetched_sha,
        "created_at": info.created_at,
        "url": _link(settings, f"approval-{info.id}"),
    }


def question_payload(settings: NotifySettings, row: asyncpg.Record) -> dict[str, Any]:
    """The document POSTed for an open question."""
    info = store.question_info(row)
    text = info.question
    if len(text) > MAX_BODY_TEXT:
        text = text[:MAX_BODY_TEXT] + "…"
    return {
        "type": "question",
        "id": info.id,
        "key": f"question-{info.id}",
        "title": f"Question #{info.id} from {row['asked_by']}",
        "message": text,
        "agent": row["asked_by"],
        "options": info.options,
        "multi": info.multi,
        "created_at": info.asked_at,
        "url": _link(settings, f"question-{info.id}"),
    }


def encode(settings: NotifySettings, payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one POST in the configured format."""
    headers = {"User-Agent": "hyperhive-approvals", HEADER: str(payload["key"])}
    if settings.format == "ntfy":
        headers["Content-Type"] = "text/plain; charset=utf-8"
        headers["Title"] = _latin1(str(payload["title"]))
        headers["Tags"] = "bell"
        if payload["url"]:
            headers["Click"] = str(payload["url"])
        return str(payload["message"]).encode(), headers
    headers["Content-Type"] = "application/json"
    return json.dumps(payload).encode(), headers


def _latin1(value: str) -> str:
    """A header value http.client can send (names are ASCII; be safe anyway)."""
    return value.encode("latin-1", "replace").decode("latin-1")


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> None:
    """One POST. Raises OSError (URLError, HTTPError, timeout) on any failure."""
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read(4096)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"cannot connect: {exc.reason}"
    return str(exc) or type(exc).__name__


class Notifier:
    """Sends the webhook's notifications; one per running approvals service."""

    def __init__(self, pool: asyncpg.Pool, settings: NotifySettings) -> None:
        self._pool = pool
        self._settings = settings
        self._wake = asyncio.Event()

    @property
    def enabled(self) -> bool:
        return bool(self._settings.url)

    def kick(self) -> None:
        """Says a decision may be waiting: look now, not at the next sweep."""
        self._wake.set()

    async def loop(self) -> None:
        """Runs until cancelled; a database or network failure waits for the next sweep."""
        log.info("webhook notifications to %s", redact(self._settings.url))
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("webhook notifications: %s", exc)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self._settings.sweep_s)
            except TimeoutError:
                pass
            self._wake.clear()

    async def run_once(self) -> int:
        """Records new decisions and sends what is due. Returns how many were sent."""
        await store.enqueue_notifications(self._pool)
        lease = self._settings.timeout_s * 2 + 5
        sent = 0
        while True:
            due = await store.claim_notifications(self._pool, lease, BATCH)
            if not due:
                return sent
            results = await asyncio.gather(*(self._one(n) for n in due))
            sent += sum(results)
            if len(due) < BATCH:
                return sent

    async def _one(self, n: asyncpg.Record) -> bool:
        if n["decision"] == "approval":
            row = await store.get(self._pool, n["ref_id"])
            waiting = row is not None and row["state"] == store.PENDING
            payload = approval_payload(self._settings, row) if waiting else None
        else:
            row = await store.get_question(self._pool, n["ref_id"])
            waiting = row is not None and row["answer"] is None
            payload = question_payload(self._settings, row) if waiting else None
        if payload is None:
            await store.end_notification(self._pool, n["id"], "skipped", "decided before sent")
            return False
        body, headers = encode(self._settings, payload)
        try:
            await asyncio.to_thread(
                _post, self._settings.url, body, headers, self._settings.timeout_s
            )
        except (OSError, ValueError) as exc:
            error = _describe(exc)
            if n["attempts"] >= self._settings.max_attempts:
                log.error(
                    "webhook gave up on %s after %d tries: %s", payload["key"], n["attempts"], error
                )
                await store.end_notification(self._pool, n["id"], "gave_up", error)
            else:
                delay = backoff(self._settings, n["attempts"])
                log.warning("webhook %s failed (%s); retry in %.0fs", payload["key"], error, delay)
                await store.retry_notification(self._pool, n["id"], delay, error)
            return False
        await store.end_notification(self._pool, n["id"], "sent")
        log.info("webhook sent %s", payload["key"])
        return True
