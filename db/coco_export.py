"""Export the database as a COCO instances file (rules: shared/notes/coco_export_rules.md).

Only accepted annotations are exported (a model's proposal becomes a label once a person
accepts it). Every export is written to a temporary file, loaded back with pycocotools,
and only then renamed into place: a failed or interrupted export leaves no file behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import multiprocessing
import os
import tempfile
from dataclasses import dataclass
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO
from sqlalchemy import func, select

from db import masks
from db.coco_import import Progress, _no_progress
from db.engine import Database
from db.errors import WorkbenchError
from db.models import Annotation, Category, Image, ReviewState, Source

MASK_FORMATS = ("polygon", "rle")
PARALLEL_MIN_JOBS = 20_000  # below this, starting worker processes costs more than it saves
PARALLEL_BATCH = 2_000
_MASK_SOURCE = {Source.imported: "imported", Source.drawn: "drawn", Source.grabcut: "grabcut", Source.model: "predicted"}


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


def _polygons(job: tuple[str, int, int, list[float]]) -> list[list[float]]:
    counts, height, width, bbox = job
    # The stored box of a mask is its tight box (whole pixels): decode and trace only inside it.
    x, y = int(bbox[0]), int(bbox[1])
    x2, y2 = int(math.ceil(bbox[0] + bbox[2])), int(math.ceil(bbox[1] + bbox[3]))
    if x2 <= x or y2 <= y:
        return []
    return masks.to_polygons(masks.decode_crop(counts, height, width, x, y, x2, y2), offset=(x, y))


def _polygons_batch(jobs: list[tuple[str, int, int, list[float]]]) -> list[list[list[float]]]:
    return [_polygons(job) for job in jobs]


def _all_polygons(jobs: list, progress: Progress) -> list[list[list[float]]]:
    """Polygons of every job, on all CPU cores when there are many (tracing dominates an export)."""
    batches = [jobs[i:i + PARALLEL_BATCH] for i in range(0, len(jobs), PARALLEL_BATCH)]
    workers = min(os.cpu_count() or 1, len(batches))
    if len(jobs) < PARALLEL_MIN_JOBS or workers < 2:
        return [_polygons(job) for job in progress(jobs, len(jobs), "polygons")]
    # spawn: the caller may be a threaded process (the UI, torch), where fork is unsafe
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = []
        for batch in progress(pool.map(_polygons_batch, batches), len(batches), f"polygons ({workers} processes)"):
            results.extend(batch)
        return results


def build_coco(db: Database, *, mask_format: str = "polygon", progress: Progress = _no_progress) -> dict:
    if mask_format not in MASK_FORMATS:
        raise WorkbenchError(f"mask format {mask_format!r} is not one of {', '.join(MASK_FORMATS)}")
    accepted = Annotation.review_state == ReviewState.accepted
    with db.session() as session:
        masked = set(session.scalars(select(Annotation.category_id).distinct().where(
            accepted, Annotation.mask_rle.is_not(None), Annotation.iscrowd.is_(False))))
        categories = [{"id": c.id, "name": c.name, "supercategory": c.supercategory, "has_masks": c.id in masked}
                      for c in session.scalars(select(Category).order_by(Category.id))]
        images = [{"id": i.id, "file_name": i.file_name, "width": i.width, "height": i.height, "split": i.split.value}
                  for i in session.scalars(select(Image).order_by(Image.id))]
        sizes = {image["id"]: (image["height"], image["width"]) for image in images}
        count = session.scalar(select(func.count()).select_from(Annotation).where(accepted))
        query = (select(Annotation.id, Annotation.image_id, Annotation.category_id, Annotation.bbox_x,
                        Annotation.bbox_y, Annotation.bbox_w, Annotation.bbox_h, Annotation.mask_rle,
                        Annotation.area, Annotation.iscrowd, Annotation.source, Annotation.score)
                 .where(accepted).order_by(Annotation.id).execution_options(yield_per=5000))
        annotations = []
        polygon_jobs, polygon_anns = [], []
        for row in progress(session.execute(query), count, "annotations"):
            bbox = [row.bbox_x, row.bbox_y, row.bbox_w, row.bbox_h]
            ann = {"id": row.id, "image_id": row.image_id, "category_id": row.category_id, "bbox": bbox,
                   "area": row.area, "iscrowd": int(row.iscrowd)}
            if row.mask_rle is None:
                ann["segmentation"] = []
                ann["mask_source"] = "absent"
                ann["box_only"] = True
            else:
                height, width = sizes[row.image_id]
                if mask_format == "rle" or row.iscrowd:  # crowd regions stay RLE, as in COCO
                    ann["segmentation"] = masks.rle_dict(row.mask_rle, height, width)
                else:
                    polygon_jobs.append((row.mask_rle, height, width, bbox))
                    polygon_anns.append(ann)
                ann["mask_source"] = _MASK_SOURCE[row.source]
                ann["box_only"] = False
            if row.score is not None:
                ann["score"] = row.score
            annotations.append(ann)
    for ann, polygons in zip(polygon_anns, _all_polygons(polygon_jobs, progress)):
        ann["segmentation"] = polygons
    return {
        "info": {"description": "Exported by the instance segmentation workbench", "version": "1.0",
                 "date_created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "mask_format": mask_format},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def validate_coco_file(path: Path) -> COCO:
    """Load with pycocotools and check the rules a loader relies on; raises WorkbenchError."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
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


def write_json_atomic(data: Any, out_path: Path, validate=None) -> None:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    tmp_path = Path(tmp)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(data, separators=(",", ":")))  # dumps uses the C encoder, dump does not
            handle.flush()
            os.fsync(handle.fileno())
        if validate is not None:
            validate(tmp_path)
        os.replace(tmp_path, out_path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def export_coco(db: Database, out_path: str | Path, *, mask_format: str = "polygon",
                progress: Progress = _no_progress) -> ExportReport:
    out_path = Path(out_path)
    data = build_coco(db, mask_format=mask_format, progress=progress)
    write_json_atomic(data, out_path, validate=validate_coco_file)
    anns = data["annotations"]
    box_only = sum(1 for a in anns if a["box_only"])
    return ExportReport(path=out_path, images=len(data["images"]), categories=len(data["categories"]),
                        annotations=len(anns), masks=len(anns) - box_only, box_only=box_only,
                        crowd=sum(a["iscrowd"] for a in anns))
