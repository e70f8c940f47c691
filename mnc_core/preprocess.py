"""Image resizing / normalisation shared by training and the predictor."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def resized_shape(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int, float]:
    """Short side -> min_size, long side capped at max_size. Returns (new_h, new_w, scale)."""
    scale = min_size / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return max(1, int(round(height * scale))), max(1, int(round(width * scale))), scale


def resize_image(image: np.ndarray, size: tuple[int, int], device="cpu") -> Tensor:
    """(H, W, 3) uint8 RGB -> (3, h, w) float32 in [0, 1], bilinear (antialiased when shrinking)."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    array = np.ascontiguousarray(image)
    if not array.flags.writeable:  # e.g. a cached read-only image: torch.from_numpy wants a writable array
        array = array.copy()
    t = torch.from_numpy(array).to(device).permute(2, 0, 1).float().div_(255.0)
    if tuple(t.shape[1:]) != tuple(size):
        shrink = size[0] < t.shape[1]
        t = F.interpolate(t[None], size=size, mode="bilinear", align_corners=False, antialias=shrink)[0]
    return t


def normalise(image: Tensor, mean, std) -> Tensor:
    """(3, h, w) float RGB in [0, 1] -> (image - mean) / std per channel."""
    m = torch.tensor(mean, device=image.device, dtype=image.dtype)[:, None, None]
    s = torch.tensor(std, device=image.device, dtype=image.dtype)[:, None, None]
    return (image - m) / s


def image_to_tensor(image: np.ndarray, size: tuple[int, int], mean, std, device) -> Tensor:
    """(H, W, 3) uint8 RGB -> (3, h, w) float32 normalised, bilinear (antialiased when shrinking)."""
    return normalise(resize_image(image, size, device), mean, std)


def batch_images(images: list[Tensor], divisibility: int) -> Tensor:
    """Zero-pad (3, h_i, w_i) tensors (zero = the mean colour after normalisation) to one (N, 3, H, W)."""
    H = max(int(im.shape[1]) for im in images)
    W = max(int(im.shape[2]) for im in images)
    d = max(1, divisibility)
    H, W = (H + d - 1) // d * d, (W + d - 1) // d * d
    out = images[0].new_zeros((len(images), 3, H, W))
    for i, im in enumerate(images):
        out[i, :, : im.shape[1], : im.shape[2]] = im
    return out
