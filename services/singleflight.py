"""Identical concurrent requests run once: a call whose key is already running waits for that call and gets its
result (or its error) instead of doing the work again (what Go's singleflight does).

The workbench keys proposal runs by photo: a page that sends the same request twice (a double click, an event that
fires twice), two tabs opening the same photo, or "most useful next" chosen twice run the model once and store
one set of proposals, instead of a second run whose save loses to the first (a phantom conflict)."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Callable, Hashable, TypeVar

T = TypeVar("T")


class SingleFlight:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[Hashable, Future] = {}
        self.joined = 0  # calls that waited for an identical one instead of running (for tests and diagnosis)

    def run(self, key: Hashable, work: Callable[[], T]) -> T:
        """``work()``, unless a call with this key is running: then that call's result (or its exception)."""
        with self._lock:
            running = self._running.get(key)
            if running is None:
                self._running[key] = future = Future()
            else:
                self.joined += 1
        if running is not None:
            return running.result()
        try:
            result = work()
        except BaseException as exc:
            future.set_exception(exc)
            raise
        else:
            future.set_result(result)
            return result
        finally:
            with self._lock:
                del self._running[key]
