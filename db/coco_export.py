"""Export the database as a COCO instances file (rules: shared/notes/coco_export_rules.md).

Only accepted annotations are exported (a model's proposal becomes a label once a person
accepts it). The file is streamed: annotations are read in batches, turned into JSON
text (polygon tracing on all CPU cores for large exports) and appended, so memory stays
flat. It is written to a temporary file, loaded back with pycocotools and checked, and
only then renamed into place: a failed or interrupted export leaves no file behind.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import io
import json
import math
import multiprocessing
import os
import tempfile
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from pycocotools.coco import COCO
from sqlalchemy import func, select

from db import masks
from db.progress import Progress, no_progress
from db.engine import Database
from db.errors import WorkbenchError
from db.models import Annotation, Category, Image, ReviewState

MASK_FORMATS = ("polygon", "rle")
BATCH = 2_000  # annotations per batch (one JSON chunk, one worker task)
PARALLEL_MIN_ANNOTATIONS = 20_000  # below this, starting worker processes costs more than it saves
_MASK_SOURCE = {"imported": "imported", "drawn": "drawn", "grabcut": "grabcut", "model": "predicted"}

# (id, image_id, category_id, x, y, w, h, mask_rle, mask_polygons, area, iscrowd, source, score, height, width)
Row = tuple


@dataclass
class ExportReport:
    path: Path
    images: int
    categories: int
    annotations: int
    masks: int
    box_only: int
    crowd: int

    def summary(self) -> str:
        return (f"{self.path}: {self.images} images, {self.categories} categories, {self.annotations} annotations "
                f"({self.masks} masks, {self.box_only} box-only, {self.crowd} crowd)")


def _polygons(counts: str, height: int, width: int, bbox: list[float]) -> list[list[float]]:
    # The stored box of a mask is its tight box (whole pixels): decode and trace only inside it.
    x, y = int(bbox[0]), int(bbox[1])
    x2, y2 = int(math.ceil(bbox[0] + bbox[2])), int(math.ceil(bbox[1] + bbox[3]))
    if x2 <= x or y2 <= y:
        return []
    return masks.to_polygons(masks.decode_crop(counts, height, width, x, y, x2, y2), offset=(x, y))


def annotation_json(row: Row, mask_format: str) -> dict:
    ann_id, image_id, category_id, x, y, w, h, counts, polygons, area, iscrowd, source, score, height, width = row
    bbox = [x, y, w, h]
    ann: dict[str, Any] = {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
                           "area": area, "iscrowd": int(iscrowd)}
    if counts is None:
        ann.update(segmentation=[], mask_source="absent", box_only=True)
    else:
        if mask_format == "rle" or iscrowd:  # crowd regions stay RLE, as in COCO
            ann["segmentation"] = masks.rle_dict(counts, height, width)
        elif polygons is not None:  # the polygons the mask was made from
            ann["segmentation"] = json.loads(polygons)
        else:
            ann["segmentation"] = _polygons(counts, height, width, bbox)
        ann.update(mask_source=_MASK_SOURCE[source], box_only=False)
    if score is not None:
        ann["score"] = score
    return ann


def encode_batch(rows: list[Row], mask_format: str) -> str:
    """A batch of annotations as comma-separated JSON objects (runs in worker processes)."""
    return ",".join(json.dumps(annotation_json(row, mask_format), separators=(",", ":")) for row in rows)


class _InlineExecutor:
    """Runs each task at once in this process (small exports, RLE exports)."""

    def submit(self, fn: Callable, *args) -> Future:
        future: Future = Future()
        future.set_result(fn(*args))
        return future


def _executor(to_trace: int, mask_format: str) -> contextlib.AbstractContextManager:
    """Worker processes when many masks have to be traced into polygons, else this process."""
    workers = os.cpu_count() or 1
    if mask_format != "polygon" or to_trace < PARALLEL_MIN_ANNOTATIONS or workers < 2:
        return contextlib.nullcontext(_InlineExecutor())
    # spawn: the caller may be a threaded process (the UI, torch), where fork is unsafe
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def _rows(session, sizes: dict[int, tuple[int, int]]) -> Iterator[list[Row]]:
    query = (select(Annotation.id, Annotation.image_id, Annotation.category_id, Annotation.bbox_x,
                    Annotation.bbox_y, Annotation.bbox_w, Annotation.bbox_h, Annotation.mask_rle,
                    Annotation.mask_polygons, Annotation.area, Annotation.iscrowd, Annotation.source, Annotation.score)
             .where(Annotation.review_state == ReviewState.accepted).order_by(Annotation.id)
             .execution_options(yield_per=BATCH))
    for partition in session.execute(query).partitions():
        # sizes holds the exported images only: annotations of other images are left out
        yield [(*row[:11], row[11].value, row[12], *sizes[row[1]]) for row in partition if row[1] in sizes]


def _write_annotations(handle: IO[str], batches: Iterator[list[Row]], executor: Executor | _InlineExecutor,
                       mask_format: str, on_batch: Callable[[list[Row]], None]) -> None:
    pending: collections.deque = collections.deque()
    first = True

    def drain_one() -> None:
        nonlocal first
        text = pending.popleft().result()
        if text:
            handle.write(text if first else "," + text)
            first = False

    for batch in batches:
        on_batch(batch)
        pending.append(executor.submit(encode_batch, batch, mask_format))
        while len(pending) > 4:  # bounded: memory stays flat however large the export
            drain_one()
    while pending:
        drain_one()


def validate_coco_file(path: Path) -> COCO:
    """Load with pycocotools and check the rules a loader relies on; raises WorkbenchError."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(path))
    except Exception as exc:
        raise WorkbenchError(f"the export does not load with pycocotools ({exc}); nothing was written") from None
    problems = []
    for key in ("images", "categories", "annotations"):
        bad = [item["id"] for item in coco.dataset[key] if not (isinstance(item["id"], int) and item["id"] >= 1)]
        if bad:
            problems.append(f"{key} with ids < 1: {bad[:5]}")
    if any(c["name"] == "_background_" for c in coco.dataset["categories"]):
        problems.append("a '_background_' category")
    if problems:
        raise WorkbenchError(f"the export failed its check ({'; '.join(problems)}); nothing was written")
    return coco


