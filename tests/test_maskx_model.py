"""Mask^X on MNC: a box-only class gets masks of its shape; the fused head's loss, stop-gradient,
checkpoints, heads mode (frozen backbone, cached features), warm starts and thousands of classes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mnc_core import Predictor, Sample, load_checkpoint, save_checkpoint, train_model, warm_start
from mnc_core.training_data import prepare_sample
from partial_sup.maskx import MaskXConfig, build_maskx_model, load_model

from test_mnc_helpers import small_config

torch.set_num_threads(2)

CIRCLE, SQUARE, TRIANGLE = 7, 3, 5
H, W = 128, 160


def triangle_mask(yy, xx, cx, cy, r):
    """An upright isosceles triangle filling the box [cx-r, cx+r) x [cy-r, cy+r): half the box's area."""
    return (yy >= cy - r) & (yy < cy + r) & (np.abs(xx - cx + 0.5) <= (yy - (cy - r) + 0.5) / 2)


class TriangleShapes:
    """Circles and squares with masks (set A) and triangles with boxes only (set B); `full_masks`
    keeps the triangles' hidden masks for scoring."""

    categories = [(CIRCLE, "circle"), (SQUARE, "square"), (TRIANGLE, "triangle")]

    def __init__(self, n: int, seed: int = 0, box_only: tuple[int, ...] = (TRIANGLE,)) -> None:
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:H, 0:W]
        self.samples, self.full_masks = [], []
        for i in range(n):
            img = rng.normal(110, 12, size=(H, W, 3)).clip(0, 255)
            boxes, cats, masks = [], [], []
            while len(boxes) < 3:
                r = int(rng.integers(16, 28))
                cx, cy = int(rng.integers(r + 2, W - r - 2)), int(rng.integers(r + 2, H - r - 2))
                b = np.array([cx - r, cy - r, cx + r, cy + r], np.float32)
                if any(not (b[2] + 4 < o[0] or o[2] + 4 < b[0] or b[3] + 4 < o[1] or o[3] + 4 < b[1]) for o in boxes):
                    continue
                kind = (len(boxes) + i) % 3
                if kind == 0:
                    m, c = (xx - cx + 0.5) ** 2 + (yy - cy + 0.5) ** 2 <= r * r, CIRCLE
                elif kind == 1:
                    m, c = (xx >= cx - r) & (xx < cx + r) & (yy >= cy - r) & (yy < cy + r), SQUARE
                else:
                    m, c = triangle_mask(yy, xx, cx, cy, r), TRIANGLE
                img[m] = rng.integers(30, 255, size=3)
                ys, xs = np.where(m)
                boxes.append(np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32))
                cats.append(c)
                masks.append(m)
            cats = np.array(cats, np.int64)
            full = np.stack(masks)
            has = ~np.isin(cats, box_only)
            self.full_masks.append(full)
            self.samples.append(Sample(img.astype(np.uint8), np.stack(boxes), cats, full & has[:, None, None], has, i + 1))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]


def config():
    return small_config(optimizer="adamw", min_size=H, max_size=W)


def best_ious(predictor, dataset, category):
    """Per ground-truth instance of `category`: best mask IoU among predictions of that category, and
    the IoU of a mask that fills the instance's box."""
    found, boxy = [], []
    for sample, full in zip(dataset.samples, dataset.full_masks):
        out = predictor(sample.image, score_threshold=0.3)
        for m, c, b in zip(full, sample.category_ids, sample.boxes):
            if c != category:
                continue
            preds = [p.mask for p in out if p.category_id == category]
            found.append(max([(p & m).sum() / (p | m).sum() for p in preds], default=0.0))
            box_mask = np.zeros_like(m)
            x1, y1, x2, y2 = b.astype(int)
            box_mask[y1:y2, x1:x2] = True
            boxy.append((box_mask & m).sum() / (box_mask | m).sum())
    return float(np.mean(found)), float(np.mean(boxy))


