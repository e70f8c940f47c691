#!/usr/bin/env python
"""MNC accuracy in small: the 8-photo fit (through the project CLI) side by side with torchvision's
Mask R-CNN on the same backbone, and the MNC paper's ablations on the same photos.

    python benchmarks/bench_mnc_accuracy.py                         # everything (resumable: finished steps are kept)
    python benchmarks/bench_mnc_accuracy.py --steps mnc peer        # only the headline pair
    python benchmarks/bench_mnc_accuracy.py --iterations 5 --work benchmarks/out/acc_smoke   # smoke test

Steps (each writes WORK/<step>.json and is skipped on a re-run unless --force):
  mnc       `launch.py import-coco` (the subset) -> `launch.py train --iterations N --image-size S
            --backbone-weights W --device cpu --seed 0 --mode full --mask-head none --init backbone` (plain MNC,
            end-to-end, from ImageNet) -> `launch.py evaluate` on the same photos
  peer      torchvision Mask R-CNN (benchmarks/maskrcnn_peer.py) trained on the same database split with the
            same iterations / size / seed / flips, batch 1, SGD lr 0.01 momentum 0.9 wd 1e-4, warmup and step
            decay like MNC; evaluated the same way (COCO results -> services.evaluation.coco_metrics)
  novote    the `mnc` checkpoint evaluated with mask_voting=False (inference-only ablation)
  detach    MNC trained with detach_proposals=True (no gradient through the boxes)
  stages3   MNC trained with num_stages=3
The ablation trainings use services.training.train_from_database (what `launch.py train` runs) with
the config changed, and are evaluated in-process with the same Predictor + coco_metrics as `evaluate`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from common import (DEFAULT_DATA, DEFAULT_WEIGHTS, REPO, load_coco, loadavg_text, require, run_launch,
                    stamp, write_json)


ALL_STEPS = ["mnc", "peer", "novote", "detach", "stages3"]


def make_subset(data: Path, n: int, out: Path) -> Path:
    """The first n image ids of train.json with at least one non-crowd mask, with all their annotations."""
    ann = json.loads((data / "train.json").read_text())
    good = sorted({a["image_id"] for a in ann["annotations"] if not a.get("iscrowd") and a.get("segmentation")})
    ids = set(good[:n])
    anns = [a for a in ann["annotations"] if a["image_id"] in ids]
    used = {a["category_id"] for a in anns}
    subset = {"info": {"description": f"first {n} coco_subset train images with a non-crowd mask"},
              "licenses": ann.get("licenses", []),
              "images": [im for im in ann["images"] if im["id"] in ids],
              "annotations": anns,
              "categories": [c for c in ann["categories"] if c["id"] in used]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(subset))
    return out


def evaluate_predict(predict, gt_path: Path, images_dir: Path) -> dict:
    """predict(image) -> Instances; COCO results -> coco_metrics, as `launch.py evaluate` does."""
    from services.evaluation import coco_metrics
    from services.models import instance_to_result, read_image

    gt = load_coco(gt_path)
    cats = set(gt.getCatIds())
    results = []
    for im in gt.loadImgs(gt.getImgIds()):
        for inst in predict(read_image(images_dir / im["file_name"])):
            if inst.category_id in cats:
                results.append(instance_to_result(inst, im["id"]))
    return coco_metrics(gt, results)


def brief(metrics: dict) -> dict:
    return {"segm_AP": metrics["segm"]["AP"], "segm_AP50": metrics["segm"]["AP50"], "segm_AP70": metrics["segm"]["AP70"],
            "bbox_AP50": metrics["bbox"]["AP50"], "detections": metrics["detections"]}


def mnc_predict_fn(checkpoint: Path, **config_changes):
    from partial_sup.maskx import predictor_from_file

    pred = predictor_from_file(checkpoint, device="cpu")
    if config_changes:
        pred.config = pred.config.replace(**config_changes)
        pred.model.config = pred.config  # detect() post-processes with the model's config
    return pred


def train_variant(db_dir: Path, name: str, args, log, **changes) -> dict:
    from db.engine import open_database
    from mnc_core import MNCConfig
    from services.presets import TrainingSpec
    from services.training import train_from_database

    if not (db_dir / "imported.ok").exists():  # its own database, so variants can train in parallel
        run_launch(["import-coco", str(args.gt), "--images", str(args.data / "images"), "--data-dir", str(db_dir),
                    "--split", "train"], log, threads=args.threads, stream=True)
        (db_dir / "imported.ok").write_text(stamp())
    db = open_database(db_dir)
    config = MNCConfig().replace(**changes)
    print(f"[{stamp()}] training {name} ({changes}), {args.iterations} it @ {args.image_size} px, "
          f"load {loadavg_text()}", flush=True)
    t = time.perf_counter()
    spec = TrainingSpec(iterations=args.iterations, image_size=args.image_size, backbone_weights=str(args.weights),
                        device="cpu", seed=args.seed, mode="full", mask_head="none", init="backbone")
    res = train_from_database(db, spec, config=config, show_progress=True)
    dt = time.perf_counter() - t
    log.write(f"{name}: {res.summary()} [{dt:.1f} s]\n")
    log.flush()
    metrics = evaluate_predict(mnc_predict_fn(Path(res.checkpoint)), args.gt, args.data / "images")
    return {"train_seconds": dt, "final_loss": res.final_loss, "checkpoint": res.checkpoint, "config": changes,
            **brief(metrics), "metrics": metrics}


def step_mnc(args, log) -> dict:
    data_dir = args.work / "workbench_data"
    if not (data_dir / "imported.ok").exists():
        run_launch(["import-coco", str(args.gt), "--images", str(args.data / "images"), "--data-dir", str(data_dir),
                    "--split", "train"], log, threads=args.threads, stream=True)
        (data_dir / "imported.ok").write_text(stamp())
    train_cmd = ["train", "--data-dir", str(data_dir), "--iterations", str(args.iterations), "--image-size",
                 str(args.image_size), "--backbone-weights", str(args.weights), "--device", "cpu", "--seed",
                 str(args.seed), "--mode", "full", "--mask-head", "none", "--init", "backbone"]  # plain MNC, end-to-end
    load_before = loadavg_text()
    dt = run_launch(train_cmd, log, threads=args.threads, stream=True)
    from db import registry
    from db.engine import open_database

    db = open_database(data_dir)
    checkpoint = registry.active_checkpoint(db)
    metrics_v = registry.active_version(db).metrics or {}
    final_loss = metrics_v.get("train_loss", metrics_v.get("final_loss"))
    out = args.work / "mnc_metrics.json"
    run_launch(["evaluate", "--data-dir", str(data_dir), "--annotations", str(args.gt), "--images",
                str(args.data / "images"), "--out", str(out), "--checkpoint", str(checkpoint)], log,
               threads=args.threads, stream=True)
    metrics = json.loads(out.read_text())
    return {"train_seconds": dt, "final_loss": final_loss, "checkpoint": str(checkpoint), "load_before_train": load_before,
            "command": "python launch.py " + " ".join(train_cmd), **brief(metrics), "metrics": metrics}


def step_peer(args, log) -> dict:
    import torch

    from db.engine import open_database
    from maskrcnn_peer import peer_predict, train_peer
    from services.dataset import DatabaseDataset

    data_dir = args.work / "workbench_data"
    for _ in range(120):  # the mnc step (maybe running in parallel) imports the subset
        if (data_dir / "imported.ok").exists():
            break
        time.sleep(1)
    else:
        raise SystemExit("run the mnc step first (it imports the subset)")
    dataset = DatabaseDataset(open_database(data_dir), "train")
    from tqdm import tqdm

    bar = tqdm(total=args.iterations, desc="Mask R-CNN peer", unit="it", file=sys.stderr, dynamic_ncols=True)

    def prog(it, loss, sec):
        bar.update(it - bar.n)
        bar.set_postfix(loss=f"{loss:.3f}")

    print(f"[{stamp()}] training the Mask R-CNN peer, {args.iterations} it @ {args.image_size} px, "
          f"load {loadavg_text()}", flush=True)
    model, summ = train_peer(dataset, iterations=args.iterations, image_size=args.image_size, weights=args.weights,
                             seed=args.seed, on_progress=prog, rpn_post_nms_top_n_train=args.peer_proposals,
                             box_batch_size_per_image=args.peer_rois)
    bar.close()
    torch.save(model.state_dict(), args.work / "peer.pt")
    log.write(f"peer: {summ['iterations']} it in {summ['seconds']:.1f} s, final loss {summ['final_loss']:.3f}\n")
    cats = summ["categories"]
    with torch.inference_mode():
        metrics = evaluate_predict(lambda im: peer_predict(model, im, cats), args.gt, args.data / "images")
    return {"train_seconds": summ["seconds"], "final_loss": summ["final_loss"], "peer_rois": args.peer_rois,
            "peer_proposals": args.peer_proposals, **brief(metrics), "metrics": metrics}


def step_novote(args, log, results) -> dict:
    ck = Path(results["mnc"]["checkpoint"])
    metrics = evaluate_predict(mnc_predict_fn(ck, mask_voting=False), args.gt, args.data / "images")
    return {"checkpoint": str(ck), **brief(metrics), "metrics": metrics}


def table(results: dict, args) -> str:
    rows = [
        ("mnc", "MNC 5-stage, end-to-end (default), `launch.py train` + `evaluate`"),
        ("peer", "Mask R-CNN (torchvision) on the same backbone"),
        ("novote", "MNC default checkpoint, mask voting off (inference only)"),
        ("detach", "MNC 5-stage, detached proposals (`detach_proposals=True`)"),
        ("stages3", "MNC 3-stage (`num_stages=3`)"),
    ]
    lines = ["| run | mask AP50 | mask AP70 | mask AP | box AP50 | train wall time | final loss | load at start |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for key, label in rows:
        r = results.get(key)
        if not r:
            continue
        tt = f"{r['train_seconds'] / 60:.1f} min" if "train_seconds" in r else "(reused)"
        fl = f"{r['final_loss']:.3f}" if r.get("final_loss") is not None else ""
        lines.append(f"| {label} | {r['segm_AP50']:.3f} | {r['segm_AP70']:.3f} | {r['segm_AP']:.3f} | "
                     f"{r['bbox_AP50']:.3f} | {tt} | {fl} | {r.get('load', '')} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="coco_subset folder (train.json, images/)")
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="ImageNet MobileNetV2 .pth")
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "out" / "mnc_accuracy",
                   help="work folder (subset json, database, checkpoints, results)")
    p.add_argument("--images", type=int, default=8, help="number of train photos (default 8)")
    p.add_argument("--iterations", type=int, default=600)
    p.add_argument("--image-size", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", nargs="+", choices=ALL_STEPS, default=ALL_STEPS)
    p.add_argument("--skip-peer", action="store_true", help="leave out the Mask R-CNN step")
    p.add_argument("--force", action="store_true", help="re-run steps that already have results")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--peer-rois", type=int, default=64,
                   help="Mask R-CNN RoIs sampled per training image (default 64 = MNC's; torchvision's is 512)")
    p.add_argument("--peer-proposals", type=int, default=300,
                   help="Mask R-CNN RPN proposals kept in training (default 300 = MNC's; torchvision's is 2000)")
    args = p.parse_args()

    require(args.data / "train.json", "coco_subset train.json")
    require(args.weights, "MobileNetV2 ImageNet weights")
    import torch

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    args.gt = args.work / f"train_first{args.images}.json"
    if not args.gt.exists():
        make_subset(args.data, args.images, args.gt)
    res_path = args.work / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {}
    steps = [s for s in args.steps if not (args.skip_peer and s == "peer")]
    with open(args.work / "commands.log", "a") as log:
        for step in steps:
            if step in results and not args.force:
                print(f"{step}: done before ({results[step].get('finished')}), skipped; --force re-runs it")
                continue
            started, load_start = stamp(), loadavg_text()
            print(f"[{started}] step {step}, load {load_start}", flush=True)
            if step == "mnc":
                r = step_mnc(args, log)
            elif step == "peer":
                r = step_peer(args, log)
            elif step == "novote":
                if "mnc" not in results:
                    raise SystemExit("novote needs the mnc step")
                r = step_novote(args, log, results)
            elif step == "detach":
                r = train_variant(args.work / f"workbench_data_{step}", step, args, log, detach_proposals=True)
            else:
                r = train_variant(args.work / f"workbench_data_{step}", step, args, log, num_stages=3)
            r.update(started=started, finished=stamp(), load=load_start, iterations=args.iterations,
                     image_size=args.image_size, seed=args.seed)
            # re-read first: another invocation (e.g. --steps peer in parallel) may have added its step
            results = json.loads(res_path.read_text()) if res_path.exists() else {}
            results[step] = r
            write_json(res_path, results)
            print(f"[{stamp()}] {step}: mask AP50 {r['segm_AP50']:.3f}, AP70 {r['segm_AP70']:.3f}, "
                  f"AP {r['segm_AP']:.3f}, box AP50 {r['bbox_AP50']:.3f}", flush=True)
    print()
    print(f"{args.images} coco_subset train photos, {args.iterations} iterations @ {args.image_size} px, seed "
          f"{args.seed}, evaluated on the same photos; 2-core CPU shared with other jobs")
    print(table(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
