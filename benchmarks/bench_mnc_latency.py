#!/usr/bin/env python
"""MNC inference latency per image with a per-stage breakdown (cf. the MNC paper's Table 3),
side by side in the same run with torchvision's Mask R-CNN on the same backbone.

    python benchmarks/bench_mnc_latency.py                      # CPU, 2 threads, 10 val images after 2 warm-ups
    python benchmarks/bench_mnc_latency.py --device cuda        # a GPU (skips with a message if CUDA is absent)
    python benchmarks/bench_mnc_latency.py --images 3 --warmup 1 --skip-peer   # quick check
    python benchmarks/bench_mnc_latency.py --compile --warmup 3  # MNC's backbone and heads through torch.compile

Both models are in eval mode with ImageNet backbone weights (heads random: latency does not depend
on training) and 81 classes, at 600 px short side / 1000 px long side cap, 300 RPN proposals.
MNC's backbone folds its frozen BatchNorm into the convolutions; the peer's is folded the same way
(mnc_core.backbone.fold_frozen_bn, exact) unless --stock-peer-bn. On a CPU, MNC's fully connected layers
run through oneDNN (mnc_core/linear.py); the peer's stock nn.Linear layers (MKL) do so too with
--peer-onednn-linear. Score thresholds are 0.0 for both (MNC `score_threshold`, Mask R-CNN `box_score_thresh`) with 100
detections per image, so that both post-process all of their candidates and paste 100 masks,
independent of how confident the (untrained) heads are. MNC's stage boundaries are timestamps taken
by forward hooks on its sub-modules while `MNC.detect` runs (nothing of the model is re-implemented):

    backbone  images -> features                          (hooks on model.backbone)
    stage 1   RPN: head, decoding, NMS -> 300 boxes        (model.rpn)
    stage 2   RoI warp + mask head on the 300 boxes        (end of RPN -> end of 1st mask_head call)
    stage 3   masking + categorisation head                (1st classify_head call)
    stage 4   box refinement, RoI warp + mask head again   (end of 1st classify -> end of 2nd mask_head)
    stage 5   categorisation head again                    (2nd classify_head call)
    other     NMS, mask voting, pasting (postprocess)      (end of 2nd classify -> end of detect)
    input     resize + normalise + pad (Predictor's preprocessing, before detect)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from common import DEFAULT_DATA, DEFAULT_WEIGHTS, benchmark_device, cpu_name, read_rgb, stamp, write_json
from mnc_core.linear import ONEDNN_PREFERRED
from maskrcnn_peer import build_peer, image_tensor

MNC_STAGES = ["input", "backbone", "stage1_rpn", "stage2_mask", "stage3_cls", "stage4_mask", "stage5_cls", "other"]
PEER_STAGES = ["transform", "backbone", "rpn", "box_head", "mask_head", "other"]


def load_images(data: Path, n: int) -> list[np.ndarray]:
    ann = json.loads((data / "val.json").read_text())
    imgs = sorted(ann["images"], key=lambda im: im["id"])[:n]
    return [read_rgb(data / "images" / im["file_name"], exif_transpose=False) for im in imgs]


class Clock:
    """Timestamps at named events; synchronises CUDA first so GPU work is attributed to its stage."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.events: list[tuple[str, float]] = []

    def mark(self, name: str) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.events.append((name, time.perf_counter()))

    def hook(self, module: torch.nn.Module, name: str) -> None:
        module.register_forward_pre_hook(lambda m, a: self.mark(name + ".start"))
        module.register_forward_hook(lambda m, a, o: self.mark(name + ".end"))


def _t(events: list[tuple[str, float]], name: str, occurrence: int = 0) -> float:
    hits = [t for n, t in events if n == name]
    return hits[occurrence]


