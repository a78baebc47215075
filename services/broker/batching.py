"""Group commit: concurrent requests share one transaction.

A commit costs an fsync; one transaction per message caps throughput near
what the disk can sync. Requests that arrive while a batch is being
committed are queued and go out together in the next one, so a lone request
waits for nothing and a busy broker commits many messages per fsync.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from hyperhive.common.errors import HiveError, Internal

log = logging.getLogger(__name__)

I = TypeVar("I")  # noqa: E741
R = TypeVar("R")

BatchFn = Callable[[Sequence[I]], Awaitable[Sequence[R]]]


class GroupCommit(Generic[I, R]):
    """Runs ``run_batch`` over queued items with at most ``workers`` batches at once.

    ``run_batch`` gets a list of items and returns one result per item, in
    order, or raises. A ``HiveError`` fails the whole batch with that error
    (e.g. ``Unavailable``: nothing was committed). Any other exception is
    retried item by item, so one bad item cannot fail its neighbours.
    """

    def __init__(self, run_batch: BatchFn[I, R], *, max_batch: int = 256, workers: int = 2):
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._workers = workers
        self._queue: list[tuple[I, asyncio.Future[R]]] = []
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Starts the worker tasks (call from inside the event loop)."""
        self._tasks = [
            asyncio.create_task(self._work(), name=f"group-commit-{i}")
            for i in range(self._workers)
        ]

    async def stop(self) -> None:
        """Stops the workers; queued items fail with ``Internal``."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for _item, fut in self._queue:
            if not fut.done():
                fut.set_exception(Internal("service stopping"))
        self._queue.clear()

    async def submit(self, item: I) -> R:
        """Queues ``item`` and waits for its result."""
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, fut))
        self._ready.set()
        return await fut

    async def _work(self) -> None:
        while True:
            await self._ready.wait()
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            if not self._queue:
                self._ready.clear()
            batch = [(item, fut) for item, fut in batch if not fut.cancelled()]
            if batch:
                await self._run(batch)

    async def _run(self, batch: list[tuple[I, asyncio.Future[R]]]) -> None:
        try:
            results = await self._run_batch([item for item, _ in batch])
        except HiveError as exc:
            for _, fut in batch:
                _settle(fut, exc=exc)
            return
        except Exception:
            if len(batch) == 1:
                log.exception("batch of one failed")
                _settle(batch[0][1], exc=Internal("internal error storing the request"))
                return
            log.warning("batch of %d failed; retrying one by one", len(batch), exc_info=True)
            for pair in batch:
                await self._run([pair])
            return
        for (_, fut), result in zip(batch, results, strict=True):
            _settle(fut, result=result)


def _settle(fut: asyncio.Future[R], *, result: R | None = None, exc: BaseException | None = None):
    if fut.done():
        return  # the waiting handler was cancelled
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)  # type: ignore[arg-type]
