#!/usr/bin/env python
"""Partial supervision (Mask^X) on coco_subset: the paper's Table 3.5 in small.

    python benchmarks/bench_partial_sup.py --threads 1                       # everything (resumable)
    python benchmarks/bench_partial_sup.py --iterations 3 --image-size 160 --seeds 0 --val-images 4 \
        --train-images 8 --score-threshold 0 --grabcut-top 5 --work benchmarks/out/partial_sup_smoke
    python benchmarks/bench_partial_sup.py --table-only                      # print the table from finished runs

Splits (COCO 2017 `train.json` 160 images -> trained; `val.json` 79 images -> evaluated, all masks):
  voc2nonvoc  A = the 20 VOC classes keep their masks, B = the 60 others are box-only in training
  nonvoc2voc  the reverse
Methods, per split and seed (same MNCConfig, image size, iterations, seed; "heads" mode = frozen
ImageNet MobileNetV2 body with cached features, from ../shared/weights/mobilenet_v2-b0353104.pth):
  agnostic  MaskXConfig(method="agnostic") trained with B box-only (the paper's class-agnostic baseline)
  transfer  MaskXConfig(method="transfer") trained with B box-only (Mask^X: weight transfer + MLP)
  grabcut   the `agnostic` run's detections (same split, seed), each mask replaced by
            partial_sup.grabcut.grabcut_mask(image, box) (detector + GrabCut; no training); only the
            top --grabcut-top detections per image (10 by default) because GrabCut costs ~20-50 ms a box
  oracle    MaskXConfig(method="transfer") trained with masks for every class. Its training data do
            not depend on the split, so one model per seed is trained and evaluated for both splits
            (identical to training it twice: same data, config and seed on a deterministic CPU run).
Metrics: services.evaluation.coco_metrics on val.json restricted to A resp. B categories
(mask AP, AP50) and on all categories (box AP). Each run writes WORK/<split>-<method>-seed<k>.json
(skipped on a re-run unless --force); the final step prints a markdown table (mean +- sample std over
seeds, in AP points x100) beside the paper's figures and writes WORK/results.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from functools import partial
from pathlib import Path

import numpy as np

from common import (DEFAULT_DATA as DATA, DEFAULT_WEIGHTS as WEIGHTS, REPO, index_quietly, load_coco, loadavg,
                    read_rgb, stamp, usable_anns, write_json)


WORK = REPO / "benchmarks" / "out" / "partial_sup"

# The 20 PASCAL VOC classes as COCO category ids (../shared/notes/mnc_maskx_facts.md).
VOC_IDS = frozenset({1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72})
SPLITS = ("voc2nonvoc", "nonvoc2voc")
METHODS = ("agnostic", "transfer", "grabcut", "oracle")
# The paper's Table 3.5 (R50-FPN, end-to-end, full COCO): mask AP on B.
PAPER_AP_B = {"voc2nonvoc": {"agnostic": 19.2, "grabcut": 12.6, "transfer": 23.7, "oracle": 33.0},
              "nonvoc2voc": {"agnostic": 23.9, "grabcut": 12.1, "transfer": 28.9, "oracle": 37.5}}
# Table 3.3 (stage-wise training, R50-FPN), the '+MLP' rows: the baseline here includes the MLP branch too.
PAPER_MLP_AP_B = {"voc2nonvoc": {"agnostic": 17.1, "transfer": 21.3},
                  "nonvoc2voc": {"agnostic": 22.8, "transfer": 26.6}}


def split_sets(split: str, all_ids: list[int]) -> tuple[list[int], list[int]]:
    """(A, B) category ids: A keeps masks in training, B is box-only."""
    voc = sorted(c for c in all_ids if c in VOC_IDS)
    nonvoc = sorted(c for c in all_ids if c not in VOC_IDS)
    return (voc, nonvoc) if split == "voc2nonvoc" else (nonvoc, voc)


class ImageCache:
    """Decoded images by path (uint8 RGB), shared by the datasets and the evaluation of all runs."""

    def __init__(self) -> None:
        self._images: dict[str, np.ndarray] = {}

    def __call__(self, path: Path) -> np.ndarray:
        key = str(path)
        if key not in self._images:
            self._images[key] = read_rgb(path)
        return self._images[key]


class CocoFileDataset:
    """mnc_core InstanceDataset over a COCO instances file, as the workbench's database dataset makes it:
    non-crowd annotations are objects, crowd regions come as regions to ignore; the masks of the
    categories in ``box_only`` are dropped (has_mask=False, boxes and classes kept). Images without a
    non-crowd annotation are left out. Masks are decoded on access."""

    def __init__(self, coco, images_dir: Path, box_only: set[int], images: ImageCache,
                 limit: int | None = None) -> None:
        self.coco = coco
        self.images_dir = Path(images_dir)
        self.box_only = set(box_only)
        self.load = images
        self.categories = [(int(c["id"]), str(c["name"])) for c in coco.dataset["categories"]]
        self.image_ids = [i for i in sorted(coco.getImgIds()) if usable_anns(coco, i)]
        if limit:
            self.image_ids = self.image_ids[:limit]

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int):
        from mnc_core import Sample

        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        image = self.load(self.images_dir / info["file_name"])
        height, width = image.shape[:2]
        if (height, width) != (info["height"], info["width"]):
            raise ValueError(f"image {image_id}: file is {width}x{height}, the COCO file says "
                             f"{info['width']}x{info['height']}")
        anns = [a for a in self.coco.imgToAnns[image_id] if a["bbox"][2] > 0 and a["bbox"][3] > 0]
        return Sample.from_instances(image, [
            (ann["bbox"], ann["category_id"],
             partial(self.coco.annToMask, ann) if ann["category_id"] not in self.box_only and ann.get("segmentation")
             else None, bool(ann.get("iscrowd"))) for ann in anns], image_id)


# ---------------------------------------------------------------------------------------------------------
# training and evaluation


def train_run(name: str, dataset, method: str, seed: int, args) -> tuple[object, object, dict]:
    """One model trained with the product's heads recipe (services.training.training_config("heads")),
    changed only where a flag says so."""
    import torch

    from mnc_core import train_model
    from partial_sup.maskx import MaskXConfig, build_maskx_model
    from services.presets import PRESETS
    from services.training import training_config

    config = training_config("heads", args.image_size)
    changes = {k: v for k, v in (("num_stages", args.stages), ("roi_batch_size", args.rois)) if v is not None}
    config = config.replace(**changes)
    maskx = MaskXConfig(method=method) if args.fcn_channels is None else MaskXConfig(method=method,
                                                                                      fcn_channels=args.fcn_channels)
    torch.manual_seed(seed)  # the heads' random init depends on the seed too (train_model reseeds later)
    model = build_maskx_model(config, len(dataset.categories), maskx, backbone_weights=str(args.weights))
    last = {"t": time.perf_counter(), "it": 0}

    def on_progress(p) -> None:
        if p.iteration % args.log_every == 0 or p.iteration == p.iterations:
            now = time.perf_counter()
            per_it = (now - last["t"]) / max(1, p.iteration - last["it"])
            last.update(t=now, it=p.iteration)
            parts = " ".join(f"{k} {v:.3f}" for k, v in p.losses.items()
                             if k in ("total", "mask", "mask_final", "cls", "seg_cls", "bbox"))
            print(f"  [{name}] it {p.iteration}/{p.iterations} {parts} | {per_it:.2f} s/it, "
                  f"{p.seconds:.0f} s, load {os.getloadavg()[0]:.2f}", flush=True)

    model, summary = train_model(dataset, config, iterations=args.iterations, seed=seed, model=model,
                                 cache_frozen_features=PRESETS["heads"].cache_frozen_features,
                                 on_progress=on_progress, device="cpu")
    return model, config, summary


def predict_val(model, config, categories, gt, images_dir: Path, images: ImageCache, limit: int | None,
                score_threshold: float) -> tuple[list, dict]:
    """COCO results (RLE masks) of the model on the val images, and timing."""
    from mnc_core import Predictor
    from services.models import instance_to_result

    predictor = Predictor(model, config, categories, "cpu")
    cats = set(gt.getCatIds())
    image_ids = sorted(gt.getImgIds())[:limit] if limit else sorted(gt.getImgIds())
    results, t = [], time.perf_counter()
    for image_id in image_ids:
        info = gt.imgs[image_id]
        for inst in predictor(images(images_dir / info["file_name"]), score_threshold=score_threshold):
            if inst.category_id in cats:
                results.append(instance_to_result(inst, image_id))
    dt = time.perf_counter() - t
    return results, {"predict_seconds": round(dt, 1), "seconds_per_image": round(dt / max(1, len(image_ids)), 3),
                     "images": len(image_ids)}


def metrics_for(gt, results: list[dict], a_ids: list[int], b_ids: list[int], image_ids: list[int] | None) -> dict:
    from services.evaluation import coco_metrics

    if image_ids is not None:  # smoke runs on a few val images: evaluate those images only
        gt = restrict_gt(gt, image_ids)
    on_a = coco_metrics(gt, [r for r in results if r["category_id"] in set(a_ids)], category_ids=a_ids)
    on_b = coco_metrics(gt, [r for r in results if r["category_id"] in set(b_ids)], category_ids=b_ids)
    on_all = coco_metrics(gt, results)
    return {
        "mask_AP_A": on_a["segm"]["AP"], "mask_AP50_A": on_a["segm"]["AP50"],
        "mask_AP_B": on_b["segm"]["AP"], "mask_AP50_B": on_b["segm"]["AP50"],
        "box_AP_all": on_all["bbox"]["AP"], "box_AP50_all": on_all["bbox"]["AP50"],
        "mask_AP_all": on_all["segm"]["AP"],
        "box_AP_A": on_a["bbox"]["AP"], "box_AP_B": on_b["bbox"]["AP"],
        "detections": len(results),
        "detections_A": sum(r["category_id"] in set(a_ids) for r in results),
        "detections_B": sum(r["category_id"] in set(b_ids) for r in results),
        "per_category_B": {cid: v for cid, v in on_b["per_category"].items()},
        "per_category_A": {cid: v for cid, v in on_a["per_category"].items()},
    }


def restrict_gt(gt, image_ids: list[int]):
    from pycocotools.coco import COCO

    keep = set(image_ids)
    dataset = dict(gt.dataset)
    dataset["images"] = [im for im in gt.dataset["images"] if im["id"] in keep]
    dataset["annotations"] = [a for a in gt.dataset["annotations"] if a["image_id"] in keep]
    out = COCO()
    out.dataset = dataset
    return index_quietly(out)


def grabcut_results(detections: list[dict], gt, images_dir: Path, images: ImageCache, top: int) -> tuple[list, dict]:
    """The detections (COCO results with bbox), top `top` per image by score, masks from GrabCut in the box."""
    from pycocotools import mask as mask_utils

    from partial_sup.grabcut import grabcut_mask

    by_image: dict[int, list[dict]] = {}
    for d in detections:
        by_image.setdefault(d["image_id"], []).append(d)
    out, t, boxes = [], time.perf_counter(), 0
    for image_id in sorted(by_image):
        dets = sorted(by_image[image_id], key=lambda d: -d["score"])[:top]
        image = images(images_dir / gt.imgs[image_id]["file_name"])
        for d in dets:
            x, y, w, h = d["bbox"]
            mask = grabcut_mask(image, (x, y, x + w, y + h))
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            out.append({"image_id": image_id, "category_id": d["category_id"], "score": d["score"], "bbox": d["bbox"],
                        "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}})
            boxes += 1
    dt = time.perf_counter() - t
    return out, {"grabcut_seconds": round(dt, 1), "grabcut_boxes": boxes,
                 "ms_per_box": round(1000 * dt / max(1, boxes), 1)}


def capped(results: list[dict], top: int) -> list[dict]:
    by_image: dict[int, list[dict]] = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    return [r for rs in by_image.values() for r in sorted(rs, key=lambda r: -r["score"])[:top]]


def gt_instances(gt, image_ids: list[int]) -> list[dict]:
    """The val annotations masks are judged on in ground-truth boxes: non-crowd, with a mask, box >= 1 px."""
    return [a for i in image_ids for a in gt.imgToAnns[i]
            if not a.get("iscrowd") and a.get("segmentation") and a["bbox"][2] >= 1 and a["bbox"][3] >= 1]


def _box_window(bbox: list[float], height: int, width: int) -> tuple[int, int, int, int]:
    x, y, w, h = bbox
    x1, y1 = max(0, int(np.floor(x))), max(0, int(np.floor(y)))
    x2, y2 = min(width, int(np.ceil(x + w))), min(height, int(np.ceil(y + h)))
    return x1, y1, max(x1 + 1, x2), max(y1 + 1, y2)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def gt_box_mask_ious(model, config, categories, gt, images_dir: Path, images: ImageCache,
                     image_ids: list[int]) -> list[list]:
    """Mask quality alone, without the detector: each val instance's ground-truth box is the RoI, its
    ground-truth class the class; the model's final mask (the fused Mask^X head at that class, or the
    class-agnostic stage-2 mask for a model without one) is pasted into the box (threshold
    config.mask_thresh) and compared with the ground-truth mask. Returns [[category_id, IoU], ...].
    (Uses MNC's internal `_stages` / `_final_masks`: the same calls its inference makes.)"""
    import torch
    import torch.nn.functional as F

    from mnc_core.preprocess import batch_images, image_to_tensor, resized_shape

    label_of = {cid: i + 1 for i, (cid, _) in enumerate(categories)}
    model.eval()
    out = []
    by_image: dict[int, list[dict]] = {}
    for ann in gt_instances(gt, image_ids):
        by_image.setdefault(ann["image_id"], []).append(ann)
    with torch.no_grad():
        for image_id in sorted(by_image):
            anns = by_image[image_id]
            image = images(images_dir / gt.imgs[image_id]["file_name"])
            H, W = image.shape[:2]
            h, w, _ = resized_shape(H, W, config.min_size, config.max_size)
            batch = batch_images([image_to_tensor(image, (h, w), config.pixel_mean, config.pixel_std, "cpu")],
                                 config.size_divisibility)
            features = model.backbone(batch)
            boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                                  for a in anns], dtype=torch.float32) * torch.tensor([w / W, h / H, w / W, h / H])
            labels = torch.tensor([label_of[a["category_id"]] for a in anns], dtype=torch.long)
            x, logits, _, _, _ = model._stages(features, [boxes])
            if model.final_mask_head is not None:
                logits = model._final_masks(x, logits, labels)
            probs = torch.sigmoid(logits.float())
            for k, ann in enumerate(anns):
                x1, y1, x2, y2 = _box_window(ann["bbox"], H, W)
                pasted = F.interpolate(probs[k][None, None], size=(y2 - y1, x2 - x1), mode="bilinear",
                                       align_corners=False)[0, 0].numpy() >= config.mask_thresh
                mask = np.zeros((H, W), bool)
                mask[y1:y2, x1:x2] = pasted
                out.append([int(ann["category_id"]), round(_iou(mask, gt.annToMask(ann).astype(bool)), 4)])
    return out