def mnc_breakdown(ev: list[tuple[str, float]], five: bool) -> dict[str, float]:
    ms = lambda a, b: 1000.0 * (b - a)  # noqa: E731
    out = {"input": ms(_t(ev, "begin"), _t(ev, "detect.start")),
           "backbone": ms(_t(ev, "detect.start"), _t(ev, "backbone.end")),
           "stage1_rpn": ms(_t(ev, "backbone.end"), _t(ev, "rpn.end")),
           "stage2_mask": ms(_t(ev, "rpn.end"), _t(ev, "mask_head.end")),
           "stage3_cls": ms(_t(ev, "mask_head.end"), _t(ev, "classify_head.end"))}
    last = _t(ev, "classify_head.end")
    if five:
        out["stage4_mask"] = ms(_t(ev, "classify_head.end"), _t(ev, "mask_head.end", 1))
        out["stage5_cls"] = ms(_t(ev, "mask_head.end", 1), _t(ev, "classify_head.end", 1))
        last = _t(ev, "classify_head.end", 1)
    else:
        out["stage4_mask"] = out["stage5_cls"] = 0.0
    out["other"] = ms(last, _t(ev, "end"))  # incl. the Predictor's conversion to Instances
    out["total"] = ms(_t(ev, "begin"), _t(ev, "end"))
    return out


def peer_breakdown(ev: list[tuple[str, float]]) -> dict[str, float]:
    ms = lambda a, b: 1000.0 * (b - a)  # noqa: E731
    return {"transform": ms(_t(ev, "begin"), _t(ev, "transform.end")),
            "backbone": ms(_t(ev, "backbone.start"), _t(ev, "backbone.end")),
            "rpn": ms(_t(ev, "rpn.start"), _t(ev, "rpn.end")),
            "box_head": ms(_t(ev, "roi_heads.start"), _t(ev, "mask_roi_pool.start")),
            "mask_head": ms(_t(ev, "mask_roi_pool.start"), _t(ev, "mask_predictor.end")),
            "other": ms(_t(ev, "mask_predictor.end"), _t(ev, "end")),  # mask paste + box rescale
            "total": ms(_t(ev, "begin"), _t(ev, "end"))}


def build_mnc(args, device):
    """--model preset: what users get (the heads preset's MNCConfig, multi-scale, with its Mask^X final masks);
    plain: MNCConfig's defaults without a final-mask head."""
    from mnc_core import MNCConfig, Predictor, build_model
    from partial_sup.maskx import MaskXConfig, build_maskx_model
    from services.training import training_config

    base = training_config("heads", args.min_size) if args.model == "preset" else MNCConfig()
    config = base.replace(min_size=args.min_size, max_size=args.max_size,
                          rpn_post_nms_top_n_test=300, score_threshold=args.score_threshold,
                          detections_per_image=100, mask_voting=not args.no_voting)
    if args.cascade_top_n is not None and hasattr(config, "cascade_top_n_test"):
        config = config.replace(cascade_top_n_test=None if args.cascade_top_n == "all" else int(args.cascade_top_n))
    torch.manual_seed(0)
    if args.model == "preset":
        model = build_maskx_model(config, 80, MaskXConfig(method="transfer"), str(args.weights))
    else:
        model = build_model(config, 80, str(args.weights))
    categories = [(i + 1, f"class{i + 1}") for i in range(80)]
    return Predictor(model, config, categories, device=device), config


def compile_modules(model: torch.nn.Module) -> None:
    """Backbone body, mask head and categorise head through torch.compile (inductor, dynamic shapes): their
    forward methods, so the timing hooks around each module stay eager. The rest (RPN, RoI warp, NMS,
    voting, pasting) stays eager."""
    for module in (model.backbone.body, model.mask_head, model.classify_head):
        module.forward = torch.compile(module.forward, dynamic=True)


