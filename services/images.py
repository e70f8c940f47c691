"""Images as people see them: downscaled copies and masks, thumbnails, and a cache of decoded images.

Originals are kept as they are (``db.imagestore``); what is shown or sent to the model may be smaller.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np

from db.engine import Database
from db.imagestore import ImageStore, load_rgb

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
