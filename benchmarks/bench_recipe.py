#!/usr/bin/env python
"""The training recipe study (issue 11): MNC and its peer on coco_subset, chosen on held-out photos.

    python benchmarks/bench_recipe.py mnc NAME [--project person|all] [--split select|val]
        [--mode heads|full] [--iterations N] [--lr LR] [--train-images N] [--seed S] [--set FIELD=VALUE ...]
    python benchmarks/bench_recipe.py peer NAME [--project ...] [--split ...] [--iterations N] [--lr LR]
        [--optimizer sgd|adamw] [--frozen-blocks K] [--scale-jitter F ...]
    python benchmarks/bench_recipe.py reeval NAME [--set FIELD=VALUE ...] [--score-threshold T]
    python benchmarks/bench_recipe.py diagnose NAME --checkpoint RUN [--split ...] [--set FIELD=VALUE ...]
    python benchmarks/bench_recipe.py latency NAME --checkpoint MNC_RUN --peer-checkpoint PEER_RUN [--images N]
    python benchmarks/bench_recipe.py table [--split select|val]

Projects: `person` (the coco_subset photos that show people, person only) and `all` (every photo, all
classes). Splits, so that no figure is measured on photos that trained the model or chose its settings:
  select  train on train.json minus a held-out part, evaluate on that part (every 3rd photo of the
          project's train.json photos by id for `person`: 25 photos; every 4th for `all`: 40). All the
          choices of the recipe are made here.
  val     train on all of train.json, evaluate on val.json (39 person photos / 79 photos), which chose
          nothing: the figures reported as the model's quality.
`--train-images N` keeps the first N training photos (by id; learning curves). MNC runs go through
`mnc_core.train_model` with `services.training.training_config(mode, ...)`, i.e. the product's mode
presets, changed by `--set`; the peer is torchvision's Mask R-CNN on the same backbone
(benchmarks/maskrcnn_peer.py). Evaluation: COCOeval mask and box AP of the project's classes
(services.evaluation.coco_metrics), the model's own score threshold unless --score-threshold.
Each run appends a line to WORK/results.jsonl (with its command, timing and the load average) and saves
its checkpoint in WORK/ckpt/NAME.pt (MNC) or NAME.peer.pt (peer); `latency` times two of them; `table` prints the runs of a split.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from bench_partial_sup import (CocoFileDataset, ImageCache, _box_window, _iou, restrict_gt,
                               split_sets)
from common import (DEFAULT_DATA, DEFAULT_WEIGHTS, REPO, SHARED, index_quietly, load_coco, loadavg,
                    require, stamp)


WORK = REPO / "benchmarks" / "out" / "recipe"
PERSON = 1


ONE_FILE_PROJECTS = {"balloon": "balloon", "nuclei": "nuclei_dsb2018"}  # projects of one annotations.json
MORE_PHOTOS = {"person": "coco_person", "all": "coco128"}  # --more N adds the first N photos of these to training


def project_coco(path: Path, project: str):
    coco = load_coco(path)
    if project == "person":
        coco.dataset["categories"] = [c for c in coco.dataset["categories"] if c["id"] == PERSON]
        coco.dataset["annotations"] = [a for a in coco.dataset["annotations"] if a["category_id"] == PERSON]
        index_quietly(coco)
    return coco


def held_out(coco, project: str, keep_held_out: bool):
    """The selection split: every 3rd (person) / 4th (the others) photo with a non-crowd annotation, by id."""
    ids = sorted({a["image_id"] for a in coco.dataset["annotations"] if not a["iscrowd"]})
    every = 3 if project == "person" else 4
    chosen = set(ids[every - 1::every])
    keep = chosen if keep_held_out else set(ids) - chosen
    return restrict_gt(coco, sorted(keep))


def one_file_split(coco, project: str, val: bool):
    """balloon: the images' own `split` field; nuclei: every 5th image by id is val (a fifth held out)."""
    if project == "balloon":
        ids = [im["id"] for im in coco.dataset["images"] if (im.get("split") == "val") == val]
    else:
        all_ids = sorted(im["id"] for im in coco.dataset["images"])
        chosen = set(all_ids[4::5])
        ids = [i for i in all_ids if (i in chosen) == val]
    return restrict_gt(coco, sorted(ids))


