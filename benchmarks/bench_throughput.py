#!/usr/bin/env python
"""Throughput of the MNC core: batched inference (images/s), training (images/s and peak memory per mode
and batch size), and the input pipeline that feeds training (images/s per data-loading worker).

    python benchmarks/bench_throughput.py --device cuda --out benchmarks/out/throughput_gpu.json
    python benchmarks/bench_throughput.py --device cpu --quick --out /tmp/throughput_cpu.json   # a check

Inference: MobileNetV2 ImageNet backbone, heads random (speed does not depend on training), the 80 COCO
classes, 5-stage inference with mask voting, 600 px short side (1000 px cap), score threshold 0 and 100
detections per image (every image pastes 100 full-size masks), bf16 autocast on a GPU (as the Predictor).
Images: coco_subset val, the same list for every batch size; images/s = images / wall time of
`Predictor.predict_batch` calls after warm-up batches.

Training: `mnc_core.train_model` on coco_subset train (all classes) with each mode's preset configuration
(`services.training.training_config`; heads: body frozen, frozen features cached) at the preset's image
size, lr of the preset, bf16 autocast on a GPU (float32 RoI-warp grid), in-process data loading
(`--workers`), timed from the end of iteration `--warmup` to the last. Peak memory: CUDA max allocated
on a GPU, else the process's peak RSS.

Input pipeline: decode (PIL) + scale jitter + flip + photometric jitter + targets (masks decoded and
resized) of `TrainingInputs`, in this process with one torch thread (what one DataLoader worker does).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

from common import DEFAULT_DATA, DEFAULT_WEIGHTS, cpu_name, load_coco, loadavg, read_rgb, require, stamp, write_json


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def train_dataset(data: Path, limit: int | None):
    from bench_partial_sup import CocoFileDataset

    coco = load_coco(data / "train.json")
    return CocoFileDataset(coco, data / "images", set(), read_rgb, limit=limit)


def bench_inference(args, device: torch.device) -> dict:
    from mnc_core import MNCConfig, Predictor, build_model

    coco = load_coco(args.data / "val.json")
    categories = [(int(c["id"]), str(c["name"])) for c in coco.dataset["categories"]]
    config = MNCConfig(min_size=600, max_size=1000, score_threshold=0.0, vote_score_threshold=0.0)
    model = build_model(config, len(categories), str(args.weights))
    predictor = Predictor(model, config, categories, device)
    files = [args.data / "images" / coco.imgs[i]["file_name"] for i in sorted(coco.getImgIds())]
    out = {}
    for batch in args.inference_batches:
        images = [read_rgb(p) for p in files[:batch * (args.batches + args.warmup_batches)]]
        chunks = [images[i:i + batch] for i in range(0, len(images), batch)]
        for chunk in chunks[:args.warmup_batches]:
            predictor.predict_batch(chunk, score_threshold=0.0)
        reset_peak(device)
        sync(device)
        start = time.perf_counter()
        count = 0
        for chunk in chunks[args.warmup_batches:]:
            predictor.predict_batch(chunk, score_threshold=0.0)
            count += len(chunk)
        sync(device)
        seconds = time.perf_counter() - start
        out[str(batch)] = {"images_per_s": round(count / seconds, 2), "ms_per_image": round(1000 * seconds / count, 1),
                           "images": count, "peak_mb": peak_mb(device)}
        print(f"inference batch {batch}: {out[str(batch)]}", flush=True)
    return out


def bench_training(args, device: torch.device) -> dict:
    from mnc_core import train_model
    from services.presets import PRESETS
    from services.training import training_config

    dataset = train_dataset(args.data, None)
    out = {}
    for mode in args.modes:
        for batch in args.train_batches:
            config = training_config(mode, PRESETS[mode].image_size, batch_size=batch)
            marks = []

            def on_progress(progress, marks=marks):
                sync(device)
                marks.append((progress.iteration, time.perf_counter()))

            reset_peak(device)
            _, summary = train_model(dataset, config, iterations=args.warmup + args.iterations, device=str(device),
                                     backbone_weights=str(args.weights), on_progress=on_progress,
                                     cache_frozen_features=PRESETS[mode].cache_frozen_features,
                                     num_workers=args.workers)
            (first, t0), (last, t1) = marks[args.warmup - 1], marks[-1]
            images = (last - first) * batch
            key = f"{mode}/batch{batch}"
            out[key] = {"images_per_s": round(images / (t1 - t0), 2), "s_per_iteration": round((t1 - t0) / (last - first), 3),
                        "image_size": PRESETS[mode].image_size, "iterations_timed": last - first,
                        "peak_mb": peak_mb(device), "final_loss": summary["final_losses"].get("total")}
            print(f"training {key}: {out[key]}", flush=True)
    return out


def bench_input_pipeline(args) -> dict:
    from mnc_core import MNCConfig
    from mnc_core.training_data import TrainingInputs, draw_batches

    torch.set_num_threads(1)  # as in a DataLoader worker
    dataset = train_dataset(args.data, None)
    config = MNCConfig(min_size=800, max_size=1333, images_per_batch=1)
    cat_to_label = {c: i + 1 for i, (c, _) in enumerate(dataset.categories)}
    inputs = TrainingInputs(dataset, config, cat_to_label)
    draws = [batch[0] for batch in draw_batches(len(dataset), config, seed=0, iterations=args.pipeline_images,
                                                global_batch=1)]
    inputs[draws[0]]  # warm-up (imports, first decode)
    start = time.perf_counter()
    instances = 0
    for draw in draws:
        instances += int(inputs[draw].targets.boxes.shape[0])
    seconds = time.perf_counter() - start
    out = {"images_per_s_per_worker": round(len(draws) / seconds, 2), "images": len(draws),
           "instances_per_image": round(instances / len(draws), 1), "short_side": config.min_size}
    print(f"input pipeline: {out}", flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads on a CPU (default torch's)")
    p.add_argument("--inference-batches", type=int, nargs="+", default=[1, 8, 16])
    p.add_argument("--batches", type=int, default=4, help="timed batches per inference batch size")
    p.add_argument("--warmup-batches", type=int, default=1)
    p.add_argument("--modes", nargs="+", default=["full", "heads"])
    p.add_argument("--train-batches", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--iterations", type=int, default=20, help="timed training iterations")
    p.add_argument("--warmup", type=int, default=5, help="untimed first training iterations")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers of the training runs")
    p.add_argument("--pipeline-images", type=int, default=40)
    p.add_argument("--skip", nargs="*", default=[], choices=["inference", "training", "pipeline"])
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs")
    p.add_argument("--out", type=Path, required=True, help="JSON file of the figures")
    args = p.parse_args()
    if args.quick:
        args.inference_batches, args.batches, args.train_batches = [1, 2], 1, [1, 2]
        args.iterations, args.warmup, args.pipeline_images, args.workers = 2, 1, 4, 0
    require(args.data / "train.json", "coco_subset")
    require(args.weights, "ImageNet MobileNetV2 weights")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU visible: use --device cpu", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {"started": stamp(), "device": str(device), "device_name": device_name(device),
              "torch": torch.__version__, "load_before": loadavg(), "args": {k: str(v) for k, v in vars(args).items()}}
    if "inference" not in args.skip:
        result["inference"] = bench_inference(args, device)
    if "training" not in args.skip:
        result["training"] = bench_training(args, device)
    if "pipeline" not in args.skip:
        result["input_pipeline"] = bench_input_pipeline(args)
    result.update(finished=stamp(), load_after=loadavg())
    write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "args"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
