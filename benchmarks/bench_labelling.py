#!/usr/bin/env python
"""Does the loop pay? A simulated careful labeller against COCO ground truth, through the headless API only
(issue 15, part 5).

A real `launch.py serve` subprocess is driven with `gradio_client`, as a script would drive it: the classes are
made with `launch.py import-coco` of a file that holds only the categories (no labels), the photos are
uploaded with `upload_images`, and every labelling step is an endpoint call: `list_images` (order),
`propose`, `instances`, `refine` (clicks), `save_annotations` (accept / reject), `add_boxes` (box -> the
model's or GrabCut's mask), `record_visit`, `retrain`, `model_help`. Nothing reads or writes the database
behind the server's back; the ground truth stays in this script.

The labeller, on each photo:
1. with a model: the photo's proposals (`propose`, or `instances` when `list_images` already stored them);
   those under --review-threshold (0.5, the Review tab's default) are not drawn: rejected together, one
   action; each other proposal is matched to the best unmatched true instance of its class (mask IoU).
   IoU >= 0.75: accept;
   0.5 <= IoU < 0.75: up to --max-clicks refine clicks (`refine`), then accept if it reaches 0.75; anything
   else is rejected (a refined one that did not reach 0.75 is deleted: one reject).
2. every true instance left: a box (its ground-truth box: a careful labeller draws tight boxes) through
   `add_boxes` (the model's mask for the box, else GrabCut), then up to --max-clicks clicks while its IoU is
   below 0.75. It is kept even if it never gets there (a person would paint it; that is not simulated).
A click goes where the mask is most wrong: the pixel farthest inside the largest wrong region (missed object:
a positive click; background taken: a negative one), as in click-based segmentation benchmarks.

Effort per action (the issue's figures): box 7 s (drawing a tight box), click 1.5 s, accept or reject 1 s.
A COCO polygon costs ~79 s per instance (Lin et al. 2014), for comparison. The estimated seconds of a photo
are also sent as the visit's event times (`record_visit`), so that "Model help" shows them.

True instances: not crowd, area >= --min-area pixels (COCO's "medium" and "large" by default: smaller ones are
left to the model and never added by hand). Quality: mean IoU of each true instance with its final mask (0
when none), over all photos labelled so far.

Settings compared (each from a fresh copy of the same data folder):
  nomodel: GrabCut and clicks only, never retrained;
  loop-random: retrain (mode heads, --iterations at --image-size) after every round; photos in a seeded
               random order;
  loop-useful: the same, photos in the "most useful next" order from round 2 on (list_images order
               most_useful; the model looks at every unlabelled photo of the pool first).

    python benchmarks/bench_labelling.py --work benchmarks/out/labelling   # the measurement
    python benchmarks/bench_labelling.py --work /tmp/l --pool 4 --round-size 2 --rounds 2 --iterations 2 \\
        --image-size 128 --settings nomodel,loop-useful          # the tiny setting (tests/test_bench_labelling.py)
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

from bench_api_speed import Server, client_for
from common import DEFAULT_DATA, DEFAULT_WEIGHTS, loadavg_text, run_launch, stamp, write_json

EFFORT_S = {"accept": 1.0, "reject": 1.0, "box": 7.0, "click": 1.5}  # the figures
POLYGON_S = 79.0  # a COCO polygon per instance, for comparison
GOOD_IOU = 0.75  # a mask the careful labeller accepts
TRY_IOU = 0.5  # a proposal worth a few clicks
SETTINGS = ("nomodel", "loop-random", "loop-useful")


# ---- masks -------------------------------------------------------------------------------------------------
def decode(rle: dict | None, height: int, width: int):
    import numpy as np
    from pycocotools import mask as mask_utils

    if rle is None:
        return np.zeros((height, width), bool)
    counts = rle["counts"].encode("ascii") if isinstance(rle["counts"], str) else rle["counts"]
    return mask_utils.decode({"size": [height, width], "counts": counts}).astype(bool)


def iou(a, b) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 0.0


def next_click(mask, truth):
    """((x, y), positive) where the mask is most wrong: the pixel farthest inside the largest wrong region."""
    import cv2
    import numpy as np

    missed, extra = truth & ~mask, mask & ~truth
    wrong, positive = (missed, True) if missed.sum() >= extra.sum() else (extra, False)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(wrong.astype(np.uint8), connectivity=8)
    if count <= 1:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    region = np.pad((labels == largest).astype(np.uint8), 1)
    distance = cv2.distanceTransform(region, cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return (int(x), int(y)), positive


# ---- the ground truth ----------------------------------------------------------------------------------------
def load_truth(data: Path, classes: list[str], min_area: float):
    """(categories, {file name: {"id", "width", "height", "truth": [(category name, mask, box xyxy)]}})."""
    from pycocotools.coco import COCO
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(data / "train.json"))
    cats = [c for c in coco.loadCats(coco.getCatIds()) if c["name"] in classes]
    names = {c["id"]: c["name"] for c in cats}
    photos = {}
    for image_id in sorted({a["image_id"] for a in coco.dataset["annotations"] if a["category_id"] in names}):
        info = coco.imgs[image_id]
        truth = []
        for ann in coco.imgToAnns[image_id]:
            if ann["category_id"] in names and not ann.get("iscrowd") and ann["area"] >= min_area:
                x, y, w, h = ann["bbox"]
                truth.append((names[ann["category_id"]], coco.annToMask(ann).astype(bool), (x, y, x + w, y + h)))
        photos[info["file_name"]] = {"coco_id": image_id, "width": info["width"], "height": info["height"],
                                     "truth": truth}
    return cats, photos


# ---- one photo -------------------------------------------------------------------------------------------------
class Labeller:
    def __init__(self, client, max_clicks: int, review_threshold: float):
        self.client, self.max_clicks, self.review_threshold = client, max_clicks, review_threshold

    def call(self, *args, api_name):
        return self.client.predict(*args, api_name=api_name)

    def refine_until_good(self, image_id, ann_id, mask, truth, revision, actions, h, w):
        """Clicks while the mask is below GOOD_IOU (at most max_clicks) -> (mask, revision, IoU)."""
        positive, negative = [], []
        score = iou(mask, truth)
        for _ in range(self.max_clicks):
            if score >= GOOD_IOU:
                break
            click = next_click(mask, truth)
            if click is None:
                break
            (positive if click[1] else negative).append(list(click[0]))
            actions["click"] += 1
            try:
                out = self.call(image_id, ann_id, positive, negative, revision, api_name="/refine")
            except Exception as exc:  # noqa: BLE001 (a refusal, e.g. nothing left: the labeller stops clicking)
                print(f"refine refused on image {image_id}: {exc}", flush=True)
                break
            revision = out["revision"]
            row = next(i for i in out["instances"] if i["id"] == ann_id)
            mask = decode(row["mask"], h, w)
            score = iou(mask, truth)
        return mask, revision, score

    def label(self, image_id: int, photo: dict, with_model: bool) -> dict:
        h, w = photo["height"], photo["width"]
        actions = {"accept": 0, "reject": 0, "box": 0, "click": 0}
        truth = photo["truth"]
        final = [None] * len(truth)  # the final mask of each true instance
        current = self.call(image_id, api_name="/instances")
        if with_model and not any(i["review_state"] == "proposed" for i in current["instances"]):
            current = self.call(image_id, None, api_name="/propose")
        revision = current["revision"]
        pending = [i for i in current["instances"] if i["review_state"] == "proposed"]
        proposals = sorted((i for i in pending if (i["score"] or 0) >= self.review_threshold),
                           key=lambda i: -(i["score"] or 0))
        # those under the review threshold are not drawn: rejected together, one action
        decisions = {i["id"]: "rejected" for i in pending if (i["score"] or 0) < self.review_threshold}
        actions["reject"] += 1 if decisions else 0
        bulk = len(decisions)
        accepted_unchanged, refined = 0, []
        for proposal in proposals:
            mask = decode(proposal["mask"], h, w)
            best, best_iou = None, 0.0
            for index, (name, true_mask, _) in enumerate(truth):
                if final[index] is None and name == proposal["category"]:
                    value = iou(mask, true_mask)
                    if value > best_iou:
                        best, best_iou = index, value
            if best is not None and best_iou >= GOOD_IOU:
                decisions[proposal["id"]] = "accepted"
                final[best] = mask
                accepted_unchanged += 1
            elif best is not None and best_iou >= TRY_IOU and self.max_clicks:
                refined.append((proposal["id"], best, mask))
                final[best] = mask  # reserved while it is refined
            else:
                decisions[proposal["id"]] = "rejected"
        for ann_id, index, mask in refined:
            mask, revision, score = self.refine_until_good(image_id, ann_id, mask, truth[index][1], revision,
                                                           actions, h, w)
            if score >= GOOD_IOU:
                final[index] = mask
                actions["accept"] += 1  # the decision (refine saves it accepted)
            else:
                final[index] = None
                decisions[ann_id] = "deleted"
        actions["accept"] += sum(d == "accepted" for d in decisions.values())
        actions["reject"] += sum(d in ("rejected", "deleted") for d in decisions.values()) - bulk
        if decisions:
            now = self.call(image_id, api_name="/instances")
            keep = []
            for inst in now["instances"]:
                decision = decisions.get(inst["id"])
                if decision == "deleted":
                    continue
                if decision in ("accepted", "rejected"):
                    inst = dict(inst, review_state=decision)
                keep.append(inst)
            revision = self.call(image_id, keep, now["revision"], api_name="/save_annotations")["revision"]
        missed = [index for index, value in enumerate(final) if value is None]
        if missed:
            actions["box"] += len(missed)
            boxes = [{"category": truth[i][0], "box": [round(v, 1) for v in truth[i][2]]} for i in missed]
            before = {i["id"] for i in self.call(image_id, api_name="/instances")["instances"]}
            out = self.call(image_id, boxes, revision, api_name="/add_boxes")
            revision = out["revision"]
            new = [i for i in out["instances"] if i["id"] not in before]
            for index, inst in zip(missed, sorted(new, key=lambda i: i["id"])):
                mask = decode(inst["mask"], h, w)
                mask, revision, _ = self.refine_until_good(image_id, inst["id"], mask, truth[index][1], revision,
                                                           actions, h, w)
                final[index] = mask
        seconds = sum(EFFORT_S[k] * v for k, v in actions.items())
        times, clock = [0.0], 0.0  # the visit's events, one per action, at the effort's pace
        for kind, count in actions.items():
            for _ in range(count):
                clock += EFFORT_S[kind]
                times.append(clock)
        if len(times) >= 2:
            self.call(image_id, times, api_name="/record_visit")
        ious = [iou(mask, t[1]) if mask is not None else 0.0 for mask, t in zip(final, truth)]
        return {"image_id": image_id, "instances": len(truth), "actions": actions, "seconds": seconds,
                "proposals": len(proposals), "hidden_proposals": bulk, "accepted_unchanged": accepted_unchanged,
                "ious": ious}


# ---- a setting -------------------------------------------------------------------------------------------------
def run_setting(setting: str, args, photos: dict, base: Path, log) -> dict:
    from common import copy_fresh, weights_for_server

    data_dir = copy_fresh(base, args.work / f"data_{setting}")
    backbone_weights = weights_for_server(args.backbone_weights, data_dir)
    server = Server(data_dir, args.work / f"server_{setting}.log")
    try:
        server.wait()
        client = client_for(server.url)
        from gradio_client import handle_file

        files = sorted(photos)
        uploaded = client.predict([handle_file(str(args.data / "images" / f)) for f in files], "train",
                                  api_name="/upload_images")
        ids = dict(zip(files, uploaded["image_ids"]))
        by_id = {ids[f]: photos[f] for f in files}
        labeller = Labeller(client, args.max_clicks, args.review_threshold)
        order = sorted(by_id)
        random.Random(args.seed).shuffle(order)
        done: list[int] = []
        rounds = []
        for number in range(1, args.rounds + 1):
            with_model = setting != "nomodel" and number > 1
            started = time.perf_counter()
            if setting == "loop-useful" and with_model:
                listed = client.predict("all", "most_useful", len(by_id), api_name="/list_images")["images"]
                chosen = [r["id"] for r in listed if r["id"] in by_id and r["id"] not in done][:args.round_size]
            else:
                chosen = [i for i in order if i not in done][:args.round_size]
            results = [labeller.label(image_id, by_id[image_id], with_model) for image_id in chosen]
            done += chosen
            instances = sum(r["instances"] for r in results)
            proposals_total = sum(r["proposals"] for r in results)
            actions = {k: sum(r["actions"][k] for r in results) for k in EFFORT_S}
            seconds = sum(r["seconds"] for r in results)
            row = {"round": number, "photos": len(chosen), "instances": instances, "actions": actions,
                   "seconds": round(seconds, 1),
                   "seconds_per_instance": round(seconds / instances, 2) if instances else None,
                   "accepted_unchanged": sum(r["accepted_unchanged"] for r in results),
                   "unchanged_share": round(sum(r["accepted_unchanged"] for r in results) / instances, 3)
                   if instances else None, "proposals": proposals_total,
                   "round_mean_iou": round(sum(sum(r["ious"]) for r in results) / instances, 3) if instances else None,
                   "wall_s": round(time.perf_counter() - started, 1), "load": loadavg_text()}
            rounds.append(row)
            row["_ious"] = [v for r in results for v in r["ious"]]
            print(f"[{stamp()}] {setting} round {number}: {json.dumps({k: v for k, v in row.items() if k != '_ious'})}",
                  flush=True)
            log.write(json.dumps({k: v for k, v in row.items() if k != "_ious"}) + "\n")
            log.flush()
            if setting != "nomodel" and number < args.rounds:
                started = time.perf_counter()
                result = client.predict("heads", args.iterations, args.image_size, backbone_weights,
                                        api_name="/retrain")
                row["retrain_s"] = round(time.perf_counter() - started, 1)
                row["version"] = result.get("version_id")
                print(f"[{stamp()}] {setting}: retrained in {row['retrain_s']} s -> version {row['version']}",
                      flush=True)
        ious = [v for r in rounds for v in r["_ious"]]
        for r in rounds:
            r.pop("_ious")
        help_ = client.predict(api_name="/model_help")
        return {"setting": setting, "rounds": rounds,
                "final_mean_iou": round(sum(ious) / len(ious), 3) if ious else None,
                "final_instances": len(ious), "model_help": help_}
    finally:
        server.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("benchmarks/out/labelling"))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--classes", default="person,car")
    parser.add_argument("--pool", type=int, default=None, help="photos (those that show the classes, by id); all")
    parser.add_argument("--round-size", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=500, help="heads iterations of each retrain")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--backbone-weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--max-clicks", type=int, default=3)
    parser.add_argument("--review-threshold", type=float, default=0.5,
                        help="proposals below it are not drawn (the Review tab's default): one reject for all")
    parser.add_argument("--min-area", type=float, default=32 * 32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    args = parser.parse_args(argv)
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    settings = args.settings.split(",")
    for setting in settings:
        if setting not in SETTINGS:
            raise SystemExit(f"--settings: {setting!r} is not one of {', '.join(SETTINGS)}")
    classes = args.classes.split(",")
    cats, photos = load_truth(args.data, classes, args.min_area)
    if args.pool is not None:
        photos = {k: photos[k] for k in sorted(photos, key=lambda f: photos[f]["coco_id"])[:args.pool]}
    log = open(args.work / "log.txt", "a")
    log.write(f"\n# {stamp()} {' '.join(sys.argv)}\n")
    base = args.work / "base_data"
    if base.exists():
        import shutil

        shutil.rmtree(base)
    classes_file = args.work / "classes.json"
    classes_file.write_text(json.dumps({"images": [], "annotations": [], "categories": cats}))
    run_launch(["import-coco", "--data-dir", str(base), str(classes_file), "--images", str(args.work)], log)
    started = time.perf_counter()
    results = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "started": stamp(),
               "load_before": loadavg_text(), "threads": os.environ.get("OMP_NUM_THREADS"),
               "effort_s": EFFORT_S, "photos_in_pool": len(photos),
               "true_instances_in_pool": sum(len(p["truth"]) for p in photos.values()), "settings": []}
    for setting in settings:
        results["settings"].append(run_setting(setting, args, photos, base, log))
        write_json(args.work / "results.json", results)
    results["wall_s"] = round(time.perf_counter() - started, 1)
    results["load_after"] = loadavg_text()
    write_json(args.work / "results.json", results)
    print(table(results))
    return 0


def table(results: dict) -> str:
    lines = ["| setting | round | photos | true instances | accept | reject | box | click | est. s / instance | "
             "accepted unchanged | mean IoU (round) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in results["settings"]:
        for r in s["rounds"]:
            a = r["actions"]
            lines.append(f"| {s['setting']} | {r['round']} | {r['photos']} | {r['instances']} | {a['accept']} | "
                         f"{a['reject']} | {a['box']} | {a['click']} | {r['seconds_per_instance']} | "
                         f"{r['accepted_unchanged']} ({r['unchanged_share']}) | {r['round_mean_iou']} |")
        lines.append(f"| {s['setting']} | all | | {s['final_instances']} | | | | | | | **{s['final_mean_iou']}** |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
