#!/usr/bin/env python
"""Training memory stays flat whatever the dataset size: heads training on a synthetic database of 20,000 images.

    python benchmarks/bench_train_memory.py                        # 20,000 and 200 images, 2,000 iterations each
    python benchmarks/bench_train_memory.py --images 400 --small-images 40 --iterations 60 \\
        --work benchmarks/out/train_memory_smoke                    # smoke test (~2 min)

Two databases are made through the command line (`launch.py import-coco` of a generated COCO file of
synthetic 320x240 JPEGs with 1-3 polygon objects each, 3 classes): a large one (`--images`, 20,000) and a
small one (`--small-images`, 200). On each, `launch.py train --mode heads` runs `--iterations` at 240 px
with a feature cache of `--feature-cache-mb`. While it trains, the resident memory (VmRSS) of the training
process and of its DataLoader workers is sampled every 0.25 s. With bounded caches the peak memory of the
large database equals the small one's, and the memory after the caches fill stays flat as the training
keeps meeting images it has not seen; an unbounded cache would grow by the bytes printed as
"unbounded caches would hold". The figures go to WORK/results.json and the printed table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

from common import (DEFAULT_WEIGHTS, REPO, echo_command, launch_command, loadavg, proc_status_mb,
                    require, write_json)

WIDTH, HEIGHT = 320, 240


def make_coco(folder: Path, n: int, seed: int = 0) -> Path:
    """n synthetic JPEGs with 1-3 objects (rectangles and ellipse polygons) and their COCO file."""
    from PIL import Image, ImageDraw

    out = folder / "annotations.json"
    if out.exists() and json.loads(out.read_text())["info"]["images"] == n:
        return out
    images_dir = folder / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(1, n + 1):
        picture = Image.fromarray(rng.integers(60, 120, size=(HEIGHT, WIDTH, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(picture)
        for _ in range(int(rng.integers(1, 4))):
            w, h = int(rng.integers(30, 120)), int(rng.integers(30, 100))
            x, y = int(rng.integers(0, WIDTH - w)), int(rng.integers(0, HEIGHT - h))
            kind = int(rng.integers(1, 4))
            if kind == 1:
                polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
            else:
                t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
                polygon = np.stack([x + w / 2 + w / 2 * np.cos(t), y + h / 2 + h / 2 * np.sin(t)], 1).ravel().round(1)
                polygon = [float(v) for v in polygon]
            draw.polygon(polygon, fill=tuple(int(v) for v in rng.integers(130, 255, 3)))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": kind,
                                "segmentation": [polygon], "bbox": [x, y, w, h], "area": float(w * h), "iscrowd": 0})
        name = f"{image_id:06d}.jpg"
        picture.save(images_dir / name, quality=90)
        images.append({"id": image_id, "file_name": name, "width": WIDTH, "height": HEIGHT})
    categories = [{"id": 1, "name": "box"}, {"id": 2, "name": "ellipse"}, {"id": 3, "name": "blob"}]
    out.write_text(json.dumps({"info": {"images": n}, "images": images, "annotations": annotations,
                               "categories": categories}))
    return out


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def train_and_sample(data_dir: Path, args, log) -> dict:
    cmd = launch_command(["train", "--data-dir", str(data_dir), "--mode", "heads", "--init", "backbone",
                          "--iterations", str(args.iterations), "--image-size", str(HEIGHT), "--backbone-weights",
                          str(args.weights), "--device", "cpu", "--feature-cache-mb", str(args.feature_cache_mb)])
    echo_command(cmd, log)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TQDM_MININTERVAL="1")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    samples: list[tuple[float, float, float]] = []  # (seconds, training process MB, workers MB)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            workers = sum(proc_status_mb("VmRSS", c) for c in children(proc.pid))
            samples.append((time.perf_counter() - start, proc_status_mb("VmRSS", proc.pid), workers))
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    tail = []
    for line in proc.stdout:
        log.write(line)
        tail = (tail + [line.rstrip()])[-5:]
    rc = proc.wait()
    done.set()
    sampler.join()
    if rc != 0:
        raise SystemExit("training failed:\n" + "\n".join(tail))
    seconds = time.perf_counter() - start
    main = [s[1] for s in samples if s[1] > 0]
    total = [s[1] + s[2] for s in samples if s[1] > 0]
    quarters = {f"{q}%": round(float(np.max([t for (sec, _, _), t in zip(samples, total)
                                                  if sec <= seconds * q / 100] or [0])), 1) for q in (25, 50, 75, 100)}
    return {"seconds": round(seconds, 1), "peak_training_process_mb": round(max(main), 1),
            "peak_with_workers_mb": round(max(total), 1), "peak_by_elapsed_share_mb": quarters,
            "samples": len(samples)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--small-images", type=int, default=200)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--feature-cache-mb", type=float, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / "out" / "train_memory")
    args = parser.parse_args()
    require(args.weights, "the ImageNet MobileNetV2 weights")
    args.work.mkdir(parents=True, exist_ok=True)
    log = open(args.work / "log.txt", "a")
    results = {"iterations": args.iterations, "feature_cache_mb": args.feature_cache_mb, "image_size": HEIGHT,
               "load_before": loadavg(), "runs": {}}
    for label, n in (("large", args.images), ("small", args.small_images)):
        folder = args.work / f"{n}_images"
        t = time.perf_counter()
        coco = make_coco(folder, n)
        data_dir = folder / "workbench_data"
        if not (data_dir / "workbench.sqlite").exists():
            subprocess.run(launch_command(["import-coco", str(coco), "--images", str(folder / "images"),
                                           "--data-dir", str(data_dir)]), cwd=REPO, check=True,
                           stdout=log, stderr=subprocess.STDOUT)
        prepared = time.perf_counter() - t
        run = train_and_sample(data_dir, args, log)
        # what the unbounded caches of before would have held at the end: every distinct input's frozen
        # features (96 x 16 x 20 float32 at 240 px, padded to 256 x 320; one per image and flip) and every decoded image
        distinct = min(n, args.iterations) * (2 if args.iterations > n else 1)
        run["unbounded_caches_would_hold_mb"] = round((distinct * 96 * 16 * 20 * 4 + min(n, args.iterations)
                                                       * WIDTH * HEIGHT * 3) / 2**20, 1)
        run["images"], run["prepare_seconds"] = n, round(prepared, 1)
        results["runs"][label] = run
        print(json.dumps(run), flush=True)
    results["load_after"] = loadavg()
    write_json(args.work / "results.json", results)
    print(f"\n{args.iterations} heads iterations at {HEIGHT} px, feature cache {args.feature_cache_mb:g} MB, "
          f"load {results['load_before']} -> {results['load_after']}\n")
    print("| database | seconds | peak RSS, training process (MB) | peak RSS with workers (MB) | peak after 25 / 50 / 75 / 100 % "
          "of the run (MB) | unbounded caches would hold (MB) |")
    print("|---|---:|---:|---:|---|---:|")
    for run in results["runs"].values():
        q = run["peak_by_elapsed_share_mb"]
        print(f"| {run['images']:,} images | {run['seconds']:.0f} | {run['peak_training_process_mb']:.0f} | "
              f"{run['peak_with_workers_mb']:.0f} | {q['25%']:.0f} / {q['50%']:.0f} / {q['75%']:.0f} / {q['100%']:.0f} | "
              f"{run['unbounded_caches_would_hold_mb']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
