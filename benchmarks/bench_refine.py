#!/usr/bin/env python
"""Refining a mask with clicks (issue 15, part 4): GrabCut with the clicks as hard labels (what
`Editor.refine_with_clicks` does) vs re-running the model on the box the clicks refine.

For each true instance (COCO val photos of --classes, area >= --min-area; or synthetic shapes with
--synthetic N) the start is the mask a person gets for its tight box: GrabCut's (no model) or, with
--checkpoint, the model's mask for the box. Then up to --clicks clicks, each where the mask is most wrong
(bench_labelling.next_click: positive on a missed region, negative on background taken), and after each:
  grabcut: partial_sup.grabcut.refine_mask(image, current mask, positives, negatives) (the product's method:
           Editor.refine_with_clicks refines the stored mask with the clicks sent);
  model-box: the box grown to take in every positive click (plus 3 px) and, for each negative click inside it,
             the box edge nearest the click moved onto it; the model's mask for that box and class.
Reported: mean IoU with the truth after 0..N clicks, and the mean time of one refinement.

    python benchmarks/bench_refine.py --synthetic 40                           # shapes, GrabCut only
    python benchmarks/bench_refine.py --checkpoint CKPT --instances 60         # COCO val, both methods
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench_labelling import iou, next_click
from common import DEFAULT_DATA, loadavg_text, read_rgb, stamp, write_json


def coco_instances(data: Path, classes: list[str], min_area: float, limit: int, skip: int = 0):
    import contextlib
    import io

    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(data / "val.json"))
    cats = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds()) if c["name"] in classes}
    out, skipped = [], 0
    for ann in sorted(coco.dataset["annotations"], key=lambda a: a["id"]):
        if ann["category_id"] in cats and not ann.get("iscrowd") and ann["area"] >= min_area:
            if skipped < skip:  # instances held out: those the settings were chosen on come first
                skipped += 1
                continue
            info = coco.imgs[ann["image_id"]]
            x, y, w, h = ann["bbox"]
            out.append({"file": data / "images" / info["file_name"], "category_id": ann["category_id"],
                        "truth": coco.annToMask(ann).astype(bool), "box": (x, y, x + w, y + h)})
            if len(out) >= limit:
                break
    return out


def synthetic_instances(n: int, seed: int = 0):
    import cv2

    rng = np.random.default_rng(seed)
    out = []
    for index in range(n):
        h, w = 160, 200
        image = rng.normal(rng.integers(60, 120), 25, (h, w, 3)).clip(0, 255).astype(np.uint8)
        truth = np.zeros((h, w), np.uint8)
        center = (int(rng.integers(70, 130)), int(rng.integers(60, 100)))
        cv2.ellipse(truth, center, (int(rng.integers(25, 55)), int(rng.integers(20, 45))), int(rng.integers(0, 180)),
                    0, 360, 1, -1)
        cv2.rectangle(truth, (center[0], center[1]), (center[0] + int(rng.integers(10, 40)), center[1] + 12), 1, -1)
        truth = truth.astype(bool)
        color = rng.normal(rng.integers(110, 200), 30, (int(truth.sum()), 3))
        image[truth] = color.clip(0, 255).astype(np.uint8)
        ys, xs = np.nonzero(truth)
        out.append({"image": image, "category_id": None, "truth": truth,
                    "box": (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)})
    return out


def model_box(box, positive, negative, shape):
    x1, y1, x2, y2 = (float(v) for v in box)
    for x, y in positive:
        x1, y1, x2, y2 = min(x1, x - 3), min(y1, y - 3), max(x2, x + 4), max(y2, y + 4)
    for x, y in negative:
        if x1 < x < x2 and y1 < y < y2:
            edges = {"x1": x - x1, "x2": x2 - x, "y1": y - y1, "y2": y2 - y}
            nearest = min(edges, key=edges.get)
            if nearest == "x1":
                x1 = x + 1
            elif nearest == "x2":
                x2 = x
            elif nearest == "y1":
                y1 = y + 1
            else:
                y2 = y
    h, w = shape
    return max(0, x1), max(0, y1), min(w, max(x2, x1 + 2)), min(h, max(y2, y1 + 2))


def main(argv=None) -> int:
    from partial_sup.grabcut import grabcut_mask, refine_mask

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--classes", default="person,car")
    parser.add_argument("--min-area", type=float, default=32 * 32)
    parser.add_argument("--instances", type=int, default=60)
    parser.add_argument("--skip", type=int, default=0,
                        help="leave out the first N qualifying val instances (e.g. the 60 the click radius was chosen on)")
    parser.add_argument("--synthetic", type=int, default=0, help="synthetic shapes instead of COCO val")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a model: its box masks start, and model-box")
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--radius", type=int, default=None, help="click disk radius in px (default: the product's)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/refine.json"))
    args = parser.parse_args(argv)
    predictor = None
    if args.checkpoint is not None:
        from partial_sup.maskx import predictor_from_file

        predictor = predictor_from_file(args.checkpoint, device="cpu")
    items = (synthetic_instances(args.synthetic) if args.synthetic
             else coco_instances(args.data, args.classes.split(","), args.min_area, args.instances, args.skip))
    methods = ["grabcut"] + (["model-box"] if predictor is not None else [])
    starts = ["grabcut box"] + (["model box"] if predictor is not None else [])
    curves = {(s, m): [[] for _ in range(args.clicks + 1)] for s in starts for m in methods}
    seconds = {m: [] for m in methods}
    cache = {}
    for item in items:
        image = item.get("image")
        if image is None:
            key = str(item["file"])
            image = cache.setdefault(key, read_rgb(item["file"]))
        truth = item["truth"]
        for start in starts:
            if start == "grabcut box":
                begin = grabcut_mask(image, item["box"])
            else:
                begin = predictor.masks_for_boxes(image, [item["box"]], [item["category_id"]])[0]
            for method in methods:
                mask, positive, negative = begin, [], []
                curves[(start, method)][0].append(iou(mask, truth))
                for k in range(1, args.clicks + 1):
                    click = next_click(mask, truth)
                    if click is not None:
                        (positive if click[1] else negative).append(click[0])
                        t = time.perf_counter()
                        if method == "grabcut":
                            mask = refine_mask(image, mask, positive, negative, radius=args.radius)
                        else:
                            box = model_box(item["box"], positive, negative, truth.shape)
                            mask = predictor.masks_for_boxes(image, [box], [item["category_id"]])[0]
                        seconds[method].append(time.perf_counter() - t)
                    curves[(start, method)][k].append(iou(mask, truth))
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "when": stamp(), "load": loadavg_text(),
              "radius": args.radius, "skipped": args.skip,
              "instances": len(items), "source": f"synthetic {args.synthetic}" if args.synthetic else "coco val",
              "curves": {f"{s} -> {m}": [round(float(np.mean(v)), 3) for v in c] for (s, m), c in curves.items()},
              "seconds_per_refinement": {m: round(float(np.mean(v)), 3) if v else None for m, v in seconds.items()}}
    write_json(args.out, result)
    print(json.dumps(result, indent=1))
    header = "| start -> refinement | " + " | ".join(f"{k} clicks" for k in range(args.clicks + 1)) + " |"
    print(header)
    print("|" + "---|" * (args.clicks + 2))
    for name, values in result["curves"].items():
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
