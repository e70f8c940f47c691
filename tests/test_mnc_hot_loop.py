"""The training hot loop gives the same numbers after the host-sync work of issue 13.

EXPECTED holds the losses, gradient sums, proposals and short training runs that the code computed
before the change (commit 6165ea3, one thread, this machine's torch), for the single-scale model of that time; the batched / mask-based code
must reproduce them. Regenerate (only after a change that is meant to change the numbers) with
``OMP_NUM_THREADS=1 python tests/test_mnc_hot_loop.py``.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mnc_core import build_model, train_model
from mnc_core.preprocess import batch_images
from mnc_core.training_data import prepare_sample

from test_mnc_helpers import ShapesDataset, small_config

MODULES = ("backbone", "rpn", "mask_head", "classify_head", "final_mask_head")


def _dataset(kind: str) -> ShapesDataset:
    ds = ShapesDataset(3, seed=5)
    if kind == "mixed":  # a crowd region, an instance without a mask, an image without instances
        first = ds.samples[0]
        first.iscrowd = np.zeros(len(first.boxes), bool)
        first.iscrowd[-1] = True
        ds.samples[1].has_mask[0] = False
        ds.samples[1].masks[0] = False
        empty = ds.samples[2]
        empty.boxes, empty.category_ids = empty.boxes[:0], empty.category_ids[:0]
        empty.masks, empty.has_mask = empty.masks[:0], empty.has_mask[:0]
    return ds


def _batch(ds, cfg):
    cat_to_label = {c: i + 1 for i, (c, _) in enumerate(ds.categories)}
    imgs, sizes, tgts = [], [], []
    for i in range(len(ds)):
        img, size, t = prepare_sample(ds[i], cat_to_label, cfg, i == 1, torch.device("cpu"))
        imgs.append(img)
        sizes.append(size)
        tgts.append(t)
    return batch_images(imgs, cfg.size_divisibility), sizes, tgts


def step_values(kind: str, maskx: bool = False) -> dict[str, float]:
    """One training forward + backward on 3 images: every loss and each module's gradient abs-sum."""
    torch.manual_seed(0)
    cfg = small_config(feature_pyramid=False)
    ds = _dataset(kind)
    if maskx:
        from partial_sup.maskx import MaskXConfig, build_maskx_model
        model = build_maskx_model(cfg, 2, MaskXConfig(method="transfer"), "none").train()
    else:
        model = build_model(cfg, 2, backbone_weights="none").train()
    images, sizes, tgts = _batch(ds, cfg)
    torch.manual_seed(1)
    losses = model(images, sizes, tgts)
    model.total_loss(losses).backward()
    out = {k: float(v.detach()) for k, v in losses.items()}
    for name in MODULES:
        module = getattr(model, name)
        if module is not None:
            out["grad_" + name] = float(sum(p.grad.abs().sum() for p in module.parameters() if p.grad is not None))
    return out


def proposal_values() -> dict[str, float]:
    """Eval-mode RPN proposals of 3 images: count and coordinate sum per image, with a short top-n and with
    a top-n that NMS cannot fill (after dropping boxes under 12 px)."""
    out = {}
    for top_n, min_size in ((40, 4.0), (2000, 12.0)):
        torch.manual_seed(0)
        cfg = small_config(rpn_post_nms_top_n_test=top_n, rpn_min_size=min_size, feature_pyramid=False)
        model = build_model(cfg, 2, backbone_weights="none").eval()
        images, sizes, _ = _batch(_dataset("plain"), cfg)
        with torch.no_grad():
            proposals, _ = model.rpn(images, model.backbone(images), sizes)
        for i, p in enumerate(proposals):
            out[f"{top_n}_count_{i}"] = float(p.shape[0])
            out[f"{top_n}_sum_{i}"] = float(p.sum())
    return out


def training_values(optimizer: str) -> dict[str, float]:
    """train_model, 3 iterations of 2 images: every logged loss of every iteration."""
    progress = []
    cfg = small_config(optimizer=optimizer, images_per_batch=2, warmup_iters=0, feature_pyramid=False)
    train_model(_dataset("mixed"), cfg, iterations=3, lr=1e-3, seed=4, backbone_weights="none", device="cpu",
                num_workers=0, on_progress=progress.append)
    return {f"{p.iteration}_{k}": v for p in progress for k, v in p.losses.items()}


CASES = {
    "step_plain": lambda: step_values("plain"),
    "step_mixed": lambda: step_values("mixed"),
    "step_maskx": lambda: step_values("mixed", maskx=True),
    "proposals": proposal_values,
    "train_adamw": lambda: training_values("adamw"),
    "train_sgd": lambda: training_values("sgd"),
}

