"""Worker of tests/test_distributed_training.py, run under torchrun: trains the tiny synthetic model in
each process with train_model and writes rank 0's per-iteration losses (averaged over the processes)
as JSON, and the first step's gradient (averaged over the processes by DDP) beside it as OUT.pt. Not a
test module (pytest collects test_*.py only).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_losses_worker.py OUT.json
"""
from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.optim.optimizer import register_optimizer_step_pre_hook

from mnc_core import distributed, train_model
from test_mnc_helpers import ShapesDataset, small_config

SIZE = 64
ITERATIONS = 4


def tiny_dataset() -> ShapesDataset:
    return ShapesDataset(4, size=(SIZE, SIZE), seed=3)


def exact_config(**kw):
    """Sampling that takes every labelled anchor and every RoI candidate, so the losses do not depend
    on how the random sampling streams are split between processes (only on the images). No gradient
    clipping: a clipped gradient would hide a sum over the processes where the mean belongs."""
    return small_config(min_size=SIZE, max_size=SIZE, anchor_sizes=(16, 32), rpn_batch_size=10 ** 6,
                        roi_batch_size=10 ** 6, rpn_post_nms_top_n_train=32, optimizer="sgd", warmup_iters=0,
                        grad_clip_norm=0.0, **kw)


def run(images_per_batch: int, heads: bool) -> tuple[list[dict[str, float]], torch.Tensor]:
    """heads: the whole backbone body frozen and its features cached (the heads mode). Returns the
    per-iteration losses and the gradient the first optimizer step applies (all trained parameters,
    flattened; after DDP's averaging), taken by a global optimizer step hook."""
    losses: list[dict[str, float]] = []
    first_gradient: list[torch.Tensor] = []

    def keep_first_gradient(optimizer, args, kwargs) -> None:
        if not first_gradient:
            first_gradient.append(torch.cat([p.grad.detach().flatten() if p.grad is not None
                                             else torch.zeros(p.numel()) for group in optimizer.param_groups
                                             for p in group["params"]]))

    config = exact_config(images_per_batch=images_per_batch, backbone_frozen_blocks=99 if heads else 0)
    hook = register_optimizer_step_pre_hook(keep_first_gradient)
    try:
        train_model(tiny_dataset(), config, iterations=ITERATIONS, lr=0.02, seed=11, backbone_weights="none",
                    device="cpu", cache_frozen_features=heads, num_workers=0,
                    on_progress=lambda p: losses.append(p.losses))
    finally:
        hook.remove()
    return losses, first_gradient[0]


def stop_after_two(job: distributed.Distributed) -> int:
    """Rank 0's should_stop says stop after 2 iterations; the other ranks' would stop at once: every
    process must follow rank 0 (a process leaving alone would leave the others hanging)."""
    calls: list[int] = []
    _, summary = train_model(tiny_dataset(), exact_config(), iterations=ITERATIONS, lr=0.02, seed=11,
                             backbone_weights="none", device="cpu", on_progress=lambda p: calls.append(p.iteration),
                             should_stop=(lambda: len(calls) >= 2) if job.is_main else (lambda: True))
    return summary["iterations"]


def without_masks() -> int:
    """A Mask^X model (partial_sup) on images without any mask, one without any instance: its
    final-mask head gets no gradient in either process, which DDP must accept."""
    from partial_sup.maskx import MaskXConfig, build_maskx_model

    dataset = ShapesDataset(2, size=(SIZE, SIZE), seed=3, drop_masks=True)
    empty = dataset.samples[1]
    empty.boxes, empty.category_ids = empty.boxes[:0], empty.category_ids[:0]
    empty.masks, empty.has_mask = empty.masks[:0], empty.has_mask[:0]
    config = exact_config(hflip_prob=0.0)
    model = build_maskx_model(config, len(dataset.categories), MaskXConfig(method="transfer"), "none")
    _, summary = train_model(dataset, config, iterations=2, lr=0.02, model=model, device="cpu")
    return summary["iterations"]


def different_datasets(job: distributed.Distributed) -> str:
    """Processes that read different data (e.g. the database changed between their reads) fail in
    every process with the same clear message, instead of training on a mixture."""
    try:
        train_model(ShapesDataset(3 + job.rank, size=(SIZE, SIZE)), exact_config(), iterations=1, device="cpu",
                    backbone_weights="none")
    except ValueError as exc:
        return str(exc)
    return "no error"


def main() -> None:
    torch.set_num_threads(1)
    job = distributed.from_env()
    # the caller's process group (train_model uses it and leaves it open), with a short timeout
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    try:
        out: dict = {"world_size": job.world_size}
        gradients = {}
        for mode, heads in (("full", False), ("heads", True)):
            out[mode], gradients[mode] = run(1, heads=heads)
        stopped: list[int] = [0] * job.world_size
        dist.all_gather_object(stopped, stop_after_two(job))
        out["stopped_at"] = stopped
        out["without_masks_iterations"] = without_masks()
        out["different_datasets"] = different_datasets(job)
    finally:
        dist.destroy_process_group()
    if job.is_main:
        Path(sys.argv[1]).write_text(json.dumps(out))
        torch.save(gradients, Path(sys.argv[1]).with_suffix(".pt"))


if __name__ == "__main__":
    main()