class JoinedDataset:
    """Several InstanceDatasets of the same categories as one (the project's photos, then more photos)."""

    def __init__(self, parts: list) -> None:
        self.parts = [p for p in parts if len(p)]
        self.categories = parts[0].categories

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __getitem__(self, index: int):
        for part in self.parts:
            if index < len(part):
                return part[index]
            index -= len(part)
        raise IndexError(index)


def _most_instances(coco, image_ids: list[int]) -> int:
    """The most non-crowd annotations one of these photos has."""
    return max((sum(not a["iscrowd"] for a in coco.imgToAnns[i]) for i in image_ids), default=0)


def box_only_ids(args, coco) -> set[int]:
    """--box-only voc2nonvoc: the mixed project of the partial-supervision benchmark (the 20 VOC classes keep their
    masks, the others are box-only in training); nonvoc2voc the reverse; none: every class has masks."""
    if not getattr(args, "box_only", None):
        return set()
    _, box_only = split_sets(args.box_only, [c["id"] for c in coco.dataset["categories"]])
    return set(box_only)


def datasets(args, images: ImageCache):
    """(training dataset, evaluation ground truth, evaluated image ids, evaluation images folder)."""
    if args.project in ONE_FILE_PROJECTS:
        folder = SHARED / "data" / ONE_FILE_PROJECTS[args.project]
        everything = load_coco(folder / "annotations.json")
        train = one_file_split(everything, args.project, val=False)
        truth = held_out(train, args.project, True) if args.split == "select" else one_file_split(everything, args.project, True)
        if args.split == "select":
            train = held_out(train, args.project, False)
        images_dir = folder / "images"
    else:
        train = project_coco(args.data / "train.json", args.project)
        if args.split == "select":
            truth = held_out(train, args.project, True)
            train = held_out(train, args.project, False)
        else:
            truth = project_coco(args.data / "val.json", args.project)
        images_dir = args.data / "images"
    dataset = CocoFileDataset(train, images_dir, box_only_ids(args, train), images, args.train_images)
    most_instances = _most_instances(train, dataset.image_ids)
    if args.more:
        folder = SHARED / "data" / MORE_PHOTOS[args.project]
        more = load_coco(folder / "annotations.json")
        more.dataset["categories"] = train.dataset["categories"]  # the project's classes (coco128's are a subset)
        index_quietly(more)
        extra = CocoFileDataset(more, folder / "images", box_only_ids(args, train), images, args.more)
        most_instances = max(most_instances, _most_instances(more, extra.image_ids))
        dataset = JoinedDataset([dataset, extra])
    image_ids = [i for i in sorted(truth.getImgIds()) if truth.imgToAnns[i]]
    dataset.most_instances = most_instances  # what the product sizes a model's outputs by (MNCConfig.for_instances)
    return dataset, restrict_gt(truth, image_ids), image_ids, images_dir


def parse_sets(items: list[str]) -> dict:
    out = {}
    for item in items or []:
        key, _, value = item.partition("=")
        out[key] = json.loads(value)
        if isinstance(out[key], list):
            out[key] = tuple(out[key])
    return out


