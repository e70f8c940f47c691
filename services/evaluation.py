"""COCOeval of a model: on a COCO ground-truth file (``evaluate_file``, mask and box AP per category)
and on the database's reviewed val-split images (``evaluate_on_val``, mask AP on sets A and B, box AP).

The val ground truth is every val-split image whose review is finished (status done) with its
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
import json
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from db.coco_export import write_json_atomic
from db.coco_import import safe_relative_path
from db.progress import Progress, no_progress
from db import masks, queries
from db.dataset import ImageRecord, reviewed_records
from db.engine import Database
from db.errors import WorkbenchError
from mnc_core import Instance
from services import payoff
from services.models import device_description, instance_to_result, load_predictor, read_image

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
COCO_MAX_DETECTIONS = 100  # COCOeval's detections per image; more when a model gives more (a photo of 375 nuclei)


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else -1.0


def _stats(evaluator: COCOeval) -> dict[str, float]:
    """COCOeval's 12 summary figures, read from its accumulated arrays at its own maxDets (COCOeval.summarize
    reads AP at a fixed 100 detections): AP at the last maxDets, AR1 / AR10 at the first two, "AR100" and the AR
    per area at the last (the detections limit, 100 unless the model gives more)."""
    p, e = evaluator.params, evaluator.eval

    def ap(iou: float | None = None, area: str = "all") -> float:
        precision = e["precision"][:, :, :, p.areaRngLbl.index(area), -1]  # (iou, recall, category)
        if iou is not None:
            precision = precision[int(np.argmin(np.abs(p.iouThrs - iou)))]
        return _mean_valid(precision)

    def ar(detections_index: int, area: str = "all") -> float:
        return _mean_valid(e["recall"][:, :, p.areaRngLbl.index(area), detections_index])

    return {"AP": ap(), "AP50": ap(0.5), "AP75": ap(0.75), "APs": ap(area="small"), "APm": ap(area="medium"),
            "APl": ap(area="large"), "AR1": ar(0), "AR10": ar(1), "AR100": ar(-1), "ARs": ar(-1, "small"),
            "ARm": ar(-1, "medium"), "ARl": ar(-1, "large")}


def _precision_at(evaluator: COCOeval, iou: float, category_index: int | None = None) -> float:
    """Mean precision at one IoU threshold (area all, the detections limit), as COCOeval's stats do."""
    t = int(np.argmin(np.abs(evaluator.params.iouThrs - iou)))
    precision = evaluator.eval["precision"][t, :, :, 0, -1]  # (recall, category)
    if category_index is not None:
        precision = precision[:, category_index]
    return _mean_valid(precision)


def _with_box_only_as_ignore_regions(gt: COCO) -> COCO:
    """Ground truth for mask AP: box-only annotations (no mask known) become crowd-style ignore
    regions shaped like their boxes, so detections there count neither as hits nor as errors."""
    if all(a.get("segmentation") for a in gt.dataset["annotations"]):
        return gt
    dataset = dict(gt.dataset)
    annotations = []
    for ann in gt.dataset["annotations"]:
        if not ann.get("segmentation"):
            x, y, w, h = ann["bbox"]
            ann = dict(ann, iscrowd=1, segmentation=[[x, y, x + w, y, x + w, y + h, x, y + h]])
        annotations.append(ann)
    dataset["annotations"] = annotations
    truth = COCO()
    truth.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        truth.createIndex()
    return truth


def coco_metrics(gt: COCO, results: list[dict], category_ids: Iterable[int] | None = None,
                 max_detections: int | None = None) -> dict:
    """{"segm": {...}, "bbox": {...}, "per_category": {...}} as fractions; AP70 is the MNC paper's mAP^r@0.7.

    ``category_ids`` restricts the evaluation to those categories (e.g. the box-only set B). Each image counts its
    best ``max_detections`` results (None: COCO's 100, or the most results any image has when that is more, so
    that a model's every detection on a photo of hundreds of objects counts)."""
    out: dict = {"images": len(gt.getImgIds()), "detections": len(results), "per_category": {}}
    if max_detections is None:
        max_detections = max([COCO_MAX_DETECTIONS, *Counter(r["image_id"] for r in results).values()])
    out["max_detections"] = int(max_detections)
    cat_ids = sorted(gt.getCatIds()) if category_ids is None else sorted(category_ids)
    names = {c["id"]: c["name"] for c in gt.dataset["categories"]}
    segm_gt = _with_box_only_as_ignore_regions(gt)
    for iou_type in ("segm", "bbox"):
        if not results:
            out[iou_type] = {name: 0.0 for name in (*STAT_NAMES, "AP70")}
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            truth = segm_gt if iou_type == "segm" else gt
            dt = truth.loadRes([dict(r) for r in results])
            evaluator = COCOeval(truth, dt, iou_type)
            evaluator.params.catIds = cat_ids
            evaluator.params.maxDets = [1, 10, int(max_detections)]
            evaluator.evaluate()
            evaluator.accumulate()
        stats = _stats(evaluator)
        stats["AP70"] = _precision_at(evaluator, 0.7)
        out[iou_type] = stats
        for index, cid in enumerate(evaluator.params.catIds):
            entry = out["per_category"].setdefault(str(cid), {"name": names.get(cid, str(cid))})
            entry[iou_type] = {"AP": _mean_valid(evaluator.eval["precision"][:, :, index, 0, -1]),
                               "AP50": _precision_at(evaluator, 0.5, index)}
    return out


