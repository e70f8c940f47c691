"""The next photos ready before they are asked for: one background worker proposes on the photos that come
next in the gallery, so that "done, next" opens a photo whose proposals are already stored.

Never twice: a photo is proposed on only when the active model has not looked at it (the caller's ``needed``),
checked again right before the model runs; while the worker is on a photo, a foreground open of the same photo
waits for it (``wait``) instead of running the model a second time. Never in a save's way: the model runs
outside any transaction, and the proposals are stored like any proposal run (db.annotations.save_annotations
with the revision read after the prediction: a person's save in between is kept, never overwritten).
The worker runs at a lower CPU priority than the requests of the people using the page."""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from typing import Callable

log = logging.getLogger(__name__)

PREFETCH_VARIABLE = "WORKBENCH_PREFETCH"  # photos proposed on ahead (default 2; 0: off)
DEFAULT_AHEAD = 2
WAIT_S = 30.0  # the longest a foreground open waits for the worker's run on the same photo


def ahead_from_environment() -> int:
    text = os.environ.get(PREFETCH_VARIABLE, "").strip()
    if not text:
        return DEFAULT_AHEAD
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"{PREFETCH_VARIABLE} must be a whole number of photos (0: off), not {text!r}")
    return int(text)


class Prefetcher:
    """``propose(image_id)`` run in the background on the photos given to ``ahead`` that ``needed(image_id)``
    says need it; one at a time, newest request first."""

    def __init__(self, propose: Callable[[int], object], needed: Callable[[int], bool], ahead: int = DEFAULT_AHEAD):
        self.propose, self.needed, self.ahead_count = propose, needed, ahead
        self._queue: deque[int] = deque()
        self._running: int | None = None
        self._done = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.runs = 0  # proposal runs made (for tests and diagnosis)

    def ahead(self, image_ids: list[int]) -> None:
        """Propose on the first ``ahead_count`` of these photos (the next in the person's order) in the
        background; what was queued before and not started is dropped."""
        if self.ahead_count <= 0 or self._stopped:
            return
        with self._done:
            self._queue = deque(int(i) for i in image_ids[:self.ahead_count])
            self._done.notify_all()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="prefetch", daemon=True)
                self._thread.start()

    def wait(self, image_id: int, timeout: float = WAIT_S) -> None:
        """Return once the worker is not (or no longer) proposing on this photo; a queued photo is taken out of
        the queue (the caller proposes on it itself)."""
        with self._done:
            if image_id in self._queue:
                self._queue.remove(image_id)
            self._done.wait_for(lambda: self._running != image_id, timeout=timeout)

    def clear(self) -> None:
        """Drop the queued photos (e.g. another model became active)."""
        with self._done:
            self._queue.clear()

    def stop(self, timeout: float = 5.0) -> None:
        with self._done:
            self._stopped = True
            self._queue.clear()
            self._done.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _work(self) -> None:
        try:  # below the people's requests (Linux: this thread only)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except (AttributeError, OSError):
            pass
        while True:
            with self._done:
                self._done.wait_for(lambda: self._queue or self._stopped, timeout=60.0)
                if self._stopped or not self._queue:  # idle for a minute: the next ahead() starts a new worker
                    self._thread = None
                    return
                image_id = self._queue.popleft()
                self._running = image_id
            try:
                if self.needed(image_id):
                    self.runs += 1
                    self.propose(image_id)
            except Exception as exc:  # noqa: BLE001 (a conflict, a deleted photo, no model: the open proposes itself)
                log.info("prefetching proposals for image %s skipped: %s", image_id, exc)
            finally:
                with self._done:
                    self._running = None
                    self._done.notify_all()
