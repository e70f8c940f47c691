#!/usr/bin/env python
"""One-click retraining on a CPU: `heads` mode on 50 photos at 600 px, against the model it replaces.

The workbench's scenario: a model exists (version 1, trained on the first 20 photos), people label
30 more, and press Retrain. `heads` mode starts from the active model, freezes the backbone's body,
caches its features once per photo and flip, and trains the rest. Goal (issue 4): <= 5 minutes on
this 2-core CPU, and better than version 1 on held-out photos.

    python benchmarks/bench_retrain_heads.py                    # both steps (resumable; --force redoes)
    python benchmarks/bench_retrain_heads.py --iterations 5 --first-iterations 5 --val-images 4 \\
        --work benchmarks/out/retrain_smoke                    # smoke test
    python benchmarks/bench_retrain_heads.py --categories person --first-images 20 --images 76 --preset \\
        --work benchmarks/out/retrain_person_preset            # the product's one click, as a user gets it

--preset: both trainings are `launch.py train --mode heads` with no other flag than the data folder (and
`--init backbone` for version 1): the mode's preset, exactly what the UI's Train button runs. The ImageNet
weights are found where torchvision looks for them ($TORCH_HOME/hub/checkpoints, a link to --weights in
WORK/torch_home), as on a machine that has downloaded them once.

Both steps go through the command line (`launch.py import-coco`, `launch.py train --mode heads`), as
the UI's Retrain button does (it runs `launch.py train` in its own process). Metrics are those each
training stores in its model version: COCOeval on the reviewed val-split photos (here: the imported
coco_subset val photos), mask AP / AP50, box AP.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from common import (DEFAULT_DATA, DEFAULT_WEIGHTS, REPO, coco_subset_file, loadavg_text, require,
                    run_launch, stamp, write_json)


def version_metrics(data_dir: Path) -> dict:
    from db import registry
    from db.engine import open_database

    db = open_database(data_dir)
    version = registry.active_version(db)
    run = registry.get_run(db, version.training_run_id)
    out = {"version_id": version.id, "name": version.name, "iterations": run.iteration,
           "image_size": version.config.get("min_size"), **(version.metrics or {})}
    db.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / "out" / "retrain_heads")
    parser.add_argument("--first-images", type=int, default=20, help="photos of version 1")
    parser.add_argument("--images", type=int, default=50, help="photos of the retraining (the first ones included)")
    parser.add_argument("--val-images", type=int, default=None, help="held-out val photos (default: all 79)")
    parser.add_argument("--image-size", type=int, default=600)
    parser.add_argument("--first-iterations", type=int, default=200)
    parser.add_argument("--iterations", type=int, default=200, help="iterations of the retraining (the UI preset)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--categories", default=None,
                        help="comma-separated class names: a project of these classes only (e.g. person)")
    parser.add_argument("--preset", action="store_true",
                        help="train with the heads preset: no --iterations / --image-size / --backbone-weights flags")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    categories = args.categories.split(",") if args.categories else None
    require(args.data / "train.json", "the coco_subset data")
    require(args.weights, "the ImageNet MobileNetV2 weights")
    args.work.mkdir(parents=True, exist_ok=True)
    data_dir = args.work / "workbench_data"
    results_path = args.work / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() and not args.force else {}
    log = open(args.work / "log.txt", "a")

    def launch(cli_args: list[str]) -> float:  # `launch.py CLI_ARGS`, shown and logged; seconds
        return run_launch(cli_args, log, threads=args.threads, stream=True)

    images = str(args.data / "images")
    common = ["--data-dir", str(data_dir), "--device", "cpu", "--image-size", str(args.image_size), "--mode", "heads"]
    first_flags = ["--backbone-weights", str(args.weights), "--iterations", str(args.first_iterations)]
    retrain_flags = ["--iterations", str(args.iterations)]
    if args.preset:
        common, first_flags, retrain_flags = ["--data-dir", str(data_dir), "--mode", "heads"], [], []
        hub = args.work / "torch_home" / "hub" / "checkpoints"
        hub.mkdir(parents=True, exist_ok=True)
        link = hub / args.weights.name
        if not link.exists():
            link.symlink_to(args.weights.resolve())
        os.environ["TORCH_HOME"] = str(args.work / "torch_home")

    if "first" not in results:
        if args.force and data_dir.exists():
            import shutil
            shutil.rmtree(data_dir)
        first = coco_subset_file(args.data / "train.json", args.first_images, args.work / "train_first.json", categories)
        val = coco_subset_file(args.data / "val.json", args.val_images, args.work / "val.json", categories)
        launch(["import-coco", str(val), "--images", images, "--data-dir", str(data_dir), "--split", "val"])
        launch(["import-coco", str(first), "--images", images, "--data-dir", str(data_dir)])
        load_before = loadavg_text()
        seconds = launch(["train", *common, "--init", "backbone", *first_flags])
        results["first"] = {"command_seconds": seconds, "load_before": load_before, "images": args.first_images,
                            **version_metrics(data_dir)}
        write_json(results_path, results)
    if "retrain" not in results:
        more = coco_subset_file(args.data / "train.json", args.images, args.work / "train_more.json", categories)
        launch(["import-coco", str(more), "--images", images, "--data-dir", str(data_dir)])
        load_before = loadavg_text()
        t = time.perf_counter()
        seconds = launch(["train", *common, *retrain_flags])
        results["retrain"] = {"command_seconds": seconds, "load_before": load_before, "load_after": loadavg_text(),
                              "images": args.images, "finished": stamp(), **version_metrics(data_dir)}
        results["retrain"]["wall_seconds"] = time.perf_counter() - t
        write_json(results_path, results)

    def fmt(value, digits=3):
        return "-" if value is None else f"{value:.{digits}f}"

    print("\n| model | photos | iterations | training (s) | whole command (s) | mask AP | mask AP50 | box AP | box AP50 | load |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for key, label in (("first", "version 1 (heads, from ImageNet)"), ("retrain", "retrained (heads, from version 1)")):
        r = results[key]
        print(f"| {label} | {r['images']} | {r['iterations']} | {fmt(r.get('train_seconds'), 0)} | "
              f"{fmt(r['command_seconds'], 0)} | {fmt(r.get('mask_AP'))} | {fmt(r.get('mask_AP50'))} | "
              f"{fmt(r.get('box_AP'))} | {fmt(r.get('box_AP50'))} | {r['load_before']} |")
    r1, r2 = results["first"], results["retrain"]
    print(f"\nretraining: {r2.get('train_seconds', 0):.0f} s of training on {r2['images']} photos at "
          f"{r2.get('image_size')} px; mask AP {fmt(r1.get('mask_AP'))} -> {fmt(r2.get('mask_AP'))}, AP50 "
          f"{fmt(r1.get('mask_AP50'))} -> {fmt(r2.get('mask_AP50'))} on {r2.get('val_images')} held-out photos")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
