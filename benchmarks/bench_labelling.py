#!/usr/bin/env python
"""Does the loop pay? A simulated careful labeller against COCO ground truth, through the headless API only,
paired: every setting labels the same photos in the same order (issue 24; issue 15 before).

A real `launch.py serve` subprocess is driven with `gradio_client`, as a script would drive it: the classes are
made with `launch.py import-coco` of a file that holds only the categories (no labels), the photos are uploaded
with `upload_images`, and every labelling step is an endpoint call: `instances`, `propose`, `save_annotations`
(accept / reject / class change), `refine` (clicks), `keep_box`, `add_boxes` (box -> the class's chosen mask
start), `finish_image` ("done": the proposals the model's thresholds hid are closed as hidden), `record_visit`,
`retrain`, `model_help`. Nothing reads or writes the database behind the server's back; the ground truth stays
in this script.

Any COCO file can be measured (a team's own project):

    python benchmarks/bench_labelling.py --annotations FILE --images DIR --round-size N --rounds R --json OUT

(--annotations / --images may be given several times: one project from several files, e.g. coco_subset's
people plus coco_person). Without --annotations: coco_subset's train.json, classes person and car.

The truth of a photo: its instances of the chosen classes. Those that are not crowd and have at least
--min-area pixels are *labelled* (a hand labeller boxes each of them); crowd and smaller ones are *ignored*:
never labelled by hand, never counted in the quality, and a proposal that finds one is neither a reject nor a
label that counts (it is verified and kept: 1 verify).

The labeller, on each photo, with a model (round 2 on; the photo's proposals: `instances`, else `propose`):
only the proposals the workbench *shows* are looked at (`shown`: the model's threshold and cap for its version
and class); hidden ones cost nothing. Each shown proposal, best score first, is matched to the unmatched
labelled instance of *any* class with the best mask IoU:
- IoU >= 0.5: a wrong class is fixed by a class change; then, as for a hand box, clicks while its IoU < 0.75 (at
  most --max-clicks) and it is kept (verify);
- else, when its box fits a labelled instance's box (box IoU >= 0.7): keep the box (`keep_box`: the mask is made
  again from that box, as for a hand box; a class change if needed), clicks, kept;
- else, when it finds an ignored instance (IoU >= 0.5): verified and kept;
- else rejected.
Every labelled instance left gets its tight box (`add_boxes`), then clicks while its IoU < 0.75; it is kept at
any IoU (painting is not simulated). So a proposal and a hand box are kept by the same rule.
A click goes where the mask is most wrong: the pixel farthest inside the largest wrong region (missed object:
a positive click; background taken: a negative one), as in click-based segmentation benchmarks.

Costs: actions are counted, and priced under two published box figures side by side (../shared/notes/
labelling_cost_facts.md): a box by extreme clicking 7 s (Papadopoulos et al., ICCV 2017) and a box drawn the
traditional way 34.5 s (ILSVRC: Su et al. 2012, as cited by Papadopoulos et al. 2017); a click 1.5 s, a verify
(accept, keep the box) 1 s, a reject 1 s, a class change 1 s. The workbench's thresholds are chosen for the 7 s
box (services.payoff.CostModel), the harder case for proposals. The visit's event times sent to `record_visit`
follow the 7 s model.

Quality: label IoU, the mean over the labelled instances of the IoU of their final mask with the truth (0 when
none). These are the photos labelled (the loop's training photos): it is the quality of the labels the loop
produces, not of the model.

Settings (each from a fresh copy of the same data folder; photos in one seeded random order for both):
  nomodel: boxes (GrabCut), clicks; never retrained;
  loop:    the same photos, retrained (mode heads, --iterations at --image-size) after every round but the last.
Per round: seconds per labelled instance, the share of labelled instances whose proposal was accepted unchanged,
label IoU, and for the loop `paired_ratio`: loop seconds / nomodel seconds on the same photos.

    OMP_NUM_THREADS=1 nice python benchmarks/bench_labelling.py --work benchmarks/out/labelling --iterations 800
    python benchmarks/bench_labelling.py --work /tmp/l --pool 4 --round-size 2 --rounds 2 --iterations 2 \\
        --image-size 128                                     # the tiny setting (tests/test_bench_labelling.py)
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import sys
import time
from pathlib import Path

from bench_api_speed import Server, client_for
from common import DEFAULT_DATA, DEFAULT_WEIGHTS, loadavg_text, run_launch, stamp, write_json

# seconds per action under each box figure (../shared/notes/labelling_cost_facts.md)
COST_MODELS = {
    "extreme_7s": {"box": 7.0, "click": 1.5, "verify": 1.0, "reject": 1.0, "class_change": 1.0},
    "drag_34.5s": {"box": 34.5, "click": 1.5, "verify": 1.0, "reject": 1.0, "class_change": 1.0},
}
PRIMARY = "extreme_7s"  # the figures without a suffix; the workbench's thresholds are chosen for it
ACTIONS = ("box", "click", "verify", "reject", "class_change")
POLYGON_S = 79.0  # a COCO polygon per instance (Lin et al. 2014), for comparison
GOOD_IOU = 0.75  # clicks stop once a mask reaches it (proposal or hand box alike)
TRY_IOU = 0.5  # a proposal that finds an instance
BOX_FIT_IOU = 0.7  # a proposal's box worth keeping
MAX_BOXES = 20  # boxes per add_boxes call (services.proposals.MAX_BOXES)
SETTINGS = ("nomodel", "loop")


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


def box_iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


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


def priced(actions: dict, model: str) -> float:
    return round(sum(COST_MODELS[model][kind] * actions.get(kind, 0) for kind in ACTIONS), 2)


# ---- the ground truth ----------------------------------------------------------------------------------------
class Truth:
    """One photo's truth, decoded on first use (a nuclei photo holds hundreds of masks)."""

    def __init__(self, coco, image_id: int, path: Path, names: dict[int, str], min_area: float):
        self.coco, self.image_id, self.path = coco, image_id, path
        info = coco.imgs[image_id]
        self.width, self.height = info["width"], info["height"]
        self.anns = [a for a in coco.imgToAnns[image_id] if a["category_id"] in names]
        self.names, self.min_area = names, min_area
        self._decoded = None

    @property
    def labelled_count(self) -> int:
        return sum(1 for a in self.anns if not a.get("iscrowd") and a["area"] >= self.min_area)

    def instances(self) -> tuple[list, list]:
        """(labelled, ignored): [(class name, mask, box xyxy)] each."""
        if self._decoded is None:
            labelled, ignored = [], []
            for ann in self.anns:
                x, y, w, h = ann["bbox"]
                item = (self.names[ann["category_id"]], self.coco.annToMask(ann).astype(bool), (x, y, x + w, y + h))
                (ignored if ann.get("iscrowd") or ann["area"] < self.min_area else labelled).append(item)
            self._decoded = labelled, ignored
        return self._decoded