@pytest.fixture(scope="module")
def transfer_model():
    """The fit on one thread, as its margins were measured: with two threads the sums run in another order and
    the fit follows another trajectory (on a Zen 4 its triangle margin was then 0.04, below the 0.05 asked), so
    the thread count that earlier tests happened to leave must not decide it."""
    dataset = TriangleShapes(6)
    cfg = config()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = build_maskx_model(cfg, 3, MaskXConfig(method="transfer", fcn_channels=32), "none")
        model, summary = train_model(dataset, cfg, iterations=300, lr=1e-3, seed=0, model=model)
    finally:
        torch.set_num_threads(threads)
    return dataset, cfg, model, summary


def test_a_box_only_class_gets_masks_of_its_shape(transfer_model):
    dataset, cfg, model, summary = transfer_model
    assert {"mask_final", "mask_final_s45"} <= set(summary["final_losses"])
    predictor = Predictor(model, cfg, dataset.categories, "cpu")
    triangle, triangle_box = best_ious(predictor, dataset, TRIANGLE)
    circle, _ = best_ious(predictor, dataset, CIRCLE)
    # no triangle mask was ever seen; a mask filling the box would score about 0.5 (margin ~0). The margin of
    # this 300-iteration fit depends on floating-point noise: over seeds 0-4 (1 thread) it was 0.073-0.120
    # before issue 13's host-sync work and 0.064-0.124 after (same losses per step within 2e-5), so 0.05
    assert triangle_box < 0.55
    assert triangle >= triangle_box + 0.05, (triangle, triangle_box)
    assert circle >= 0.85  # set A is learnt properly


def test_boxes_a_person_draws_around_a_box_only_class_get_its_shape(transfer_model):
    dataset, cfg, model, _ = transfer_model
    predictor = Predictor(model, cfg, dataset.categories, "cpu")
    found, boxy = [], []
    for sample, full in zip(dataset.samples, dataset.full_masks):
        keep = sample.category_ids == TRIANGLE
        masks = predictor.masks_for_boxes(sample.image, sample.boxes[keep], [TRIANGLE] * int(keep.sum()))
        assert len(masks) == int(keep.sum())
        for mask, truth, box in zip(masks, full[keep], sample.boxes[keep]):
            assert mask.shape == truth.shape and mask.dtype == np.bool_
            x1, y1, x2, y2 = box.astype(int)
            assert not mask[:, :x1].any() and not mask[:y1].any()  # inside the drawn box
            found.append((mask & truth).sum() / (mask | truth).sum())
            box_mask = np.zeros_like(truth)
            box_mask[y1:y2, x1:x2] = True
            boxy.append((box_mask & truth).sum() / (box_mask | truth).sum())
    assert np.mean(found) >= np.mean(boxy) + 0.08, (np.mean(found), np.mean(boxy))
    with pytest.raises(ValueError, match="does not know"):
        predictor.masks_for_boxes(dataset[0].image, dataset[0].boxes[:1], [99])


def test_checkpoints_keep_the_mask_head(transfer_model, tmp_path):
    dataset, cfg, model, _ = transfer_model
    path = tmp_path / "maskx.pt"
    save_checkpoint(path, model, cfg, dataset.categories, extra={"maskx": model.final_mask_head.config.to_dict()})
    loaded, loaded_cfg, categories, extra = load_model(path)
    assert categories == dataset.categories and extra["maskx"]["method"] == "transfer"
    image = dataset[0].image
    a = Predictor(model, cfg, categories, "cpu")(image, score_threshold=0.3)
    b = Predictor(loaded, loaded_cfg, categories, "cpu")(image, score_threshold=0.3)
    assert len(a) == len(b) > 0
    assert all(np.array_equal(x.mask, y.mask) and x.category_id == y.category_id for x, y in zip(a, b))
    with pytest.raises(ValueError, match="final-mask head"):  # a plain MNC loader says how to load it
        load_checkpoint(path)


def training_losses(model, sample, categories):
    cfg = model.config
    cat_to_label = {c: i + 1 for i, (c, _) in enumerate(categories)}
    image, size, targets = prepare_sample(sample, cat_to_label, cfg, False, torch.device("cpu"))
    model.train()
    return model(image[None], [size], [targets])


