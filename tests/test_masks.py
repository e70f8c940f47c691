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


def test_checked_masks_are_what_pycocotools_reads():
    """Every compressed RLE pycocotools writes passes the check and decodes to its mask; a number written with
    extra characters, a string ending inside a number, runs that do not cover the mask are refused (before
    pycocotools ever reads them)."""
    rng = np.random.default_rng(3)
    for trial in range(200):
        height, width = (int(v) for v in rng.integers(1, 40, 2))
        mask = rng.random((height, width)) < rng.random()
        counts = masks.encode(mask)
        assert masks.counts_from_segmentation({"size": [height, width], "counts": counts}, height, width) == counts
        assert (masks.decode(counts, height, width) == mask).all()
    for bad, message in ((chr(48 + (5 | 0x20)) + "0", "extra characters"),  # 5 in two characters
                         (chr(48 + (5 | 0x20)), "ends inside a number"),
                         ("4", "covers 4 pixels, not 1 x 5"),
                         ("5é", "non-ASCII")):
        with pytest.raises(ValueError, match=message):
            masks.check_counts(bad, 1, 5)


def test_polygons_and_uncompressed_rle_are_checked_before_pycocotools():
    good = masks.counts_from_segmentation([[1, 1, 8, 1, 8, 6]], 10, 12)
    assert masks.area(good, 10, 12) > 0
    assert masks.counts_from_segmentation([[-12, -10, 24, -10, 24, 20]], 10, 12)  # one image size out: allowed
    for bad, message in (([[0, 0, 1e9, 0, 1e9, 1e9]], "further than one image size outside"),
                         ([[0, 0, float("inf"), 0, 5, 5]], "not a finite number"),
                         ([[0, 0, True, 0, 5, 5]], "not a list of numbers"),
                         ({"size": [10, 12], "counts": [0, 10]}, "sum to 10, not height x width = 120"),
                         ({"size": [10, 12], "counts": [60, 2**70]}, "integers from 0 to height x width"),
                         ({"size": [10, 12], "counts": [60, 30.0, 30]}, "integers from 0 to height x width"),
                         ({"size": ["10", 12], "counts": [120]}, r"'size' must be \[height, width\]"),
                         ("0123", "a list of polygons, an RLE object")):
        with pytest.raises(ValueError, match=message):
            masks.counts_from_segmentation(bad, 10, 12)
    assert masks.counts_from_segmentation([], 10, 12) is None
