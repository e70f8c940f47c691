"""Pasting the survivors' masks into the image: all at once (paste_windows, the GPU path) gives what one
window after the other gives (paste_windows_one_by_one, the CPU path and the reference)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mnc_core import postprocess
from mnc_core.config import MNCConfig
from mnc_core.postprocess import paste_windows, paste_windows_one_by_one, postprocess_image


def soft_masks_and_windows(seed: int = 0, count: int = 40, height: int = 150, width: int = 210):
    generator = torch.Generator().manual_seed(seed)
    soft = F.avg_pool2d(torch.rand(count, 1, 56, 56, generator=generator), 7, 1, 3)[:, 0]  # smooth blobs
    soft = (soft - soft.amin((1, 2), keepdim=True)) / (soft.amax((1, 2), keepdim=True) - soft.amin((1, 2), keepdim=True))
    x0 = torch.randint(0, width - 1, (count,), generator=generator)
    y0 = torch.randint(0, height - 1, (count,), generator=generator)
    x1 = torch.minimum(x0 + 1 + torch.randint(0, 120, (count,), generator=generator), torch.tensor(width))
    y1 = torch.minimum(y0 + 1 + torch.randint(0, 90, (count,), generator=generator), torch.tensor(height))
    windows = torch.stack([x0, y0, x1, y1], 1)
    windows[0] = torch.tensor([0, 0, width, height])  # the whole image
    windows[1] = torch.tensor([7, 9, 8, 10])  # one pixel
    soft[2] = 0.0  # an empty mask: no tight box
    return soft, windows, (height, width)


def assert_same_paste(got, want, masks_pixels_tolerance: float = 1e-4):
    masks, tight, non_empty = got
    ref_masks, ref_tight, ref_non_empty = want
    assert masks.shape == ref_masks.shape and masks.dtype == torch.bool
    # the two resample in another order of float operations: a pixel exactly at the threshold may flip
    assert (masks != ref_masks).sum().item() <= masks_pixels_tolerance * ref_masks.sum().item() + 1
    assert torch.equal(non_empty, ref_non_empty) and not non_empty[2]
    assert (tight[non_empty] - ref_tight[non_empty]).abs().max().item() <= 1


@pytest.mark.parametrize("seed", [0, 1])
def test_pasting_all_at_once_matches_one_by_one(seed):
    soft, windows, shape = soft_masks_and_windows(seed)
    want = paste_windows_one_by_one(soft, windows, shape, 0.4)
    assert want[0].sum() > 1000 and want[2].sum() > 30  # the case is not trivial
    assert_same_paste(paste_windows(soft, windows, shape, 0.4), want)


def test_pasting_in_chunks_gives_the_same_masks(monkeypatch):
    soft, windows, shape = soft_masks_and_windows(3)
    whole = paste_windows(soft, windows, shape, 0.4)
    monkeypatch.setattr(postprocess, "PASTE_BUDGET", 150 * 210 * 3)  # three survivors per chunk
    chunked = paste_windows(soft, windows, shape, 0.4)
    assert all(torch.equal(a, b) for a, b in zip(whole, chunked))


def test_postprocess_gives_the_same_instances_on_either_paste(monkeypatch):
    generator = torch.Generator().manual_seed(5)
    count, classes = 120, 4
    x0, y0 = torch.rand(count, generator=generator) * 150, torch.rand(count, generator=generator) * 100
    boxes = torch.stack([x0, y0, x0 + 10 + torch.rand(count, generator=generator) * 60,
                         y0 + 10 + torch.rand(count, generator=generator) * 50], 1)
    scores = torch.rand(count, generator=generator)
    labels = torch.randint(1, classes + 1, (count,), generator=generator)
    probs = F.avg_pool2d(torch.rand(count, 1, 21, 21, generator=generator), 5, 1, 2)[:, 0]
    config = MNCConfig(mask_thresh=0.45)
    want = postprocess_image(boxes, scores, labels, probs, (200, 240), (300, 360), config)
    monkeypatch.setattr(postprocess, "paste_windows_one_by_one", paste_windows)  # the GPU's path, here
    got = postprocess_image(boxes, scores, labels, probs, (200, 240), (300, 360), config)
    assert 10 < want["masks"].shape[0] <= config.detections_per_image
    assert torch.equal(got["scores"], want["scores"]) and torch.equal(got["labels"], want["labels"])
    assert (got["masks"] != want["masks"]).sum().item() <= 1e-4 * want["masks"].sum().item() + 1
    assert (got["boxes"] - want["boxes"]).abs().max().item() <= 1.0


def test_a_batch_of_images_gives_what_each_image_gives_alone():
    """Predictor.predict_batch (the GPU's batched inference) == one call per image, for images of one size."""
    import numpy as np

    from mnc_core import Predictor, build_model
    from test_mnc_helpers import small_config

    torch.manual_seed(0)
    config = small_config(score_threshold=0.0, vote_score_threshold=0.0)
    predictor = Predictor(build_model(config, 2, backbone_weights="none").eval(), config, [(1, "a"), (2, "b")], "cpu")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (90, 120, 3), dtype=np.uint8) for _ in range(3)]
    batched = predictor.predict_batch(images, score_threshold=0.0)
    alone = [predictor(image, score_threshold=0.0) for image in images]
    for got, want in zip(batched, alone):
        assert len(got) == len(want) > 0
        for a, b in zip(got, want):
            assert a.category_id == b.category_id and abs(a.score - b.score) < 1e-4
            assert np.allclose(a.box, b.box, atol=1e-2) and (a.mask != b.mask).sum() <= 0.001 * a.mask.size
