"""The training input pipeline: DataLoader workers give what the training process would make itself,
augmentation is tied to the seed, caches stay within their byte budgets, crowd regions are ignored."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mnc_core import MNCConfig, Sample, train_model
from mnc_core.cache import ByteBoundedLRU
from mnc_core.rpn import RegionProposalNetwork
from mnc_core.targets import ImageTargets, inside_crowd, match_rois, sample_rois
from mnc_core.training_data import (Draw, TrainingInputs, draw_batches, photometric_jitter, prepare_sample,
                                   training_loader, training_scales)

from test_mnc_helpers import ShapesDataset, small_config

torch.set_num_threads(2)


def _augmenting_config(**kw) -> MNCConfig:
    return small_config(scale_jitter=(0.75, 1.0, 1.25), photometric_jitter=0.3, **kw)


def _same_input(a, b) -> None:
    """Targets identical; pixels equal up to float rounding (a worker resizes with one thread, the training
    process with two: the vectorised loops split differently)."""
    assert a.key == b.key and a.size == b.size
    torch.testing.assert_close(a.image, b.image, rtol=0, atol=1e-5)
    for name in ImageTargets.FIELDS:
        torch.testing.assert_close(getattr(a.targets, name), getattr(b.targets, name), rtol=0, atol=0)


def test_workers_give_exactly_the_inputs_of_the_training_process():
    ds = ShapesDataset(5)
    cfg = _augmenting_config()
    cat_to_label = {c: i + 1 for i, (c, _) in enumerate(ds.categories)}
    batches = draw_batches(len(ds), cfg, seed=3, iterations=6, global_batch=2)
    inputs = TrainingInputs(ds, cfg, cat_to_label)
    here = list(training_loader(inputs, batches, rank=0, per_process=2, num_workers=0, pin_memory=False))
    workers = list(training_loader(inputs, batches, rank=0, per_process=2, num_workers=2, pin_memory=False))
    assert len(here) == len(workers) == 6 and all(len(b) == 2 for b in here)
    for batch_here, batch_workers, draws in zip(here, workers, batches):
        for a, b, draw in zip(batch_here, batch_workers, draws):
            _same_input(a, b)
            assert a.key == draw.key
    # a process of a 2-process run gets its slice of each global batch
    second = list(training_loader(inputs, batches, rank=1, per_process=1, num_workers=0, pin_memory=False))
    assert [b[0].key for b in second] == [draws[1].key for draws in batches]


def test_training_with_workers_equals_training_in_process():
    ds = ShapesDataset(3)
    cfg = _augmenting_config()
    runs = []
    for workers in (0, 2):
        torch.manual_seed(0)
        _, summary = train_model(ds, cfg, iterations=4, lr=1e-3, seed=5, backbone_weights="none", num_workers=workers)
        runs.append(summary)
    assert runs[0]["num_workers"] == 0 and runs[1]["num_workers"] == 2
    # not bit for bit: the total loss differs by ~2e-4 relative between 0 and 2 workers (single-scale and pyramid
    # alike; the inputs themselves are equal, test above), and single losses by up to ~1.1e-3
    for name, value in runs[0]["final_losses"].items():
        assert value == pytest.approx(runs[1]["final_losses"][name], rel=5e-3, abs=1e-5), name


def test_draws_follow_the_seed_and_cover_every_image_each_epoch():
    cfg = _augmenting_config()
    a = draw_batches(7, cfg, seed=1, iterations=14, global_batch=1)
    b = draw_batches(7, cfg, seed=1, iterations=14, global_batch=1)
    c = draw_batches(7, cfg, seed=2, iterations=14, global_batch=1)
    assert a == b and a != c
    flat = [d for batch in a for d in batch]
    assert sorted(d.index for d in flat[:7]) == list(range(7)) == sorted(d.index for d in flat[7:])
    scales = set(training_scales(cfg))
    assert scales == {(108, 144), (144, 192), (180, 240)}
    assert {(d.short_side, d.max_side) for d in flat} <= scales and len({d.short_side for d in flat}) > 1
    assert any(d.flip for d in flat) and not all(d.flip for d in flat)
    assert all(d.jitter_seed > 0 for d in flat) and len({d.jitter_seed for d in flat}) == len(flat)
    # reused jitter (heads mode): one jitter per (image, scale, flip), so the distinct inputs stay few
    reuse = [d for batch in draw_batches(7, cfg, seed=1, iterations=200, global_batch=1, reuse_jitter=True)
             for d in batch]
    by_input = {}
    for d in reuse:
        by_input.setdefault((d.index, d.short_side, d.flip), set()).add(d.jitter_seed)
    assert all(len(seeds) == 1 for seeds in by_input.values()) and len({d.key for d in reuse}) <= 7 * 3 * 2
    # without augmentation: one scale, no jitter
    plain = draw_batches(7, small_config(), seed=1, iterations=7, global_batch=1)
    assert {(d.short_side, d.max_side, d.jitter_seed) for batch in plain for d in batch} == {(144, 192, 0)}


def test_scale_jitter_and_flip_move_the_targets_with_the_image():
    ds = ShapesDataset(1, size=(144, 176))
    cfg = _augmenting_config()
    sample = ds[0]
    cat_to_label = {c: i + 1 for i, (c, _) in enumerate(ds.categories)}
    image, (h, w), t = prepare_sample(sample, cat_to_label, cfg, True, short_side=108, max_side=144)
    assert (h, w) == (108, 132) and image.shape == (3, 108, 132)
    scale = 108 / 144
    x1, y1, x2, y2 = sample.boxes[0] * scale
    torch.testing.assert_close(t.boxes[0], torch.tensor([w - x2, y1, w - x1, y2]), atol=1e-4, rtol=0)
    # the mask moved with the image: its box is the target box (within the resize's rounding)
    ys, xs = torch.where(t.masks[0].bool())
    assert abs(float(xs.min()) - float(t.boxes[0, 0])) <= 1.5 and abs(float(xs.max()) + 1 - float(t.boxes[0, 2])) <= 1.5
    assert t.crowd_boxes.shape == (0, 4)


def test_photometric_jitter_is_seeded_and_mild():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 20, 30, generator=g)
    a, b, c = (photometric_jitter(image, 0.2, s) for s in (5, 5, 6))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c) and not torch.equal(a, image)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert float((a - image).abs().mean()) < 0.2


def test_byte_bounded_lru_evicts_the_least_recently_used():
    cache = ByteBoundedLRU(1000)
    for key in "abc":
        cache.put(key, np.zeros(300, np.uint8))
    assert cache.bytes == 900 and len(cache) == 3
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("d", np.zeros(300, np.uint8))  # 1200 > 1000: evicts b, the least recently used
    assert "b" not in cache and {"a", "c", "d"} <= {k for k in "acd" if k in cache}
    assert cache.bytes == 900 and cache.evictions == 1
    cache.put("huge", np.zeros(5000, np.uint8))  # larger than the budget: not kept
    assert "huge" not in cache and cache.bytes <= 1000
    assert cache.get("b") is None and cache.misses == 1 and cache.hits == 1
    off = ByteBoundedLRU(0)
    off.put("x", np.zeros(1, np.uint8))
    assert len(off) == 0


def test_frozen_feature_cache_stays_within_its_budget():
    ds = ShapesDataset(6)
    cfg = small_config(backbone_frozen_blocks=99, scale_jitter=(0.75, 1.0), photometric_jitter=0.2)
    budget = 400_000  # bytes: a few inputs' frozen pyramid taps (~135 KB each for these small images)
    torch.manual_seed(0)
    model, summary = train_model(ds, cfg, iterations=30, lr=1e-3, seed=0, backbone_weights="none",
                                 cache_frozen_features=True, cache_bytes=budget, num_workers=0)
    stats = summary["feature_cache"]
    assert summary["frozen_blocks"] == model.backbone.num_blocks
    assert 0 < stats["bytes"] <= budget and stats["evictions"] > 0 and stats["entries"] >= 1
    assert stats["hits"] + stats["misses"] == 30
    # a budget that holds everything: every distinct input is computed once
    torch.manual_seed(0)
    _, roomy = train_model(ds, cfg, iterations=30, lr=1e-3, seed=0, backbone_weights="none",
                           cache_frozen_features=True, cache_bytes=2**30, num_workers=0)
    distinct = {d.key for b in draw_batches(6, cfg, seed=0, iterations=30, global_batch=1, reuse_jitter=True) for d in b}
    assert roomy["feature_cache"]["misses"] == len(distinct) and roomy["feature_cache"]["evictions"] == 0


def _crowd_sample() -> Sample:
    """One object (a square, 10..50) and one crowd region (90..150 x 20..100) on a 128 x 160 image."""
    image = np.full((128, 160, 3), 100, np.uint8)
    masks = np.zeros((2, 128, 160), bool)
    masks[0, 10:50, 10:50] = True
    masks[1, 20:100, 90:150] = True
    return Sample(image=image, boxes=np.array([[10, 10, 50, 50], [90, 20, 150, 100]], np.float32),
                  category_ids=np.array([3, 7], np.int64), masks=masks, has_mask=np.array([True, True]),
                  iscrowd=np.array([False, True]))


def test_crowd_regions_are_not_objects():
    cfg = small_config(min_size=128, max_size=160)
    image, size, t = prepare_sample(_crowd_sample(), {3: 1, 7: 2}, cfg, False)
    assert t.boxes.shape == (1, 4) and t.labels.tolist() == [1] and t.masks.shape == (1, 128, 160)
    torch.testing.assert_close(t.crowd_boxes, torch.tensor([[90.0, 20.0, 150.0, 100.0]]))
    flipped = prepare_sample(_crowd_sample(), {3: 1, 7: 2}, cfg, True)[2]
    torch.testing.assert_close(flipped.crowd_boxes, torch.tensor([[10.0, 20.0, 70.0, 100.0]]))


def test_crowd_regions_give_no_positive_and_no_negative_anchors():
    cfg = small_config(min_size=128, max_size=160, crowd_ioa_thresh=0.7)
    rpn = RegionProposalNetwork(8, 8, (cfg.anchor_sizes,), cfg.anchor_ratios, cfg.rpn_fg_iou, cfg.rpn_bg_iou, 256, 0.5,
                                {"training": 100, "testing": 100}, {"training": 10, "testing": 10}, 0.7, 1.0,
                                0.0, True, cfg.crowd_ioa_thresh)
    _, _, t = prepare_sample(_crowd_sample(), {3: 1, 7: 2}, cfg, False)
    from torchvision.models.detection.image_list import ImageList

    features = torch.zeros(1, 8, 8, 10)
    anchors = rpn.anchor_generator(ImageList(torch.zeros(1, 3, 128, 160), [(128, 160)]), [features])
    crowd_anchors = inside_crowd(anchors[0], t.crowd_boxes, 0.7)
    assert crowd_anchors.sum() > 10
    with_crowd, _ = rpn._targets(anchors, [t.boxes], [t.crowd_boxes])
    without, _ = rpn._targets(anchors, [t.boxes], [t.crowd_boxes[:0]])
    labels, plain = with_crowd[0], without[0]
    assert (labels[crowd_anchors] == -1).all()  # inside the crowd: neither object nor background
    assert (plain[crowd_anchors] == 0).all()  # (without the crowd region they were background)
    assert torch.equal(labels[~crowd_anchors], plain[~crowd_anchors])  # elsewhere nothing changes
    assert (labels == 1).sum() > 0 and (labels == 1).sum() == (plain == 1).sum()
    # an image with only a crowd region: no positive, and no negative inside it
    only_crowd, _ = rpn._targets(anchors, [t.boxes[:0]], [t.crowd_boxes])
    assert (only_crowd[0] == 1).sum() == 0 and (only_crowd[0][crowd_anchors] == -1).all()


def test_crowd_regions_give_no_roi_samples():
    crowd = torch.tensor([[90.0, 20.0, 150.0, 100.0]])
    gt = torch.tensor([[10.0, 10.0, 50.0, 50.0]])
    rois = torch.tensor([[95.0, 25.0, 140.0, 90.0],    # inside the crowd region: ignored
                         [100.0, 30.0, 120.0, 60.0],   # inside the crowd region: ignored
                         [12.0, 11.0, 50.0, 49.0],     # the object: foreground
                         [0.0, 60.0, 40.0, 120.0],     # background
                         [60.0, 0.0, 100.0, 40.0]])    # background (a quarter of it in the crowd region)
    iou, _ = match_rois(rois, gt)
    ignore = inside_crowd(rois, crowd, 0.7)
    assert ignore.tolist() == [True, True, False, False, False]
    for seed in range(5):
        torch.manual_seed(seed)
        keep = sample_rois(iou, 5, 0.5, 0.5, 0.1, 0.25, ignore=ignore)
        assert sorted(keep.tolist()) == [2, 3, 4]
    torch.manual_seed(0)
    assert sorted(sample_rois(iou, 5, 0.5, 0.5, 0.1, 0.25).tolist()) == [0, 1, 2, 3, 4]


def test_training_with_a_crowd_region_runs_and_ignores_it():
    class CrowdData:
        categories = [(3, "square")]

        def __len__(self):
            return 2

        def __getitem__(self, index):
            s = _crowd_sample()
            s.category_ids = np.array([3, 3], np.int64)
            return s

    torch.manual_seed(0)
    _, summary = train_model(CrowdData(), small_config(min_size=128, max_size=160), iterations=3, lr=1e-3,
                             backbone_weights="none", num_workers=0)
    assert summary["iterations"] == 3 and all(np.isfinite(v) for v in summary["final_losses"].values())


@pytest.mark.parametrize("draw", [Draw(0, 144, 192, False, 0), Draw(0, 108, 144, True, 77)])
def test_draw_keys_name_the_input(draw):
    inputs = TrainingInputs(ShapesDataset(1), small_config(photometric_jitter=0.2), {7: 1, 3: 2})
    item = inputs[draw]
    assert item.key == draw.key and item.size[0] == draw.short_side


def test_the_learning_rate_scales_with_the_global_batch():
    from mnc_core.train import scaled_lr

    assert scaled_lr(0.01, 4, "sgd") == pytest.approx(0.04)  # linear scaling rule
    assert scaled_lr(3e-4, 4, "adamw") == pytest.approx(6e-4)  # square-root rule
    assert scaled_lr(3e-4, 1, "adamw") == 3e-4
    ds = ShapesDataset(4)
    torch.manual_seed(0)
    _, summary = train_model(ds, small_config(images_per_batch=2), iterations=2, lr=1e-3, backbone_weights="none",
                             num_workers=0)
    assert summary["global_batch"] == 2 and summary["lr"] == 1e-3
    assert summary["lr_scaled"] == pytest.approx(1e-3 * 2 ** 0.5)


def test_the_database_dataset_reads_through_each_workers_own_connection(database, synthetic_coco):
    """DataLoader workers read the database through connections of their own and give the same inputs as
    the training process; crowd regions arrive as regions to ignore; decoded images stay within budget."""
    from db.coco_import import import_coco
    from services.dataset import DatabaseDataset

    import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    dataset = DatabaseDataset(database, "train", cache_bytes=20_000)  # about two of these small images
    assert len(dataset) == 4 and [c for c, _ in dataset.categories] == [3, 7, 12]
    first = dataset[0]
    assert first.crowd_flags().tolist() == [False, False, False, True]  # image 1's crowd region
    cfg = small_config(min_size=48, max_size=64)
    inputs = TrainingInputs(dataset, cfg, {3: 1, 7: 2, 12: 3})
    batches = draw_batches(len(dataset), cfg, seed=0, iterations=8, global_batch=1)
    here = list(training_loader(inputs, batches, rank=0, per_process=1, num_workers=0, pin_memory=False))
    workers = list(training_loader(inputs, batches, rank=0, per_process=1, num_workers=2, pin_memory=False))
    for a, b in zip(here, workers):
        _same_input(a[0], b[0])
    crowd_input = next(item[0] for item in here if item[0].key[0] == 0)
    assert crowd_input.targets.crowd_boxes.shape == (1, 4) and crowd_input.targets.boxes.shape == (3, 4)
    for index in range(len(dataset)):
        dataset[index]
    assert 0 < dataset._images.bytes <= 20_000 and dataset._images.evictions > 0
