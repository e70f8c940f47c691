"""Mask encodings: COCO RLE (pycocotools) and polygons (OpenCV contours).

Masks are stored as compressed COCO RLE ``counts`` strings of a mask of the image's size.
"""

from __future__ import annotations

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from db.checks import is_integer, is_number


def encode(mask: np.ndarray) -> str:
    """Boolean/uint8 (H, W) mask -> compressed RLE counts string."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8, copy=False)))
    return rle["counts"].decode("ascii")


def rle_dict(counts: str, height: int, width: int) -> dict:
    return {"size": [height, width], "counts": counts}


def decode(counts: str, height: int, width: int) -> np.ndarray:
    """Compressed RLE counts -> (H, W) bool mask."""
    return mask_utils.decode({"size": [height, width], "counts": counts.encode("ascii")}).astype(bool)


def check_counts(counts: str, height: int, width: int) -> None:
    """Raise ValueError unless ``counts`` is a compressed RLE string of an (height, width) mask, written as
    pycocotools writes it: every number in its shortest form (pycocotools reads over-long numbers otherwise
    than this module, or not at all), runs not negative, covering exactly height x width pixels (pycocotools
    would leave the rest of its buffer uninitialised). Cheap: the string is checked, not decoded."""
    if not isinstance(counts, str):
        raise ValueError("RLE counts must be a string")
    if not counts.isascii():
        raise ValueError("not a COCO RLE string (non-ASCII characters)")
    runs = run_lengths(counts, canonical=True)
    if (runs < 0).any() or int(runs.sum()) != height * width:
        raise ValueError(f"the RLE covers {int(runs.sum())} pixels, not {height} x {width} = {height * width}")


MAX_POLYGON_NUMBERS = 1_000_000  # coordinates of one mask's polygons


def counts_from_segmentation(segmentation, height: int, width: int) -> str | None:
    """A mask given as COCO polygons, uncompressed RLE or compressed RLE (None, [] or {}: box only) ->
    compressed counts of an (height, width) mask; ValueError (a short message: what is wrong, what to send)
    for anything else: numbers that are not finite, polygon points further than one image size outside the
    image, polygons of fewer than 3 points, RLE of another size, runs that do not cover the mask exactly."""
    if segmentation is None or segmentation == [] or segmentation == {}:
        return None
    if isinstance(segmentation, list):
        if sum(len(part) if isinstance(part, list) else 0 for part in segmentation) > MAX_POLYGON_NUMBERS:
            raise ValueError(f"the polygons have more than {MAX_POLYGON_NUMBERS} numbers; simplify the mask")
        parts = []
        for index, part in enumerate(segmentation):
            if not isinstance(part, list) or not all(is_number(v) for v in part):
                raise ValueError(f"polygon part {index} is not a list of numbers")
            if len(part) < 6 or len(part) % 2:
                raise ValueError(f"polygon part {index} has {len(part)} numbers; a polygon needs at least 3 (x, y) "
                                 "points")
            points = np.asarray(part, dtype=np.float64).reshape(-1, 2)
            if not np.isfinite(points).all():
                raise ValueError(f"polygon part {index} has a coordinate that is not a finite number")
            if ((points < -np.array([width, height])) | (points > 2 * np.array([width, height]))).any():
                raise ValueError(f"polygon part {index} has points further than one image size outside the "
                                 f"{width}x{height} image; send coordinates in the image's pixels")
            parts.append(points.reshape(-1).tolist())
        return from_polygons(parts, height, width)
    if isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(is_integer(v) for v in size)):
            raise ValueError("RLE 'size' must be [height, width]")
        if list(size) != [height, width]:
            raise ValueError(f"the mask is {size[1]}x{size[0]} (w x h) but its image is {width}x{height}")
        if isinstance(counts, str):
            try:
                check_counts(counts, height, width)
            except ValueError as exc:
                raise ValueError(f"the compressed RLE counts are not a {width}x{height} mask ({exc})") from None
            return counts
        if isinstance(counts, list) and all(is_integer(v) and 0 <= v <= height * width for v in counts):
            if sum(counts) != height * width:
                raise ValueError(f"uncompressed RLE counts sum to {sum(counts)}, not height x width = "
                                 f"{height * width}")
            return from_uncompressed({"size": [height, width], "counts": [int(v) for v in counts]}, height, width)
        raise ValueError("RLE 'counts' must be a string (compressed) or a list of integers from 0 to height x width")
    raise ValueError("a mask must be a list of polygons, an RLE object {'size', 'counts'}, or empty for a box")


def area(counts: str, height: int, width: int) -> int:
    return int(mask_utils.area({"size": [height, width], "counts": counts.encode("ascii")}))


def iou(counts_a: str, counts_b: str, height: int, width: int) -> float:
    """Intersection over union of two masks given as compressed RLE counts (no decode)."""
    return float(ious([counts_a], [counts_b], height, width)[0, 0])


def ious(counts_a: list[str], counts_b: list[str], height: int, width: int) -> np.ndarray:
    """(len(a), len(b)) intersections over union of two lists of masks as compressed RLE counts, in one
    pycocotools call (no decode)."""
    if not counts_a or not counts_b:
        return np.zeros((len(counts_a), len(counts_b)))
    a = [{"size": [height, width], "counts": counts.encode("ascii")} for counts in counts_a]
    b = [{"size": [height, width], "counts": counts.encode("ascii")} for counts in counts_b]
    return np.asarray(mask_utils.iou(a, b, [0] * len(b)), dtype=np.float64).reshape(len(a), len(b))


def tight_box(counts: str, height: int, width: int) -> list[float]:
    """[x, y, w, h] of the mask's pixels (zeros for an empty mask)."""
    return [float(v) for v in mask_utils.toBbox({"size": [height, width], "counts": counts.encode("ascii")})]