def gt_box_baselines(gt, images_dir: Path, images: ImageCache, image_ids: list[int]) -> dict:
    """The same judgement for two model-free masks in each ground-truth box: the filled box and GrabCut."""
    from partial_sup.grabcut import grabcut_mask

    out: dict = {"box": [], "grabcut": []}
    t = time.perf_counter()
    for ann in gt_instances(gt, image_ids):
        image = images(images_dir / gt.imgs[ann["image_id"]]["file_name"])
        H, W = image.shape[:2]
        truth = gt.annToMask(ann).astype(bool)
        x1, y1, x2, y2 = _box_window(ann["bbox"], H, W)
        box = np.zeros((H, W), bool)
        box[y1:y2, x1:x2] = True
        x, y, w, h = ann["bbox"]
        out["box"].append([int(ann["category_id"]), round(_iou(box, truth), 4)])
        out["grabcut"].append([int(ann["category_id"]), round(_iou(grabcut_mask(image, (x, y, x + w, y + h)), truth), 4)])
    out["grabcut_seconds"] = round(time.perf_counter() - t, 1)
    return out


def summarize_gt_box(per_instance: list[list], a_ids: list[int], b_ids: list[int]) -> dict:
    """Mean IoU over instances, share of instances with IoU >= 0.5, and the mean of per-category means, on A and B."""
    out = {}
    for name, ids in (("A", set(a_ids)), ("B", set(b_ids))):
        ious = [iou for cid, iou in per_instance if cid in ids]
        per_cat: dict[int, list[float]] = {}
        for cid, iou in per_instance:
            if cid in ids:
                per_cat.setdefault(cid, []).append(iou)
        out[f"gtbox_mIoU_{name}"] = float(np.mean(ious)) if ious else 0.0
        out[f"gtbox_IoU50_{name}"] = float(np.mean([v >= 0.5 for v in ious])) if ious else 0.0
        out[f"gtbox_catIoU_{name}"] = float(np.mean([np.mean(v) for v in per_cat.values()])) if per_cat else 0.0
        out[f"gtbox_n_{name}"] = len(ious)
    return out


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.images = ImageCache()
        self.train_gt = load_coco(args.data / "train.json")
        self.val_gt = load_coco(args.data / "val.json")
        self.all_ids = sorted(self.train_gt.getCatIds())
        assert self.all_ids == sorted(self.val_gt.getCatIds()), "train and val categories differ"
        self.eval_ids = sorted(self.val_gt.getImgIds())[:args.val_images] if args.val_images else None
        self.val_image_ids = self.eval_ids if self.eval_ids is not None else sorted(self.val_gt.getImgIds())

    def out(self, split: str, method: str, seed: int) -> Path:
        return self.args.work / f"{split}-{method}-seed{seed}.json"

    def done(self, split: str, method: str, seed: int) -> bool:
        return self.out(split, method, seed).exists() and not self.args.force

    def header(self, split: str | None, method: str, seed: int) -> dict:
        return {"split": split, "method": method, "seed": seed, "iterations": self.args.iterations,
                "image_size": self.args.image_size, "max_size": int(self.args.image_size * 5 / 3),
                "mode": "heads (the product's preset)", "backbone_weights": str(self.args.weights),
                "train_images": None, "val_images": len(self.eval_ids) if self.eval_ids else len(self.val_gt.getImgIds()),
                "score_threshold": self.args.score_threshold, "started": stamp(), "load_start": loadavg(),
                "torch_threads": self.args.threads, "num_stages": self.args.stages, "roi_batch_size": self.args.rois,
                "fcn_channels": self.args.fcn_channels}

    def train_and_predict(self, name: str, split: str | None, method: str, seed: int, box_only: set[int]) -> dict:
        args = self.args
        dataset = CocoFileDataset(self.train_gt, args.data / "images", box_only, self.images, args.train_images)
        record = self.header(split, method, seed)
        record["train_images"] = len(dataset)
        print(f"[{stamp()}] {name}: training {args.iterations} it @ {args.image_size} px on {len(dataset)} images, "
              f"{len(box_only)} box-only categories, load {loadavg()}", flush=True)
        t0 = time.perf_counter()
        model, config, summary = train_run(name, dataset, "agnostic" if method == "agnostic" else "transfer", seed, args)
        record["train_seconds"] = round(time.perf_counter() - t0, 1)
        record["seconds_per_iteration"] = round(record["train_seconds"] / max(1, args.iterations), 3)
        record["train_summary"] = summary
        record.update(num_stages=config.num_stages, roi_batch_size=config.roi_batch_size,
                      fcn_channels=model.final_mask_head.config.fcn_channels)
        record["load_after_train"] = loadavg()
        results, timing = predict_val(model, config, dataset.categories, self.val_gt, args.data / "images", self.images,
                                      args.val_images, args.score_threshold)
        record.update(timing)
        record["results"] = results
        if args.gt_box_eval:
            t = time.perf_counter()
            record["gt_box_ious"] = gt_box_mask_ious(model, config, dataset.categories, self.val_gt, args.data / "images",
                                                     self.images, self.val_image_ids)
            record["gt_box_seconds"] = round(time.perf_counter() - t, 1)
        return record

    def finish(self, record: dict, t0: float) -> dict:
        record["wall_seconds"] = round(time.perf_counter() - t0, 1)
        record["finished"] = stamp()
        record["load_end"] = loadavg()
        return record

    def run_trained(self, split: str, method: str, seed: int) -> None:
        a_ids, b_ids = split_sets(split, self.all_ids)
        name = f"{split}-{method}-seed{seed}"
        t0 = time.perf_counter()
        record = self.train_and_predict(name, split, method, seed, set(b_ids))
        results = record.pop("results")
        t = time.perf_counter()
        record["metrics"] = metrics_for(self.val_gt, results, a_ids, b_ids, self.eval_ids)
        if "gt_box_ious" in record:
            record["metrics"].update(summarize_gt_box(record["gt_box_ious"], a_ids, b_ids))
        record["eval_seconds"] = round(time.perf_counter() - t, 1)
        if method == "agnostic":  # the grabcut baseline reuses these detections (boxes, scores, classes)
            dets = [{k: r[k] for k in ("image_id", "category_id", "score", "bbox")} for r in results]
            write_json(self.args.work / f"{name}.detections.json", dets)
            record["metrics_top%d" % self.args.grabcut_top] = brief(
                metrics_for(self.val_gt, capped(results, self.args.grabcut_top), a_ids, b_ids, self.eval_ids))
        write_json(self.out(split, method, seed), self.finish(record, t0))
        self.report(record)

    def run_oracle(self, splits: list[str], seed: int) -> None:
        todo = [s for s in splits if not self.done(s, "oracle", seed)]
        if not todo:
            return
        name = f"oracle-seed{seed}"
        t0 = time.perf_counter()
        record = self.train_and_predict(name, None, "oracle", seed, set())
        results = record.pop("results")
        for split in todo:  # the same model for both splits (its training data do not depend on the split)
            a_ids, b_ids = split_sets(split, self.all_ids)
            r = dict(record, split=split, shared_model=f"one oracle model per seed, evaluated for {todo}")
            t = time.perf_counter()
            r["metrics"] = metrics_for(self.val_gt, results, a_ids, b_ids, self.eval_ids)
            if "gt_box_ious" in r:
                r["metrics"].update(summarize_gt_box(r["gt_box_ious"], a_ids, b_ids))
            r["eval_seconds"] = round(time.perf_counter() - t, 1)
            write_json(self.out(split, "oracle", seed), self.finish(r, t0))
            self.report(r)

    def run_grabcut(self, split: str, seed: int) -> None:
        dets_path = self.args.work / f"{split}-agnostic-seed{seed}.detections.json"
        if not dets_path.exists() or not self.out(split, "agnostic", seed).exists():
            self.run_trained(split, "agnostic", seed)
        a_ids, b_ids = split_sets(split, self.all_ids)
        t0 = time.perf_counter()
        record = self.header(split, "grabcut", seed)
        record["detections_from"] = dets_path.name
        record["top_per_image"] = self.args.grabcut_top
        print(f"[{stamp()}] {split}-grabcut-seed{seed}: GrabCut in the top {self.args.grabcut_top} boxes per image of "
              f"{dets_path.name}, load {loadavg()}", flush=True)
        dets = json.loads(dets_path.read_text())
        results, timing = grabcut_results(dets, self.val_gt, self.args.data / "images", self.images,
                                          self.args.grabcut_top)
        record.update(timing)
        t = time.perf_counter()
        record["metrics"] = metrics_for(self.val_gt, results, a_ids, b_ids, self.eval_ids)
        record["eval_seconds"] = round(time.perf_counter() - t, 1)
        if self.args.gt_box_eval:
            base = self.gt_box_baselines()
            record["metrics"].update(summarize_gt_box(base["grabcut"], a_ids, b_ids))
            record["gt_box_from"] = "gt_box_baselines.json (GrabCut in the ground-truth boxes; no model involved)"
        write_json(self.out(split, "grabcut", seed), self.finish(record, t0))
        self.report(record)

    def gt_box_baselines(self) -> dict:
        path = self.args.work / "gt_box_baselines.json"
        if path.exists():
            base = json.loads(path.read_text())
            if base.get("val_images") == len(self.val_image_ids):
                return base
        print(f"[{stamp()}] GrabCut and filled boxes in the {len(gt_instances(self.val_gt, self.val_image_ids))} "
              f"ground-truth boxes of val (once per work folder), load {loadavg()}", flush=True)
        base = gt_box_baselines(self.val_gt, self.args.data / "images", self.images, self.val_image_ids)
        base["val_images"] = len(self.val_image_ids)
        base["load_end"] = loadavg()
        write_json(path, base)
        return base

    def report(self, record: dict) -> None:
        m = record["metrics"]
        print(f"[{stamp()}] {record['split']}-{record['method']}-seed{record['seed']}: mask AP A {100 * m['mask_AP_A']:.1f} "
              f"B {100 * m['mask_AP_B']:.1f} (AP50 B {100 * m['mask_AP50_B']:.1f}), box AP {100 * m['box_AP_all']:.1f}, "
              f"{m['detections']} detections"
              + (f"; in GT boxes mean IoU A {100 * m['gtbox_mIoU_A']:.1f} B {100 * m['gtbox_mIoU_B']:.1f}"
                 if "gtbox_mIoU_B" in m else "")
              + f"; wall {record['wall_seconds']:.0f} s, load {loadavg()}", flush=True)


