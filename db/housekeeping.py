"""What a `kill -9` leaves in the data folder, removed when the server starts, and the retention of exports.

A process killed while it writes leaves its temporary file (an export's ``.NAME.XXXX.tmp`` in ``exports/``, a
checkpoint's ``.tmp-NAME.XXXX`` in ``models/``, an image's ``.NAME.XXXX.tmp`` in ``images/xx/``); an import
killed before it commits leaves the image files it stored without their rows. :func:`clean_start` removes
both, before the server serves (app.ui.serve), and only:

- files of the workbench's own naming in its own folders (never a file a person put there, never a link);
- files older than ``STALE_SECONDS``: another process on the same data folder (a second server, a command-line
  import or export, a training run) may still be writing a younger one;
- image files while no process stores images (db.imagestore.ImageStore.storing: imports and uploads hold it
  until their rows commit), whose path no image row has; the rows are read after the files are listed, so a
  row committed meanwhile keeps its file.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from sqlalchemy import select

from db.engine import Database
from db.imagestore import STORED_NAME, ImageStore
from db.models import Image

STALE_SECONDS = 3600  # temporary and unreferenced files younger than this are left for a later start
# the temporary files of db.coco_export.atomic_text_file (exports), mnc_core.save_checkpoint (models) and
# db.imagestore.atomic_write (images/xx), each in its folder
TEMP_NAMES = {"exports": re.compile(r"\..+\.tmp"), "models": re.compile(r"\.tmp-.+"),
              "images/*": re.compile(r"\..+\.tmp")}
# the files services.workbench.Workbench.export names: coco-<all|reviewed>-<polygon|rle>-<UTC time>.json
EXPORT_NAME = re.compile(r"coco-(?:all|reviewed)-(?:polygon|rle)-(\d{8}-\d{6}-\d{6})\.json")


@dataclass
class Cleanup:
    """What the start-up cleanup removed (paths relative to the data folder) and what it left."""
    temp_files: list[str] = field(default_factory=list)
    orphan_images: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)  # why something was left (e.g. an import running)

    def summary(self) -> str:
        removed = (f"{len(self.temp_files)} unfinished temporary file(s) and {len(self.orphan_images)} image "
                   "file(s) that no image refers to removed")
        return "; ".join([removed, *self.left])


def _old_files(paths: Iterable[Path], now: float, older_than: float) -> list[Path]:
    """The plain files (not links) among ``paths`` last changed more than ``older_than`` seconds ago."""
    old = []
    for path in paths:
        try:
            if not path.is_symlink() and path.is_file() and now - path.stat().st_mtime > older_than:
                old.append(path)
        except OSError:  # gone meanwhile
            continue
    return old


def _relative(db: Database, path: Path) -> str:
    return path.relative_to(db.data_dir).as_posix()


def referenced_paths(db: Database, stored_paths: Iterable[str]) -> set[str]:
    """The ``stored_paths`` (relative to the data folder) that an image row has."""
    paths, referenced = sorted(set(stored_paths)), set()
    with db.session() as session:
        for start in range(0, len(paths), 500):
            chunk = paths[start:start + 500]
            referenced.update(session.scalars(select(Image.stored_path).where(Image.stored_path.in_(chunk))))
    return referenced


def remove_stale_temp_files(db: Database, *, older_than: float = STALE_SECONDS) -> list[str]:
    """Delete the temporary files (TEMP_NAMES) older than ``older_than`` seconds -> their relative paths."""
    now, removed = time.time(), []
    for folder, name in TEMP_NAMES.items():
        candidates = [path for path in db.data_dir.glob(f"{folder}/*") if name.fullmatch(path.name)]
        for path in _old_files(candidates, now, older_than):
            path.unlink(missing_ok=True)
            removed.append(_relative(db, path))
    return sorted(removed)


def remove_orphan_images(db: Database, *, older_than: float = STALE_SECONDS) -> tuple[list[str], str | None]:
    """Delete the stored image files (db.imagestore.STORED_NAME) older than ``older_than`` seconds that no image
    row refers to -> (their relative paths, why none were looked at: None, or the reason)."""
    store = ImageStore(db.data_dir)
    with store.sweeping() as free:
        if not free:
            return [], ("image files without an image row were left: an import or upload is storing images "
                        "(or this file system has no locks); they go at a later start")
        now = time.time()
        candidates = {_relative(db, path): path for path in _old_files(db.data_dir.glob("images/*/*"), now, older_than)
                      if STORED_NAME.fullmatch(_relative(db, path))}
        referenced = referenced_paths(db, candidates) if candidates else set()  # read after the files were listed
        removed = []
        for relative, path in sorted(candidates.items()):
            if relative not in referenced:
                path.unlink(missing_ok=True)
                removed.append(relative)
    return removed, None


def clean_start(db: Database, *, older_than: float = STALE_SECONDS) -> Cleanup:
    """The start-up cleanup (see the module's doc): for a server about to serve, before it takes requests."""
    cleanup = Cleanup(temp_files=remove_stale_temp_files(db, older_than=older_than))
    cleanup.orphan_images, reason = remove_orphan_images(db, older_than=older_than)
    if reason:
        cleanup.left.append(reason)
    return cleanup


def prune_exports(folder: Path, keep: int) -> list[Path]:
    """Keep the ``keep`` newest exports in ``folder`` (by the time in their names, EXPORT_NAME), delete the
    older ones -> the deleted paths. Other files there are never touched."""
    exports = sorted((path for path in Path(folder).iterdir() if EXPORT_NAME.fullmatch(path.name)
                      and not path.is_symlink() and path.is_file()),
                     key=lambda path: (EXPORT_NAME.fullmatch(path.name).group(1), path.name), reverse=True)
    old = exports[max(1, int(keep)):]
    for path in old:
        path.unlink(missing_ok=True)
    return old