def box_only_matches(truth, image_id: int, image_shape, instances, box_only: set[int]) -> list[dict]:
    """Per true non-crowd object of a box-only class: the detection of its class with the highest box IoU; if that
    IoU is >= 0.5 the object counts as found, and the detection's mask is judged against the true mask beside the
    detection's own box filled (what an answer without a mask model would give)."""
    import numpy as np
    import torch
    from torchvision.ops import box_iou

    height, width = image_shape[:2]
    rows = []
    for ann in truth.imgToAnns[image_id]:
        if ann["category_id"] not in box_only or ann.get("iscrowd") or ann["bbox"][2] < 1 or ann["bbox"][3] < 1:
            continue
        same_class = [inst for inst in instances if inst.category_id == ann["category_id"]]
        x, y, w, h = ann["bbox"]
        best_iou, best = 0.0, None
        if same_class:
            ious = box_iou(torch.tensor([[x, y, x + w, y + h]], dtype=torch.float32),
                           torch.tensor(np.stack([inst.box for inst in same_class]), dtype=torch.float32))[0]
            best_iou, index = float(ious.max()), int(ious.argmax())
            best = same_class[index]
        row = {"found": best_iou >= 0.5}
        if row["found"]:
            true_mask = truth.annToMask(ann).astype(bool)
            filled = np.zeros((height, width), bool)
            x1, y1, x2, y2 = _box_window([best.box[0], best.box[1], best.box[2] - best.box[0], best.box[3] - best.box[1]],
                                         height, width)
            filled[y1:y2, x1:x2] = True
            row.update(mask_IoU=_iou(best.mask, true_mask), own_box_filled_IoU=_iou(filled, true_mask))
        rows.append(row)
    return rows


def summarize_box_only(rows: list[dict], truth, results: list[dict], box_only: set[int]) -> dict:
    from services.evaluation import coco_metrics

    found = [r for r in rows if r["found"]]
    b_truth = restrict_categories(truth, box_only)
    b_metrics = coco_metrics(b_truth, [r for r in results if r["category_id"] in box_only])
    return {"box_only_objects": len(rows), "box_only_found": len(found),
            "box_only_found_share": round(len(found) / max(1, len(rows)), 4),
            "box_only_mask_IoU": round(sum(r["mask_IoU"] for r in found) / max(1, len(found)), 4),
            "box_only_own_box_filled_IoU": round(sum(r["own_box_filled_IoU"] for r in found) / max(1, len(found)), 4),
            "box_only_mask_AP": round(b_metrics["segm"]["AP"], 4), "box_only_mask_AP50": round(b_metrics["segm"]["AP50"], 4),
            "box_only_box_AP50": round(b_metrics["bbox"]["AP50"], 4)}


def restrict_categories(coco, category_ids: set[int]):
    """The same photos with only these classes' annotations (COCOeval of one class set)."""
    from pycocotools.coco import COCO

    part = COCO()
    part.dataset = {**coco.dataset, "categories": [c for c in coco.dataset["categories"] if c["id"] in category_ids],
                    "annotations": [a for a in coco.dataset["annotations"] if a["category_id"] in category_ids]}
    index_quietly(part)
    return part


def evaluate(predict, truth, image_ids, images_dir: Path, images: ImageCache, box_only: set[int] = frozenset()) -> dict:
    from services.evaluation import coco_metrics
    from services.models import instance_to_result

    results, rows, start = [], [], time.perf_counter()
    for image_id in image_ids:
        image = images(images_dir / truth.imgs[image_id]["file_name"])
        instances = predict(image)
        results += [instance_to_result(inst, image_id) for inst in instances]
        if box_only:
            rows += box_only_matches(truth, image_id, image.shape, instances, box_only)
    seconds = time.perf_counter() - start
    metrics = coco_metrics(truth, results)
    return {"mask_AP": round(metrics["segm"]["AP"], 4), "mask_AP50": round(metrics["segm"]["AP50"], 4),
            "box_AP": round(metrics["bbox"]["AP"], 4), "box_AP50": round(metrics["bbox"]["AP50"], 4),
            "mask_AP_small": round(metrics["segm"]["APs"], 4), "max_detections": metrics["max_detections"],
            "detections": len(results), "eval_images": len(image_ids), "eval_seconds": round(seconds, 1),
            **(summarize_box_only(rows, truth, results, box_only) if box_only else {})}


def record(args, entry: dict) -> None:
    entry = {"name": args.name, "kind": args.kind, "project": args.project, "split": args.split,
             "command": "python benchmarks/bench_recipe.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
             "finished": stamp(seconds=False), **entry}
    args.work.mkdir(parents=True, exist_ok=True)
    with open(args.work / "results.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")
    print(json.dumps({k: v for k, v in entry.items() if k != "losses"}), flush=True)


