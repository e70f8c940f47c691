"""COCOeval of a model version on a COCO ground-truth file (mask and box AP, per category)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Iterable

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from db.coco_export import write_json_atomic
from db.coco_import import Progress, _no_progress, safe_relative_path
from db.engine import Database
from db.errors import WorkbenchError
from partial_sup.inference import instance_to_result, load_predictor, read_image

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _precision_at(evaluator: COCOeval, iou: float, category_index: int | None = None) -> float:
    """Mean precision at one IoU threshold (area all, 100 detections), as COCOeval's stats do."""
    t = int(np.argmin(np.abs(evaluator.params.iouThrs - iou)))
    precision = evaluator.eval["precision"][t, :, :, 0, -1]  # (recall, category)
    if category_index is not None:
        precision = precision[:, category_index]
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else -1.0


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


def coco_metrics(gt: COCO, results: list[dict], category_ids: Iterable[int] | None = None) -> dict:
    """{"segm": {...}, "bbox": {...}, "per_category": {...}} as fractions; AP70 is the MNC paper's mAP^r@0.7.

    ``category_ids`` restricts the evaluation to those categories (e.g. the box-only set B)."""
    out: dict = {"images": len(gt.getImgIds()), "detections": len(results), "per_category": {}}
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
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        stats = {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats)}
        stats["AP70"] = _precision_at(evaluator, 0.7)
        out[iou_type] = stats
        for index, cid in enumerate(evaluator.params.catIds):
            t_all = evaluator.eval["precision"][:, :, index, 0, -1]
            valid = t_all[t_all > -1]
            entry = out["per_category"].setdefault(str(cid), {"name": names.get(cid, str(cid))})
            entry[iou_type] = {"AP": float(valid.mean()) if valid.size else -1.0,
                               "AP50": _precision_at(evaluator, 0.5, index)}
    return out


def evaluate_file(db: Database, annotations: Path, images_dir: Path, out: Path, *, checkpoint: Path | None = None,
                  device: str | None = None, progress: Progress = _no_progress) -> dict:
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
    write_json_atomic(metrics, Path(out))
    return metrics


def format_metrics(metrics: dict) -> str:
    keys = ("AP", "AP50", "AP70", "AP75", "APs", "APm", "APl")
    lines = [f"{'':6}" + "".join(f"{k:>8}" for k in keys)]
    for iou_type in ("segm", "bbox"):
        lines.append(f"{iou_type:6}" + "".join(f"{metrics[iou_type][k]:8.3f}" for k in keys))
    lines.append(f"({metrics['images']} images, {metrics['detections']} detections)")
    return "\n".join(lines)
