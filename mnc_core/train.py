"""train_model: AdamW (default) or SGD with momentum, linear warmup + step decay, gradient-norm clipping;
inputs from the training pipeline (training_data.py: DataLoader workers, scale jitter, flips,
photometric jitter, crowd regions ignored), batches of `images_per_batch` images.

Learning rate and batch size: `lr` (and `default_lr`) is the rate for a global batch of one image; with
B images per global batch the optimiser runs at `scaled_lr(lr, B, optimizer)`: lr x B for SGD (the linear
scaling rule of Goyal et al., 2017) and lr x sqrt(B) for AdamW (Adam's update does not grow with the
gradient's scale, so linear scaling overshoots; the square-root rule keeps the update's noise level).

Frozen features (`cache_frozen_features`, the `heads` mode): the first `config.backbone_frozen_blocks`
blocks of the backbone are frozen anyway, so what they compute for one input (image, scale, flip,
jitter) never changes; it is computed once and kept in a byte-bounded LRU cache (`cache_bytes`), and
only the trainable rest of the network runs every iteration.

Under torchrun (see distributed.py) every process trains a DistributedDataParallel copy on its own
`images_per_batch` images of each global batch of world_size x images_per_batch: all processes draw
the same global sequence from the seed and each takes its slice, and every loss is a mean over images
(losses.py), so the gradient equals one process's with the whole global batch. Rank 0 alone reports
progress (the losses averaged over the processes) and decides when to stop.

This docstring says what the code does and why; what it measured (the default learning rate's choice,
training speed, accuracy) is in benchmarks/README.md, with the command and date of each figure.
"""
from __future__ import annotations

import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from . import distributed
from .backbone import DEFAULT_FROZEN_BLOCKS
from .cache import ByteBoundedLRU
from .checkpoint import load_checkpoint
from .config import MNCConfig
from .data import InstanceDataset
from .model import MNC, build_model
from .preprocess import batch_images
from .training_data import TrainingInput, TrainingInputs, draw_batches, training_loader

DEFAULT_CACHE_BYTES = {"cpu": 2 * 2**30, "cuda": 4 * 2**30}  # frozen-feature cache budget per device type, at least
CACHE_SHARE_OF_MEMORY = 0.25  # ... or this share of the machine's memory, up to MAX_CACHE_BYTES (a pyramid's features
MAX_CACHE_BYTES = 8 * 2**30   # take ~4.6 MB per 800-px photo: 376 photos and their flips need ~3.5 GB)


