#!/usr/bin/env python
"""Seconds per training iteration of the heads mode (frozen body, cached features) for a model layout: what the
preset's iteration count is sized by (benchmarks/README.md, "A stronger model: multi-scale MNC").

    python benchmarks/bench_step_time.py --set feature_pyramid=false --set feature_channels=256 --set rpn_channels=256
    python benchmarks/bench_step_time.py --set feature_channels=128 --set rpn_channels=128 [--image-size 600]
    python benchmarks/bench_step_time.py --peer [--optimizer adamw]     # the FPN Mask R-CNN peer, body frozen and cached

10 photos of the person project's select split, one thread; iterations 60-160 are timed (by then every photo and
flip is in the feature cache). Prints one JSON line with the load average.
"""
from __future__ import annotations

import argparse
import json
import os

from bench_partial_sup import ImageCache
from bench_recipe import datasets, parse_sets
from common import DEFAULT_DATA, DEFAULT_WEIGHTS, require


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=JSON")
    parser.add_argument("--image-size", type=int, default=800)
    parser.add_argument("--photos", type=int, default=10)
    parser.add_argument("--peer", action="store_true", help="time the FPN Mask R-CNN peer (benchmarks/maskrcnn_peer.py) "
                        "with its whole body frozen and cached, as bench_recipe's peer runs")
    parser.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    args = parser.parse_args()
    require(DEFAULT_DATA / "train.json", "the coco_subset data")
    require(DEFAULT_WEIGHTS, "the ImageNet MobileNetV2 weights")
    import torch

    from mnc_core import train_model
    from partial_sup.maskx import MaskXConfig, build_maskx_model
    from services.training import training_config

    torch.set_num_threads(1)
    split = argparse.Namespace(data=DEFAULT_DATA, project="person", split="select", train_images=args.photos, more=0)
    dataset, _, _, _ = datasets(split, ImageCache())
    config = training_config("heads", args.image_size).replace(**parse_sets(args.set))
    torch.manual_seed(0)
    marks: dict[int, float] = {}

    def mark(iteration: int, seconds: float) -> None:
        if iteration in (60, 160):
            marks[iteration] = seconds

    if args.peer:
        from maskrcnn_peer import train_peer

        from mnc_core.backbone import body_blocks

        train_peer(dataset, iterations=160, image_size=args.image_size, weights=str(DEFAULT_WEIGHTS), lr=1e-4,
                   optimizer=args.optimizer, frozen_blocks=body_blocks(config), pyramid=True,
                   channels=config.feature_channels, on_progress=lambda it, loss, seconds: mark(it, seconds))
    else:
        model = build_maskx_model(config, 1, MaskXConfig(method="transfer"), str(DEFAULT_WEIGHTS))
        train_model(dataset, config, iterations=160, model=model, device="cpu", cache_frozen_features=True,
                    num_workers=1, on_progress=lambda p: mark(p.iteration, p.seconds))
    print(json.dumps({"peer": args.peer, "optimizer": args.optimizer if args.peer else None, "set": args.set,
                      "image_size": args.image_size,
                      "seconds_per_iteration": round((marks[160] - marks[60]) / 100, 3),
                      "load": [round(v, 2) for v in os.getloadavg()]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