def load_project(annotations: list[Path], images: list[Path], classes: list[str] | None, min_area: float):
    """(categories [{id, name, supercategory}], {upload name: Truth}) over every file; photos without a labelled
    instance of the classes are left out. Categories are merged by name."""
    from pycocotools.coco import COCO

    categories, photos = {}, {}
    for ann_file, image_dir in zip(annotations, images):
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(ann_file))
        cats = [c for c in coco.loadCats(coco.getCatIds()) if classes is None or c["name"] in classes]
        names = {c["id"]: c["name"] for c in cats}
        for c in cats:
            categories.setdefault(c["name"], {"id": len(categories) + 1, "name": c["name"],
                                              "supercategory": c.get("supercategory", "")})
        for image_id in sorted(coco.imgs):
            truth = Truth(coco, image_id, image_dir / coco.imgs[image_id]["file_name"], names, min_area)
            if truth.labelled_count == 0:
                continue
            name = truth.path.name
            if name in photos:
                raise SystemExit(f"{name} is in two of the annotation files: one photo, one file")
            photos[name] = truth
    if classes is not None:
        missing = set(classes) - set(categories)
        if missing:
            raise SystemExit(f"--classes: {', '.join(sorted(missing))} not in the annotation files")
    return list(categories.values()), photos


# ---- one photo -------------------------------------------------------------------------------------------------
class Labeller:
    def __init__(self, client, max_clicks: int):
        self.client, self.max_clicks = client, max_clicks

    def call(self, *args, api_name):
        return self.client.predict(*args, api_name=api_name)

    def refine_until_good(self, image_id, ann_id, mask, truth, revision, actions, h, w):
        """Clicks while the mask is below GOOD_IOU (at most max_clicks) -> (mask, revision)."""
        positive, negative = [], []
        for _ in range(self.max_clicks):
            if iou(mask, truth) >= GOOD_IOU:
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
            mask = decode(next(i for i in out["instances"] if i["id"] == ann_id)["mask"], h, w)
        return mask, revision

    @staticmethod
    def best_match(mask, box, pool, taken):
        """(index, mask IoU, box IoU of the best box) over the pool's instances not taken."""
        best, best_iou, best_box, box_fit = None, 0.0, None, 0.0
        for index, (_, true_mask, true_box) in enumerate(pool):
            if index in taken:
                continue
            value = iou(mask, true_mask)
            if value > best_iou:
                best, best_iou = index, value
            fit = box_iou(box, true_box)
            if fit > box_fit:
                best_box, box_fit = index, fit
        return best, best_iou, best_box, box_fit

    def label(self, image_id: int, photo: Truth, with_model: bool) -> dict:
        h, w = photo.height, photo.width
        labelled, ignored = photo.instances()
        actions = dict.fromkeys(ACTIONS, 0)
        final = [None] * len(labelled)  # the final mask of each labelled instance
        current = self.call(image_id, api_name="/instances")
        if with_model and not any(i["review_state"] == "proposed" for i in current["instances"]):
            current = self.call(image_id, None, api_name="/propose")
        revision = current["revision"]
        proposed = [i for i in current["instances"] if i["review_state"] == "proposed"]
        shown = sorted((i for i in proposed if i.get("shown", True)), key=lambda i: -(i["score"] or 0))
        decisions, to_refine, to_keep_box = {}, [], []  # id -> (state, class) ; (id, index)
        taken, taken_ignored, accepted_unchanged, extra = set(), set(), 0, 0
        for proposal in shown:
            mask = decode(proposal["mask"], h, w)
            best, best_iou, best_box, box_fit = self.best_match(mask, proposal["box"], labelled, taken)
            if best is not None and best_iou >= TRY_IOU:
                name = labelled[best][0]
                if name != proposal["category"]:
                    actions["class_change"] += 1
                taken.add(best)
                if best_iou >= GOOD_IOU:
                    decisions[proposal["id"]] = ("accepted", name)
                    final[best] = mask
                    actions["verify"] += 1
                    accepted_unchanged += name == proposal["category"]
                else:
                    decisions[proposal["id"]] = ("proposed", name)  # refined below; refine accepts it
                    to_refine.append((proposal["id"], best))
                continue
            if best_box is not None and box_fit >= BOX_FIT_IOU:
                name = labelled[best_box][0]
                if name != proposal["category"]:
                    actions["class_change"] += 1
                    decisions[proposal["id"]] = ("proposed", name)
                taken.add(best_box)
                to_keep_box.append((proposal["id"], best_box))
                continue
            spare = self.best_match(mask, proposal["box"], ignored, taken_ignored)
            if spare[0] is not None and spare[1] >= TRY_IOU:
                taken_ignored.add(spare[0])
                decisions[proposal["id"]] = ("accepted", proposal["category"])
                actions["verify"] += 1
                extra += 1
                continue
            decisions[proposal["id"]] = ("rejected", proposal["category"])
            actions["reject"] += 1
        if decisions:
            now = self.call(image_id, api_name="/instances")
            keep = []
            for inst in now["instances"]:
                if inst["id"] in decisions:
                    state, name = decisions[inst["id"]]
                    inst = dict(inst, review_state=state, category=name)
                    inst.pop("category_id", None)
                keep.append({k: v for k, v in inst.items() if k not in ("shown",)})
            revision = self.call(image_id, keep, now["revision"], api_name="/save_annotations")["revision"]
        for ann_id, index in to_refine:
            mask = decode(next(i for i in self._plain(image_id) if i["id"] == ann_id)["mask"], h, w)
            final[index], revision = self.refine_until_good(image_id, ann_id, mask, labelled[index][1], revision,
                                                            actions, h, w)
            actions["verify"] += 1
        refined = {ann_id for ann_id, _ in to_refine}
        rows = self._plain(image_id)
        if any(i["id"] in refined and i["review_state"] == "proposed" for i in rows):  # kept without a click
            revision = self.call(image_id, [dict(i, review_state="accepted") if i["id"] in refined else i
                                            for i in rows], revision, api_name="/save_annotations")["revision"]
        for ann_id, index in to_keep_box:
            actions["verify"] += 1  # one key
            out = self.call(image_id, ann_id, revision, api_name="/keep_box")
            revision = out["revision"]
            mask = decode(next(i for i in out["instances"] if i["id"] == ann_id)["mask"], h, w)
            final[index], revision = self.refine_until_good(image_id, ann_id, mask, labelled[index][1], revision,
                                                            actions, h, w)
        missed = [index for index, value in enumerate(final) if value is None]
        for start in range(0, len(missed), MAX_BOXES):
            chunk = missed[start:start + MAX_BOXES]
            actions["box"] += len(chunk)
            boxes = [{"category": labelled[i][0], "box": [round(v, 1) for v in labelled[i][2]]} for i in chunk]
            before = {i["id"] for i in self._plain(image_id)}
            out = self.call(image_id, boxes, revision, api_name="/add_boxes")
            revision = out["revision"]
            rows = {i["id"]: i for i in out["instances"]}
            made = sorted(set(rows) - before)
            assert len(made) == len(chunk), f"add_boxes made {len(made)} instances for {len(chunk)} boxes"
            for index, ann_id in zip(chunk, made):
                mask = decode(rows[ann_id]["mask"], h, w)
                final[index], revision = self.refine_until_good(image_id, ann_id, mask, labelled[index][1],
                                                                revision, actions, h, w)
        done = self.call(image_id, revision, api_name="/finish_image")
        times, clock = [0.0], 0.0  # the visit's events, one per action, at the primary cost model's pace
        for kind in ACTIONS:
            for _ in range(actions[kind]):
                clock += COST_MODELS[PRIMARY][kind]
                times.append(clock)
        if len(times) >= 2:
            self.call(image_id, times, api_name="/record_visit")
        ious = [iou(mask, t[1]) if mask is not None else 0.0 for mask, t in zip(final, labelled)]
        return {"image_id": image_id, "instances": len(labelled), "actions": actions,
                "seconds": {m: priced(actions, m) for m in COST_MODELS}, "shown": len(shown),
                "hidden": len(proposed) - len(shown), "closed_hidden": done.get("hidden", 0),
                "accepted_unchanged": accepted_unchanged, "kept_boxes": len(to_keep_box), "extra_labels": extra,
                "ious": ious}

    def _plain(self, image_id):
        return [{k: v for k, v in i.items() if k != "shown"}
                for i in self.call(image_id, api_name="/instances")["instances"]]


