#!/usr/bin/env python
"""COCO import/export at scale: 10,000 images and 100,000 mask annotations (synthetic).

    python benchmarks/bench_coco_io.py [--images 10000] [--per-image 10] [--work DIR]

Makes the images (640x480 JPEGs) and a COCO file with polygon masks, then times, each in
its own process so that its peak memory (max RSS) is its own:
`launch.py import-coco`, `export-coco --mask-format polygon` (the imported polygons),
`export-coco --mask-format rle`, then the RLE export imported into a second database and
exported as polygons again (every mask traced: the case of masks drawn with a brush).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from common import REPO
WIDTH, HEIGHT = 640, 480


def make_dataset(work: Path, n_images: int, per_image: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    images_dir = work / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    categories = [{"id": i + 1, "name": f"class_{i + 1}", "supercategory": "synthetic"} for i in range(20)]
    ann_id = 1
    for index in range(n_images):
        name = f"{index // 1000:02d}/img_{index:06d}.jpg"
        path = images_dir / name
        image = Image.new("RGB", (WIDTH, HEIGHT), tuple(int(v) for v in rng.integers(0, 255, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(per_image):
            cx, cy = rng.uniform(40, WIDTH - 40), rng.uniform(40, HEIGHT - 40)
            rx, ry = rng.uniform(8, 60), rng.uniform(8, 60)
            vertices = int(rng.integers(8, 24))
            angles = np.sort(rng.uniform(0, 2 * math.pi, vertices))
            radius = rng.uniform(0.6, 1.0, vertices)
            xs = np.clip(cx + rx * radius * np.cos(angles), 0, WIDTH - 1)
            ys = np.clip(cy + ry * radius * np.sin(angles), 0, HEIGHT - 1)
            polygon = np.stack([xs, ys], 1).reshape(-1).round(2).tolist()
            draw.polygon(list(zip(xs, ys)), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
            annotations.append({"id": ann_id, "image_id": index + 1, "category_id": int(rng.integers(1, 21)),
                                "iscrowd": 0, "segmentation": [polygon],
                                "bbox": [float(xs.min()), float(ys.min()), float(np.ptp(xs)), float(np.ptp(ys))],
                                "area": 0.0})
            ann_id += 1
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            image.save(path, quality=85)
        images.append({"id": index + 1, "file_name": name, "width": WIDTH, "height": HEIGHT})
    out = work / "annotations.json"
    out.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return out


def run_phase(args: list[str]) -> dict:
    """Run launch.py in a child process; returns its wall time and peak memory."""
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", TQDM_DISABLE="1")
    code = ("import resource, sys, time, runpy; sys.argv = ['launch.py'] + sys.argv[1:]; t = time.perf_counter()\n"
            "import launch; rc = launch.main(sys.argv[1:])\n"
            "print('BENCH', time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, rc)")
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    line = next((l for l in result.stdout.splitlines() if l.startswith("BENCH")), None)
    if line is None or result.returncode:
        raise SystemExit(f"phase {args} failed:\n{result.stdout}\n{result.stderr}")
    _, seconds, rss_kb, _ = line.split()
    return {"seconds": float(seconds), "peak_mb": int(rss_kb) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--per-image", type=int, default=10)
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / "out" / "coco_io")
    args = parser.parse_args()
    work = args.work
    data_dir = work / "workbench_data"
    if data_dir.exists():
        import shutil

        shutil.rmtree(data_dir)
    t = time.perf_counter()
    annotations = make_dataset(work, args.images, args.per_image)
    print(f"made {args.images} images and {args.images * args.per_image} annotations in {time.perf_counter() - t:.1f} s")
    rows = [("import-coco (polygons)", run_phase(["import-coco", str(annotations), "--images", str(work / "images"),
                                                  "--data-dir", str(data_dir)]))]
    for fmt in ("polygon", "rle"):
        out = work / f"export_{fmt}.json"
        rows.append((f"export-coco --mask-format {fmt}",
                     run_phase(["export-coco", "--out", str(out), "--mask-format", fmt, "--data-dir", str(data_dir)])))
        exported = json.loads(out.read_text())
        assert len(exported["annotations"]) == args.images * args.per_image
    # Worst case for polygons: masks stored as RLE only (drawn with a brush, or imported as RLE)
    # must be traced into polygons at export, in worker processes on every core.
    rle_dir = work / "workbench_data_rle"
    if rle_dir.exists():
        import shutil

        shutil.rmtree(rle_dir)
    rows.append(("import-coco (RLE)", run_phase(["import-coco", str(work / "export_rle.json"), "--images",
                                                 str(work / "images"), "--data-dir", str(rle_dir)])))
    rows.append(("export-coco --mask-format polygon, traced from RLE",
                 run_phase(["export-coco", "--out", str(work / "export_traced.json"), "--data-dir", str(rle_dir)])))
    n = args.images * args.per_image
    print(f"\n{args.images} images, {n} mask annotations, {os.cpu_count()} CPUs")
    print("| phase | seconds | annotations/s | peak memory (MB) |\n|---|---:|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['seconds']:.1f} | {n / r['seconds']:,.0f} | {r['peak_mb']:,.0f} |")
    print("goal: export of 100,000 annotations <= 20 s and <= 2,048 MB")


if __name__ == "__main__":
    main()
