#!/usr/bin/env python
"""Thousands of classes: a Mask^X MNC with 3,000 categories (masks for only the 80 COCO ones) vs the same
model with the 80 COCO categories: build, train, checkpoint, predict; latency and memory side by side.

    python benchmarks/bench_many_classes.py                     # defaults: 40 train / 20 val images, 400 px, 100 its
    python benchmarks/bench_many_classes.py --train-images 4 --val-images 4 --iterations 5 --image-size 192 \
        --out benchmarks/out/many_classes_smoke                 # smoke run, about a minute

The thesis trains 3,000 Visual Genome classes with masks for only 80. Here (coco_subset, real photos):
  80    categories = the 80 COCO categories of train.json, original labels, every instance has its mask.
  3000  categories = ids 1..3000 (the 80 COCO ids keep their names and masks: set A; the 2,920 other ids are
        set B, box-only). So that B classes are real classes with instances, a seeded share of the instances
        (--relabel-fraction, half by default) is re-labelled to extra ids and loses its mask (has_mask False);
        the extra ids are drawn without replacement from a seeded permutation, so every re-labelled instance
        gets its own class (as many distinct B classes as re-labelled instances, up to 2,920).
Both: the same first --train-images train.json images, the same MNCConfig (short side --image-size, long side
cap 5/3 of it), MaskXConfig(method="transfer"), ImageNet MobileNetV2 weights from ../shared/weights, "heads"
mode (frozen backbone body, cached features), --iterations iterations, seed 0 (same image/flip order).

Each model trains in its own subprocess (peak RSS of build + train is that model's), is saved with
mnc_core.save_checkpoint, then two long-lived predict subprocesses (one per model, each loads its checkpoint
with partial_sup.maskx.load_model) predict the first --val-images val.json images at the same size,
interleaved image by image (the parent alternates which model goes first), after --warmup warm-up
predictions that are not timed. Reported per model: parameter counts, checkpoint size, training seconds per
iteration and losses (first/last 10 iterations), per-image predict latency (median, p90) with a breakdown
(stage-3 classify head, final masks = detection weights + T + FCN, post-processing), detections per image,
peak RSS (VmHWM) of the train and the predict process. A second interleaved pass (--low-threshold, 0.005 by
default; 0 skips it) sets the models' own score_threshold = vote_score_threshold that low, because a short training
leaves every score under 0.05 (no detections, Mask^X final masks never computed). Then (unless --no-probe) one
extra prediction per model
at score_threshold 0.0 (a user can set the workbench's threshold that low): latency and peak RSS, measured
after the main figures were recorded, to show how post-processing scales with (candidates x classes).
Writes OUT/results.json (and OUT/model_80.pt, OUT/model_3000.pt, OUT/train_*.json).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

from common import (DEFAULT_DATA as DATA, DEFAULT_WEIGHTS as WEIGHTS, REPO, cpu_name, load_coco, loadavg,
                    percentile, proc_status_mb, read_rgb, stamp, usable_anns, write_json)


OUT = REPO / "benchmarks" / "out" / "many_classes"


# ---------------------------------------------------------------------------------------------------------
# helpers


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def setup_torch():
    import torch

    torch.set_num_threads(2)
    return torch


# ---------------------------------------------------------------------------------------------------------
# data


class ManyClassDataset:
    """mnc_core InstanceDataset over the first `limit` train.json images that have a non-crowd annotation.

    num_classes 80: the COCO categories, original labels, all masks.
    num_classes N > 80: categories 1..N (COCO ids keep their names); a seeded `relabel_fraction` of the
    instances gets an extra (non-COCO) id, each a different one from a seeded permutation, and no mask."""

    def __init__(self, coco, images_dir: Path, limit: int, num_classes: int, relabel_fraction: float, seed: int):
        self.coco = coco
        self.images_dir = Path(images_dir)
        coco_cats = [(int(c["id"]), str(c["name"])) for c in coco.dataset["categories"]]
        self.image_ids = [i for i in sorted(coco.getImgIds()) if usable_anns(coco, i)][:limit]
        self.images = {i: read_rgb(self.images_dir / coco.imgs[i]["file_name"]) for i in self.image_ids}
        self.relabel: dict[int, int] = {}  # annotation id -> extra category id
        if num_classes <= len(coco_cats):
            if num_classes != len(coco_cats):
                raise ValueError(f"num_classes must be {len(coco_cats)} (the COCO categories) or more")
            self.categories = coco_cats
        else:
            names = dict(coco_cats)
            if max(names) > num_classes:
                raise ValueError(f"num_classes {num_classes} does not cover the COCO ids (max {max(names)})")
            self.categories = [(c, names.get(c, f"extra_{c}")) for c in range(1, num_classes + 1)]
            extra_ids = [c for c in range(1, num_classes + 1) if c not in names]
            rng = np.random.default_rng(seed)
            pool = [int(c) for c in rng.permutation(extra_ids)]
            j = 0
            for image_id in self.image_ids:
                anns = usable_anns(coco, image_id)
                pick = rng.random(len(anns)) < relabel_fraction
                for ann, p in zip(anns, pick):
                    if p:
                        self.relabel[int(ann["id"])] = pool[j % len(pool)]
                        j += 1
        self.num_instances = sum(len(usable_anns(coco, i)) for i in self.image_ids)
        self.extra_classes_with_instances = len(set(self.relabel.values()))

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int):
        from mnc_core import Sample

        image_id = self.image_ids[index]
        image = self.images[image_id]
        instances = []
        for ann in usable_anns(self.coco, image_id):
            extra = self.relabel.get(int(ann["id"]))
            instances.append((ann["bbox"], ann["category_id"] if extra is None else extra,
                              partial(self.coco.annToMask, ann) if extra is None and ann.get("segmentation") else None))
        return Sample.from_instances(image, instances, image_id)


def val_images(limit: int) -> tuple[list[Path], set[int]]:
    """The first `limit` val.json image paths (sorted ids) and the COCO category ids."""
    coco = load_coco(DATA / "val.json")
    paths = [DATA / "images" / coco.imgs[i]["file_name"] for i in sorted(coco.getImgIds())[:limit]]
    return paths, {int(c["id"]) for c in coco.dataset["categories"]}


def make_config(image_size: int):
    from mnc_core import MNCConfig

    # heads mode: the whole MobileNetV2 body frozen (its features cached), as the runs below were made
    return MNCConfig().replace(min_size=image_size, max_size=int(image_size * 5 / 3), backbone_frozen_blocks=14)


# ---------------------------------------------------------------------------------------------------------
# worker: train one model (own process -> own peak RSS)


def param_counts(model) -> dict[str, int]:
    def count(module) -> int:
        return sum(p.numel() for p in module.parameters()) if module is not None else 0

    h = model.classify_head
    class_layers = count(h.cls_score) + count(h.seg_cls_score) + count(h.bbox_pred)
    return {"total": count(model), "backbone": count(model.backbone),
            "backbone_body_frozen": count(model.backbone.body),
            "stage3_class_layers": class_layers,  # cls_score + seg_cls_score + bbox_pred: grow with N
            "final_mask_head": count(model.final_mask_head),
            "trainable_heads_mode": count(model) - count(model.backbone.body)}


def worker_train(args) -> None:
    torch = setup_torch()
    from mnc_core import save_checkpoint, train_model
    from partial_sup.maskx import MaskXConfig, build_maskx_model

    n = args.classes_worker
    out = Path(args.out)
    t0 = time.perf_counter()
    coco = load_coco(DATA / "train.json")
    dataset = ManyClassDataset(coco, DATA / "images", args.train_images, n, args.relabel_fraction, args.seed)
    data_s = time.perf_counter() - t0
    rss_data = proc_status_mb("VmRSS")
    config = make_config(args.image_size)
    maskx = MaskXConfig(method="transfer")
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    model = build_maskx_model(config, len(dataset.categories), maskx, backbone_weights=str(WEIGHTS))
    build_s = time.perf_counter() - t0
    rss_built = proc_status_mb("VmRSS")
    history: list[dict[str, float]] = []
    stamps: list[float] = []

    def on_progress(p) -> None:
        history.append(dict(p.losses))
        stamps.append(p.seconds)
        if p.iteration % max(1, args.iterations // 5) == 0 or p.iteration == p.iterations:
            print(f"  [{n} classes] it {p.iteration}/{p.iterations} total {p.losses['total']:.3f} "
                  f"cls {p.losses.get('cls', float('nan')):.3f} | {p.seconds:.0f} s, load {os.getloadavg()[0]:.2f}",
                  flush=True)

    load_train = loadavg()
    cpu0 = time.process_time()
    model, summary = train_model(dataset, config, iterations=args.iterations, seed=args.seed, model=model,
                                 cache_frozen_features=True, device="cpu", on_progress=on_progress)
    cpu_train = time.process_time() - cpu0
    peak_train = proc_status_mb("VmHWM")
    ckpt = out / f"model_{n}.pt"
    save_checkpoint(ckpt, model, config, dataset.categories, extra={"maskx": maskx.to_dict()})

    def mean_of(rows, key):
        vals = [r[key] for r in rows if key in r]
        return round(sum(vals) / len(vals), 4) if vals else None

    k = min(10, len(history))
    keys = ("total", "cls", "seg_cls", "bbox", "mask", "mask_final")
    iters = summary["iterations"]
    result = {
        "num_classes": n,
        "image_size": args.image_size,
        "seed": args.seed,
        "relabel_fraction": args.relabel_fraction,
        "trained_at": stamp(),
        "categories": len(dataset.categories),
        "train_images": len(dataset),
        "instances": dataset.num_instances,
        "relabelled_box_only_instances": len(dataset.relabel),
        "extra_classes_with_instances": dataset.extra_classes_with_instances,
        "params": param_counts(model),
        "checkpoint": str(ckpt),
        "checkpoint_mb": round(os.path.getsize(ckpt) / 2 ** 20, 2),
        "data_seconds": round(data_s, 2),
        "build_seconds": round(build_s, 2),
        "train_seconds": round(summary["seconds"], 2),
        "iterations": iters,
        "seconds_per_iteration": round(summary["seconds"] / max(1, iters), 4),
        "cpu_seconds_per_iteration": round(cpu_train / max(1, iters), 4),  # process CPU time (both threads)
        # second half only: by then most (image, flip) trunk features are cached (same order for both models)
        "seconds_per_iteration_2nd_half": (round((stamps[-1] - stamps[len(stamps) // 2 - 1]) /
                                                 (len(stamps) - len(stamps) // 2), 4) if len(stamps) >= 2 else None),
        "loss_first10": {key: mean_of(history[:k], key) for key in keys},
        "loss_last10": {key: mean_of(history[-k:], key) for key in keys},
        "skipped_steps": summary.get("skipped_steps"),
        "rss_after_data_mb": round(rss_data, 1),
        "rss_after_build_mb": round(rss_built, 1),
        "peak_rss_train_mb": round(peak_train, 1),
        "loadavg_train_start": load_train,
        "loadavg_train_end": loadavg(),
    }
    write_json(out / f"train_{n}.json", result, indent=2)
    print(f"  [{n} classes] trained {iters} its in {summary['seconds']:.1f} s, checkpoint "
          f"{result['checkpoint_mb']} MB, peak RSS {peak_train:.0f} MB", flush=True)


# ---------------------------------------------------------------------------------------------------------
# worker: predict with one model, driven over stdin/stdout (JSON lines) by the parent


class StageTimer:
    """Wall time spent in parts of MNC.detect (hooks and wrappers in this process only; no model code changed)."""

    def __init__(self, model) -> None:
        import mnc_core.model as mnc_model

        self.t = {"classify_head": 0.0, "class_layers": 0.0, "final_masks": 0.0, "postprocess": 0.0}
        self._start: dict[str, float] = {}
        head = model.classify_head
        head.register_forward_pre_hook(lambda m, i: self._begin("classify_head"))
        head.register_forward_hook(lambda m, i, o: self._end("classify_head"))
        for layer in (head.cls_score, head.seg_cls_score, head.bbox_pred):  # the layers that grow with N
            layer.register_forward_pre_hook(lambda m, i: self._begin("class_layers"))
            layer.register_forward_hook(lambda m, i, o: self._end("class_layers"))
        if model.final_mask_head is not None:  # instance attribute: detection_weights() + T + FCN
            model._final_masks = self._timed("final_masks", model._final_masks)
        mnc_model.postprocess_image = self._timed("postprocess", mnc_model.postprocess_image)

    def _timed(self, key: str, inner):
        """``inner`` with its wall time added to self.t[key] on every call."""
        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return inner(*a, **kw)
            finally:
                self.t[key] += time.perf_counter() - t

        return timed

    def _begin(self, key: str) -> None:
        self._start[key] = time.perf_counter()

    def _end(self, key: str) -> None:
        self.t[key] += time.perf_counter() - self._start.pop(key)

    def take(self) -> dict[str, float]:
        out = {k: round(v * 1000, 2) for k, v in self.t.items()}
        for k in self.t:
            self.t[k] = 0.0
        return out


def worker_predict(args) -> None:
    setup_torch()
    from mnc_core import Predictor
    from partial_sup.maskx import load_model

    channel = sys.stdout
    sys.stdout = sys.stderr  # anything else that prints must not break the JSON-lines protocol

    def send(obj) -> None:
        channel.write(json.dumps(obj) + "\n")
        channel.flush()

    t0 = time.perf_counter()
    model, config, categories, _ = load_model(args.checkpoint, device="cpu")
    load_s = time.perf_counter() - t0
    predictor = Predictor(model, config, categories, "cpu")
    timer = StageTimer(model)
    paths, coco_ids = val_images(args.val_images)
    images = [read_rgb(p) for p in paths]
    send({"ready": True, "load_seconds": round(load_s, 2), "rss_after_load_mb": round(proc_status_mb("VmRSS"), 1),
          "peak_rss_load_mb": round(proc_status_mb("VmHWM"), 1), "images": len(images)})
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "predict":
            image = images[cmd["index"]]
            thr = cmd.get("score_threshold")
            if cmd.get("reset_peak"):
                reset_peak_rss()
            timer.take()
            t, c = time.perf_counter(), time.process_time()
            instances = predictor(image, score_threshold=thr)
            ms = (time.perf_counter() - t) * 1000
            cpu_ms = (time.process_time() - c) * 1000
            send({"ms": round(ms, 2), "cpu_ms": round(cpu_ms, 2), "stages_ms": timer.take(), "detections": len(instances),
                  "detections_box_only_classes": sum(1 for i in instances if i.category_id not in coco_ids),
                  "peak_rss_mb": round(proc_status_mb("VmHWM"), 1), "rss_mb": round(proc_status_mb("VmRSS"), 1)})
        elif op == "thresholds":  # the model's own thresholds (what MNC.detect uses for final masks and voting)
            t = cmd["score_threshold"]  # None: back to the checkpoint's own thresholds
            model.config = config if t is None else config.replace(score_threshold=t, vote_score_threshold=t)
            reset_peak_rss()
            send({"ok": True, "rss_mb": round(proc_status_mb("VmRSS"), 1)})
        elif op == "quit":
            send({"peak_rss_mb": round(proc_status_mb("VmHWM"), 1)})
            return


# ---------------------------------------------------------------------------------------------------------
# parent


def worker_cmd(args, *extra: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--train-images", str(args.train_images),
            "--val-images", str(args.val_images), "--iterations", str(args.iterations),
            "--image-size", str(args.image_size), "--relabel-fraction", str(args.relabel_fraction),
            "--seed", str(args.seed), "--out", str(args.out), *extra]


class PredictWorker:
    def __init__(self, args, n: int) -> None:
        self.n = n
        self.proc = subprocess.Popen(worker_cmd(args, "--worker", "predict", "--checkpoint",
                                                str(Path(args.out) / f"model_{n}.pt")),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(REPO))
        self.ready = self.read()

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.n}-class predict worker died (exit {self.proc.wait()})")
        return json.loads(line)

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> dict:
        out = self.ask(op="quit")
        self.proc.wait(timeout=60)
        return out


def timed_pass(workers: dict, variants: list[int], count: int, label: str) -> dict[int, list[dict]]:
    """Each val image through every model, back to back; which model goes first alternates per image."""
    rows: dict[int, list[dict]] = {n: [] for n in variants}
    for i in range(count):
        order = variants if i % 2 == 0 else variants[::-1]
        for n in order:
            rows[n].append(workers[n].ask(op="predict", index=i))
        print(f"  [{label}] image {i + 1}/{count}: " + "  ".join(
            f"{n}: {rows[n][-1]['ms']:.0f} ms ({rows[n][-1]['detections']} dets)" for n in variants), flush=True)
    return rows


def summarize_latency(rows: list[dict]) -> dict:
    ms = [r["ms"] for r in rows]
    cpu = [r["cpu_ms"] for r in rows]
    stage_keys = rows[0]["stages_ms"].keys() if rows else []
    return {"n": len(ms), "median_ms": round(statistics.median(ms), 1), "p90_ms": round(percentile(ms, 90), 1),
            "mean_ms": round(statistics.fmean(ms), 1), "cpu_median_ms": round(statistics.median(cpu), 1),
            "stages_median_ms": {k: round(statistics.median(r["stages_ms"][k] for r in rows), 1) for k in stage_keys},
            "detections_per_image": round(statistics.fmean(r["detections"] for r in rows), 1),
            "box_only_class_detections_per_image": round(statistics.fmean(r["detections_box_only_classes"]
                                                                          for r in rows), 1),
            "all_ms": ms}


def fmt(v, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:,.{digits}f}"


def ratio(a, b) -> str:
    try:
        return f"{b / a:.2f}x" if a else "-"
    except TypeError:
        return "-"


def table(res: dict) -> str:
    a, b = res["models"]["80"], res["models"][str(res["num_classes"])]
    rows = [
        ("categories (with masks / box-only)", f"{a['train']['categories']} (80 / 0)",
         f"{b['train']['categories']} (80 / {b['train']['categories'] - 80})", None, None),
        ("box-only instances in training (distinct B classes)", "0", f"{b['train']['relabelled_box_only_instances']} "
         f"({b['train']['extra_classes_with_instances']})", None, None),
        ("parameters, total", fmt(a["train"]["params"]["total"]), fmt(b["train"]["params"]["total"]),
         a["train"]["params"]["total"], b["train"]["params"]["total"]),
        ("  stage-3 cls_score + seg_cls_score + bbox_pred", fmt(a["train"]["params"]["stage3_class_layers"]),
         fmt(b["train"]["params"]["stage3_class_layers"]), a["train"]["params"]["stage3_class_layers"],
         b["train"]["params"]["stage3_class_layers"]),
        ("  trainable in heads mode", fmt(a["train"]["params"]["trainable_heads_mode"]),
         fmt(b["train"]["params"]["trainable_heads_mode"]), a["train"]["params"]["trainable_heads_mode"],
         b["train"]["params"]["trainable_heads_mode"]),
        ("checkpoint on disk (MB)", fmt(a["train"]["checkpoint_mb"]), fmt(b["train"]["checkpoint_mb"]),
         a["train"]["checkpoint_mb"], b["train"]["checkpoint_mb"]),
        ("training s/iteration (all / 2nd half)",
         f"{a['train']['seconds_per_iteration']:.3f} / {a['train']['seconds_per_iteration_2nd_half']:.3f}",
         f"{b['train']['seconds_per_iteration']:.3f} / {b['train']['seconds_per_iteration_2nd_half']:.3f}",
         a["train"]["seconds_per_iteration"], b["train"]["seconds_per_iteration"]),
        ("training CPU s/iteration (process time, 2 threads)", f"{a['train']['cpu_seconds_per_iteration']:.3f}",
         f"{b['train']['cpu_seconds_per_iteration']:.3f}", a["train"]["cpu_seconds_per_iteration"],
         b["train"]["cpu_seconds_per_iteration"]),
        ("training loss, mean of first 10 -> last 10 its",
         f"{a['train']['loss_first10']['total']:.2f} -> {a['train']['loss_last10']['total']:.2f}",
         f"{b['train']['loss_first10']['total']:.2f} -> {b['train']['loss_last10']['total']:.2f}", None, None),
        ("  of which cls (stage 3)",
         f"{a['train']['loss_first10']['cls']:.2f} -> {a['train']['loss_last10']['cls']:.2f}",
         f"{b['train']['loss_first10']['cls']:.2f} -> {b['train']['loss_last10']['cls']:.2f}", None, None),
        ("  of which mask_final (Mask^X, set A only)",
         f"{a['train']['loss_first10']['mask_final']:.3f} -> {a['train']['loss_last10']['mask_final']:.3f}",
         f"{b['train']['loss_first10']['mask_final']:.3f} -> {b['train']['loss_last10']['mask_final']:.3f}",
         None, None),
        ("peak RSS, train process (MB)", fmt(a["train"]["peak_rss_train_mb"], 0), fmt(b["train"]["peak_rss_train_mb"], 0),
         a["train"]["peak_rss_train_mb"], b["train"]["peak_rss_train_mb"]),
        ("**models' default score_threshold = vote_score_threshold = 0.05**", "", "", None, None),
        ("predict latency, median (ms)", fmt(a["predict"]["median_ms"]), fmt(b["predict"]["median_ms"]),
         a["predict"]["median_ms"], b["predict"]["median_ms"]),
        ("predict latency, p90 (ms)", fmt(a["predict"]["p90_ms"]), fmt(b["predict"]["p90_ms"]),
         a["predict"]["p90_ms"], b["predict"]["p90_ms"]),
        ("predict CPU time, median (ms, process time)", fmt(a["predict"]["cpu_median_ms"]),
         fmt(b["predict"]["cpu_median_ms"]), a["predict"]["cpu_median_ms"], b["predict"]["cpu_median_ms"]),
    ]
    for key, label in (("classify_head", "  stage-3 classify head, both passes (median ms)"),
                       ("class_layers", "    of which cls_score + seg_cls_score + bbox_pred (median ms)"),
                       ("final_masks", "  final masks: detection weights + T + FCN (median ms)"),
                       ("postprocess", "  post-processing: NMS, voting, pasting (median ms)")):
        va, vb = a["predict"]["stages_median_ms"][key], b["predict"]["stages_median_ms"][key]
        rows.append((label, fmt(va), fmt(vb), va, vb))
    rows += [
        ("detections per image", fmt(a["predict"]["detections_per_image"]),
         f"{fmt(b['predict']['detections_per_image'])} ({fmt(b['predict']['box_only_class_detections_per_image'])} "
         "of B classes)", None, None),
        ("peak RSS, predict process so far (MB)", fmt(a["peak_rss_predict_mb"], 0), fmt(b["peak_rss_predict_mb"], 0),
         a["peak_rss_predict_mb"], b["peak_rss_predict_mb"]),
    ]
    if a.get("predict_low") and b.get("predict_low"):
        la, lb = a["predict_low"], b["predict_low"]
        t = la["score_threshold"]
        rows += [
            (f"**models' score_threshold = vote_score_threshold = {t}**", "", "", None, None),
            ("predict latency, median (ms)", fmt(la["median_ms"]), fmt(lb["median_ms"]), la["median_ms"], lb["median_ms"]),
            ("predict latency, p90 (ms)", fmt(la["p90_ms"]), fmt(lb["p90_ms"]), la["p90_ms"], lb["p90_ms"]),
        ]
        for key, label in (("class_layers", "  cls_score + seg_cls_score + bbox_pred (median ms)"),
                           ("final_masks", "  final masks: detection weights + T + FCN (median ms)"),
                           ("postprocess", "  post-processing: NMS, voting, pasting (median ms)")):
            va, vb = la["stages_median_ms"][key], lb["stages_median_ms"][key]
            rows.append((label, fmt(va), fmt(vb), va, vb))
        rows += [
            ("detections per image", fmt(la["detections_per_image"]),
             f"{fmt(lb['detections_per_image'])} ({fmt(lb['box_only_class_detections_per_image'])} of B classes)",
             None, None),
            ("peak RSS during this pass (MB)", fmt(a["peak_rss_predict_low_mb"], 0), fmt(b["peak_rss_predict_low_mb"], 0),
             a["peak_rss_predict_low_mb"], b["peak_rss_predict_low_mb"]),
        ]
    if a.get("probe") and b.get("probe"):
        pa, pb = a["probe"], b["probe"]
        rows += [
            ("**probe: one image, Predictor score_threshold 0.0 (models' thresholds 0.05)**", "", "", None, None),
            ("latency (ms)", fmt(pa["ms"]), fmt(pb["ms"]), pa["ms"], pb["ms"]),
            ("  of which post-processing (ms)", fmt(pa["stages_ms"]["postprocess"]),
             fmt(pb["stages_ms"]["postprocess"]), pa["stages_ms"]["postprocess"], pb["stages_ms"]["postprocess"]),
            ("  detections", fmt(pa["detections"]), fmt(pb["detections"]), None, None),
            ("  final masks: detection weights + T + FCN (ms)", fmt(pa["stages_ms"]["final_masks"]),
             fmt(pb["stages_ms"]["final_masks"]), None, None),
            ("  peak RSS during that prediction (MB)", fmt(pa["peak_rss_mb"], 0), fmt(pb["peak_rss_mb"], 0),
             pa["peak_rss_mb"], pb["peak_rss_mb"]),
        ]
    n = res["num_classes"]
    lines = [f"| | 80 classes | {n:,} classes | {n:,} / 80 |", "|---|---:|---:|---:|"]
    for label, sa, sb, va, vb in rows:
        lines.append(f"| {label} | {sa} | {sb} | {ratio(va, vb) if va is not None else ''} |")
    return "\n".join(lines)


def run_parent(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n_big = args.classes
    variants = [80, n_big]
    res: dict = {"started": stamp(), "loadavg_start": loadavg(), "num_classes": n_big,
                 "settings": {"train_images": args.train_images, "val_images": args.val_images,
                              "iterations": args.iterations, "image_size": args.image_size,
                              "max_size": int(args.image_size * 5 / 3), "relabel_fraction": args.relabel_fraction,
                              "seed": args.seed, "warmup": args.warmup, "mode": "heads (cache_frozen_features=True, body frozen)",
                              "maskx": "transfer", "threads": 2, "score_threshold": 0.05},
                 "cpu": cpu_name(), "models": {str(n): {} for n in variants}}
    print(f"{stamp()}  load {loadavg()}  -> {out}", flush=True)

    for n in variants:
        ready = (out / f"train_{n}.json").is_file() and (out / f"model_{n}.pt").is_file()
        if args.reuse_models and ready:
            print(f"reusing {out / f'model_{n}.pt'} and train_{n}.json", flush=True)
        else:
            print(f"train {n} classes ({args.train_images} images, {args.iterations} its, {args.image_size} px)",
                  flush=True)
            subprocess.run(worker_cmd(args, "--worker", "train", "--classes-worker", str(n)), check=True, cwd=str(REPO))
        res["models"][str(n)]["train"] = json.loads((out / f"train_{n}.json").read_text())
        res["models"][str(n)]["train"]["checkpoint_written"] = stamp(when=(out / f"model_{n}.pt").stat().st_mtime)
        t = res["models"][str(n)]["train"]
        wanted = {"iterations": args.iterations, "image_size": args.image_size, "seed": args.seed,
                  "relabel_fraction": args.relabel_fraction}
        wrong = {k: (t[k], v) for k, v in wanted.items() if k in t and t[k] != v}
        if wrong:
            raise SystemExit(f"--reuse-models: train_{n}.json was made with other settings (had, wanted): {wrong}")
    res["reused_models"] = bool(args.reuse_models)

    print(f"predict: {args.val_images} val images, interleaved, {args.warmup} warm-up(s)", flush=True)
    workers = {n: PredictWorker(args, n) for n in variants}
    for n, w in workers.items():
        res["models"][str(n)]["predict_load"] = w.ready
    count = min(w.ready["images"] for w in workers.values())
    for n, w in workers.items():
        for i in range(args.warmup):
            w.ask(op="predict", index=i % count)
    res["loadavg_predict_start"] = loadavg()
    rows = timed_pass(workers, variants, count, "score 0.05")
    res["loadavg_predict_end"] = loadavg()
    for n in variants:
        m = res["models"][str(n)]
        m["predict"] = summarize_latency(rows[n])
        m["peak_rss_predict_mb"] = rows[n][-1]["peak_rss_mb"] if rows[n] else workers[n].ready["peak_rss_load_mb"]
        m["predict_rows"] = rows[n]
    if args.low_threshold > 0:
        t = args.low_threshold
        print(f"predict again with the models' score_threshold = vote_score_threshold = {t}", flush=True)
        for w in workers.values():
            w.ask(op="thresholds", score_threshold=t)
        res["loadavg_low_start"] = loadavg()
        low = timed_pass(workers, variants, count, f"score {t}")
        res["loadavg_low_end"] = loadavg()
        for n in variants:
            m = res["models"][str(n)]
            m["predict_low"] = summarize_latency(low[n])
            m["predict_low"]["score_threshold"] = t
            m["peak_rss_predict_low_mb"] = low[n][-1]["peak_rss_mb"]
            m["predict_low_rows"] = low[n]
        for w in workers.values():
            w.ask(op="thresholds", score_threshold=None)
    if not args.no_probe:
        for n in variants:
            res["models"][str(n)]["probe"] = workers[n].ask(op="predict", index=0, score_threshold=0.0, reset_peak=True)
            print(f"  probe {n} classes at score_threshold 0.0: {res['models'][str(n)]['probe']['ms']:.0f} ms, "
                  f"peak RSS {res['models'][str(n)]['probe']['peak_rss_mb']:.0f} MB", flush=True)
    for n, w in workers.items():
        res["models"][str(n)]["predict_exit"] = w.close()
    res["finished"] = stamp()
    res["loadavg_end"] = loadavg()
    res["table"] = table(res)
    write_json(out / "results.json", res, indent=2)
    print()
    print(res["table"])
    print()
    print(f"load average: start {res['loadavg_start']}, predict {res['loadavg_predict_start']} -> "
          f"{res['loadavg_predict_end']}, end {res['loadavg_end']}; results: {out / 'results.json'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-images", type=int, default=40)
    ap.add_argument("--val-images", type=int, default=20)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--image-size", type=int, default=400, help="short side; long side cap = 5/3 of it")
    ap.add_argument("--classes", type=int, default=3000, help="categories of the big model (>= 90)")
    ap.add_argument("--relabel-fraction", type=float, default=0.5,
                    help="share of the instances re-labelled to box-only extra classes (big model only)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=2, help="untimed predictions per model before timing")
    ap.add_argument("--low-threshold", type=float, default=0.005,
                    help="second timed pass with the models' score_threshold = vote_score_threshold set to this "
                         "(short training leaves every score under 0.05); 0 = skip")
    ap.add_argument("--no-probe", action="store_true", help="skip the score_threshold 0.0 probe")
    ap.add_argument("--reuse-models", action="store_true",
                    help="reuse OUT/model_N.pt + OUT/train_N.json from an earlier run (only predict again)")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--worker", choices=("train", "predict"), help=argparse.SUPPRESS)
    ap.add_argument("--classes-worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "train":
        worker_train(args)
    elif args.worker == "predict":
        worker_predict(args)
    else:
        run_parent(args)


if __name__ == "__main__":
    main()
