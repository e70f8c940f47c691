"""GrabCut inside a box (OpenCV): the mask helper before any model is trained, and the
partial-supervision baseline of the Mask^X paper (boxes -> GrabCut masks).

GrabCut's time grows with the pixels it is given (about 2.4 us per pixel for 5 iterations on one core), so
it never gets more than ``MAX_PIXELS``: a larger region is downscaled (cv2.INTER_AREA) before GrabCut and
the mask it finds is upscaled back to the region (cv2.INTER_LINEAR, thresholded at one half)."""

from __future__ import annotations

import math

import cv2
import numpy as np

MARGIN = 8  # pixels of context around the box that GrabCut sees as sure background (at GrabCut's scale)
MAX_PIXELS = 250_000  # the most pixels one GrabCut run works on (about 0.6 s on one core); larger regions are
# downscaled to it. A 640x480 COCO photo is 307,200: a box over all of it is shrunk by 0.9 on each side


def _scale_for(width: int, height: int, margin: int, max_pixels: int) -> float:
    """The largest scale (at most 1) at which a ``width`` x ``height`` box, with ``margin`` pixels around it at
    that scale, has at most ``max_pixels`` pixels: s with (w s + 2 m)(h s + 2 m) = max_pixels."""
    if (width + 2 * margin) * (height + 2 * margin) <= max_pixels:
        return 1.0
    a, b, c = width * height, 2 * margin * (width + height), 4 * margin * margin - max_pixels
    return max(1e-6, (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a))


