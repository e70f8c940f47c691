"""One process in a gloo process group, in this process: a DistributedDataParallel step (built by
`distributed.wrap` as train_model builds it: without find_unused_parameters for a plain MNC, with it for
a Mask^X model) gives the gradients of the model's step without DDP, in every training mode, including
steps with an image without instances or masks. DDP checks at the next forward that every trainable
parameter got its gradient (without the search), so each case runs two steps."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist

from mnc_core import build_model, distributed
from mnc_core.preprocess import batch_images
from mnc_core.training_data import prepare_sample

from test_mnc_helpers import ShapesDataset, small_config

SIZE = 64


@pytest.fixture
def process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        yield distributed.Distributed(world_size=1, rank=0, local_rank=0, under_torchrun=True)
    finally:
        dist.destroy_process_group()


def _inputs(kind: str, cfg):
    ds = ShapesDataset(2, size=(SIZE, SIZE), seed=3, drop_masks=kind in ("no_masks", "maskx_no_masks"))
    if kind in ("empty_image", "maskx_no_masks"):
        empty = ds.samples[1]
        empty.boxes, empty.category_ids = empty.boxes[:0], empty.category_ids[:0]
        empty.masks, empty.has_mask = empty.masks[:0], empty.has_mask[:0]
    cat_to_label = {c: i + 1 for i, (c, _) in enumerate(ds.categories)}
    prepared = [prepare_sample(ds[i], cat_to_label, cfg, False, "cpu") for i in range(len(ds))]
    images = batch_images([p[0] for p in prepared], cfg.size_divisibility)
    return images, [p[1] for p in prepared], [p[2] for p in prepared]


def _model(kind: str, cfg):
    torch.manual_seed(0)
    if kind.startswith("maskx"):
        from partial_sup.maskx import MaskXConfig, build_maskx_model
        return build_maskx_model(cfg, 2, MaskXConfig(method="transfer"), "none")
    return build_model(cfg, 2, backbone_weights="none")


def _step(net, model, images, sizes, targets, frozen: bool) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    if frozen:  # the heads mode: the frozen blocks' features come from the cache, the rest trains
        with torch.no_grad():
            features = model.backbone.frozen(images)
        losses = net(images, sizes, targets, frozen_features=features)
    else:
        losses = net(images, sizes, targets)
    model.total_loss(losses).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


@pytest.mark.parametrize("kind,frozen_blocks,stages", [
    ("plain", 0, 5), ("plain", 99, 5), ("plain", 4, 3), ("no_masks", 0, 5), ("empty_image", 0, 5),
    ("maskx", 0, 5), ("maskx_no_masks", 99, 5)])
def test_a_ddp_step_without_find_unused_parameters_gives_the_plain_step_gradients(process_group, kind,
                                                                                   frozen_blocks, stages):
    torch.set_num_threads(1)
    cfg = small_config(min_size=SIZE, max_size=SIZE, anchor_sizes=(16, 32), num_stages=stages,
                       backbone_frozen_blocks=frozen_blocks)
    plain = _model(kind, cfg)
    plain.backbone.set_frozen_blocks(frozen_blocks)
    plain.train()
    model = copy.deepcopy(plain)
    net = distributed.wrap(model, process_group, torch.device("cpu"), find_unused_parameters=model.final_mask_head is not None)  # as train_model
    assert isinstance(net, torch.nn.parallel.DistributedDataParallel)
    images, sizes, targets = _inputs(kind, cfg)
    frozen = frozen_blocks == 99
    for step in range(2):  # the second forward fails if the first left a trainable parameter without gradient
        torch.manual_seed(10 + step)
        want = _step(plain, plain, images, sizes, targets, frozen)
        torch.manual_seed(10 + step)
        got = _step(net, model, images, sizes, targets, frozen)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        if kind == "maskx_no_masks":  # no mask to learn from: the final-mask head gets no gradient, with or without DDP
            trainable = {n for n in trainable if not n.startswith("final_mask_head.")}
        assert set(got) == set(want) == trainable, set(want) ^ trainable
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7, msg=name)
        with torch.no_grad():  # the same small update on both, so the second step starts elsewhere
            for p, q in zip(plain.parameters(), model.parameters()):
                if p.grad is not None:
                    p -= 0.01 * p.grad
                    q -= 0.01 * q.grad