def test_instances_without_masks_give_no_final_mask_loss():
    dataset = TriangleShapes(1, box_only=(CIRCLE, SQUARE, TRIANGLE))
    torch.manual_seed(0)
    model = build_maskx_model(config(), 3, MaskXConfig(fcn_channels=16), "none")
    losses = training_losses(model, dataset[0], dataset.categories)
    assert losses["mask_final"].detach().item() == 0.0 and losses["mask"].detach().item() == 0.0
    model.total_loss(losses).backward()
    for p in model.final_mask_head.parameters():
        assert p.grad is None or torch.count_nonzero(p.grad) == 0


def test_the_final_mask_loss_trains_the_transfer_not_the_detection_weights():
    dataset = TriangleShapes(1)
    for stop_gradient in (True, False):
        torch.manual_seed(0)
        model = build_maskx_model(config(), 3, MaskXConfig(fcn_channels=16, stop_gradient=stop_gradient), "none")
        losses = training_losses(model, dataset[0], dataset.categories)
        assert losses["mask_final"].detach().item() > 0
        (losses["mask_final"] + losses["mask_final_s45"]).backward()
        transfer = model.final_mask_head.transfer.fc1.weight.grad
        assert transfer is not None and transfer.abs().sum() > 0
        det = model.classify_head.cls_score.weight.grad
        if stop_gradient:
            assert det is None or torch.count_nonzero(det) == 0
        else:
            assert det is not None and det.abs().sum() > 0


def test_heads_mode_freezes_the_body_and_trains_the_rest():
    dataset = TriangleShapes(2)
    cfg = config().replace(backbone_frozen_blocks=99)  # the whole body frozen
    torch.manual_seed(0)
    model = build_maskx_model(cfg, 3, MaskXConfig(fcn_channels=16), "none")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    model.backbone.body[0].register_forward_hook(lambda *a: calls.append(1))
    model, summary = train_model(dataset, cfg, iterations=12, lr=1e-3, seed=0, model=model,
                                 cache_frozen_features=True)
    after = model.state_dict()
    body = [k for k in before if k.startswith("backbone.body.")]
    assert body and all(torch.equal(before[k], after[k]) for k in body)
    for k in ("backbone.fpn.layer_blocks.0.0.weight", "rpn.head.conv.weight", "final_mask_head.transfer.fc1.weight"):
        assert k in after and not torch.equal(before[k], after[k]), k
    assert summary["cache_frozen_features"] and summary["iterations"] == 12
    assert len(calls) <= 2 * len(dataset)  # features are computed once per image and flip, then cached


def test_warm_start_keeps_known_classes_by_category_id():
    cfg = config()
    torch.manual_seed(0)
    source = build_maskx_model(cfg, 3, MaskXConfig(fcn_channels=16), "none")
    source_categories = [(7, "circle"), (3, "square"), (5, "triangle")]
    target_categories = [(3, "square"), (9, "star"), (7, "circle")]
    torch.manual_seed(1)
    target = build_maskx_model(cfg, 3, MaskXConfig(fcn_channels=16), "none")
    fresh_star = target.classify_head.cls_score.weight[2].clone()
    report = warm_start(target, target_categories, source.state_dict(), source_categories)
    assert report["classes_kept"] == 2 and report["classes_new"] == 1 and report["skipped"] == 0
    src, dst = source.classify_head, target.classify_head
    assert torch.equal(dst.cls_score.weight[1], src.cls_score.weight[2])  # square: source row 2 -> row 1
    assert torch.equal(dst.cls_score.weight[3], src.cls_score.weight[1])  # circle
    assert torch.equal(dst.cls_score.weight[0], src.cls_score.weight[0])  # background
    assert torch.equal(dst.cls_score.weight[2], fresh_star)               # a new class keeps its init
    assert torch.equal(dst.bbox_pred.weight[4:8], src.bbox_pred.weight[8:12])
    assert torch.equal(target.final_mask_head.transfer.fc1.weight, source.final_mask_head.transfer.fc1.weight)