def from_polygons(polygons: list[list[float]], height: int, width: int) -> str:
    """COCO polygons (all parts of one object) -> one compressed RLE (the union of the parts)."""
    rles = mask_utils.frPyObjects(polygons, height, width)
    return mask_utils.merge(rles)["counts"].decode("ascii")


def from_uncompressed(rle: dict, height: int, width: int) -> str:
    """COCO uncompressed RLE ``{"size": [h, w], "counts": [int, ...]}`` -> compressed counts."""
    return mask_utils.frPyObjects(rle, height, width)["counts"].decode("ascii")


def to_polygons(mask: np.ndarray, offset: tuple[int, int] = (0, 0)) -> list[list[float]]:
    """(H, W) mask -> COCO polygons, one flat [x1, y1, x2, y2, ...] list per outer contour.

    Contours follow pixel *edges*, not pixel centres (a polygon through pixel centres loses
    half a pixel all around, which costs small objects much of their IoU): contours are
    traced on a 2x up-sampled mask, where an even index is the first half of an original
    pixel and an odd index its second half, so up-sampled index ``p`` maps exactly to the
    original pixel edge ``ceil(p / 2)``. COCO polygons cannot hold holes (parts are
    united), so only outer contours are kept; degenerate ones (< 3 points) are dropped.
    ``offset`` (x, y) is added to every point (for masks cropped out of a larger image).
    """
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    if not mask.any():
        return []
    big = cv2.resize(mask, (mask.shape[1] * 2, mask.shape[0] * 2), interpolation=cv2.INTER_NEAREST)
    big = cv2.copyMakeBorder(big, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        points = contour.reshape(-1, 2) // 2 + np.asarray(offset)  # (p - 1 border + 1) // 2 = ceil((p - 1) / 2)
        # drop consecutive repeats that the mapping creates
        points = points[np.concatenate(([True], np.any(points[1:] != points[:-1], axis=1)))]
        if len(points) > 1 and (points[0] == points[-1]).all():
            points = points[:-1]
        if len(points) >= 3:
            polygons.append(points.reshape(-1).astype(float).tolist())
    return polygons


def run_lengths(counts: str, canonical: bool = False) -> np.ndarray:
    """COCO's compressed RLE string -> run lengths, vectorised (pycocotools' ``rleFrString``).

    pycocotools only decodes whole masks; the exporter needs the runs to decode just the
    object's columns (:func:`decode_crop`), which is ~10x faster for a typical object.
    Each character carries 5 bits (value - 48), 0x20 = "more characters follow", 0x10 in
    the last character = negative; from the third run on, runs are deltas to run m - 2.
    """
    chars = np.frombuffer(counts.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    if (chars < 0).any() or (chars > 63).any():
        raise ValueError("not a COCO RLE string")
    if chars.size == 0:
        return np.zeros(0, dtype=np.int64)
    last = (chars & 0x20) == 0  # the last character of each number
    if not last[-1]:
        raise ValueError("not a COCO RLE string (it ends inside a number)")
    group = np.concatenate(([0], np.cumsum(last)[:-1]))
    starts = np.flatnonzero(np.concatenate(([True], last[:-1])))
    lengths = np.flatnonzero(last) - starts + 1
    if (lengths > MAX_RLE_NUMBER_CHARS).any():
        raise ValueError(f"not a COCO RLE string (a number of more than {MAX_RLE_NUMBER_CHARS} characters)")
    shift = 5 * (np.arange(chars.size) - starts[group])
    values = np.add.reduceat((chars & 0x1F) << shift, starts)
    ends = np.flatnonzero(last)
    negative = (chars[ends] & 0x10) != 0
    values = np.where(negative, values - (np.int64(1) << (shift[ends] + 5)), values)
    if canonical:  # each number in as few characters as pycocotools writes it (5-bit two's complement groups)
        shortest = np.ones_like(values)
        for n in range(1, MAX_RLE_NUMBER_CHARS):
            shortest += ~((values >= -(np.int64(1) << (5 * n - 1))) & (values < (np.int64(1) << (5 * n - 1))))
        if (lengths != shortest).any():
            raise ValueError("not a COCO RLE string as pycocotools writes it (a number with extra characters)")
    runs = values.copy()
    # runs[m] += runs[m - 2] for m > 2: cumulative sums along the even chain from 2 and the odd chain from 1
    runs[2::2] = np.cumsum(values[2::2])
    runs[1::2] = np.cumsum(values[1::2]) if values.size > 1 else runs[1::2]
    return runs


MAX_RLE_NUMBER_CHARS = 12  # 60 bits: more than any mask's run (and within int64)


def decode_crop(counts: str, height: int, width: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """The (y1 - y0, x1 - x0) bool window of a compressed-RLE mask, without decoding the rest."""
    runs = run_lengths(counts)
    ends = np.cumsum(runs)
    begins = ends - runs
    lo, hi = x0 * height, x1 * height  # column-major: the window's columns are one flat range
    values = (np.arange(runs.size) % 2).astype(bool)  # runs alternate 0, 1, 0, ... starting with zeros
    clipped = np.clip(ends, lo, hi) - np.clip(begins, lo, hi)
    columns = np.repeat(values, clipped)
    if columns.size != hi - lo:
        raise ValueError("RLE counts do not cover the mask")
    return columns.reshape(x1 - x0, height).T[y0:y1]