# ---- a setting -------------------------------------------------------------------------------------------------
def summarise(number: int, results: list[dict]) -> dict:
    instances = sum(r["instances"] for r in results)
    actions = {k: sum(r["actions"][k] for r in results) for k in ACTIONS}
    seconds = {m: round(sum(r["seconds"][m] for r in results), 1) for m in COST_MODELS}
    per_instance = {m: round(s / instances, 2) if instances else None for m, s in seconds.items()}
    ious = [v for r in results for v in r["ious"]]
    return {"round": number, "photos": len(results), "instances": instances, "actions": actions,
            "seconds": seconds[PRIMARY], "seconds_by_cost_model": seconds,
            "seconds_per_instance": per_instance[PRIMARY], "seconds_per_instance_by_cost_model": per_instance,
            "accepted_unchanged": sum(r["accepted_unchanged"] for r in results),
            "unchanged_share": round(sum(r["accepted_unchanged"] for r in results) / instances, 3)
            if instances else None,
            "shown_proposals": sum(r["shown"] for r in results), "hidden_proposals": sum(r["hidden"] for r in results),
            "kept_boxes": sum(r["kept_boxes"] for r in results), "extra_labels": sum(r["extra_labels"] for r in results),
            "label_iou": round(sum(ious) / len(ious), 3) if ious else None, "_ious": ious,
            "image_ids": [r["image_id"] for r in results], "photo_seconds": [r["seconds"] for r in results]}