def brief(m: dict) -> dict:
    return {k: v for k, v in m.items() if not k.startswith("per_category")}


# ---------------------------------------------------------------------------------------------------------
# the table

COLUMNS = (("mask_AP_A", "mask AP on A"), ("mask_AP50_A", "mask AP50 on A"), ("mask_AP_B", "**mask AP on B**"),
           ("mask_AP50_B", "mask AP50 on B"), ("box_AP_all", "box AP (all)"))
ORDER = ("agnostic", "grabcut", "transfer", "oracle")
AP_DIGITS = 2  # AP x100 with two decimals: a weak detector's APs are fractions of a point
LABELS = {"agnostic": "class-agnostic", "grabcut": "detector + GrabCut", "transfer": "Mask^X transfer+MLP",
          "oracle": "oracle (all masks)"}


def mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: list[float], digits: int = 1) -> str:
    """mean ± sample std of values x100 (AP or IoU points)."""
    if not values:
        return "-"
    mean, std = mean_std([100 * v for v in values])
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def table(work: Path, splits: list[str], methods: list[str], seeds: list[int]) -> tuple[str, dict]:
    summary: dict = {"generated": stamp(), "splits": {}}
    lines = ["| split | method | seeds | " + " | ".join(label for _, label in COLUMNS)
             + " | paper Table 3.5: mask AP on B | paper Table 3.3, +MLP: mask AP on B |",
             "|---|---|---:|" + "---:|" * len(COLUMNS) + "---:|---:|"]
    for split in splits:
        summary["splits"][split] = {}
        per_seed: dict[str, dict[int, dict]] = {}
        for method in [m for m in ORDER if m in methods]:
            runs = {}
            for seed in seeds:
                path = work / f"{split}-{method}-seed{seed}.json"
                if path.exists():
                    runs[seed] = json.loads(path.read_text())
            per_seed[method] = runs
            if not runs:
                continue
            entry = {"seeds": sorted(runs)}
            cells = []
            for key, _ in COLUMNS:
                vals = [runs[s]["metrics"][key] for s in sorted(runs)]
                mean, std = mean_std(vals)
                entry[key] = {"mean": mean, "std": std, "per_seed": vals}
                cells.append(fmt(vals, AP_DIGITS))
            entry["wall_seconds"] = [runs[s]["wall_seconds"] for s in sorted(runs)]
            entry["train_seconds"] = [runs[s].get("train_seconds") for s in sorted(runs)]
            entry["iterations"] = sorted({runs[s]["iterations"] for s in runs})
            entry["image_size"] = sorted({runs[s]["image_size"] for s in runs})
            summary["splits"][split][method] = entry
            mlp = PAPER_MLP_AP_B[split].get(method)
            lines.append(f"| {split} | {LABELS[method]} | {len(runs)} | " + " | ".join(cells)
                         + f" | {PAPER_AP_B[split][method]:.1f} | {'-' if mlp is None else f'{mlp:.1f}'} |")
        # paired difference transfer - agnostic on B (same split and seed)
        common = sorted(set(per_seed.get("transfer", {})) & set(per_seed.get("agnostic", {})))
        if common:
            diffs = [per_seed["transfer"][s]["metrics"]["mask_AP_B"] - per_seed["agnostic"][s]["metrics"]["mask_AP_B"]
                     for s in common]
            diffs50 = [per_seed["transfer"][s]["metrics"]["mask_AP50_B"] - per_seed["agnostic"][s]["metrics"]["mask_AP50_B"]
                       for s in common]
            iou = [per_seed["transfer"][s]["metrics"].get("gtbox_mIoU_B") for s in common]
            iou_agnostic = [per_seed["agnostic"][s]["metrics"].get("gtbox_mIoU_B") for s in common]
            diffs_iou = [t - a for t, a in zip(iou, iou_agnostic) if t is not None and a is not None]
            summary["splits"][split]["transfer_minus_agnostic_B"] = {
                "seeds": common, "AP": diffs, "AP50": diffs50, "gtbox_mIoU": diffs_iou,
                "AP_mean": mean_std(diffs)[0], "AP_std": mean_std(diffs)[1],
                # the seed-to-seed spread each method shows on its own (sample std over seeds)
                "spread_AP": {m: mean_std([per_seed[m][s]["metrics"]["mask_AP_B"] for s in common])[1]
                              for m in ("transfer", "agnostic")},
                "spread_gtbox_mIoU": {m: mean_std([v for v in vals if v is not None])[1]
                                      for m, vals in (("transfer", iou), ("agnostic", iou_agnostic))}
                if diffs_iou else {}}
    return "\n".join(lines), summary


