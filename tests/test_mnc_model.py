"""End-to-end gradients (Eq. 5-9), has_mask handling, config round trip, losses and inference shapes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mnc_core import MNCConfig, build_model
from mnc_core.preprocess import batch_images
from mnc_core.training_data import prepare_sample

from test_mnc_helpers import ShapesDataset, small_config

torch.set_num_threads(2)


def _batch(ds, cfg, idx=(0, 1)):
    cat_to_label = {c: i + 1 for i, (c, _) in enumerate(ds.categories)}
    imgs, sizes, tgts = [], [], []
    for i in idx:
        img, size, t = prepare_sample(ds[i], cat_to_label, cfg, False, torch.device("cpu"))
        imgs.append(img)
        sizes.append(size)
        tgts.append(t)
    return batch_images(imgs, cfg.size_divisibility), sizes, tgts


def _losses(cfg, ds=None, seed=0):
    torch.manual_seed(seed)
    ds = ds or ShapesDataset(2)
    model = build_model(cfg, 2, backbone_weights="none").train()
    images, sizes, tgts = _batch(ds, cfg)
    return model, model(images, sizes, tgts)


@pytest.mark.parametrize("feature_pyramid", [True, False])
def test_mask_loss_reaches_rpn_box_deltas_end_to_end(feature_pyramid):
    # foreground from IoU 0.3: an untrained RPN's proposals then always include some (at 0.5 it depends on the seed
    # whether any does; the appended ground-truth boxes carry no gradient)
    model, losses = _losses(small_config(feature_pyramid=feature_pyramid, roi_fg_iou=0.3))
    assert losses["mask"].item() > 0
    w = model.rpn.head.bbox_pred.weight
    (g,) = torch.autograd.grad(losses["mask"], w, allow_unused=True, retain_graph=True)
    assert g is not None and g.abs().sum().item() > 0
    # the clamp in backward bounds what reaches the deltas, but the signal is there
    (g45,) = torch.autograd.grad(losses["mask_s45"], w, allow_unused=True)
    assert g45 is not None and g45.abs().sum().item() > 0


def test_detached_proposals_block_the_box_gradient():
    model, losses = _losses(small_config(detach_proposals=True))
    w = model.rpn.head.bbox_pred.weight
    for name in ("mask", "cls", "seg_cls", "mask_s45", "cls_s45"):
        (g,) = torch.autograd.grad(losses[name], w, allow_unused=True, retain_graph=True)
        assert g is None or g.abs().sum().item() == 0, name
    # the RPN's own regression loss still trains it
    (g,) = torch.autograd.grad(losses["rpn_box"], w)
    assert g.abs().sum().item() > 0


def test_gradient_clip_bounds_the_delta_gradient():
    from mnc_core.rpn import clip_gradient
    x = torch.zeros(5, 4, requires_grad=True)
    y = clip_gradient(x, 0.01)
    (y * torch.linspace(-1, 1, 20).view(5, 4)).sum().backward()
    assert x.grad.abs().max().item() == pytest.approx(0.01)
    assert torch.equal(y, x)


def test_instances_without_masks_give_no_mask_loss_but_train_the_rest():
    ds = ShapesDataset(2, drop_masks=True)
    model, losses = _losses(small_config(), ds)
    assert losses["mask"].item() == 0.0 and losses["mask_s45"].item() == 0.0
    assert losses["cls"].item() > 0 and losses["rpn_cls"].item() > 0 and losses["bbox"].item() > 0
    mask_params = [model.mask_head.pred.weight, model.mask_head.fc.weight]
    grads = torch.autograd.grad(losses["mask"] + losses["mask_s45"], mask_params, allow_unused=True,
                                retain_graph=True)
    assert all(g is None or g.abs().sum() == 0 for g in grads)
    total = model.total_loss(losses)
    total.backward()
    assert model.classify_head.cls_score.weight.grad.abs().sum() > 0
    assert model.rpn.head.cls_logits.weight.grad.abs().sum() > 0
    # stage 3 still sends gradient into the (unsupervised) mask through the masking layer
    assert model.mask_head.pred.weight.grad.abs().sum() > 0


def test_partial_masks_only_supervise_instances_with_masks():
    ds = ShapesDataset(2)
    for s in ds.samples:  # keep the mask of the first instance only
        s.has_mask[1:] = False
        s.masks[1:] = False
    _, losses = _losses(small_config(), ds)
    assert losses["mask"].item() > 0


def test_three_stage_structure_has_no_cascade_losses():
    _, losses = _losses(small_config(num_stages=3))
    assert not any(k.endswith("_s45") for k in losses)
    assert set(losses) == {"rpn_cls", "rpn_box", "mask", "cls", "seg_cls", "bbox"}


def test_config_round_trip_and_validation():
    c = small_config(num_stages=3, mask_voting=False)
    d = c.to_dict()
    assert all(not isinstance(v, tuple) for v in d.values())
    assert MNCConfig.from_dict(d) == c
    with pytest.raises(ValueError):
        MNCConfig(num_stages=4)
    with pytest.raises(ValueError):
        MNCConfig.from_dict({**d, "bogus": 1})
    # checkpoints written before the score threshold had one name end to end still load
    old = {k: v for k, v in d.items() if k not in ("score_threshold", "vote_score_threshold")}
    old.update(score_thresh=0.3, vote_score_thresh=0.2)
    assert MNCConfig.from_dict(old) == c.replace(score_threshold=0.3, vote_score_threshold=0.2)
    with pytest.raises(Exception):
        c.min_size = 3  # frozen


@pytest.mark.parametrize("stages,voting", [(5, True), (3, False)])
def test_detect_outputs(stages, voting):
    torch.manual_seed(0)
    cfg = small_config(num_stages=stages, mask_voting=voting)
    model = build_model(cfg, 2, backbone_weights="none").eval()
    ds = ShapesDataset(2)
    images, sizes, _ = _batch(ds, cfg)
    cands = model(images, sizes)
    assert len(cands) == 2
    n = cfg.rpn_post_nms_top_n_test * (2 if stages == 5 else 1)
    c0 = cands[0]  # (instance, class) pairs: at most every RoI of both passes with both classes
    pairs = c0["boxes"].shape[0]
    assert pairs <= 2 * n and c0["scores"].shape == (pairs,) and c0["labels"].shape == (pairs,)
    assert c0["mask_probs"].shape == (pairs, cfg.mask_size, cfg.mask_size)
    assert set(c0["labels"].tolist()) <= {1, 2} and bool((c0["scores"] > min(cfg.score_threshold, cfg.vote_score_threshold)).all())
    dets = model.detect(images, sizes, [(288, 352), (144, 176)], score_threshold=0.0)
    d = dets[0]
    assert d["masks"].shape[1:] == (288, 352) and d["masks"].dtype == torch.bool
    assert dets[1]["masks"].shape[1:] == (144, 176)
    assert 0 < d["scores"].numel() <= cfg.detections_per_image
    assert torch.all(d["scores"][:-1] >= d["scores"][1:])
    assert set(d["labels"].tolist()) <= {1, 2}


def test_prefix_nms_helpers_equal_torchvision():
    from torchvision.ops import batched_nms, nms

    from mnc_core.postprocess import batched_nms_top_n
    from mnc_core.rpn import nms_top_n
    g = torch.Generator().manual_seed(0)
    for n in (20, 3000, 15000):
        xy = torch.rand(n, 2, generator=g) * 500
        b = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 150 + 5], 1)
        s = torch.rand(n, generator=g)
        lab = torch.randint(0, 50, (n,), generator=g)
        assert torch.equal(nms_top_n(b, s, 0.7, 300), nms(b, s, 0.7)[:300])
        assert torch.equal(batched_nms_top_n(b, s, lab, 0.3, 100), batched_nms(b, s, lab, 0.3)[:100])


@pytest.mark.parametrize("top_n", [None, 10])
def test_cascade_top_n_limits_stage_4_5_rois(top_n):
    torch.manual_seed(0)
    cfg = small_config(cascade_top_n_test=top_n, score_threshold=0.0, vote_score_threshold=0.0)  # every pair is a candidate
    model = build_model(cfg, 2, backbone_weights="none").eval()
    images, sizes, _ = _batch(ShapesDataset(1), cfg, idx=(0,))
    n_props = model.rpn(images, model.backbone(images), sizes)[0][0].shape[0]
    assert n_props == 64
    cands = model(images, sizes)[0]
    assert cands["boxes"].shape[0] == 2 * (n_props + (n_props if top_n is None else top_n))  # 2 classes


def test_image_without_instances_trains():
    ds = ShapesDataset(2)
    s = ds.samples[1]
    s.boxes, s.category_ids = s.boxes[:0], s.category_ids[:0]
    s.masks, s.has_mask = s.masks[:0], s.has_mask[:0]
    model, losses = _losses(small_config(), ds)
    assert all(torch.isfinite(v) for v in losses.values())
    model.total_loss(losses).backward()


def test_sample_from_instances_converts_boxes_and_decodes_only_given_masks():
    from mnc_core.data import Sample, validate_sample

    image = np.zeros((6, 8, 3), np.uint8)
    mask = np.zeros((6, 8), bool)
    mask[1:3, 2:5] = True
    sample = Sample.from_instances(image, [([2, 1, 3, 2], 7, lambda: mask), ([0, 0, 4, 4], 9, None),
                                           ([1, 1, 1, 1], 7, lambda: np.zeros((6, 8), bool))], image_id=5)
    validate_sample(sample)
    assert sample.boxes.tolist() == [[2, 1, 5, 3], [0, 0, 4, 4], [1, 1, 2, 2]]
    assert sample.category_ids.tolist() == [7, 9, 7] and sample.image_id == 5
    assert sample.has_mask.tolist() == [True, False, False]  # an empty mask supervises nothing
    assert (sample.masks[0] == mask).all() and not sample.masks[1:].any()