def run_setting(setting: str, args, photos: dict, order: list[str], base: Path, log) -> dict:
    from common import copy_fresh, weights_for_server

    data_dir = copy_fresh(base, args.work / f"data_{setting}")
    backbone_weights = weights_for_server(args.backbone_weights, data_dir)
    server = Server(data_dir, args.work / f"server_{setting}.log")
    try:
        server.wait()
        client = client_for(server.url)
        from gradio_client import handle_file

        ids = {}
        for start in range(0, len(order), 20):  # upload in parts: a form carries a bounded number of files
            part = order[start:start + 20]
            uploaded = client.predict([handle_file(str(photos[f].path)) for f in part], "train",
                                      api_name="/upload_images")
            ids.update(zip(part, uploaded["image_ids"]))
        labeller = Labeller(client, args.max_clicks)
        rounds = []
        for number in range(1, args.rounds + 1):
            with_model = setting != "nomodel" and number > 1
            started = time.perf_counter()
            chosen = order[(number - 1) * args.round_size:number * args.round_size]
            results = [labeller.label(ids[f], photos[f], with_model) for f in chosen]
            row = summarise(number, results)
            row["files"] = chosen
            row.update(wall_s=round(time.perf_counter() - started, 1), load=loadavg_text())
            rounds.append(row)
            shown = {k: v for k, v in row.items() if not k.startswith("_") and k not in ("files", "image_ids",
                                                                                         "photo_seconds")}
            print(f"[{stamp()}] {setting} round {number}: {json.dumps(shown)}", flush=True)
            log.write(json.dumps({"setting": setting, **shown}) + "\n")
            log.flush()
            if setting != "nomodel" and number < args.rounds:
                started = time.perf_counter()
                result = client.predict("heads", args.iterations, args.image_size, backbone_weights,
                                        api_name="/retrain")
                row["retrain_s"] = round(time.perf_counter() - started, 1)
                row["version"] = result.get("version_id")
                print(f"[{stamp()}] {setting}: retrained in {row['retrain_s']} s -> version {row['version']}",
                      flush=True)
        ious = [v for r in rounds for v in r.pop("_ious")]
        return {"setting": setting, "rounds": rounds,
                "label_iou": round(sum(ious) / len(ious), 3) if ious else None, "instances": len(ious),
                "model_help": client.predict(api_name="/model_help")}
    finally:
        server.stop()