def default_cache_bytes(device_type: str) -> int:
    """The frozen-feature cache budget: DEFAULT_CACHE_BYTES of the device type, or a quarter of the machine's
    memory when that is more (at most MAX_CACHE_BYTES)."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        memory = 0
    base = DEFAULT_CACHE_BYTES["cuda" if device_type == "cuda" else "cpu"]
    return int(max(base, min(MAX_CACHE_BYTES, CACHE_SHARE_OF_MEMORY * memory)))


@dataclass
class TrainProgress:
    iteration: int
    iterations: int
    losses: dict[str, float]
    seconds: float  # elapsed


def default_lr(config: MNCConfig) -> float:
    """Learning rate for a global batch of one image, per optimizer (the recipe study in benchmarks/README.md
    kept AdamW 3e-4)."""
    return 3e-4 if config.optimizer == "adamw" else 0.01


def scaled_lr(lr: float, global_batch: int, optimizer: str) -> float:
    """The rate for a global batch of `global_batch` images given the one-image rate (module doc)."""
    return lr * (global_batch ** 0.5 if optimizer == "adamw" else global_batch)


def default_num_workers() -> int:
    """DataLoader workers: one per spare core, at most 4 (a 2-core CPU gets one: decoding and resizing
    overlap the training step instead of running before it)."""
    cores = os.cpu_count() or 1
    return max(0, min(4, cores - 1))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _pad_features(features: list[torch.Tensor], height: int, width: int) -> torch.Tensor:
    """(C, h_i, w_i) tensors -> (N, C, height, width), zero-padded at the bottom/right."""
    out = features[0].new_zeros((len(features), features[0].shape[0], height, width))
    for i, f in enumerate(features):
        out[i, :, : f.shape[1], : f.shape[2]] = f
    return out


def _lr_factor(it: int, iterations: int, config: MNCConfig) -> float:
    f = 1.0
    if it < config.warmup_iters:
        a = it / max(1, config.warmup_iters)
        f = config.warmup_factor * (1 - a) + a
    for s in config.lr_steps:
        if it >= int(s * iterations):
            f *= 0.1
    return f


def train_model(dataset: InstanceDataset, config: MNCConfig, *, iterations: int, device: str | None = None,
                seed: int = 0, lr: float | None = None, backbone_weights: str | None = None,
                on_progress: Callable[[TrainProgress], None] | None = None,
                should_stop: Callable[[], bool] | None = None,
                init_checkpoint: str | None = None, model: MNC | None = None,
                cache_frozen_features: bool = False, cache_bytes: int | None = None,
                num_workers: int | None = None) -> tuple[MNC, dict]:
    """Train an MNC on `dataset`; returns (model in eval mode, summary).

    backbone_weights: None = torchvision ImageNet weights (weights API; clear error offline),
    "none" = random init, or a path to a .pth state dict. Ignored with init_checkpoint (whose
    categories must equal dataset.categories) or a given `model` (built for dataset.categories,
    e.g. with a final-mask head or warm-started from an earlier model). The backbone's first
    `config.backbone_frozen_blocks` blocks are frozen, the rest trains. lr: the rate for a batch of
    one image (None: `default_lr(config)`), scaled with the global batch (`scaled_lr`).

    cache_frozen_features ("heads" mode): the frozen blocks' output is computed once per input and
    kept in an LRU cache of at most `cache_bytes` (None: `default_cache_bytes` of the device type);
    much faster on a CPU when most of the backbone is frozen. num_workers: DataLoader worker processes
    that prepare the inputs (None: `default_num_workers()`; 0: in this process). The inputs, and so
    the result, do not depend on it.

    Under torchrun (WORLD_SIZE > 1): data-parallel over the processes (module docstring); the
    process group is opened and closed here unless the caller opened it. Every process must call
    this with the same dataset, config and arguments; rank 0's model weights are the starting point.
    `on_progress` is called in rank 0 only, `should_stop` is asked in rank 0 only (its answer goes
    to all processes); the returned model and summary are the same in every process."""
    if iterations < 0:
        raise ValueError("iterations must be >= 0")
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    job = distributed.from_env()
    dev = distributed.resolve_device(device, job)
    with distributed.process_group(job, dev):
        return _train(dataset, config, iterations=iterations, dev=dev, job=job, seed=seed, lr=lr,
                      backbone_weights=backbone_weights, on_progress=on_progress, should_stop=should_stop,
                      init_checkpoint=init_checkpoint, model=model, cache_frozen_features=cache_frozen_features,
                      cache_bytes=cache_bytes, num_workers=num_workers)


def _frozen_features(model: MNC, inputs: list[TrainingInput], cache: ByteBoundedLRU, config: MNCConfig,
                     amp) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The frozen blocks' output of each input (cached by its key; a dict of maps, see `Backbone.frozen`), padded
    into one batch: name -> (N, C, h, w) maps, and an empty (N, 3, H, W) tensor of the padded image shape they
    stand for (the batch's images padded to `size_divisibility`, as `batch_images` pads them)."""
    per_input = []
    for item in inputs:
        frozen = cache.get(item.key)
        if frozen is None:
            with torch.no_grad(), amp:
                frozen = model.backbone.frozen(batch_images([item.image], config.size_divisibility))
            frozen = {name: value[0].contiguous() for name, value in frozen.items()}
            cache.put(item.key, frozen)
        per_input.append(frozen)
    divisor = max(1, config.size_divisibility)
    height = max(-(-int(item.image.shape[1]) // divisor) * divisor for item in inputs)
    width = max(-(-int(item.image.shape[2]) // divisor) * divisor for item in inputs)
    padded = {}
    for name, first in per_input[0].items():
        # every map of a padded image divides it exactly (its stride divides size_divisibility)
        stride = -(-int(inputs[0].image.shape[1]) // divisor) * divisor // int(first.shape[1])
        padded[name] = _pad_features([f[name] for f in per_input], height // stride, width // stride)
    shape_only = padded[name].new_empty((len(inputs), 3, height, width))
    return padded, shape_only


def _train(dataset: InstanceDataset, config: MNCConfig, *, iterations: int, dev: torch.device,
           job: distributed.Distributed, seed: int, lr: float | None, backbone_weights: str | None,
           on_progress: Callable[[TrainProgress], None] | None, should_stop: Callable[[], bool] | None,
           init_checkpoint: str | None, model: MNC | None, cache_frozen_features: bool, cache_bytes: int | None,
           num_workers: int | None) -> tuple[MNC, dict]:
    base_lr = default_lr(config) if lr is None else float(lr)
    per_process = config.images_per_batch
    global_batch = job.world_size * per_process
    lr = scaled_lr(base_lr, global_batch, config.optimizer)
    seed_everything(seed)
    categories = [(int(c), str(n)) for c, n in dataset.categories]
    cat_to_label = {c: i + 1 for i, (c, _) in enumerate(categories)}
    distributed.check_same((len(dataset), categories), job, "the dataset (images, categories)")
    if model is not None:
        if model.num_classes != len(categories):
            raise ValueError(f"the model has {model.num_classes} classes, the dataset {len(categories)}")
    elif init_checkpoint is not None:
        model, _, ck_cats, _ = load_checkpoint(init_checkpoint, device=dev)
        if [c for c, _ in ck_cats] != [c for c, _ in categories]:
            raise ValueError(f"{init_checkpoint}: its categories {ck_cats} differ from the dataset's {categories}")
    else:
        model = build_model(config, len(categories), backbone_weights)
    model.backbone.set_frozen_blocks(resolve_frozen_blocks(config))
    model.to(dev).train()
    # every parameter of a plain MNC gets a gradient in every step (an image without instances or masks
    # gives zero losses that are still in the graph), so DDP need not search for unused ones; a final-mask
    # head (Mask^X) has nothing to learn in a step where no image of a process has a mask and is then
    # left out of the graph (no gradient, as with one process: AdamW leaves it alone), which needs the search.
    # wrap copies rank 0's weights to every process.
    net = distributed.wrap(model, job, dev, find_unused_parameters=model.final_mask_head is not None)
    if job.rank:
        torch.manual_seed(seed + 1_000_003 * job.rank)  # RoI / anchor sampling differs between processes
    cache: ByteBoundedLRU = ByteBoundedLRU(
        (default_cache_bytes(dev.type) if cache_bytes is None else cache_bytes)
        if cache_frozen_features else 0)

    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "adamw":  # fused: one kernel for all parameters (~15x faster step on a CPU)
        opt = torch.optim.AdamW(groups, lr=lr, fused=True)
    else:
        opt = torch.optim.SGD(groups, lr=lr, momentum=config.momentum)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else nullcontext()

    batches = draw_batches(len(dataset), config, seed=seed, iterations=iterations, global_batch=global_batch,
                           reuse_jitter=cache_frozen_features)
    workers = default_num_workers() if num_workers is None else int(num_workers)
    loader = training_loader(TrainingInputs(dataset, config, cat_to_label), batches, rank=job.rank,
                             per_process=per_process, num_workers=workers, pin_memory=dev.type == "cuda", seed=seed)
    start = time.perf_counter()
    done, stopped, skipped = 0, False, 0
    history: list[dict[str, float]] = []
    inputs_iter = iter(loader)
    try:
        for it in range(iterations):
            if distributed.from_main(job.is_main and should_stop is not None and should_stop(), job, dev):
                stopped = True
                break
            for g in opt.param_groups:
                g["lr"] = lr * _lr_factor(it, iterations, config)
            inputs = [item.to(dev, non_blocking=True) for item in next(inputs_iter)]
            sizes = [item.size for item in inputs]
            targets = [item.targets for item in inputs]
            if cache_frozen_features:
                frozen, shape_only = _frozen_features(model, inputs, cache, config, amp)
                with amp:
                    losses = net(shape_only, sizes, targets, frozen_features=frozen)
            else:
                with amp:
                    losses = net(batch_images([item.image for item in inputs], config.size_divisibility), sizes, targets)
            total = model.total_loss(losses)
            opt.zero_grad(set_to_none=True)
            # the losses averaged over the processes (the global batch's), for the finite check and the log
            logged = distributed.mean(torch.stack([v.detach().float() for v in losses.values()]
                                                  + [total.detach().float()]), job)
            total.backward()  # DDP averages the gradients over the processes here
            # the step's one host sync, after the backward is queued (the device is not idle while the host launches it):
            # skipping a step is a host decision, and the log and on_progress need the values every step
            values = logged.tolist()
            if not math.isfinite(values[-1]):  # every process skips the step together (same mean)
                skipped += 1
                if skipped > max(10, iterations // 10):
                    raise FloatingPointError(f"loss is not finite ({values[-1]}) at iteration {it}; lower the lr")
                continue  # the next zero_grad drops this step's gradients
            if config.grad_clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip_norm)
            opt.step()
            done = it + 1
            vals = dict(zip([*losses, "total"], values))
            history.append(vals)
            if on_progress is not None and job.is_main:
                on_progress(TrainProgress(iteration=done, iterations=iterations, losses=vals,
                                          seconds=time.perf_counter() - start))
    finally:
        del inputs_iter  # stops the DataLoader's workers
    distributed.barrier(job)
    model.eval()
    tail = history[-20:]
    final = {k: sum(h[k] for h in tail) / len(tail) for k in tail[0]} if tail else {}
    summary = {"iterations": done, "iterations_requested": iterations, "stopped_early": stopped,
               "cache_frozen_features": cache_frozen_features, "frozen_blocks": model.backbone.frozen_blocks,
               "final_losses": final, "seconds": time.perf_counter() - start, "device": str(dev),
               "skipped_steps": skipped, "seed": seed, "lr": base_lr, "lr_scaled": lr, "world_size": job.world_size,
               "global_batch": global_batch, "num_workers": workers, "feature_cache": cache.stats()}
    return model, summary


def resolve_frozen_blocks(config: MNCConfig) -> int:
    """config.backbone_frozen_blocks, or the backbone's default when it is None."""
    if config.backbone_frozen_blocks is None:
        return DEFAULT_FROZEN_BLOCKS[config.backbone]
    return config.backbone_frozen_blocks
