"""What waits for the operator: ``hive up`` says it once the hive answers."""

from __future__ import annotations

import asyncio
import threading
import time

from hyperhive.cli.client import call
from hyperhive.common import endpoints as E
from hyperhive.common.config import load_settings
from hyperhive.common.errors import HiveError
from hyperhive.common.wire.approvals import (
    ApprovalsRequest,
    QuestionsRequest,
)

LABEL = "  waiting    "
RETRY_S = 0.5


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def describe(approvals: int, questions: int) -> str:
    """One line: how many approvals and questions wait, and where to answer them."""
    if not approvals and not questions:
        return "nothing: no approval or question waits for you"
    return (
        f"{plural(approvals, 'approval')}, {plural(questions, 'question')}"
        " (answer on the dashboard, or `hive approvals` / `hive questions`)"
    )


async def count_waiting(timeout_s: float) -> tuple[int, int]:
    """(pending approvals, open questions), asking until approvals answers.

    Raises:
        HiveError: approvals did not answer within ``timeout_s``.
    """
    settings = load_settings()  # reads up.toml: this hive's NATS and operator seed
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            approvals = await call(
                settings,
                E.APPROVALS_LIST,
                ApprovalsRequest(state="pending"),
                timeout=2,
            )
            questions = await call(
                settings,
                E.QUESTIONS,
                QuestionsRequest(answered=False),
                timeout=2,
            )
            return len(approvals.approvals), len(questions.questions)
        except HiveError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(RETRY_S)


def report_when_ready(timeout_s: float = 60.0) -> threading.Thread:
    """Prints the ``waiting`` line from a thread once approvals answers."""

    def run() -> None:
        try:
            line = describe(*asyncio.run(count_waiting(timeout_s)))
        except HiveError as exc:
            line = f"unknown (approvals did not answer: {exc})"
        print(LABEL + line, flush=True)

    thread = threading.Thread(target=run, name="hive-up-waiting", daemon=True)
    thread.start()
    return thread