def pair(results: dict) -> None:
    """Each model setting's rounds get paired_ratio: its seconds / nomodel's on the same photos (per cost model)."""
    base = next((s for s in results["settings"] if s["setting"] == "nomodel"), None)
    if base is None:
        return
    for setting in results["settings"]:
        if setting is base:
            continue
        for row, reference in zip(setting["rounds"], base["rounds"]):
            assert row["files"] == reference["files"], "settings must label the same photos in the same order"
            ratios = {m: round(row["seconds_by_cost_model"][m] / reference["seconds_by_cost_model"][m], 3)
                      if reference["seconds_by_cost_model"][m] else None for m in COST_MODELS}
            row["paired_ratio"], row["paired_ratio_by_cost_model"] = ratios[PRIMARY], ratios
            row["nomodel_label_iou"] = reference["label_iou"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--annotations", type=Path, action="append",
                        help="a COCO instances file (repeat for several); default coco_subset's train.json")
    parser.add_argument("--images", type=Path, action="append", help="the photos of each --annotations file")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="coco_subset (when no --annotations)")
    parser.add_argument("--classes", default=None,
                        help="comma-separated class names (default: person,car for coco_subset, else all)")
    parser.add_argument("--json", type=Path, default=None, help="where to write the results (default WORK/results.json)")
    parser.add_argument("--work", type=Path, default=Path("benchmarks/out/labelling"))
    parser.add_argument("--pool", type=int, default=None, help="photos to choose from (first by file order); all")
    parser.add_argument("--round-size", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=500, help="heads iterations of each retrain")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--backbone-weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--max-clicks", type=int, default=3)
    parser.add_argument("--min-area", type=float, default=32 * 32,
                        help="smaller (and crowd) instances are ignored: never boxed by hand, not in the quality")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    args = parser.parse_args(argv)
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    settings = args.settings.split(",")
    for setting in settings:
        if setting not in SETTINGS:
            raise SystemExit(f"--settings: {setting!r} is not one of {', '.join(SETTINGS)}")
    if args.annotations:
        if not args.images or len(args.images) != len(args.annotations):
            raise SystemExit("give one --images folder per --annotations file")
        classes = args.classes.split(",") if args.classes else None
    else:
        args.annotations, args.images = [args.data / "train.json"], [args.data / "images"]
        classes = (args.classes or "person,car").split(",")
    cats, photos = load_project(args.annotations, args.images, classes, args.min_area)
    names = sorted(photos)
    if args.pool is not None:
        names = names[:args.pool]
    random.Random(args.seed).shuffle(names)
    order = names[:args.round_size * args.rounds]
    if len(order) < args.round_size * args.rounds:
        print(f"only {len(order)} photos: the last round is shorter", flush=True)
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
    out = args.json or args.work / "results.json"
    from common import cpu_name

    results = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "started": stamp(), "cpu": cpu_name(),
               "load_before": loadavg_text(), "threads": os.environ.get("OMP_NUM_THREADS"),
               "cost_models": COST_MODELS, "primary_cost_model": PRIMARY,
               "annotations": [str(p) for p in args.annotations], "classes": [c["name"] for c in cats],
               "photos": len(order), "labelled_instances": sum(photos[f].labelled_count for f in order),
               "settings": []}
    for setting in settings:
        results["settings"].append(run_setting(setting, args, photos, order, base, log))
        pair(results)
        write_json(out, results)
    results["wall_s"] = round(time.perf_counter() - started, 1)
    results["load_after"] = loadavg_text()
    write_json(out, results)
    print(table(results))
    return 0