def test_thousands_of_mostly_box_only_classes_train_and_predict():
    dataset = TriangleShapes(2)
    many = [(c, n) for c, n in dataset.categories] + [(1000 + i, f"class {i}") for i in range(2997)]
    for sample in dataset.samples:  # relabel the triangles to two of the extra (box-only) classes
        sample.category_ids[sample.category_ids == TRIANGLE] = 1500
    dataset.categories = many
    cfg = config()
    torch.manual_seed(0)
    model = build_maskx_model(cfg, len(many), MaskXConfig(fcn_channels=16), "none")
    assert model.classify_head.cls_score.out_features == 3001
    model, summary = train_model(dataset, cfg, iterations=4, lr=1e-3, seed=0, model=model,
                                 cache_frozen_features=True)
    assert summary["iterations"] == 4
    out = Predictor(model, cfg, many, "cpu")(dataset[0].image, score_threshold=0.0)
    ids = {c for c, _ in many}
    assert out and all(p.category_id in ids and p.mask.shape == (H, W) for p in out)


def test_the_same_seed_gives_both_methods_the_same_start():
    """Class-agnostic and transfer models built after the same seed share every common layer's weights
    (the MNC and the head's FCN), so a comparison of the two is one of the methods."""
    cfg = config()
    models = {}
    for method in ("agnostic", "transfer"):
        torch.manual_seed(0)
        models[method] = build_maskx_model(cfg, 3, MaskXConfig(method=method, fcn_channels=16), "none").state_dict()
    common = set(models["agnostic"]) & set(models["transfer"])
    assert {k for k in common if k.startswith("final_mask_head.fcn.")} and {k for k in common if k.startswith("rpn.")}
    assert all(torch.equal(models["agnostic"][k], models["transfer"][k]) for k in common)
    assert set(models["transfer"]) - common == {k for k in models["transfer"] if ".transfer." in k}


def test_every_class_of_a_candidate_gets_its_own_final_mask():
    """A candidate above the threshold for two classes is two (instance, class) pairs, each with the
    transferred mask of its own class (not the highest class's mask reused)."""
    dataset = TriangleShapes(1)
    cfg = config().replace(num_stages=3, mask_voting=False)  # candidates: pairs above the score threshold
    torch.manual_seed(0)
    model = build_maskx_model(cfg, 3, MaskXConfig(fcn_channels=16), "none").eval()
    with torch.no_grad():  # every RoI: classes 1 and 2 at ~0.42 each, class 3 and background ~0.08
        model.classify_head.seg_cls_score.weight.zero_()
        model.classify_head.seg_cls_score.bias.copy_(torch.tensor([0.0, 1.65, 1.65, 0.0]))
        model.final_mask_head.transfer.fc2.weight.normal_(std=1.0)  # classes' mask weights clearly differ
    cat_to_label = {c: i + 1 for i, (c, _) in enumerate(dataset.categories)}
    image, size, _ = prepare_sample(dataset[0], cat_to_label, cfg, False)
    with torch.no_grad():
        pairs = model(image[None], [size], score_threshold=0.3)[0]
    labels = pairs["labels"]
    assert set(labels.tolist()) == {1, 2} and (labels == 1).sum() == (labels == 2).sum() > 0
    one, two = torch.where(labels == 1)[0], torch.where(labels == 2)[0]
    torch.testing.assert_close(pairs["boxes"][one], pairs["boxes"][two])  # the same RoIs, once per class
    differ = (pairs["mask_probs"][one] - pairs["mask_probs"][two]).abs().amax(dim=(1, 2))
    assert (differ > 0.05).all()
    # each pair's mask is the model's final mask of that box at that class
    for rows, label in ((one, 1), (two, 2)):
        boxes = pairs["boxes"][rows]
        expected = model.masks_for_boxes(image[None], [size], [boxes], [torch.full((len(rows),), label)])[0]
        torch.testing.assert_close(pairs["mask_probs"][rows], expected, rtol=1e-4, atol=1e-5)
