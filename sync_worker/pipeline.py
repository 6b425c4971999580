"""Bounded stages for a cycle's streamed work: a pool that maps items as they come, batches
of its results, and one background thread that takes the batches in order.

Memory follows what is in flight, never the number of items: the pool submits at most
`ahead` items beyond those whose results were taken, and the hand-off holds at most `ahead`
batches (a slow consumer holds the producer back). Every task runs in a copy of its
submitter's context, so its log lines carry the run id bound there. Generic: nothing here
knows what a customer is.
"""

from __future__ import annotations

import contextvars
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from types import TracebackType
from typing import Generic, TypeVar

__all__ = ["HandOff", "batches", "map_bounded"]

T = TypeVar("T")
R = TypeVar("R")


def map_bounded(
    work: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int,
    ahead: int,
    halted: Callable[[], bool] = lambda: False,
) -> Iterator[R]:
    """`work` over `items` on `workers` threads; each result as soon as it is ready (in the
    order they finish). At most `ahead` items are submitted and not yet taken; none is
    submitted once `halted()` (those in flight still finish and are yielded)."""
    queued = iter(items)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: set[Future[R]] = set()
        while True:
            while len(pending) < max(ahead, 1) and not halted():
                try:
                    item = next(queued)
                except StopIteration:
                    break
                pending.add(pool.submit(contextvars.copy_context().run, work, item))
            if not pending:
                return
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for finished in done:
                yield finished.result()


def batches(items: Iterable[T | None], size: int) -> Iterator[list[T]]:
    """The items that are not None, `size` at a time (the last batch may be smaller)."""
    batch: list[T] = []
    for item in items:
        if item is None:
            continue
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class HandOff(Generic[T]):
    """Hands batches to `consume` on one background thread, in order.

    `put` returns at once while fewer than `ahead` batches wait (or are consumed), else once
    the oldest is done; leaving the `with` block waits for every batch, and re-raises the
    first exception a batch raised (unless the block itself is leaving on one).
    """

    def __init__(self, consume: Callable[[T], None], *, ahead: int, name: str = "handoff") -> None:
        self._consume = consume
        self._ahead = max(ahead, 1)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._waiting: deque[Future[None]] = deque()

    def __enter__(self) -> HandOff[T]:
        return self

    def put(self, batch: T) -> None:
        if len(self._waiting) >= self._ahead:
            self._waiting.popleft().result()
        context = contextvars.copy_context()
        self._waiting.append(self._pool.submit(context.run, self._consume, batch))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc is None:
                while self._waiting:
                    self._waiting.popleft().result()
        finally:
            self._pool.shutdown(wait=True)