def table(results: dict) -> str:
    models = list(COST_MODELS)
    lines = ["| setting | round | photos | labelled instances | shown / hidden proposals | verify | reject | class "
             "change | box | click | " + " | ".join(f"s / instance ({m})" for m in models) + " | "
             + " | ".join(f"paired ratio ({m})" for m in models) + " | accepted unchanged | label IoU |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * (2 * len(models)) + "---:|---:|"]
    for s in results["settings"]:
        for r in s["rounds"]:
            a = r["actions"]
            ratios = r.get("paired_ratio_by_cost_model") or {}
            lines.append(
                f"| {s['setting']} | {r['round']} | {r['photos']} | {r['instances']} | "
                f"{r['shown_proposals']} / {r['hidden_proposals']} | {a['verify']} | {a['reject']} | "
                f"{a['class_change']} | {a['box']} | {a['click']} | "
                + " | ".join(str(r["seconds_per_instance_by_cost_model"][m]) for m in models) + " | "
                + " | ".join(str(ratios.get(m, "-")) for m in models)
                + f" | {r['accepted_unchanged']} ({r['unchanged_share']}) | {r['label_iou']} |")
        lines.append(f"| {s['setting']} | all | | {s['instances']} | | | | | | |" + " |" * (2 * len(models))
                     + f" | **{s['label_iou']}** |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
