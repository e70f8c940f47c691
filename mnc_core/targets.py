"""Training targets for stages 2-5: RoI matching, sampling, box/mask targets, mask-IoU labels.

All functions take detached boxes and return tensors without gradient.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor
from torchvision.ops import box_iou, roi_align


def _no_boxes() -> Tensor:
    return torch.zeros((0, 4))


@dataclass
class ImageTargets:
    """Per-image ground truth at network-input scale."""
    boxes: Tensor      # (G, 4) float
    labels: Tensor     # (G,) int64 class indices 1..N
    masks: Tensor      # (G, H, W) uint8; rows without a mask are 0
    has_mask: Tensor   # (G,) bool
    crowd_boxes: Tensor = field(default_factory=_no_boxes)  # (C, 4) crowd regions: anchors/RoIs inside are ignored
    FIELDS: ClassVar[tuple[str, ...]] = ("boxes", "labels", "masks", "has_mask", "crowd_boxes")


@torch.no_grad()
def inside_crowd(boxes: Tensor, crowd_boxes: Tensor, thresh: float) -> Tensor:
    """(R,) bool: boxes (R, 4) whose intersection with some crowd box (C, 4) covers at least `thresh` of
    their own area (intersection over the box's area, Detectron's crowd filter)."""
    if crowd_boxes.shape[0] == 0 or boxes.shape[0] == 0:
        return torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    crowd_boxes = crowd_boxes.to(boxes.dtype)
    lt = torch.maximum(boxes[:, None, :2], crowd_boxes[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], crowd_boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)  # (R, C)
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=1e-6)
    return (inter / area[:, None]).amax(dim=1) >= thresh


@torch.no_grad()
def match_anchors(iou: Tensor, fg_iou: float, bg_iou: float) -> tuple[Tensor, Tensor]:
    """iou (G, A) of G >= 1 gt boxes and A anchors -> labels (A,) float: 1 object (IoU >= fg_iou, or the
    best anchor of some gt, ties included), 0 background (< bg_iou), -1 ignored; and each anchor's
    best gt (A,). The labels of torchvision's Matcher(fg_iou, bg_iou, allow_low_quality_matches=True),
    from masks instead of boolean indexing (no host sync)."""
    best_iou, gt_index = iou.max(dim=0)
    labels = torch.where(best_iou < bg_iou, 0.0, torch.where(best_iou < fg_iou, -1.0, 1.0))  # NaN: 1, as there
    best_of_gt = (iou == iou.max(dim=1, keepdim=True).values).any(dim=0)
    return torch.where(best_of_gt, 1.0, labels), gt_index


@torch.no_grad()
def match_rois(rois: Tensor, gt_boxes: Tensor) -> tuple[Tensor, Tensor]:
    """rois (R, 4), gt_boxes (G, 4) -> (max IoU (R,), matched gt index (R,); 0 when G == 0)."""
    R = rois.shape[0]
    if gt_boxes.shape[0] == 0 or R == 0:
        return rois.new_zeros(R), torch.zeros(R, dtype=torch.long, device=rois.device)
    iou, idx = box_iou(rois, gt_boxes).max(dim=1)
    return iou, idx


@torch.no_grad()
def sample_rois(max_iou: Tensor, batch_size: int, positive_fraction: float, fg_iou: float,
                bg_iou_lo: float, bg_low_fraction: float, ignore: Tensor | None = None) -> Tensor:
    """Indices of a sample: <= batch_size * positive_fraction with IoU >= fg_iou, the rest background,
    mostly from [bg_iou_lo, fg_iou) and a `bg_low_fraction` share from [0, bg_iou_lo). RoIs flagged in
    `ignore` (R,) bool (inside crowd regions) are never background; they stay foreground only when they
    match a real object (IoU >= fg_iou)."""
    def pick(idx: Tensor, n: int) -> Tensor:
        return idx[torch.randperm(idx.numel(), device=idx.device)[:n]]

    background = max_iou < fg_iou
    if ignore is not None:
        background = background & ~ignore
    fg = torch.where(max_iou >= fg_iou)[0]
    bg_hi = torch.where(background & (max_iou >= bg_iou_lo))[0]
    bg_lo = torch.where(background & (max_iou < bg_iou_lo))[0]
    n_fg = min(int(round(batch_size * positive_fraction)), fg.numel())
    n_bg = batch_size - n_fg
    n_lo = min(int(round(n_bg * bg_low_fraction)), bg_lo.numel())
    n_hi = min(n_bg - n_lo, bg_hi.numel())
    n_lo = min(n_bg - n_hi, bg_lo.numel())
    return torch.cat([pick(fg, n_fg), pick(bg_hi, n_hi), pick(bg_lo, n_lo)])


@torch.no_grad()
def mask_targets(gt_masks: Tensor, gt_index: Tensor, rois: Tensor, mask_size: int, thresh: float) -> Tensor:
    """GT masks (G, H, W) cropped to rois (F, 4) of their matched gt (gt_index (F,)), resized to
    (F, m, m) and binarised at `thresh`. roi_align is fine here: targets need no box gradient."""
    if rois.shape[0] == 0:
        return rois.new_zeros((0, mask_size, mask_size))
    r = torch.cat([gt_index.to(rois.dtype)[:, None], rois], dim=1)
    crops = roi_align(gt_masks[:, None].float(), r, (mask_size, mask_size), 1.0, sampling_ratio=2, aligned=True)
    return (crops[:, 0] >= thresh).float()


@torch.no_grad()
def mask_iou_in_roi(mask_probs: Tensor, targets: Tensor, rois: Tensor, gt_areas: Tensor, thresh: float) -> Tensor:
    """Approximate full-image mask IoU between predicted masks (F, m, m) (binarised at `thresh`, living
    inside their RoI) and GT masks: intersection and predicted area from the RoI grid (scaled by the
    RoI's pixel area), GT area from the full GT mask (gt_areas (F,)), so GT outside the RoI counts."""
    if rois.shape[0] == 0:
        return rois.new_zeros(0)
    pred = (mask_probs >= thresh).float()
    area = ((rois[:, 2] - rois[:, 0]) * (rois[:, 3] - rois[:, 1])).clamp(min=1e-6)
    inter = (pred * targets).mean(dim=(1, 2)) * area
    pred_area = pred.mean(dim=(1, 2)) * area
    union = (pred_area + gt_areas - inter).clamp(min=1e-6)
    return inter / union
