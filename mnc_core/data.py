"""Dataset contract (numpy only: datasets elsewhere implement it without importing torch)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass
class Sample:
    image: np.ndarray         # (H, W, 3) uint8 RGB
    boxes: np.ndarray         # (K, 4) float32 x1, y1, x2, y2 in pixels
    category_ids: np.ndarray  # (K,) int64 dataset category ids (e.g. COCO ids, not contiguous)
    masks: np.ndarray         # (K, H, W) bool; rows where has_mask is False are all False and ignored
    has_mask: np.ndarray      # (K,) bool
    image_id: int = 0


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
    if s.masks.shape != (K, H, W):
        raise ValueError(f"image {s.image_id}: masks must be ({K}, {H}, {W}), got {s.masks.shape}")