class Progress:
    def __init__(self, name: str, every: int = 100) -> None:
        self.name, self.every, self.points = name, every, []

    def __call__(self, iteration: int, loss: float, seconds: float) -> None:
        if iteration % self.every == 0:
            self.points.append([iteration, round(seconds, 1), round(loss, 3)])
            print(f"[{self.name}] it {iteration} {seconds:.0f} s loss {loss:.3f} load {os.getloadavg()[0]:.2f}",
                  flush=True)


def run_mnc(args) -> None:
    import torch

    from mnc_core import Predictor, save_checkpoint, train_model
    from partial_sup.maskx import MaskXConfig, build_maskx_model
    from services.presets import PRESETS
    from services.training import training_config

    images = ImageCache()
    dataset, truth, image_ids, images_dir = datasets(args, images)
    preset = PRESETS[args.mode]
    config = training_config(args.mode, args.image_size or preset.image_size, batch_size=args.batch_size)
    config = config.replace(**parse_sets(args.set)).for_instances(dataset.most_instances)
    iterations = args.iterations or preset.iterations
    torch.manual_seed(args.seed)
    model = build_maskx_model(config, len(dataset.categories), MaskXConfig(method="transfer"), str(args.weights))
    progress = Progress(args.name)
    load_before = loadavg()
    model, summary = train_model(dataset, config, iterations=iterations, seed=args.seed, lr=args.lr, model=model,
                                 device="cpu", cache_frozen_features=preset.cache_frozen_features,
                                 num_workers=args.workers,
                                 on_progress=lambda p: progress(p.iteration, p.losses["total"], p.seconds))
    (args.work / "ckpt").mkdir(parents=True, exist_ok=True)
    save_checkpoint(args.work / "ckpt" / f"{args.name}.pt", model, config, dataset.categories,
                    extra={"maskx": model.final_mask_head.config.to_dict()})
    predictor = Predictor(model, config, dataset.categories, "cpu")
    metrics = evaluate(lambda im: predictor(im, score_threshold=args.score_threshold), truth, image_ids, images_dir, images,
                       box_only_ids(args, truth))
    record(args, {"mode": args.mode, "box_only": args.box_only, "iterations": summary["iterations"], "train_images": len(dataset),
                  "train_seconds": round(summary["seconds"], 1), "seconds_per_iteration": round(summary["seconds"] / max(1, summary["iterations"]), 3),
                  "threads": args.threads, "load_before": load_before,
                  "load_after": loadavg(), "lr": summary["lr"],
                  "config": {k: v for k, v in config.to_dict().items() if k in parse_sets(args.set) or k in (
                      "min_size", "num_stages", "roi_batch_size", "backbone_frozen_blocks", "scale_jitter",
                      "photometric_jitter", "images_per_batch")},
                  "feature_cache": summary["feature_cache"], "curve": progress.points, **metrics})


def run_peer(args) -> None:
    import torch

    from maskrcnn_peer import peer_predict, save_peer, train_peer
    from mnc_core import MNCConfig

    images = ImageCache()
    dataset, truth, image_ids, images_dir = datasets(args, images)
    limits = MNCConfig().for_instances(dataset.most_instances)  # as many outputs as MNC may give
    torch.manual_seed(args.seed)
    progress = Progress(args.name)
    load_before = loadavg()
    lr = args.lr if args.lr is not None else (3e-4 if args.optimizer == "adamw" else 0.01)
    model, summary = train_peer(dataset, iterations=args.iterations, image_size=args.image_size or 600,
                                weights=str(args.weights), lr=lr, seed=args.seed, optimizer=args.optimizer,
                                frozen_blocks=args.frozen_blocks, scale_jitter=tuple(args.scale_jitter),
                                pyramid=not args.single_scale, channels=args.channels,
                                detections_per_img=limits.detections_per_image,
                                rpn_post_nms_top_n_test=limits.rpn_post_nms_top_n_test, on_progress=progress)
    model.roi_heads.score_thresh = args.score_threshold if args.score_threshold is not None else 0.05  # torchvision's name
    save_peer(args.work / "ckpt" / f"{args.name}.peer.pt", model, summary["build"], dataset.categories)
    metrics = evaluate(lambda im: peer_predict(model, im, dataset.categories), truth, image_ids, images_dir, images)
    record(args, {"iterations": args.iterations, "train_images": len(dataset), "train_seconds": round(summary["seconds"], 1),
                  "seconds_per_iteration": round(summary["seconds"] / max(1, args.iterations), 3),
                  "threads": args.threads, "load_before": load_before,
                  "load_after": loadavg(), "lr": lr, "optimizer": args.optimizer,
                  "frozen_blocks": args.frozen_blocks, "scale_jitter": args.scale_jitter, "curve": progress.points,
                  "pyramid": not args.single_scale, "channels": args.channels,
                  "detections_per_image": limits.detections_per_image, **metrics})


