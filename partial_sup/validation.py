"""A model version's metrics on the reviewed val-split images of the database (mask AP on A and on B, box AP).

The ground truth is every val-split image whose review is finished (status done) with its
accepted annotations: masks where there are some, box-only annotations (ignore regions for
mask AP, real objects for box AP) and crowd regions (``iscrowd``).

Mask AP on set B is only measurable where val images of B classes have masks (e.g. imported
ones, or masks a person drew on a val image): a box-only class's val annotations are ignore
regions for mask AP, so a B class without val masks adds nothing to it, and B's mask AP is
None when no B class has one.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Callable

from pycocotools.coco import COCO

from db import masks, queries
from db.coco_import import Progress, _no_progress
from db.dataset import ImageRecord, reviewed_records
from db.engine import Database
from db.errors import WorkbenchError
from mnc_core import Instance
from partial_sup.evaluation import coco_metrics
from partial_sup.inference import instance_to_result, read_image

Predict = Callable[..., list[Instance]]  # predict(image_rgb_uint8) -> instances, e.g. a mnc_core.Predictor


def _ground_truth(records: list[ImageRecord], categories: dict[int, str]) -> COCO:
    images, annotations = [], []
    for record in records:
        images.append({"id": record.image_id, "width": record.width, "height": record.height,
                       "file_name": record.path})
        for inst in record.instances:
            x, y, w, h = (float(v) for v in inst.bbox)
            if inst.mask_rle is not None:
                segmentation = masks.rle_dict(inst.mask_rle, record.height, record.width)
                area = float(masks.area(inst.mask_rle, record.height, record.width))
            else:
                segmentation, area = [], w * h
            annotations.append({"id": len(annotations) + 1, "image_id": record.image_id,
                                "category_id": int(inst.category_id), "bbox": [x, y, w, h], "area": area,
                                "iscrowd": int(inst.iscrowd), "segmentation": segmentation})
    truth = COCO()
    truth.dataset = {"images": images, "annotations": annotations,
                     "categories": [{"id": cid, "name": name} for cid, name in sorted(categories.items())]}
    with contextlib.redirect_stdout(io.StringIO()):
        truth.createIndex()
    return truth


def val_ground_truth(db: Database) -> COCO | None:
    """COCO ground truth of the reviewed val-split images (image ids = database ids; all categories),
    or None when no val-split image has been reviewed."""
    records = reviewed_records(db, "val")
    return _ground_truth(records, queries.category_names(db)) if records else None


def _categories_with_objects(gt: COCO, with_mask: bool) -> set[int]:
    """Categories with a non-crowd ground-truth object (with a mask, for mask AP)."""
    return {a["category_id"] for a in gt.dataset["annotations"]
            if not a["iscrowd"] and (a["segmentation"] or not with_mask)}


def _ap(metrics: dict, iou_type: str) -> tuple[float | None, float | None]:
    """(AP, AP50) of ``coco_metrics``' output; COCOeval's -1 (nothing to measure) becomes None."""
    stats = metrics[iou_type]
    return tuple(None if stats[k] < 0 else float(stats[k]) for k in ("AP", "AP50"))


def _mask_ap(gt: COCO, results: list[dict], category_ids: set[int]) -> tuple[float | None, float | None]:
    """Mask (AP, AP50) over ``category_ids``; None when none of them has a ground-truth mask."""
    measurable = category_ids & _categories_with_objects(gt, with_mask=True)
    if not measurable:
        return None, None
    return _ap(coco_metrics(gt, results, category_ids=measurable), "segm")


def evaluate_on_val(db: Database, predict: Predict, mask_set: set[int] | None = None,
                    progress: Progress = _no_progress) -> dict | None:
    """Run ``predict`` on the reviewed val-split images and score it with COCOeval.

    Returns None when no val-split image has been reviewed, else plain values: ``val_images`` (int),
    ``mask_AP``, ``mask_AP50``, ``box_AP``, ``box_AP50`` and, with ``mask_set`` (set A, e.g. the "A"
    ids of ``queries.category_sets``), ``mask_AP_A``, ``mask_AP50_A``, ``mask_AP_B``, ``mask_AP50_B``:
    mask AP over the ground-truth categories in A, resp. not in A. APs are fractions (0..1) averaged
    over categories as COCO does, or None where nothing can be measured: no ground-truth object, or
    for mask AP no ground-truth mask (B's mask AP needs val masks of B classes, see the module's doc).
    """
    records = reviewed_records(db, "val")
    if not records:
        return None
    gt = _ground_truth(records, queries.category_names(db))
    results: list[dict] = []
    for record in progress(records, len(records), "val images"):
        image = read_image(Path(record.path))
        if image.shape[:2] != (record.height, record.width):
            raise WorkbenchError(f"image {record.image_id}: the file is {image.shape[1]}x{image.shape[0]} but "
                                 f"the database says {record.width}x{record.height}")
        results.extend(instance_to_result(instance, record.image_id) for instance in predict(image))
    metrics = coco_metrics(gt, results)  # all categories: those without ground truth do not count
    out: dict = {"val_images": len(records), "mask_AP": None, "mask_AP50": None, "box_AP": None, "box_AP50": None}
    if _categories_with_objects(gt, with_mask=True):
        out["mask_AP"], out["mask_AP50"] = _ap(metrics, "segm")
    if _categories_with_objects(gt, with_mask=False):
        out["box_AP"], out["box_AP50"] = _ap(metrics, "bbox")
    if mask_set is not None:
        in_gt = _categories_with_objects(gt, with_mask=False)
        set_a = {int(c) for c in mask_set} & in_gt
        out["mask_AP_A"], out["mask_AP50_A"] = _mask_ap(gt, results, set_a)
        out["mask_AP_B"], out["mask_AP50_B"] = _mask_ap(gt, results, in_gt - set_a)
    return out
