"""GrabCut inside a box (OpenCV): the mask helper before any model is trained, and the
partial-supervision baseline of the Mask^X paper (boxes -> GrabCut masks)."""

from __future__ import annotations

import cv2
import numpy as np

MARGIN = 8  # pixels of context around the box that GrabCut sees as sure background


def grabcut_mask(image: np.ndarray, box: tuple[float, float, float, float], iterations: int = 5) -> np.ndarray:
    """(H, W) bool mask of the object in ``box`` (x1, y1, x2, y2) of an RGB uint8 image.

    GrabCut runs on a crop around the box (fast on large photos); when it finds nothing
    (a box that is all foreground, a flat image), the whole box is returned.
    """
    height, width = image.shape[:2]
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x1, y1 = max(0, min(x1, width - 1)), max(0, min(y1, height - 1))
    x2, y2 = max(x1 + 1, min(x2, width)), max(y1 + 1, min(y2, height))
    full = np.zeros((height, width), bool)
    cx1, cy1 = max(0, x1 - MARGIN), max(0, y1 - MARGIN)
    cx2, cy2 = min(width, x2 + MARGIN), min(height, y2 + MARGIN)
    crop = np.ascontiguousarray(image[cy1:cy2, cx1:cx2, ::-1])  # OpenCV wants BGR
    rect = (x1 - cx1, y1 - cy1, x2 - x1, y2 - y1)
    if rect[2] < 2 or rect[3] < 2 or (rect[2] >= crop.shape[1] - 1 and rect[3] >= crop.shape[0] - 1):
        full[y1:y2, x1:x2] = True  # too small, or no background to learn from
        return full
    mask = np.zeros(crop.shape[:2], np.uint8)
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(crop, mask, rect, background, foreground, iterations, cv2.GC_INIT_WITH_RECT)
    except cv2.error:
        full[y1:y2, x1:x2] = True
        return full
    object_pixels = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
    if not object_pixels.any():
        object_pixels[rect[1]:rect[1] + rect[3], rect[0]:rect[0] + rect[2]] = True
    full[cy1:cy2, cx1:cx2] = object_pixels
    return full