def summarise(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="coco_subset folder (val.json, images/)")
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="ImageNet MobileNetV2 .pth")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads on CPU (default 2)")
    p.add_argument("--images", type=int, default=10, help="timed images (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up images (default 2)")
    p.add_argument("--model", choices=("preset", "plain"), default="preset",
                   help="preset: the heads preset's model with its Mask^X final masks (what users get); plain: "
                        "MNCConfig's defaults, no final-mask head")
    p.add_argument("--min-size", type=int, default=None, help="short side (default: the heads preset's)")
    p.add_argument("--max-size", type=int, default=None, help="long side cap (default: 5/3 of the short side)")
    p.add_argument("--score-threshold", "--score-thresh", dest="score_threshold", type=float, default=0.0,
                   help="both models' score threshold (default 0.0)")
    p.add_argument("--no-voting", action="store_true", help="MNC without mask voting")
    p.add_argument("--skip-peer", action="store_true", help="MNC only")
    p.add_argument("--stock-peer-bn", action="store_true",
                   help="keep the peer's FrozenBatchNorm2d layers (default: folded into the convs, as MNC does)")
    p.add_argument("--peer-onednn-linear", action="store_true",
                   help="the peer's fully connected layers (box head) through oneDNN on a CPU too, as MNC's heads "
                        "(mnc_core/linear.py); default: torchvision's stock nn.Linear (MKL)")
    p.add_argument("--mnc-fc-path", choices=("default", "onednn", "mkl"), default="default",
                   help="MNC's fully connected layers: this CPU's default (mnc_core.linear.ONEDNN_PREFERRED: oneDNN "
                        "where it runs AVX-512, else F.linear), or oneDNN / F.linear (MKL) whatever the CPU")
    p.add_argument("--cascade-top-n", default=None, metavar="N|all",
                   help="MNC stages 4-5 on the top N stage-3 RoIs, or 'all' 300 (default: MNCConfig's)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile (inductor, dynamic shapes) MNC's backbone body, mask head and categorise "
                        "head (the peer stays eager); compiled during the warm-up images")
    p.add_argument("--json", type=Path, default=None, help="also write the medians here")
    args = p.parse_args()
    if args.min_size is None:
        from services.presets import PRESETS

        args.min_size = PRESETS["heads"].image_size
    if args.max_size is None:
        args.max_size = max(args.min_size, int(args.min_size * 5 / 3))

    device = benchmark_device(args.device, args.threads, args.data, args.weights, "the GPU latency benchmark")
    if device is None:
        return 0
    images = load_images(args.data, args.warmup + args.images)
    if len(images) < args.warmup + args.images:
        raise SystemExit(f"only {len(images)} val images")

    predictor, config = build_mnc(args, device)
    mnc = predictor.model
    if args.mnc_fc_path != "default":
        from mnc_core.linear import Linear

        for module in mnc.modules():
            if isinstance(module, Linear):
                module.onednn = args.mnc_fc_path == "onednn"
    if args.compile:
        compile_modules(mnc)
    mclock = Clock(device)
    for mod, name in ((mnc.backbone, "backbone"), (mnc.rpn, "rpn"), (mnc.mask_head, "mask_head"),
                      (mnc.classify_head, "classify_head")):
        mclock.hook(mod, name)
    orig_detect = mnc.detect

    def timed_detect(*a, **kw):
        mclock.mark("detect.start")
        out = orig_detect(*a, **kw)
        mclock.mark("detect.end")
        return out

    mnc.detect = timed_detect

    peer = pclock = None
    if not args.skip_peer:
        torch.manual_seed(0)
        # the same layout as MNC's: its pyramid (mnc_core's backbone, BN folded) and channels, or one map
        peer = build_peer(81, args.weights, min_size=args.min_size, max_size=args.max_size,
                          box_score_thresh=args.score_threshold, detections_per_img=100,
                          rpn_post_nms_top_n_test=300, pyramid=config.feature_pyramid,
                          channels=config.feature_channels)
        if not args.stock_peer_bn and not config.feature_pyramid:  # MNC's backbone folds its frozen BN; here too
            from mnc_core.backbone import fold_frozen_bn

            fold_frozen_bn(peer.backbone.body)
        if args.peer_onednn_linear:
            from mnc_core.linear import linear

            for module in peer.modules():
                if type(module) is torch.nn.Linear:
                    module.forward = lambda x, layer=module: linear(x, layer.weight, layer.bias, onednn=True)
        peer = peer.to(device).eval()
        pclock = Clock(device)
        for mod, name in ((peer.transform, "transform"), (peer.backbone, "backbone"), (peer.rpn, "rpn"),
                          (peer.roi_heads, "roi_heads"), (peer.roi_heads.mask_roi_pool, "mask_roi_pool"),
                          (peer.roi_heads.mask_predictor, "mask_predictor")):
            pclock.hook(mod, name)

    mnc_rows, peer_rows, n_dets = [], [], {"mnc": [], "peer": []}
    warmup_seconds = 0.0  # MNC's warm-up images (with --compile: the compilation)
    with torch.inference_mode():
        for i, img in enumerate(images):
            timed = i >= args.warmup
            mclock.events = []
            mclock.mark("begin")
            inst = predictor(img)
            mclock.mark("end")
            row = mnc_breakdown(mclock.events, config.test_stages == 5)
            if not timed:
                warmup_seconds += row["total"] / 1000.0
            if timed:
                mnc_rows.append(row)
                n_dets["mnc"].append(len(inst))
            msg = f"[{'timed' if timed else 'warm-up'} {i + 1}/{len(images)}] {img.shape[1]}x{img.shape[0]}  MNC {row['total']:7.1f} ms ({len(inst)} dets)"
            if peer is not None:
                pclock.events = []
                pclock.mark("begin")
                out = peer([image_tensor(img, device)])[0]
                masks = (out["masks"][:, 0] >= 0.5).cpu()  # the boolean masks a user gets, like MNC's
                pclock.mark("end")
                prow = peer_breakdown(pclock.events)
                if timed:
                    peer_rows.append(prow)
                    n_dets["peer"].append(int(masks.shape[0]))
                msg += f"  Mask R-CNN {prow['total']:7.1f} ms ({masks.shape[0]} dets)"
            print(msg, flush=True)

    m = summarise(mnc_rows)
    load = os.getloadavg()
    when = stamp(seconds=False)
    print()
    print(f"MNC 5-stage vs Mask R-CNN, {args.min_size}/{args.max_size} px, {args.images} coco_subset val images "
          f"(median of per-image times), device {device}"
          + (f", {args.threads} threads, {cpu_name()}" if device.type == "cpu" else f" ({torch.cuda.get_device_name()})"))
    print(f"MNC fcs: {args.mnc_fc_path} (this CPU's default: {'oneDNN' if ONEDNN_PREFERRED else 'F.linear'})")
    print(f"{when}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (shared machine: timings vary)")
    print(f"score threshold {args.score_threshold} for both, 100 detections/image; MNC mask voting "
          f"{'off' if args.no_voting else 'on'}; MNC stages 4-5 on "
          f"{getattr(config, 'cascade_top_n_test', None) or 'all'} of the 300 RoIs; Mask R-CNN backbone BN "
          f"{'FrozenBatchNorm2d (stock)' if args.stock_peer_bn else 'folded into the convs (like MNC)'}; "
          f"Mask R-CNN fcs {'through oneDNN (like MNC)' if args.peer_onednn_linear else 'stock nn.Linear'}"
          + (f"; MNC backbone and heads torch.compile'd (warm-up images {warmup_seconds:.0f} s)" if args.compile else ""))
    print()
    print("| MNC stage | ms (median) |")
    print("|---|---:|")
    for k in MNC_STAGES:
        print(f"| {k} | {m[k]:.1f} |")
    print(f"| **total** | **{m['total']:.1f}** |")
    result = {"when": when, "load": load, "device": str(device), "threads": args.threads, "compile": args.compile,
              "cpu": cpu_name(),
              "peer_onednn_linear": args.peer_onednn_linear, "stock_peer_bn": args.stock_peer_bn,
              "mnc_fc_path": args.mnc_fc_path,
              "warmup_seconds": warmup_seconds, "mnc": m,
              "cascade_top_n_test": getattr(config, "cascade_top_n_test", None),
              "mnc_totals": [r["total"] for r in mnc_rows], "detections": n_dets}
    if peer_rows:
        pm = summarise(peer_rows)
        result["peer"] = pm
        result["peer_totals"] = [r["total"] for r in peer_rows]
        print()
        print("| Mask R-CNN stage | ms (median) |")
        print("|---|---:|")
        for k in PEER_STAGES:
            print(f"| {k} | {pm[k]:.1f} |")
        print(f"| **total** | **{pm['total']:.1f}** |")
        # per-image ratio (both models ran on the same image back to back), then the median
        ratios = [a["total"] / b["total"] for a, b in zip(mnc_rows, peer_rows)]
        result["ratio_median"] = statistics.median(ratios)
        print()
        print("| | MNC | Mask R-CNN | MNC / Mask R-CNN |")
        print("|---|---:|---:|---:|")
        print(f"| total ms per image (median) | {m['total']:.1f} | {pm['total']:.1f} | "
              f"{m['total'] / pm['total']:.2f} (median of per-image ratios {result['ratio_median']:.2f}) |")
        goal = 0.5 if device.type == "cpu" else 1.0  # issue 13
        print(f"goal MNC / Mask R-CNN <= {goal:.1f} on this device: "
              f"{'met' if result['ratio_median'] <= goal else 'NOT met'}")
    if device.type == "cuda":
        print(f"goal <= 30 ms per image on a GPU: {'met' if m['total'] <= 30 else 'NOT met'} ({m['total']:.1f} ms)")
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