def _working_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The size (width, height) a ``width`` x ``height`` crop is resized to so that it has at most ``max_pixels``
    pixels (its own size when it has no more)."""
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


def _upscaled(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """A bool mask found at GrabCut's scale, back at the crop's ``width`` x ``height`` (smooth edges)."""
    if mask.shape == (height, width):
        return mask
    soft = cv2.resize(mask.astype(np.uint8) * 255, (width, height), interpolation=cv2.INTER_LINEAR)
    return soft >= 128


PRIOR_SURE_OBJECT = 0.8  # a model's probability from which a pixel is sure object for GrabCut ...
PRIOR_SURE_BACKGROUND = 0.02  # ... and under which sure background; between: probable object (>= 0.5) or not
PRIOR_AGREEMENT = 0.5  # GrabCut's mask from a prior must overlap the prior's own mask this much (IoU), else the
# prior's mask is kept


def prior_labels(prior: np.ndarray) -> np.ndarray:
    """GrabCut's labels (uint8) from a model's probabilities: sure / probable object, probable / sure background."""
    labels = np.where(prior >= 0.5, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    labels[prior >= PRIOR_SURE_OBJECT] = cv2.GC_FGD
    labels[prior < PRIOR_SURE_BACKGROUND] = cv2.GC_BGD
    return labels


def grabcut_mask(image: np.ndarray, box: tuple[float, float, float, float], iterations: int = 5, *,
                 prior: np.ndarray | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """(H, W) bool mask of the object in ``box`` (x1, y1, x2, y2) of an RGB uint8 image.

    GrabCut runs on a crop around the box (fast on large photos), downscaled to at most ``max_pixels``; when it
    finds nothing (a box that is all foreground, a flat image), the whole box is returned.
    ``prior``: a model's (H, W) object probabilities (e.g. its soft mask for the box): GrabCut starts from them
    (prior_labels) instead of from the rectangle; the box stays the hard outer limit (outside: sure background).
    When the prior marks nothing as object, the rectangle start is used.
    """
    height, width = image.shape[:2]
    if len(box) != 4 or not all(math.isfinite(float(v)) for v in box):
        raise ValueError(f"GrabCut needs a box of 4 finite numbers (x1, y1, x2, y2), not {list(box)}")
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x1, y1 = max(0, min(x1, width - 1)), max(0, min(y1, height - 1))
    x2, y2 = max(x1 + 1, min(x2, width)), max(y1 + 1, min(y2, height))
    full = np.zeros((height, width), bool)
    scale = _scale_for(x2 - x1, y2 - y1, MARGIN, max_pixels)
    margin = math.ceil(MARGIN / scale)  # MARGIN pixels at GrabCut's scale
    cx1, cy1 = max(0, x1 - margin), max(0, y1 - margin)
    cx2, cy2 = min(width, x2 + margin), min(height, y2 + margin)
    crop = np.ascontiguousarray(image[cy1:cy2, cx1:cx2, ::-1])  # OpenCV wants BGR
    crop_height, crop_width = crop.shape[:2]
    work_width, work_height = _working_size(crop_width, crop_height, max_pixels)
    sx, sy = work_width / crop_width, work_height / crop_height
    if (work_width, work_height) != (crop_width, crop_height):
        crop = cv2.resize(crop, (work_width, work_height), interpolation=cv2.INTER_AREA)
    rx1, ry1 = math.floor((x1 - cx1) * sx), math.floor((y1 - cy1) * sy)
    rect = (rx1, ry1, max(1, min(work_width - rx1, math.ceil((x2 - cx1) * sx) - rx1)),
            max(1, min(work_height - ry1, math.ceil((y2 - cy1) * sy) - ry1)))
    if rect[2] < 2 or rect[3] < 2 or (rect[2] >= work_width - 1 and rect[3] >= work_height - 1):
        full[y1:y2, x1:x2] = True  # too small, or no background to learn from
        return full
    mask, mode = np.zeros(crop.shape[:2], np.uint8), cv2.GC_INIT_WITH_RECT
    if prior is not None:
        labels = np.full((crop_height, crop_width), cv2.GC_BGD, np.uint8)
        labels[y1 - cy1:y2 - cy1, x1 - cx1:x2 - cx1] = prior_labels(np.asarray(prior, np.float32)[y1:y2, x1:x2])
        if (work_width, work_height) != (crop_width, crop_height):
            labels = cv2.resize(labels, (work_width, work_height), interpolation=cv2.INTER_NEAREST)
        if ((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)).any() and (labels == cv2.GC_BGD).any():
            mask, mode = labels, cv2.GC_INIT_WITH_MASK
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(crop, mask, rect if mode == cv2.GC_INIT_WITH_RECT else None, background, foreground, iterations,
                    mode)
    except cv2.error:
        full[y1:y2, x1:x2] = True
        return full
    object_pixels = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
    if mode == cv2.GC_INIT_WITH_MASK:  # the colours could not separate object and background (GrabCut drifted
        # away from the model's mask, e.g. sure background of the object's colour): the model's mask stands
        believed = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
        overlap = (object_pixels & believed).sum() / max(1, (object_pixels | believed).sum())
        if overlap < PRIOR_AGREEMENT:
            object_pixels = believed
    if not object_pixels.any():
        full[y1:y2, x1:x2] = True
        return full
    inside = np.zeros((crop_height, crop_width), bool)
    inside[y1 - cy1:y2 - cy1, x1 - cx1:x2 - cx1] = True  # an upscaled edge never leaves the box
    full[cy1:cy2, cx1:cx2] = _upscaled(object_pixels, crop_width, crop_height) & inside
    return full


CLICK_RADIUS = 12 / 640  # a click's disk (a hard label): its radius as a share of the image's long side
# (12 px on a 640 px COCO photo: 0.746 mean IoU after 3 clicks on 40 val instances, against 0.669 with 5 px and
# 0.720 with 16 px; benchmarks/README.md, "Refining with clicks")
REFINE_GROW = 0.15  # the instance's box is enlarged by this share of its size on each side


def refine_mask(image: np.ndarray, mask: np.ndarray, positive, negative, *, radius: int | None = None,
                iterations: int = 4, max_pixels: int = MAX_PIXELS, limit_box=None) -> np.ndarray:
    """A mask corrected with clicks: GrabCut initialised from ``mask`` (probably object inside it, probably
    background around it) inside the mask's box enlarged by REFINE_GROW (and grown to take in every click),
    a band of MARGIN pixels around that as sure background, with a disk of ``radius`` around each
    ``positive`` point (x, y) as sure object and around each
    ``negative`` point as sure background (None: CLICK_RADIUS of the long side, at least 3 px). GrabCut works on
    at most ``max_pixels`` (a larger crop is downscaled, the clicks' disks stay at least 1 px there). Returns the
    new (H, W) bool mask (outside the box: unchanged; each click's disk at full resolution as clicked).
    ``limit_box`` (x1, y1, x2, y2): the box a person drew or kept: the mask may change only inside it (grown
    just enough to take in the positive clicks), instead of inside the mask's own box grown by REFINE_GROW."""
    height, width = image.shape[:2]
    radius = max(3, round(CLICK_RADIUS * max(height, width))) if radius is None else int(radius)
    points = [(float(x), float(y)) for x, y in list(positive) + list(negative)]
    bad = next((point for point in points if not all(math.isfinite(v) for v in point)), None)
    if bad is not None:
        raise ValueError(f"the clicks must be finite (x, y) pixels, not {bad}")
    ys, xs = np.nonzero(mask)
    xs_all = list(xs) + [p[0] for p in points]
    ys_all = list(ys) + [p[1] for p in points]
    if not xs_all:
        return np.zeros((height, width), bool)
    if limit_box is not None:
        bx1, by1, bx2, by2 = (float(v) for v in limit_box)
        clicked = [(float(x), float(y)) for x, y in positive]
        rx1 = int(max(0, math.floor(min([bx1] + [x - radius for x, _ in clicked]))))
        ry1 = int(max(0, math.floor(min([by1] + [y - radius for _, y in clicked]))))
        rx2 = int(min(width, math.ceil(max([bx2] + [x + radius + 1 for x, _ in clicked]))))
        ry2 = int(min(height, math.ceil(max([by2] + [y + radius + 1 for _, y in clicked]))))
        rx2, ry2 = max(rx2, rx1 + 1), max(ry2, ry1 + 1)
    else:
        x1, x2, y1, y2 = min(xs_all), max(xs_all) + 1, min(ys_all), max(ys_all) + 1
        grow_x, grow_y = max(MARGIN, (x2 - x1) * REFINE_GROW), max(MARGIN, (y2 - y1) * REFINE_GROW)
        rx1, ry1 = int(max(0, x1 - grow_x)), int(max(0, y1 - grow_y))  # where the mask may change
        rx2, ry2 = int(min(width, x2 + grow_x)), int(min(height, y2 + grow_y))
    scale = _scale_for(rx2 - rx1, ry2 - ry1, MARGIN, max_pixels)
    margin = math.ceil(MARGIN / scale)  # and a band of sure background around it (MARGIN px at GrabCut's scale)
    cx1, cy1 = max(0, rx1 - margin), max(0, ry1 - margin)
    cx2, cy2 = min(width, rx2 + margin), min(height, ry2 + margin)
    crop = np.ascontiguousarray(image[cy1:cy2, cx1:cx2, ::-1])
    inside = np.ascontiguousarray(mask[cy1:cy2, cx1:cx2], dtype=bool)  # decoded RLE masks are column-major
    labels = np.full(inside.shape, cv2.GC_BGD, np.uint8)
    region = (slice(ry1 - cy1, ry2 - cy1), slice(rx1 - cx1, rx2 - cx1))
    labels[region] = np.where(inside[region], cv2.GC_PR_FGD, cv2.GC_PR_BGD)
    hard = np.zeros(labels.shape, np.uint8)  # 1: sure object, 2: sure background (clicks win over GrabCut)
    for value, group in ((1, positive), (2, negative)):
        for x, y in group:
            cv2.circle(hard, (int(round(x)) - cx1, int(round(y)) - cy1), radius, value, -1)
    labels[hard == 1], labels[hard == 2] = cv2.GC_FGD, cv2.GC_BGD
    crop_height, crop_width = crop.shape[:2]
    work_width, work_height = _working_size(crop_width, crop_height, max_pixels)
    if (work_width, work_height) != (crop_width, crop_height):  # GrabCut on a downscaled copy
        sx, sy = work_width / crop_width, work_height / crop_height
        crop = cv2.resize(crop, (work_width, work_height), interpolation=cv2.INTER_AREA)
        labels = cv2.resize(labels, (work_width, work_height), interpolation=cv2.INTER_NEAREST)
        small_radius = max(1, round(radius * min(sx, sy)))  # a click's disk never vanishes
        for value, group in ((cv2.GC_FGD, positive), (cv2.GC_BGD, negative)):
            for x, y in group:
                cv2.circle(labels, (int((x - cx1) * sx), int((y - cy1) * sy)), small_radius, int(value), -1)
    out = np.array(mask, dtype=bool, order="C")
    result = None
    if (labels == cv2.GC_PR_FGD).any() or (labels == cv2.GC_FGD).any():
        background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        try:
            cv2.grabCut(crop, labels, None, background, foreground, iterations, cv2.GC_INIT_WITH_MASK)
            result = _upscaled((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD), crop_width, crop_height)
        except cv2.error:  # e.g. no background pixels to learn from
            result = None
    if result is None or not result.any():  # failed, or took everything away: the old mask, minus the clicks
        result = inside.copy()
    result[hard == 1], result[hard == 2] = True, False
    keep = np.zeros(result.shape, bool)
    keep[region] = True
    out[cy1:cy2, cx1:cx2] = np.where(keep | (hard > 0), result, inside)
    return out
