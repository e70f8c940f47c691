"""Mask encodings: crop decoding equals pycocotools, polygons follow pixel edges."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from db import masks


@pytest.mark.parametrize("seed", range(5))
def test_decode_crop_equals_pycocotools(seed):
    rng = np.random.default_rng(seed)
    for _ in range(60):
        h, w = int(rng.integers(1, 90)), int(rng.integers(1, 90))
        mask = rng.random((h, w)) < rng.random()
        counts = masks.encode(mask)
        x0, x1 = sorted(int(v) for v in rng.integers(0, w + 1, 2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, h + 1, 2))
        np.testing.assert_array_equal(masks.decode_crop(counts, h, w, x0, y0, x1, y1), mask[y0:y1, x0:x1])
        np.testing.assert_array_equal(masks.decode(counts, h, w), mask)


def test_polygon_of_a_rectangle_lies_on_pixel_edges():
    mask = np.zeros((6, 8), bool)
    mask[1:3, 2:5] = True
    assert masks.to_polygons(mask) == [[2.0, 1.0, 2.0, 3.0, 5.0, 3.0, 5.0, 1.0]]
    back = masks.decode(masks.from_polygons(masks.to_polygons(mask), 6, 8), 6, 8)
    np.testing.assert_array_equal(back, mask)


def test_polygon_round_trip_of_blobs_is_nearly_exact():
    rng = np.random.default_rng(0)
    ious = []
    for _ in range(100):
        mask = np.zeros((60, 80), np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            cv2.ellipse(mask, (int(rng.integers(0, 80)), int(rng.integers(0, 60))),
                        (int(rng.integers(1, 20)), int(rng.integers(1, 15))), float(rng.uniform(0, 180)), 0, 360, 1, -1)
        polygons = masks.to_polygons(mask)
        assert all(len(p) >= 6 and len(p) % 2 == 0 for p in polygons)
        back = masks.decode(masks.from_polygons(polygons, 60, 80), 60, 80)
        ious.append((back & (mask > 0)).sum() / (back | (mask > 0)).sum())
    assert np.mean(ious) > 0.995
    assert min(ious) > 0.95


def test_empty_mask_has_no_polygon():
    assert masks.to_polygons(np.zeros((5, 5), bool)) == []