@contextlib.contextmanager
def atomic_text_file(out_path: Path) -> Iterator[tuple[IO[str], Path]]:
    """A temporary file beside ``out_path``; renamed into place only if the block succeeds."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    tmp_path = Path(tmp)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yield handle, tmp_path
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_path, out_path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise WorkbenchError(f"could not write {out_path}: {exc.strerror} (the disk is full or the file too "
                                 "large); nothing was written: free some space and export again") from exc
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_json_atomic(data: Any, out_path: Path) -> None:
    with atomic_text_file(Path(out_path)) as (handle, _):
        handle.write(json.dumps(data, separators=(",", ":")))  # dumps uses the C encoder, dump does not


def export_coco(db: Database, out_path: str | Path, *, mask_format: str = "polygon",
                progress: Progress = no_progress, validate: Callable[[Path], Any] | None = None,
                image_ids: set[int] | None = None) -> ExportReport:
    """``image_ids``: export only these images and their annotations (default: all)."""
    if mask_format not in MASK_FORMATS:
        raise WorkbenchError(f"mask format {mask_format!r} is not one of {', '.join(MASK_FORMATS)}")
    validate = validate or validate_coco_file
    out_path = Path(out_path)
    accepted = Annotation.review_state == ReviewState.accepted
    stats = collections.Counter()
    with db.session() as session:
        wanted = (lambda image_id: True) if image_ids is None else {int(i) for i in image_ids}.__contains__
        has_mask = (accepted, Annotation.mask_rle.is_not(None), Annotation.iscrowd.is_(False))
        if image_ids is None:
            masked = set(session.scalars(select(Annotation.category_id).distinct().where(*has_mask)))
        else:
            masked = {category_id for image_id, category_id in session.execute(
                select(Annotation.image_id, Annotation.category_id).distinct().where(*has_mask)) if wanted(image_id)}
        categories = [{"id": c.id, "name": c.name, "supercategory": c.supercategory, "has_masks": c.id in masked}
                      for c in session.scalars(select(Category).order_by(Category.id))]
        images = [{"id": i.id, "file_name": i.file_name, "width": i.width, "height": i.height, "split": i.split.value}
                  for i in session.scalars(select(Image).order_by(Image.id)) if wanted(i.id)]
        sizes = {image["id"]: (image["height"], image["width"]) for image in images}
        trace = (Annotation.mask_rle.is_not(None) & Annotation.mask_polygons.is_(None)
                 & Annotation.iscrowd.is_(False))
        if image_ids is None:
            count = session.scalar(select(func.count()).select_from(Annotation).where(accepted))
            to_trace = session.scalar(select(func.count()).select_from(Annotation).where(accepted, trace))
        else:
            count = to_trace = 0
            for image_id, n, n_trace in session.execute(
                    select(Annotation.image_id, func.count(), func.count().filter(trace))
                    .where(accepted).group_by(Annotation.image_id)):
                if image_id in sizes:
                    count, to_trace = count + n, to_trace + n_trace
        bar = iter(progress(range(count), count, "annotations"))

        def on_batch(batch: list[Row]) -> None:
            stats["annotations"] += len(batch)
            stats["box_only"] += sum(row[7] is None for row in batch)
            stats["crowd"] += sum(bool(row[10]) for row in batch)
            for _ in batch:
                next(bar, None)

        info = {"description": "Exported by the instance segmentation workbench", "version": "1.0",
                "date_created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "mask_format": mask_format}
        with atomic_text_file(out_path) as (handle, tmp_path), _executor(to_trace, mask_format) as executor:
            dumps = json.JSONEncoder(separators=(",", ":")).encode
            handle.write(f'{{"info":{dumps(info)},"licenses":[],"images":{dumps(images)},'
                         f'"categories":{dumps(categories)},"annotations":[')
            _write_annotations(handle, _rows(session, sizes), executor, mask_format, on_batch)
            handle.write("]}")
            handle.flush()
            validate(tmp_path)
        next(bar, None)
    return ExportReport(path=out_path, images=len(images), categories=len(categories),
                        annotations=stats["annotations"], masks=stats["annotations"] - stats["box_only"],
                        box_only=stats["box_only"], crowd=stats["crowd"])
