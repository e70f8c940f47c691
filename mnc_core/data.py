"""Dataset contract (numpy only: datasets elsewhere implement it without importing torch)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol, runtime_checkable

import numpy as np


@dataclass
class Sample:
    image: np.ndarray         # (H, W, 3) uint8 RGB
    boxes: np.ndarray         # (K, 4) float32 x1, y1, x2, y2 in pixels
    category_ids: np.ndarray  # (K,) int64 dataset category ids (e.g. COCO ids, not contiguous)
    masks: np.ndarray         # (K, H, W) bool; rows where has_mask is False are all False and ignored
    has_mask: np.ndarray      # (K,) bool
    image_id: int = 0
    iscrowd: np.ndarray | None = None  # (K,) bool: crowd regions (ignored in training, not objects); None: none

    def crowd_flags(self) -> np.ndarray:
        """(K,) bool: which instances are crowd regions."""
        if self.iscrowd is None:
            return np.zeros(len(self.boxes), bool)
        return np.asarray(self.iscrowd, bool).reshape(-1)

    @classmethod
    def from_instances(cls, image: np.ndarray, instances: Iterable[tuple], image_id: int = 0) -> "Sample":
        """A sample from (COCO box [x, y, w, h], category id, mask maker or None[, iscrowd]) per instance:
        the mask maker returns the instance's (H, W) mask when called, so datasets decode only the masks
        they use; a crowd region (iscrowd true) is kept as a region to ignore, its mask is not decoded."""
        instances = list(instances)
        height, width = image.shape[:2]
        k = len(instances)
        boxes = np.zeros((k, 4), np.float32)
        category_ids = np.zeros(k, np.int64)
        masks = np.zeros((k, height, width), bool)
        has_mask = np.zeros(k, bool)
        iscrowd = np.zeros(k, bool)
        for i, (bbox, category_id, make_mask, *crowd) in enumerate(instances):
            x, y, w, h = bbox
            boxes[i] = (x, y, x + w, y + h)
            category_ids[i] = category_id
            iscrowd[i] = bool(crowd and crowd[0])
            if make_mask is not None and not iscrowd[i]:
                masks[i] = make_mask()
                has_mask[i] = masks[i].any()
        return cls(image=image, boxes=boxes, category_ids=category_ids, masks=masks, has_mask=has_mask,
                   image_id=int(image_id), iscrowd=iscrowd if iscrowd.any() else None)


@runtime_checkable
class InstanceDataset(Protocol):
    categories: list[tuple[int, str]]  # (category_id, name); this order defines class indices 1..N

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...


def validate_sample(s: Sample) -> None:
    """Raise ValueError with a precise message when a sample breaks the contract."""
    if s.image.ndim != 3 or s.image.shape[2] != 3 or s.image.dtype != np.uint8:
        raise ValueError(f"image {s.image_id}: expected (H, W, 3) uint8, got {s.image.shape} {s.image.dtype}")
    H, W = s.image.shape[:2]
    K = len(s.boxes)
    if s.boxes.shape != (K, 4):
        raise ValueError(f"image {s.image_id}: boxes must be (K, 4), got {s.boxes.shape}")
    if s.category_ids.shape != (K,) or s.has_mask.shape != (K,):
        raise ValueError(f"image {s.image_id}: category_ids/has_mask must be ({K},)")
    if s.iscrowd is not None and np.asarray(s.iscrowd).shape != (K,):
        raise ValueError(f"image {s.image_id}: iscrowd must be ({K},)")
    if s.masks.shape != (K, H, W):
        raise ValueError(f"image {s.image_id}: masks must be ({K}, {H}, {W}), got {s.masks.shape}")
