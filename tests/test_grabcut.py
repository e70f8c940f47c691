"""GrabCut inside a box finds the object, not the box."""

from __future__ import annotations

import cv2
import numpy as np

from partial_sup.grabcut import grabcut_mask


def test_grabcut_finds_a_disc_inside_its_box():
    rng = np.random.default_rng(0)
    image = (rng.normal(60, 10, (120, 160, 3))).clip(0, 255).astype(np.uint8)
    disc = np.zeros((120, 160), np.uint8)
    cv2.circle(disc, (80, 60), 30, 1, -1)
    image[disc > 0] = (220, 40, 40)
    mask = grabcut_mask(image, (45, 25, 115, 95))
    iou = (mask & (disc > 0)).sum() / (mask | (disc > 0)).sum()
    box_iou = disc.sum() / (70 * 70)
    assert iou > 0.9 > box_iou + 0.1
    assert not mask[:20].any()  # nothing outside the box


def test_grabcut_of_a_tiny_box_is_the_box():
    image = np.zeros((50, 50, 3), np.uint8)
    mask = grabcut_mask(image, (10, 10, 11, 11))
    assert mask.sum() == 1 and mask[10, 10]


# ---- the pixel budget: GrabCut never works on more than MAX_PIXELS (issue 23: three full-image GrabCuts of
# large photos took 37 s of CPU); a larger region is downscaled and its mask upscaled back to the region

def _large_disc_image(height: int = 1200, width: int = 1600, radius: int = 420):
    rng = np.random.default_rng(1)
    image = (rng.normal(60, 10, (height, width, 3))).clip(0, 255).astype(np.uint8)
    disc = np.zeros((height, width), np.uint8)
    cv2.circle(disc, (width // 2, height // 2), radius, 1, -1)
    image[disc > 0] = (220, 40, 40)
    return image, disc > 0


def counting_grabcut(monkeypatch) -> list[int]:
    """cv2.grabCut, recording how many pixels each call gets."""
    seen, real = [], cv2.grabCut

    def counted(image, *args):
        seen.append(image.shape[0] * image.shape[1])
        return real(image, *args)

    monkeypatch.setattr(cv2, "grabCut", counted)
    return seen


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_grabcut_of_a_large_box_works_on_at_most_max_pixels_and_still_finds_the_object(monkeypatch):
    from partial_sup.grabcut import MAX_PIXELS

    image, disc = _large_disc_image()
    seen = counting_grabcut(monkeypatch)
    box = (300, 120, 1300, 1080)  # 1000 x 960 px: about 1 Mpx with its margin
    mask = grabcut_mask(image, box)
    assert len(seen) == 1 and seen[0] <= MAX_PIXELS < (box[2] - box[0]) * (box[3] - box[1])
    assert _iou(mask, disc) > 0.9
    assert not mask[:, :300].any() and not mask[:120].any()  # nothing outside the box


def test_grabcut_with_a_small_budget_still_matches_the_object(monkeypatch):
    rng = np.random.default_rng(0)
    image = (rng.normal(60, 10, (240, 320, 3))).clip(0, 255).astype(np.uint8)
    disc = np.zeros((240, 320), np.uint8)
    cv2.circle(disc, (160, 120), 60, 1, -1)
    image[disc > 0] = (220, 40, 40)
    seen = counting_grabcut(monkeypatch)
    mask = grabcut_mask(image, (90, 50, 230, 190), max_pixels=6_000)
    assert seen and max(seen) <= 6_000
    assert _iou(mask, disc > 0) > 0.9


def test_refining_a_large_mask_works_on_at_most_max_pixels(monkeypatch):
    from partial_sup.grabcut import MAX_PIXELS, refine_mask

    image, disc = _large_disc_image()
    start = np.zeros(disc.shape, bool)
    start[200:1000, 420:1100] = True  # a rough box-shaped mask: part of the disc missing, background included
    seen = counting_grabcut(monkeypatch)
    refined = refine_mask(image, start, positive=[(1150, 600)], negative=[(450, 230)])
    assert len(seen) == 1 and seen[0] <= MAX_PIXELS
    assert _iou(refined, disc) > 0.9 > _iou(start, disc)
    assert refined[600, 1150] and not refined[230, 450]  # the clicks hold