EXPECTED: dict[str, dict[str, float]] = {
    'proposals': {
        '40_count_0': 40.0,
        '40_sum_0': 14394.5595703125,
        '40_count_1': 40.0,
        '40_sum_1': 13744.8671875,
        '40_count_2': 40.0,
        '40_sum_2': 13735.015625,
        '2000_count_0': 337.0,
        '2000_sum_0': 102557.3125,
        '2000_count_1': 339.0,
        '2000_sum_1': 104271.4453125,
        '2000_count_2': 335.0,
        '2000_sum_2': 101170.7578125,
    },
    'step_maskx': {
        'rpn_cls': 0.6901092529296875,
        'rpn_box': 0.00780367711558938,
        'mask': 0.4618282616138458,
        'cls': 1.067035436630249,
        'seg_cls': 1.207959532737732,
        'bbox': 0.027186239138245583,
        'mask_final': 0.4550156593322754,
        'mask_s45': 0.46182870864868164,
        'cls_s45': 1.067091464996338,
        'seg_cls_s45': 1.2076691389083862,
        'bbox_s45': 0.02806546725332737,
        'mask_final_s45': 0.4550132751464844,
        'grad_backbone': 3994.437744140625,
        'grad_rpn': 51.49854278564453,
        'grad_mask_head': 500.44012451171875,
        'grad_classify_head': 3627.3974609375,
        'grad_final_mask_head': 574.2322998046875,
    },
    'step_mixed': {
        'rpn_cls': 0.6901092529296875,
        'rpn_box': 0.00780367711558938,
        'mask': 0.4618282616138458,
        'cls': 1.067035436630249,
        'seg_cls': 1.207959532737732,
        'bbox': 0.027186239138245583,
        'mask_s45': 0.46182870864868164,
        'cls_s45': 1.067091464996338,
        'seg_cls_s45': 1.2076691389083862,
        'bbox_s45': 0.02806546725332737,
        'grad_backbone': 3941.421142578125,
        'grad_rpn': 51.49854278564453,
        'grad_mask_head': 264.8717956542969,
        'grad_classify_head': 3627.46435546875,
    },
    'step_plain': {
        'rpn_cls': 0.6889615654945374,
        'rpn_box': 0.027327701449394226,
        'mask': 0.6929298043251038,
        'cls': 1.0738977193832397,
        'seg_cls': 1.2051118612289429,
        'bbox': 0.09401985257863998,
        'mask_s45': 0.6929299235343933,
        'cls_s45': 1.0738822221755981,
        'seg_cls_s45': 1.20494544506073,
        'bbox_s45': 0.096254862844944,
        'grad_backbone': 3706.37939453125,
        'grad_rpn': 55.201576232910156,
        'grad_mask_head': 292.9627380371094,
        'grad_classify_head': 3287.529052734375,
    },
    'train_adamw': {
        '1_rpn_cls': 0.6819641590118408,
        '1_rpn_box': 0.0052779726684093475,
        '1_mask': 0.34647461771965027,
        '1_cls': 1.0189106464385986,
        '1_seg_cls': 0.9922623634338379,
        '1_bbox': 0.10041362047195435,
        '1_mask_s45': 0.34647372364997864,
        '1_cls_s45': 1.0191339254379272,
        '1_seg_cls_s45': 0.9923403263092041,
        '1_bbox_s45': 0.10087109357118607,
        '1_total': 6.297070503234863,
        '2_rpn_cls': 0.48506030440330505,
        '2_rpn_box': 0.008502639830112457,
        '2_mask': 0.13759832084178925,
        '2_cls': 0.16692888736724854,
        '2_seg_cls': 0.15481936931610107,
        '2_bbox': 0.032442543655633926,
        '2_mask_s45': 0.25919315218925476,
        '2_cls_s45': 0.1660580337047577,
        '2_seg_cls_s45': 0.1532433032989502,
        '2_bbox_s45': 0.026040075346827507,
        '2_total': 1.986678123474121,
        '3_rpn_cls': 0.2931211590766907,
        '3_rpn_box': 0.04780709743499756,
        '3_mask': 0.2666902542114258,
        '3_cls': 0.8022396564483643,
        '3_seg_cls': 0.8161093592643738,
        '3_bbox': 0.15328684449195862,
        '3_mask_s45': 0.42220163345336914,
        '3_cls_s45': 0.7976641058921814,
        '3_seg_cls_s45': 0.8118013739585876,
        '3_bbox_s45': 0.1650228053331375,
        '3_total': 5.264836311340332,
    },
    'train_sgd': {
        '1_rpn_cls': 0.6819641590118408,
        '1_rpn_box': 0.0052779726684093475,
        '1_mask': 0.34647461771965027,
        '1_cls': 1.0189106464385986,
        '1_seg_cls': 0.9922623634338379,
        '1_bbox': 0.10041362047195435,
        '1_mask_s45': 0.34647372364997864,
        '1_cls_s45': 1.0191339254379272,
        '1_seg_cls_s45': 0.9923403263092041,
        '1_bbox_s45': 0.10087109357118607,
        '1_total': 6.297070503234863,
        '2_rpn_cls': 0.6808114647865295,
        '2_rpn_box': 0.0012002340517938137,
        '2_mask': 0.34545692801475525,
        '2_cls': 0.8708264231681824,
        '2_seg_cls': 0.8254329562187195,
        '2_bbox': 1.213574068970047e-05,
        '2_mask_s45': 0.3454510271549225,
        '2_cls_s45': 0.8709858655929565,
        '2_seg_cls_s45': 0.8254522681236267,
        '2_bbox_s45': 6.50644869892858e-05,
        '2_total': 5.456602096557617,
        '3_rpn_cls': 0.6792789101600647,
        '3_rpn_box': 0.009369339793920517,
        '3_mask': 0.6914839744567871,
        '3_cls': 0.6530951857566833,
        '3_seg_cls': 0.6214190125465393,
        '3_bbox': 4.736665141535923e-05,
        '3_mask_s45': 0.6914805173873901,
        '3_cls_s45': 0.6531000733375549,
        '3_seg_cls_s45': 0.6214635372161865,
        '3_bbox_s45': 0.00013632822083309293,
        '3_total': 6.003838539123535,
    },
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_numbers_as_before_the_sync_work(case):
    torch.set_num_threads(1)
    got = CASES[case]()
    want = EXPECTED[case]
    assert sorted(got) == sorted(want)
    bad = {k: (got[k], want[k]) for k in want if not math.isclose(got[k], want[k], rel_tol=2e-5, abs_tol=1e-6)}
    assert not bad, bad


def test_a_step_with_a_non_finite_loss_is_skipped_and_too_many_stop_the_run():
    torch.set_num_threads(1)
    cfg = small_config(min_size=64, max_size=64, anchor_sizes=(16, 32), warmup_iters=0)
    ds = ShapesDataset(2, size=(64, 64))
    for bad_calls, iterations in (({2}, 3), (set(range(1, 13)), 12)):
        torch.manual_seed(0)
        model = build_model(cfg, 2, backbone_weights="none")
        calls = []

        def total_loss(losses, model=model, calls=calls, bad_calls=bad_calls):
            calls.append(1)
            total = type(model).total_loss(model, losses)
            return total * float("nan") if len(calls) in bad_calls else total

        model.total_loss = total_loss
        progress = []
        if iterations == 12:
            with pytest.raises(FloatingPointError, match="loss is not finite"):
                train_model(ds, cfg, iterations=iterations, model=model, device="cpu", num_workers=0)
            assert len(calls) == 11  # max(10, 12 // 10) skips are allowed, the 11th stops the run
            continue
        _, summary = train_model(ds, cfg, iterations=iterations, model=model, device="cpu", num_workers=0,
                                 on_progress=progress.append)
        assert summary["skipped_steps"] == 1 and [p.iteration for p in progress] == [1, 3]
        assert all(math.isfinite(v) for p in progress for v in p.losses.values())
        assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_match_anchors_gives_the_labels_of_torchvisions_matcher():
    from torchvision.models.detection._utils import Matcher

    from mnc_core.targets import match_anchors
    g = torch.Generator().manual_seed(0)
    for gts, anchors in ((1, 50), (4, 3000), (7, 20)):
        iou = (torch.rand(gts, anchors, generator=g) * 1.1).clamp(max=1.0)  # ties at 1.0
        iou[0, : anchors // 2] = 0.0  # a gt whose best anchor is poor and tied
        iou[0, anchors // 2:] = torch.rand(anchors - anchors // 2, generator=g) * 0.2
        matched = Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou)
        want = torch.where(matched >= 0, 1.0, torch.where(matched == Matcher.BETWEEN_THRESHOLDS, -1.0, 0.0))
        labels, gt_index = match_anchors(iou, 0.7, 0.3)
        assert torch.equal(labels, want)
        assert {-1.0, 0.0, 1.0} <= set(labels.tolist()) or anchors <= 50  # every kind where there are many
        assert torch.equal(gt_index[matched >= 0], matched[matched >= 0])


if __name__ == "__main__":
    torch.set_num_threads(1)
    print("EXPECTED = {")
    for name in sorted(CASES):
        print(f"    {name!r}: {{")
        for k, v in CASES[name]().items():
            print(f"        {k!r}: {v!r},")
        print("    },")
    print("}")