def checkpoint_predictor(args):
    """(predictor, truth, image_ids, images): the --checkpoint run's model with --set inference changes, and the
    split's evaluation photos."""
    from mnc_core import Predictor
    from partial_sup.maskx import load_model

    images = ImageCache()
    _, truth, image_ids, images_dir = datasets(args, images)
    if not args.checkpoint:
        raise SystemExit(f"{args.kind} needs --checkpoint RUN (a run whose checkpoint is in WORK/ckpt)")
    model, config, categories, _ = load_model(args.work / "ckpt" / f"{args.checkpoint}.pt")
    config = config.replace(**parse_sets(args.set))
    model.config = config
    model.rpn.pre_nms_top_n["testing"] = config.rpn_pre_nms_top_n_test  # the RPN keeps its own copies
    model.rpn.post_nms_top_n["testing"] = config.rpn_post_nms_top_n_test
    return Predictor(model, config, categories, "cpu"), truth, image_ids, images, images_dir


def run_reeval(args) -> None:
    predictor, truth, image_ids, images, images_dir = checkpoint_predictor(args)
    metrics = evaluate(lambda im: predictor(im, score_threshold=args.score_threshold), truth, image_ids, images_dir, images,
                       box_only_ids(args, truth))
    record(args, {"checkpoint": args.checkpoint, "box_only": args.box_only, "inference": parse_sets(args.set),
                  "score_threshold": args.score_threshold, **metrics})


def run_latency(args) -> None:
    """Latency of two trained models on the split's held-out photos, in one run: MNC (--checkpoint, the model users
    get: Mask^X final masks, its own image size and score threshold) and the peer (--peer-checkpoint, its own
    0.05 threshold), photo by photo, the order alternating, after --warmup photos. Times include preprocessing
    and pasting the masks (each model's whole predict)."""
    import numpy as np

    from maskrcnn_peer import load_peer, peer_predict

    if not args.peer_checkpoint:
        raise SystemExit("latency needs --checkpoint MNC_RUN and --peer-checkpoint PEER_RUN (in WORK/ckpt)")
    predictor, truth, image_ids, images, images_dir = checkpoint_predictor(args)
    peer, peer_categories = load_peer(args.work / "ckpt" / f"{args.peer_checkpoint}.peer.pt")
    models = {"mnc": lambda image: predictor(image),
              "peer": lambda image: peer_predict(peer, image, peer_categories)}
    chosen = image_ids[:args.warmup + args.images]
    seconds = {name: [] for name in models}
    counts = {name: [] for name in models}
    load_before = loadavg()
    for index, image_id in enumerate(chosen):
        image = images(images_dir / truth.imgs[image_id]["file_name"])
        order = list(models) if index % 2 == 0 else list(models)[::-1]
        for name in order:
            start = time.perf_counter()
            instances = models[name](image)
            took = time.perf_counter() - start
            if index >= args.warmup:
                seconds[name].append(took)
                counts[name].append(len(instances))
    ratios = [m / p for m, p in zip(seconds["mnc"], seconds["peer"])]
    summary = {name: {"median_ms": round(1000 * float(np.median(v)), 1), "mean_ms": round(1000 * float(np.mean(v)), 1),
                      "mean_detections": round(float(np.mean(counts[name])), 1)} for name, v in seconds.items()}
    record(args, {"checkpoint": args.checkpoint, "peer_checkpoint": args.peer_checkpoint, "images": len(ratios),
                  "warmup": args.warmup, "threads": args.threads, "load_before": load_before, "load_after": loadavg(),
                  "latency": summary,
                  "ratio_of_medians": round(summary["mnc"]["median_ms"] / summary["peer"]["median_ms"], 3),
                  "ratio_per_photo_median": round(float(np.median(ratios)), 3),
                  "ratio_per_photo_range": [round(min(ratios), 3), round(max(ratios), 3)]})


