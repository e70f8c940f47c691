"""Errors whose message tells the user what is wrong and what to do."""


def shown(value, limit: int = 40) -> str:
    """A value as a message quotes it: its repr, cut to ``limit`` characters (a 10 MB value is not echoed whole)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class WorkbenchError(Exception):
    """A problem with the user's input or data (not a bug): shown as is, exit status 2."""


def strict_int(value, what: str) -> int:
    """A whole number given by a client: an int or an integral float (not a bool, not a text), else a clear
    WorkbenchError naming ``what``."""
    if isinstance(value, bool) or not (isinstance(value, int) or isinstance(value, float) and value.is_integer()):
        raise WorkbenchError(f"{what} must be a whole number, not {shown(value)}")
    return int(value)


class CocoImportError(WorkbenchError):
    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        shown = "\n".join(f"  - {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"{source}: nothing was imported, {len(problems)} problem(s) found:\n{shown}{more}")


class BadImageError(WorkbenchError):
    pass
