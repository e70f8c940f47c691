"""Losses as pure functions (no module state).

Every loss of a batch is the mean over its images of each image's own loss (an image's mean over its
sampled anchors, RoIs or masks; 0 for an image with none). One image alone gives the usual per-image
normalisation; a global batch split over processes (DistributedDataParallel averages the gradients of
the processes) gives the same gradient as one process with the whole batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def image_mean(values: Tensor, image_index: Tensor | None, num_images: int = 1, keep: Tensor | None = None) -> Tensor:
    """values (E,) per element, image_index (E,) its image (None: all in one image) -> scalar
    sum_i mean(values of image i) / num_images; an image without elements adds 0 (still in the graph).
    keep (E,) bool: only these elements count (the others add exactly 0 and get no gradient), so a
    caller need not select them (a host sync on a GPU). The counts come from index_add_ (bincount
    syncs on a GPU to size its output)."""
    if values.numel() == 0:
        return values.sum() * 0.0
    if image_index is None:
        if keep is None:
            return values.mean()
        image_index = torch.zeros(values.shape[0], dtype=torch.long, device=values.device)
    ones = torch.ones_like(values) if keep is None else keep.to(values.dtype)
    counts = values.new_zeros(num_images).index_add_(0, image_index, ones)
    if keep is None:
        return (values / counts[image_index]).sum() / num_images
    return torch.where(keep, values / counts[image_index].clamp(min=1), 0.0).sum() / num_images


def rpn_losses(objectness: Tensor, deltas: Tensor, labels: list[Tensor], targets: list[Tensor],
               sampler) -> dict[str, Tensor]:
    """objectness (N, M) logits, deltas (N, M, 4); labels N x (M,) in {1, 0, -1}; targets N x (M, 4).
    Per image: BCE over its sampled anchors; smooth L1 (sigma 3, i.e. beta 1/9) over its positives /
    its #sampled; then the mean over the N images."""
    N, M = objectness.shape[:2]
    pos_masks, neg_masks = sampler(labels)
    pos = torch.stack(pos_masks).bool()  # (N, M); masks instead of indices: no host sync
    sampled = pos | torch.stack(neg_masks).bool()
    per_image = sampled.sum(dim=1, keepdim=True).clamp(min=1).to(deltas.dtype)  # #sampled per image
    box_each = F.smooth_l1_loss(deltas, torch.stack(targets), beta=1.0 / 9, reduction="none").sum(2)
    box = (torch.where(pos, box_each, 0.0) / per_image).sum() / N
    cls_each = F.binary_cross_entropy_with_logits(objectness, torch.stack(labels).clamp(min=0), reduction="none")
    return {"rpn_cls": (torch.where(sampled, cls_each, 0.0) / per_image).sum() / N, "rpn_box": box}


def mask_loss(mask_logits: Tensor, mask_targets: Tensor, image_index: Tensor | None = None,
              num_images: int = 1, keep: Tensor | None = None) -> Tensor:
    """mask_logits (F, m, m) for foreground RoIs that have a GT mask; mask_targets (F, m, m) in {0, 1};
    image_index (F,) their images (None: one image); keep (F,) bool: only these rows count (`image_mean`).
    Per-pixel sigmoid cross entropy, mean per image; exactly 0 (but still in the graph) when no row counts."""
    if mask_logits.shape[0] == 0:
        return mask_logits.sum() * 0.0
    each = F.binary_cross_entropy_with_logits(mask_logits.float(), mask_targets.float(), reduction="none")
    return image_mean(each.flatten(1).mean(1), image_index, num_images, keep)


def classification_loss(scores: Tensor, labels: Tensor, image_index: Tensor | None = None,
                        num_images: int = 1) -> Tensor:
    """scores (R, N+1), labels (R,) in 0..N (0 = background); cross entropy, mean per image."""
    if scores.shape[0] == 0:
        return scores.sum() * 0.0
    return image_mean(F.cross_entropy(scores.float(), labels, reduction="none"), image_index, num_images)


def box_regression_loss(bbox_pred: Tensor, labels: Tensor, targets: Tensor, image_index: Tensor | None = None,
                        num_images: int = 1) -> Tensor:
    """bbox_pred (R, 4(N+1)) class-specific deltas; labels (R,); targets (R, 4) encoded w.r.t. the RoIs.
    Smooth L1 (beta 1) on foreground RoIs at their GT class, normalised by the image's R (Fast R-CNN)."""
    R = bbox_pred.shape[0]
    if R == 0:
        return bbox_pred.sum() * 0.0
    pred = bbox_pred.float().reshape(R, -1, 4)[torch.arange(R, device=labels.device), labels]  # (R, 4)
    each = F.smooth_l1_loss(pred, targets, beta=1.0, reduction="none").sum(1)
    each = torch.where(labels > 0, each, torch.zeros_like(each))
    return image_mean(each, image_index, num_images)


def total_loss(losses: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    """Weighted sum; `weights` maps loss name (without a stage suffix) to its weight; names ending in
    '_s45' are cascade stages 4-5 and are additionally multiplied by weights['cascade']."""
    total = None
    for name, value in losses.items():
        base = name[:-4] if name.endswith("_s45") else name
        w = weights[base] * (weights["cascade"] if name.endswith("_s45") else 1.0)
        total = value * w if total is None else total + value * w
    assert total is not None
    return total
