"""Errors whose message tells the user what is wrong and what to do."""

import re
import unicodedata


def shown(value, limit: int = 40) -> str:
    """A value as a message quotes it: its repr, cut to ``limit`` characters (a 10 MB value is not echoed whole)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


_BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")  # embeddings, overrides and isolates (not marks)


def isolated(text) -> str:
    """User text (a class name, a file name) as a message or the page puts it among other words: without its
    bidi control characters, between U+2068 (first strong isolate) and U+2069 (pop isolate). A right-to-left
    name still reads right to left, but an override in it (U+202E) cannot flip what follows it. Text without
    right-to-left letters or controls is given back as it is."""
    text = str(text)
    if not any(unicodedata.bidirectional(c) in _RIGHT_TO_LEFT for c in text):
        return text
    return "\u2068" + _BIDI_CONTROLS.sub("", text) + "\u2069"


_RIGHT_TO_LEFT = {"R", "AL", "AN", "RLE", "LRE", "RLO", "LRO", "PDF", "RLI", "LRI", "FSI", "PDI"}


class WorkbenchError(Exception):
    """A problem with the user's input or data (not a bug): shown as is, exit status 2."""


class CocoImportError(WorkbenchError):
    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        shown = "\n".join(f"  - {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"{source}: nothing was imported, {len(problems)} problem(s) found:\n{shown}{more}")


class BadImageError(WorkbenchError):
    pass
