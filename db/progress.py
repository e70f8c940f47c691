"""Progress reporting shared by long operations (imports, exports, training data, evaluation).

A ``Progress`` is called as ``progress(iterable, total, description)`` and returns an iterable of
the same items: a tqdm factory on the command line, Gradio's progress bar in the browser, or
``no_progress``.
"""

from __future__ import annotations

from typing import Callable, Iterable

Progress = Callable[[Iterable, int, str], Iterable]


def no_progress(items: Iterable, total: int, description: str) -> Iterable:
    return items
