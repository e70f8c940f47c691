"""Checks of exported COCO files against their originals (used by several tests)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def load(path_or_dict) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(path_or_dict, dict):
            coco = COCO()
            coco.dataset = copy.deepcopy(path_or_dict)
            coco.createIndex()
            return coco
        return COCO(str(path_or_dict))


def ann_mask(coco: COCO, ann: dict) -> np.ndarray:
    return coco.annToMask(ann).astype(bool)


def match_by_file_name(original: COCO, exported: COCO) -> dict[int, int]:
    """exported image id -> original image id."""
    by_name = {img["file_name"]: img["id"] for img in original.dataset["images"]}
    return {img["id"]: by_name[img["file_name"]] for img in exported.dataset["images"] if img["file_name"] in by_name}


def paired_annotations(original: COCO, exported: COCO):
    """(original ann, exported ann) pairs, matched per image by category and best mask/box overlap."""
    image_map = match_by_file_name(original, exported)
    pairs = []
    for exp_image, orig_image in image_map.items():
        orig_anns = original.loadAnns(original.getAnnIds(imgIds=[orig_image]))
        exp_anns = exported.loadAnns(exported.getAnnIds(imgIds=[exp_image]))
        assert len(orig_anns) == len(exp_anns), (orig_image, len(orig_anns), len(exp_anns))
        used = set()
        for oa in orig_anns:
            best, best_iou = None, -1.0
            for index, ea in enumerate(exp_anns):
                if index in used or ea["category_id"] != oa["category_id"] or ea["iscrowd"] != oa["iscrowd"]:
                    continue
                if oa.get("segmentation") and ea.get("segmentation"):
                    iou = mask_iou(ann_mask(original, oa), ann_mask(exported, ea))
                else:
                    iou = float(mask_utils.iou([ea["bbox"]], [oa["bbox"]], [0])[0][0])
                if iou > best_iou:
                    best, best_iou = index, iou
            assert best is not None, f"no exported annotation for original {oa['id']}"
            used.add(best)
            pairs.append((oa, exp_anns[best]))
    return pairs


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def coco_eval_against(original_path: Path, exported_path: Path, iou_type: str) -> np.ndarray:
    """COCOeval stats (AP, AP50, AP75, ...) of the export, taken as detections (score 1), against the original as ground truth."""
    original = load(original_path)
    exported = load(exported_path)
    image_map = match_by_file_name(original, exported)
    results = []
    for ann in exported.dataset["annotations"]:
        if ann["iscrowd"] or ann["image_id"] not in image_map:
            continue
        if iou_type == "segm" and not ann["segmentation"]:
            continue
        result = {"image_id": image_map[ann["image_id"]], "category_id": ann["category_id"], "score": 1.0,
                  "bbox": ann["bbox"]}
        if iou_type == "segm":
            rle = exported.annToRLE(ann)
            rle["counts"] = rle["counts"].decode() if isinstance(rle["counts"], bytes) else rle["counts"]
            result["segmentation"] = rle
        results.append(result)
    gt = json.loads(Path(original_path).read_text())
    if iou_type == "segm":  # box-only ground truth cannot be scored as masks
        gt["annotations"] = [a for a in gt["annotations"] if a.get("segmentation")]
    gt_coco = load(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt_coco.loadRes(results)
        evaluator = COCOeval(gt_coco, dt, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats
