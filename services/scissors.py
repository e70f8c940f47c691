"""Edge-snapping polygons (intelligent scissors, as CVAT's): between two clicks the outline follows the cheapest
path along the image's edges, found by OpenCV's ``segmentation.IntelligentScissorsMB`` (live-wire: Canny edges,
gradient direction and magnitude as the costs, a shortest-path map from the segment's start).

Each segment works on a window of the image around its two clicks (the path cannot wander further than a
share of the segment's length): ``buildMap`` costs time in proportion to the pixels it is given (far more than
``applyImage``), so a window keeps a click's answer fast on any photo, and a
short segment is snapped at the original's full resolution. A window over MAX_WINDOW_PIXELS (a long segment on
a large photo) is downscaled to that size first and its path scaled back (to about one working pixel; zoom in and
click closer for more). No state is kept here: the decoded
image comes from the workbench's image cache (services.images.ImageCache).

Coordinates are the review canvas's and the API's: full-resolution image pixels, continuous (pixel (i, j)
covers [i, i + 1) x [j, j + 1)); a snapped point lies at the centre of the pixel the path runs through.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from services.images import downscale

MAX_POINTS = 200  # clicks in one call
MAX_WINDOW_PIXELS = 500_000  # a segment's window is downscaled to at most this many pixels
MIN_MARGIN = 16  # pixels around a segment's clicks that its path may use, at least ...
MARGIN_SHARE = 0.5  # ... or this share of the segment's length (a half circle between the clicks fits)
SIMPLIFY_EPSILON = 0.7  # the pixel path is simplified (Douglas-Peucker) to within this many working pixels

# OpenCV's sample (samples/cpp/intelligent_scissors.cpp) and CVAT: Canny 32 / 100, gradient magnitude capped at
# 200; OpenCV's default weights of the non-edge, gradient direction and gradient magnitude costs
CANNY_THRESHOLDS = (32, 100)
GRADIENT_MAGNITUDE_LIMIT = 200
WEIGHTS = (0.43, 0.43, 0.14)

__all__ = ["MAX_POINTS", "snap_path", "snap_segment"]


def _scissors(bgr: np.ndarray):
    """IntelligentScissorsMB prepared for a BGR image (its edge features computed)."""
    scissors = cv2.segmentation.IntelligentScissorsMB()
    scissors.setEdgeFeatureCannyParameters(*CANNY_THRESHOLDS)
    scissors.setGradientMagnitudeMaxLimit(GRADIENT_MAGNITUDE_LIMIT)
    scissors.setWeights(*WEIGHTS)
    scissors.applyImage(bgr)
    return scissors


def snap_segment(image: np.ndarray, start: tuple[float, float], end: tuple[float, float]) -> list[tuple[float, float]]:
    """The path from ``start`` to ``end`` (x, y in the image's pixels) along the image's edges: [start, ...,
    end], the clicks themselves first and last. ``image``: (H, W, 3) RGB."""
    height, width = image.shape[:2]
    (sx, sy), (ex, ey) = start, end
    margin = max(MIN_MARGIN, MARGIN_SHARE * math.hypot(ex - sx, ey - sy))
    x0, y0 = max(0, math.floor(min(sx, ex) - margin)), max(0, math.floor(min(sy, ey) - margin))
    x1, y1 = min(width, math.ceil(max(sx, ex) + margin) + 1), min(height, math.ceil(max(sy, ey) + margin) + 1)
    window = image[y0:y1, x0:x1]
    small = downscale(window, min(1.0, math.sqrt(MAX_WINDOW_PIXELS / window.shape[0] / window.shape[1])))
    scale_x, scale_y = small.shape[1] / window.shape[1], small.shape[0] / window.shape[0]

    def pixel(x: float, y: float) -> tuple[int, int]:  # the working pixel of an image point
        return (min(small.shape[1] - 1, max(0, int((x - x0) * scale_x))),
                min(small.shape[0] - 1, max(0, int((y - y0) * scale_y))))

    source, target = pixel(sx, sy), pixel(ex, ey)
    if source == target:
        return [start, end]
    scissors = _scissors(cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_RGB2BGR))
    scissors.buildMap(source)
    contour = scissors.getContour(target).reshape(-1, 2)
    if tuple(contour[0]) != source:  # OpenCV gives it from the map's source; said here, not assumed
        contour = contour[::-1]
    contour = cv2.approxPolyDP(contour.reshape(-1, 1, 2), SIMPLIFY_EPSILON, False).reshape(-1, 2)
    inner = [(x0 + (float(cx) + 0.5) / scale_x, y0 + (float(cy) + 0.5) / scale_y) for cx, cy in contour[1:-1]]
    return [start, *inner, end]


def snap_path(image: np.ndarray, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The polyline through ``points`` (the clicks, in order) whose every segment follows the image's edges
    (:func:`snap_segment`); a closed outline: repeat the first click at the end. ``image``: (H, W, 3) RGB."""
    if not points:
        return []
    path = [tuple(points[0])]
    for start, end in zip(points, points[1:]):
        path.extend(snap_segment(image, tuple(start), tuple(end))[1:])
    return path
