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
THUMB_SIDE = 160
DISPLAY_SIDE = 2048  # the review canvas's copy (zoom shows it at this resolution)


def scale_for(height: int, width: int, max_side: int = MAX_SIDE) -> float:
    return min(1.0, max_side / max(height, width))


def downscale(image: np.ndarray, scale: float) -> np.ndarray:
    if scale >= 1.0:
        return image
    height, width = image.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def upscale_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A mask made on a downscaled image -> (H, W) bool mask of the original image."""
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
        return self._copy(Path(data_dir) / "thumbs" / f"{image_id}.jpg", stored_path, THUMB_SIDE, 85)

    def display(self, image_id: int, stored_path: str, data_dir: Path) -> str:
        """The upright copy the review canvas shows (EXIF applied: the browser draws it as it is)."""
        return self._copy(Path(data_dir) / "display" / f"{image_id}.jpg", stored_path, DISPLAY_SIDE, 90)

    def _copy(self, path: Path, stored_path: str, side: int, quality: int) -> str:
        """A JPEG copy of the image with its long side at most ``side``, made once (temp file + rename)."""
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            image = self.rgb(stored_path) if stored_path in self._items else load_rgb(self.store.absolute(stored_path))
            small = downscale(image, scale_for(*image.shape[:2], side))
            tmp = path.with_suffix(".tmp.jpg")
            cv2.imwrite(str(tmp), np.ascontiguousarray(small[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
            tmp.replace(path)
        return str(path)