def evaluate_file(db: Database, annotations: Path, images_dir: Path, out: Path, *, checkpoint: Path | None = None,
                  device: str | None = None, progress: Progress = no_progress) -> dict:
    annotations, images_dir = Path(annotations), Path(images_dir)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(str(annotations))
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise WorkbenchError(f"{annotations}: not a readable COCO instances file ({exc})") from None
    predictor = load_predictor(db, checkpoint, device)
    model_cats = {cid for cid, _ in predictor.categories}
    gt_cats = set(gt.getCatIds())
    if not model_cats & gt_cats:
        raise WorkbenchError(f"the model's categories {sorted(model_cats)} share no id with {annotations}'s "
                             f"{sorted(gt_cats)}; evaluate on data labelled with the same categories")
    results = []
    images = gt.loadImgs(gt.getImgIds())
    for image in progress(images, len(images), "images"):
        relative = safe_relative_path(image.get("file_name"))
        if relative is None:
            raise WorkbenchError(f"image {image['id']}: file_name {image.get('file_name')!r} leaves the images folder")
        pixels = read_image(images_dir.joinpath(*relative.parts))
        for instance in predictor(pixels):
            if instance.category_id in gt_cats:
                results.append(instance_to_result(instance, image["id"]))
    metrics = coco_metrics(gt, results)
    metrics["checkpoint"] = str(checkpoint) if checkpoint else "active model version"
    metrics["device"] = device_description(str(predictor.device))
    write_json_atomic(metrics, Path(out))
    return metrics


def format_metrics(metrics: dict) -> str:
    keys = ("AP", "AP50", "AP70", "AP75", "APs", "APm", "APl")
    lines = [f"{'':6}" + "".join(f"{k:>8}" for k in keys)]
    for iou_type in ("segm", "bbox"):
        lines.append(f"{iou_type:6}" + "".join(f"{metrics[iou_type][k]:8.3f}" for k in keys))
    lines.append(f"({metrics['images']} images, {metrics['detections']} detections)")
    return "\n".join(lines)


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
                    progress: Progress = no_progress) -> dict | None:
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
    proposal_policy = {str(key): policy.as_dict()
                       for key, policy in payoff.policies(proposal_records(gt, results), source="val").items()}
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
    out["proposal_policy"] = proposal_policy
    return out


def proposal_records(gt: COCO, results: list[dict]) -> list[tuple[int, "payoff.Record"]]:
    """What each prediction on the val photos would have been worth as a proposal (services.payoff): its rank
    by score in its photo and its best mask IoU with the photo's labels (non-crowd, with a mask) and their class."""
    from pycocotools import mask as mask_utils

    by_image: dict[int, list[dict]] = {}
    for result in results:
        by_image.setdefault(result["image_id"], []).append(result)
    out = []
    for image_id, found in by_image.items():
        labels = [a for a in gt.imgToAnns.get(image_id, []) if a["segmentation"] and not a["iscrowd"]]
        truth = [gt.annToRLE(a) for a in labels]
        found = sorted(found, key=lambda r: -r["score"])
        ious = (mask_utils.iou([r["segmentation"] for r in found], truth, [0] * len(truth))
                if truth else np.zeros((len(found), 0)))
        for rank, (result, row) in enumerate(zip(found, np.atleast_2d(ious)), start=1):
            best = int(np.argmax(row)) if len(labels) else None
            match = float(row[best]) if best is not None else 0.0
            right = best is not None and labels[best]["category_id"] == result["category_id"]
            out.append((result["category_id"], payoff.Record(score=float(result["score"]), rank=rank,
                                                             match_iou=match, right_class=right, photo=image_id)))
    return out