GT_BOX_COLUMNS = (("gtbox_mIoU_A", "mean IoU on A"), ("gtbox_mIoU_B", "**mean IoU on B**"),
                  ("gtbox_IoU50_B", "B instances with IoU >= 0.5 (%)"), ("gtbox_catIoU_B", "B: mean of per-class mean IoU"))


def gt_box_table(work: Path, splits: list[str], methods: list[str], seeds: list[int], summary: dict) -> str:
    """Masks in the ground-truth boxes at the ground-truth class: mask quality without the detector."""
    base_path = work / "gt_box_baselines.json"
    base = json.loads(base_path.read_text()) if base_path.exists() else None
    lines = ["| split | masks in the ground-truth boxes | seeds | " + " | ".join(l for _, l in GT_BOX_COLUMNS) + " |",
             "|---|---|---:|" + "---:|" * len(GT_BOX_COLUMNS)]
    any_row = False
    for split in splits:
        a_ids, b_ids = split_sets(split, list(range(1, 91)))  # membership is all that matters here
        if base is not None:
            m = summarize_gt_box(base["box"], a_ids, b_ids)
            lines.append(f"| {split} | filled box (no model) | - | " + " | ".join(f"{100 * m[k]:.1f}" for k, _ in GT_BOX_COLUMNS) + " |")
            any_row = True
        for method in [m for m in ORDER if m in methods]:
            runs = []
            for seed in seeds:
                path = work / f"{split}-{method}-seed{seed}.json"
                if path.exists():
                    r = json.loads(path.read_text())
                    if "gtbox_mIoU_B" in r["metrics"]:
                        runs.append(r)
            if not runs:
                continue
            any_row = True
            label = "GrabCut (no model; same for every seed)" if method == "grabcut" else LABELS[method]
            cells = [fmt([r["metrics"][k] for r in runs]) for k, _ in GT_BOX_COLUMNS]
            summary["splits"].setdefault(split, {}).setdefault(method, {})["gt_box"] = {
                k: [r["metrics"][k] for r in runs] for k, _ in GT_BOX_COLUMNS}
            lines.append(f"| {split} | {label} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if any_row else ""


def diff_lines(summary: dict) -> list[str]:
    out = []
    for split, entry in summary["splits"].items():
        d = entry.get("transfer_minus_agnostic_B")
        if d:
            spread = d["spread_AP"]
            out.append(f"{split}: transfer - agnostic, mask AP on B per seed {d['seeds']}: "
                       + ", ".join(f"{100 * v:+.2f}" for v in d["AP"])
                       + f" (mean {100 * d['AP_mean']:+.2f}; seed-to-seed std transfer {100 * spread['transfer']:.2f}, "
                       f"agnostic {100 * spread['agnostic']:.2f}); AP50: " + ", ".join(f"{100 * v:+.2f}" for v in d["AP50"]))
            if d["gtbox_mIoU"]:
                spread = d["spread_gtbox_mIoU"]
                out.append(f"{split}: transfer - agnostic, mean mask IoU on B in the ground-truth boxes per seed: "
                           + ", ".join(f"{100 * v:+.1f}" for v in d["gtbox_mIoU"])
                           + f" (seed-to-seed std transfer {100 * spread['transfer']:.1f}, agnostic "
                           f"{100 * spread['agnostic']:.1f})")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--iterations", type=int, default=None, help="default: the heads preset's (CPU)")
    p.add_argument("--image-size", type=int, default=None,
                   help="short side in training and evaluation (long side cap 5/3 of it; default: the heads preset's)")
    p.add_argument("--work", type=Path, default=WORK)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--weights", type=Path, default=WEIGHTS)
    p.add_argument("--grabcut-top", type=int, default=10, help="GrabCut only the top N detections per image")
    p.add_argument("--train-images", type=int, default=None, help="use only the first N training images (debug)")
    p.add_argument("--val-images", type=int, default=None, help="evaluate on the first N val images only (debug)")
    p.add_argument("--score-threshold", type=float, default=0.05, help="Predictor score threshold (0 in smoke runs: "
                   "an untrained model scores below 0.05)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (1 is ~3x faster while other jobs load the "
                   "2 cores: see benchmarks/README.md)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--no-gt-box-eval", dest="gt_box_eval", action="store_false",
                   help="skip the masks-in-ground-truth-boxes evaluation (mask quality without the detector)")
    p.add_argument("--stages", type=int, default=None, choices=[3, 5], help="cascade stages in training "
                   "(default: the heads preset's; the same for every method)")
    p.add_argument("--rois", type=int, default=None, help="sampled RoIs per image (default: the heads preset's)")
    p.add_argument("--fcn-channels", type=int, default=None, help="channels of the Mask^X FCN = length of each "
                   "class's transferred mask weights (default: MaskXConfig's)")
    p.add_argument("--force", action="store_true", help="re-run finished runs")
    p.add_argument("--table-only", action="store_true", help="only print the table of finished runs")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    from services.presets import PRESETS

    args.iterations = args.iterations or PRESETS["heads"].iterations
    args.image_size = args.image_size or PRESETS["heads"].image_size

    import torch

    torch.set_num_threads(args.threads)
    if not args.table_only:
        print(f"[{stamp()}] bench_partial_sup: splits {args.splits} methods {args.methods} seeds {args.seeds}, "
              f"{args.iterations} it @ {args.image_size} px, work {args.work}, load {loadavg()}", flush=True)
        bench = Bench(args)
        t_all = time.perf_counter()
        for seed in args.seeds:
            for split in args.splits:
                for method in ("agnostic", "grabcut", "transfer"):
                    if method not in args.methods or bench.done(split, method, seed):
                        continue
                    if method == "grabcut":
                        bench.run_grabcut(split, seed)
                    else:
                        bench.run_trained(split, method, seed)
            if "oracle" in args.methods:
                bench.run_oracle(args.splits, seed)
        print(f"[{stamp()}] all runs done in {time.perf_counter() - t_all:.0f} s", flush=True)
    text, summary = table(args.work, args.splits, args.methods, args.seeds)
    summary["paper_mask_AP_B"] = PAPER_AP_B
    write_json(args.work / "results.json", summary)
    print()
    print(text)
    print()
    for line in diff_lines(summary):
        print(line)
    gt_text = gt_box_table(args.work, args.splits, args.methods, args.seeds, summary)
    if gt_text:
        write_json(args.work / "results.json", summary)
        print()
        print("Masks in the ground-truth boxes at the ground-truth class (mask quality without the detector):")
        print(gt_text)
    print(f"(mean ± sample std over seeds, AP x100; results in {args.work / 'results.json'})")


if __name__ == "__main__":
    main()