def size_class(area: float) -> str:
    return "small" if area < 32 ** 2 else "medium" if area < 96 ** 2 else "large"  # COCO's area ranges


def run_diagnose(args) -> None:
    """Where a checkpoint loses AP on the split's photos, per COCO size class of the true objects:
    RPN recall (a test proposal with box IoU >= 0.5 / 0.7), detection recall (an output above the score
    threshold with box IoU >= 0.5), the mask IoU of those matched detections, and the mask IoU the model
    gives inside the true box (mask quality without the detector) beside the filled box's."""
    import numpy as np
    import torch
    from torchvision.ops import box_iou

    from mnc_core.preprocess import batch_images

    predictor, truth, image_ids, images, images_dir = checkpoint_predictor(args)
    model, config = predictor.model, predictor.config
    rows = []  # per true object: size, rpn IoU, detection box IoU, detection mask IoU, in-box mask IoU, filled-box IoU
    for image_id in image_ids:
        anns = [a for a in truth.imgToAnns[image_id] if not a["iscrowd"] and a["bbox"][2] >= 1 and a["bbox"][3] >= 1]
        if not anns:
            continue
        image = images(images_dir / truth.imgs[image_id]["file_name"])
        H, W = image.shape[:2]
        gt_boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                                 for a in anns], dtype=torch.float32)
        gt_masks = [truth.annToMask(a).astype(bool) for a in anns]
        tensor, (h, w), _ = predictor._prepare(image)
        with torch.no_grad():
            batch = batch_images([tensor], config.size_divisibility)
            proposals, _ = model.rpn(batch, model.backbone(batch), [(h, w)])
        scale = torch.tensor([w / W, h / H, w / W, h / H])
        rpn_iou = (box_iou(gt_boxes * scale, proposals[0].float()).max(dim=1).values if proposals[0].numel()
                   else torch.zeros(len(anns)))
        detections = predictor(image, score_threshold=args.score_threshold)
        if detections:
            det_iou = box_iou(gt_boxes, torch.tensor(np.stack([d.box for d in detections]), dtype=torch.float32))
            best = det_iou.max(dim=1)
        in_box = predictor.masks_for_boxes(image, gt_boxes.numpy(), [a["category_id"] for a in anns])
        for k, ann in enumerate(anns):
            filled = np.zeros((H, W), bool)
            x1, y1, x2, y2 = _box_window(ann["bbox"], H, W)
            filled[y1:y2, x1:x2] = True
            det_box_iou = float(best.values[k]) if detections else 0.0
            det_mask_iou = _iou(detections[int(best.indices[k])].mask, gt_masks[k]) if detections and det_box_iou >= 0.5 else None
            rows.append({"size": size_class(ann["area"]), "rpn": float(rpn_iou[k]), "det": det_box_iou,
                         "det_mask": det_mask_iou, "in_box": _iou(in_box[k], gt_masks[k]), "filled": _iou(filled, gt_masks[k])})
    summary = {}
    for size in ("all", "small", "medium", "large"):
        sel = [r for r in rows if size == "all" or r["size"] == size]
        if not sel:
            continue
        matched = [r["det_mask"] for r in sel if r["det_mask"] is not None]
        summary[size] = {
            "objects": len(sel), "rpn_recall50": np.mean([r["rpn"] >= 0.5 for r in sel]),
            "rpn_recall70": np.mean([r["rpn"] >= 0.7 for r in sel]),
            "detection_recall50": np.mean([r["det"] >= 0.5 for r in sel]),
            "matched_mask_IoU": np.mean(matched) if matched else None,
            "matched_mask_IoU50_share": np.mean([v >= 0.5 for v in matched]) if matched else None,
            "in_box_mask_IoU": np.mean([r["in_box"] for r in sel]), "filled_box_IoU": np.mean([r["filled"] for r in sel])}
        summary[size] = {k: (round(float(v), 3) if isinstance(v, (float, np.floating)) else v) for k, v in summary[size].items()}
    record(args, {"checkpoint": args.checkpoint, "inference": parse_sets(args.set), "diagnosis": summary})


