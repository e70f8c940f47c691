#!/usr/bin/env python
"""torch.compile for MNC's inference, against eager in the same process (issue 13: "torch.compile where it
pays off, measured; never required").

    python benchmarks/bench_compile.py --json benchmarks/out/compile_cpu.json
    python benchmarks/bench_compile.py --device cuda --json OUT/compile.json

Two copies of the model of `bench_mnc_latency.py` (5 stages, 600 / 1000 px, 300 RoIs, score threshold 0,
100 detections): one eager, one with the forward of its backbone body, mask head and categorise head through
`torch.compile` (inductor, dynamic shapes; the rest - RPN, RoI warp, NMS, voting, pasting - stays eager).
Each timed image runs through both Predictors alternately, `--repeats` times each; an image's time is the
least of its repeats (the figure least disturbed by other jobs on a shared machine), its ratio compiled /
eager, and the summary the medians over the images. The compile time is that of the warm-up images.
Also checks that both give the same detections (count, labels; scores within 1e-3).
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from bench_mnc_latency import build_mnc, compile_modules, load_images
from common import DEFAULT_DATA, DEFAULT_WEIGHTS, benchmark_device, stamp, write_json


def timed(fn) -> tuple[float, object]:
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return 1000.0 * (time.perf_counter() - start), out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--images", type=int, default=6, help="timed images (default 6)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up images: compilation (default 3)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each model per timed image (default 3)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    device = benchmark_device(args.device, args.threads, args.data, args.weights, "the compile comparison")
    if device is None:
        return 0
    settings = argparse.Namespace(min_size=600, max_size=1000, score_threshold=0.0, no_voting=False,
                                  cascade_top_n=None, weights=args.weights)
    eager, config = build_mnc(settings, device)
    compiled = copy.copy(eager)
    compiled.model = copy.deepcopy(eager.model)
    compile_modules(compiled.model)
    images = load_images(args.data, args.warmup + args.images)
    rows = []
    with torch.inference_mode():
        compile_ms = sum(timed(lambda: compiled(img))[0] for img in images[:args.warmup])
        for img in images[:args.warmup]:
            eager(img)
        for i, img in enumerate(images[args.warmup:]):
            times: dict[str, list[float]] = {"eager": [], "compiled": []}
            outs = {}
            for _ in range(args.repeats):
                for name, predictor in (("eager", eager), ("compiled", compiled)):
                    ms, outs[name] = timed(lambda: predictor(img))
                    times[name].append(ms)
            a, b = outs["eager"], outs["compiled"]
            same = len(a) == len(b) and all(x.category_id == y.category_id and abs(x.score - y.score) < 1e-3
                                            for x, y in zip(a, b))
            row = {"eager_ms": min(times["eager"]), "compiled_ms": min(times["compiled"]), "same_detections": same}
            row["ratio"] = row["compiled_ms"] / row["eager_ms"]
            rows.append(row)
            print(f"[{i + 1}/{args.images}] eager {row['eager_ms']:.1f} ms, compiled {row['compiled_ms']:.1f} ms, "
                  f"ratio {row['ratio']:.3f}, same detections: {same}", flush=True)
    load = os.getloadavg()
    result = {"when": stamp(seconds=False), "load": load, "device": str(device), "threads": args.threads,
              "torch": torch.__version__, "compile_warmup_seconds": compile_ms / 1000.0,
              "eager_ms_median": statistics.median(r["eager_ms"] for r in rows),
              "compiled_ms_median": statistics.median(r["compiled_ms"] for r in rows),
              "ratio_median": statistics.median(r["ratio"] for r in rows),
              "all_same_detections": all(r["same_detections"] for r in rows), "rows": rows}
    print(f"{result['when']}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {device}, torch {torch.__version__}")
    print(f"warm-up (compilation) {result['compile_warmup_seconds']:.1f} s; median per image: eager "
          f"{result['eager_ms_median']:.1f} ms, compiled {result['compiled_ms_median']:.1f} ms, "
          f"compiled / eager {result['ratio_median']:.3f}; same detections: {result['all_same_detections']}")
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
