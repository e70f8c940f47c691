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