def table(args) -> None:
    rows = [json.loads(line) for line in open(args.work / "results.jsonl")]
    rows = [r for r in rows if r["split"] == args.split and (args.project is None or r["project"] == args.project)
            and "mask_AP50" in r]  # diagnose records have no AP
    print("| run | project | kind | photos | iterations | train s (s/it) | mask AP50 | mask AP | box AP50 | command |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        timing = f"{r['train_seconds']:.0f} ({r['seconds_per_iteration']:.2f})" if "train_seconds" in r else "-"
        print(f"| {r['name']} | {r['project']} | {r['kind']} | {r.get('train_images', '-')} | {r.get('iterations', '-')} | "
              f"{timing} | {r['mask_AP50']:.3f} | {r['mask_AP']:.3f} | {r['box_AP50']:.3f} | `{r['command']}` |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["mnc", "peer", "reeval", "diagnose", "latency", "table"])
    parser.add_argument("name", nargs="?", default="")
    parser.add_argument("--project", choices=["person", "all", *ONE_FILE_PROJECTS], default="person")
    parser.add_argument("--more", type=int, default=0, metavar="N",
                        help="add the first N photos of coco_person (person) / coco128 (all) to training")
    parser.add_argument("--split", choices=["select", "val"], default="select")
    parser.add_argument("--box-only", choices=["voc2nonvoc", "nonvoc2voc"], default=None,
                        help="project all: the classes of the other set train box-only (bench_partial_sup's mixed "
                             "project); records the share of their val objects found and their masks' IoU")
    parser.add_argument("--mode", choices=["heads", "full"], default="heads")
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--train-images", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                        help="an MNCConfig field, e.g. --set roi_batch_size=64 --set 'scale_jitter=[0.8,1.0]'")
    parser.add_argument("--score-threshold", type=float, default=None)
    parser.add_argument("--checkpoint", default=None, help="reeval: the run whose checkpoint to evaluate")
    parser.add_argument("--peer-checkpoint", default=None, help="latency: the peer run whose checkpoint to time")
    parser.add_argument("--images", type=int, default=20, help="latency: photos timed (after --warmup)")
    parser.add_argument("--warmup", type=int, default=2, help="latency: photos run first and not timed")
    parser.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    parser.add_argument("--frozen-blocks", type=int, default=4)
    parser.add_argument("--single-scale", action="store_true", help="peer: the earlier one-map peer (else the FPN peer)")
    parser.add_argument("--channels", type=int, default=128, help="peer: the pyramid's channels (MNC's preset's)")
    parser.add_argument("--scale-jitter", type=float, nargs="+", default=[1.0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--work", type=Path, default=WORK)
    args = parser.parse_args()
    if args.box_only and args.project != "all":
        parser.error("--box-only needs --project all (the 80 COCO classes)")
    if args.kind == "table":
        args.project = None if "--project" not in sys.argv else args.project
        table(args)
        return 0
    if not args.name:
        parser.error("a run NAME is required")
    require(args.data / "train.json", "the coco_subset data")
    require(args.weights, "the ImageNet MobileNetV2 weights")
    import torch

    torch.set_num_threads(args.threads)
    if args.kind == "peer" and args.iterations is None:
        parser.error("peer runs need --iterations (the budget of the MNC run they stand beside)")
    {"mnc": run_mnc, "peer": run_peer, "reeval": run_reeval, "diagnose": run_diagnose,
     "latency": run_latency}[args.kind](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
