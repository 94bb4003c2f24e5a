"""Read-ahead: batch N+1 is scanned and read on its own connection while batch N is copied."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Prefetcher(Generic[T]):
    """Walks `read(cursor) -> batch` from `cursor` until a batch's cursor is 0, one ahead.

    An exception in the reader is raised by the next `next()`, in the caller's thread.
    """

    def __init__(self, read: Callable[[int], T], cursor: int,
                 next_cursor: Callable[[T], int]) -> None:
        self._read = read
        self._next_cursor = next_cursor
        self._queue: queue.Queue[T | BaseException] = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(cursor,),
                                        name="relayctl-backfill-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: T | BaseException) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, cursor: int) -> None:
        first = True
        while not self._stop.is_set() and (first or cursor != 0):
            first = False
            try:
                batch = self._read(cursor)
            except BaseException as exc:
                self._put(exc)
                return
            if not self._put(batch):
                return
            cursor = self._next_cursor(batch)

    def next(self) -> T:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
