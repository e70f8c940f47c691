"""What the UI shows: downscaled images and masks, thumbnails, colours, the model in memory.

No SQL and no tensors here: images come from ``db.imagestore``, predictions from a
``mnc_core.Predictor`` loaded for the active model version (``db.registry``).
"""

from __future__ import annotations

import colorsys
import threading
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np

from db import registry
from db.engine import Database
from db.imagestore import ImageStore, load_rgb
from partial_sup.proposals import LOW_CONFIDENCE_FLOOR, LOW_CONFIDENCE_TOP

MAX_SIDE = 1024  # images are shown with their long side at most this (the original is kept)
EDITOR_MAX_SIDE = 640  # the mask editor gets smaller images: it re-uploads them often
THUMB_SIDE = 160


def scale_for(height: int, width: int, max_side: int = MAX_SIDE) -> float:
    return min(1.0, max_side / max(height, width))


def downscale(image: np.ndarray, scale: float) -> np.ndarray:
    if scale >= 1.0:
        return image
    height, width = image.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def downscale_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool -> float mask of ``shape`` (h, w) in [0, 1] (area averaging keeps thin parts visible)."""
    if mask.shape == shape:
        return mask.astype(np.float32)
    small = cv2.resize(mask.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    return np.clip(small * 1.5, 0.0, 1.0)


def upscale_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A mask painted on a downscaled image -> (H, W) bool mask of the original image."""
    if mask.shape == shape:
        return mask.astype(bool)
    return cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0


def category_color(category_id: int) -> tuple[int, int, int]:
    hue = (int(category_id) * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def hex_color(category_id: int) -> str:
    return "#%02x%02x%02x" % category_color(category_id)


def rgb_string(category_id: int) -> str:
    return "rgb(%d, %d, %d)" % category_color(category_id)


class ImageCache:
    """Decoded images (EXIF-corrected RGB) of the last few opened images, within a memory budget."""

    def __init__(self, db: Database, size: int = 6, max_bytes: int = 600 * 2**20):
        self.store = ImageStore(db.data_dir)
        self.size = size
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def rgb(self, stored_path: str) -> np.ndarray:
        with self._lock:
            if stored_path in self._items:
                self._items.move_to_end(stored_path)
                return self._items[stored_path]
        image = load_rgb(self.store.absolute(stored_path))
        with self._lock:
            self._items[stored_path] = image
            while len(self._items) > 1 and (len(self._items) > self.size
                                            or sum(i.nbytes for i in self._items.values()) > self.max_bytes):
                self._items.popitem(last=False)
        return image

    def thumbnail(self, image_id: int, stored_path: str, data_dir: Path) -> str:
        path = Path(data_dir) / "thumbs" / f"{image_id}.jpg"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            image = self.rgb(stored_path) if stored_path in self._items else load_rgb(self.store.absolute(stored_path))
            small = downscale(image, scale_for(*image.shape[:2], THUMB_SIDE))
            tmp = path.with_suffix(".tmp.jpg")
            cv2.imwrite(str(tmp), np.ascontiguousarray(small[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 85])
            tmp.replace(path)
        return str(path)


PREDICT_MAX_SIDE = 1600  # larger images are downscaled before the model sees them (it resizes to <= 1000 anyway)
FULL_MASK_BUDGET = 1_500_000_000  # bytes of full-size masks one image's proposals may take at once


class ScaledInstance:
    """A prediction made on a downscaled image, in the original image's pixels (the mask is
    upscaled when it is read, so that only the masks in use are full-size)."""

    def __init__(self, instance, scale: float, shape: tuple[int, int]):
        self.category_id, self.score = instance.category_id, instance.score
        self.box = tuple(float(v) / scale for v in instance.box)
        self._small, self._shape = instance.mask, shape

    @property
    def mask(self) -> np.ndarray:
        return upscale_mask(np.asarray(self._small, bool), self._shape)


def predict_scaled(predictor, image: np.ndarray, threshold: float, max_side: int = PREDICT_MAX_SIDE) -> list:
    """The predictor's instances on an image of any size: large images are downscaled for the
    model, and only as many instances are kept as full-size masks fit in FULL_MASK_BUDGET."""
    height, width = image.shape[:2]
    scale = scale_for(height, width, max_side)
    if scale >= 1.0:
        return predictor(image, score_threshold=threshold)
    small = predictor(downscale(image, scale), score_threshold=threshold)
    keep = max(5, FULL_MASK_BUDGET // (height * width))
    return [ScaledInstance(inst, scale, (height, width)) for inst in small[:keep]]


class ModelCache:
    """One Predictor for the active model version, reloaded when the active version changes;
    predictions of the last few images are kept (proposals and masks for drawn boxes reuse them)."""

    def __init__(self, db: Database, device: str | None = None, keep: int = 4, threshold: float = 0.0):
        """threshold: the lowest score any caller keeps (the workbench's proposal minimum): candidates
        below it are dropped by the model itself, which then skips their final (Mask^X) masks. When no
        instance of an image reaches it, the model runs again down to LOW_CONFIDENCE_FLOOR and its best
        LOW_CONFIDENCE_TOP guesses are returned (see partial_sup.proposals)."""
        self.threshold = float(threshold)
        self.db = db
        self.device = device
        self.keep = keep
        self._lock = threading.RLock()
        self._version_id: int | None = None
        self._predictor = None
        self._predictions: OrderedDict[tuple[int, int], list] = OrderedDict()

    def set_threshold(self, threshold: float) -> None:
        """A new lowest score to keep: predictions made at the old one are dropped."""
        with self._lock:
            self.threshold = float(threshold)
            self._predictions.clear()

    def active(self):
        """(version id, Predictor) of the active model version, or (None, None) when there is none."""
        version = registry.active_version(self.db)
        if version is None:
            return None, None
        with self._lock:
            if self._version_id != version.id or self._predictor is None:
                from partial_sup.inference import load_predictor

                self._predictor = load_predictor(self.db, registry.checkpoint_path(self.db, version), self.device)
                self._version_id = version.id
                self._predictions.clear()
            return self._version_id, self._predictor

    def masks_for_boxes(self, image: np.ndarray, boxes: list, category_ids: list[int]) -> list[np.ndarray] | None:
        """The active model's masks for exactly these boxes and classes (None without a model; large
        images are downscaled for the model and the masks upscaled back). Raises ValueError for a
        class the model does not know."""
        _, predictor = self.active()
        if predictor is None:
            return None
        height, width = image.shape[:2]
        scale = scale_for(height, width, PREDICT_MAX_SIDE)
        if scale >= 1.0:
            return predictor.masks_for_boxes(image, boxes, category_ids)
        small_boxes = [tuple(float(v) * scale for v in box) for box in boxes]
        small = predictor.masks_for_boxes(downscale(image, scale), small_boxes, category_ids)
        return [upscale_mask(m, (height, width)) for m in small]

    def predictions(self, image_id: int, image: np.ndarray) -> tuple[int | None, list]:
        version_id, predictor = self.active()
        if predictor is None:
            return None, []
        key = (version_id, int(image_id))
        with self._lock:
            if key in self._predictions:
                self._predictions.move_to_end(key)
                return version_id, self._predictions[key]
            result = predict_scaled(predictor, image, self.threshold)
            if not result and self.threshold > LOW_CONFIDENCE_FLOOR:  # a young model: its best guesses
                result = predict_scaled(predictor, image, LOW_CONFIDENCE_FLOOR)[:LOW_CONFIDENCE_TOP]
            self._predictions[key] = result
            while len(self._predictions) > self.keep:
                self._predictions.popitem(last=False)
            return version_id, result
