"""The limits an operator may change through environment variables (README, "Limits"): how many events that
write or run GrabCut or the model run at once, and how many exports and checkpoints are kept. Environment
variables rather than launch.py flags because the training process that `serve` starts (services.training)
must see the same retention as the server, and because `launch.py train` applies it too.

Each is read when it is needed; a value that is not a whole number in its range stops with a message that
names the variable and what to set."""

from __future__ import annotations

import os
import sys

from db import registry
from db.checks import strict_int
from db.engine import Database
from db.errors import WorkbenchError

WRITE_CONCURRENCY_VARIABLE = "WORKBENCH_WRITE_CONCURRENCY"
DEFAULT_WRITE_CONCURRENCY = 4  # events that write or run GrabCut or the model, at once over all sessions and the API
KEEP_EXPORTS_VARIABLE = "WORKBENCH_KEEP_EXPORTS"
DEFAULT_KEEP_EXPORTS = 5  # the newest COCO exports kept in <data>/exports
KEEP_CHECKPOINTS_VARIABLE = "WORKBENCH_KEEP_CHECKPOINTS"
DEFAULT_KEEP_CHECKPOINTS = 3  # inactive model versions whose checkpoints are kept, newest first (the active one
# always keeps its own)


def _whole_number(variable: str, default: int, lowest: int) -> int:
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    try:
        return strict_int(text, variable, lowest)  # ASCII digits, as every number the workbench is given
    except WorkbenchError:
        raise WorkbenchError(f"{variable} must be a whole number of at least {lowest}, not {text!r}; set it so or "
                             f"unset it (default {default})") from None


def write_concurrency() -> int:
    """How many events that write (annotations, images, classes, versions, runs) or run GrabCut or the model
    run at once: $WORKBENCH_WRITE_CONCURRENCY, default 4."""
    return _whole_number(WRITE_CONCURRENCY_VARIABLE, DEFAULT_WRITE_CONCURRENCY, 1)


def keep_exports() -> int:
    """How many of the newest exports stay in <data>/exports: $WORKBENCH_KEEP_EXPORTS, default 5 (at least 1:
    the export just made)."""
    return _whole_number(KEEP_EXPORTS_VARIABLE, DEFAULT_KEEP_EXPORTS, 1)


def keep_checkpoints() -> int:
    """How many inactive model versions (the newest) keep their checkpoint files besides the active one:
    $WORKBENCH_KEEP_CHECKPOINTS, default 3 (0: only the active one's)."""
    return _whole_number(KEEP_CHECKPOINTS_VARIABLE, DEFAULT_KEEP_CHECKPOINTS, 0)


def describe() -> str:
    """The limits in force, in a line for the server's start (each variable checked: a bad one stops it)."""
    return (f"at most {write_concurrency()} writing events at once ({WRITE_CONCURRENCY_VARIABLE}); the newest "
            f"{keep_exports()} exports ({KEEP_EXPORTS_VARIABLE}) and the checkpoints of the active and the "
            f"{keep_checkpoints()} newest inactive model versions ({KEEP_CHECKPOINTS_VARIABLE}) are kept")


def remove_old_checkpoints(db: Database) -> list:
    """After a successful training run: the checkpoint files of all but the active version and the
    keep_checkpoints() newest inactive ones are deleted (db.registry.remove_old_checkpoints). A failure is
    printed and never fails the run, which is registered already. -> the deleted files."""
    try:
        removed = registry.remove_old_checkpoints(db, keep_checkpoints())
    except (WorkbenchError, OSError) as exc:
        print(f"warning: old checkpoints were not removed: {exc}", file=sys.stderr, flush=True)
        return []
    if removed:
        print(f"retention: removed {len(removed)} checkpoint file(s) of older inactive model versions "
              f"({KEEP_CHECKPOINTS_VARIABLE}={keep_checkpoints()})", file=sys.stderr, flush=True)
    return removed
