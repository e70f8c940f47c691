"""Losses as pure functions (no module state)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def rpn_losses(objectness: Tensor, deltas: Tensor, labels: list[Tensor], targets: list[Tensor],
               sampler) -> dict[str, Tensor]:
    """objectness (N, M) logits, deltas (N, M, 4); labels N x (M,) in {1, 0, -1}; targets N x (M, 4).
    BCE over the sampled anchors; smooth L1 (sigma 3, i.e. beta 1/9) over positives / #sampled."""
    pos_masks, neg_masks = sampler(labels)
    pos = torch.where(torch.cat(pos_masks))[0]
    neg = torch.where(torch.cat(neg_masks))[0]
    sampled = torch.cat([pos, neg])
    lab = torch.cat(labels)
    tgt = torch.cat(targets)
    box = F.smooth_l1_loss(deltas.reshape(-1, 4)[pos], tgt[pos], beta=1.0 / 9, reduction="sum") / max(1, sampled.numel())
    cls = F.binary_cross_entropy_with_logits(objectness.reshape(-1)[sampled], lab[sampled])
    return {"rpn_cls": cls, "rpn_box": box}


def mask_loss(mask_logits: Tensor, mask_targets: Tensor) -> Tensor:
    """mask_logits (F, m, m) for foreground RoIs that have a GT mask; mask_targets (F, m, m) in {0, 1}.
    Mean per-pixel sigmoid cross entropy; exactly 0 (but still in the graph) when F == 0."""
    if mask_logits.shape[0] == 0:
        return mask_logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(mask_logits.float(), mask_targets.float())


def classification_loss(scores: Tensor, labels: Tensor) -> Tensor:
    """scores (R, N+1), labels (R,) in 0..N (0 = background)."""
    if scores.shape[0] == 0:
        return scores.sum() * 0.0
    return F.cross_entropy(scores.float(), labels)


def box_regression_loss(bbox_pred: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
    """bbox_pred (R, 4(N+1)) class-specific deltas; labels (R,); targets (R, 4) encoded w.r.t. the RoIs.
    Smooth L1 (beta 1) on foreground RoIs at their GT class, normalised by R (Fast R-CNN)."""
    R = bbox_pred.shape[0]
    if R == 0:
        return bbox_pred.sum() * 0.0
    pos = torch.where(labels > 0)[0]
    pred = bbox_pred.float().reshape(R, -1, 4)[pos, labels[pos]]  # (P, 4)
    return F.smooth_l1_loss(pred, targets[pos], beta=1.0, reduction="sum") / R


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
