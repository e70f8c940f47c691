"""Stage 1: region proposal network whose proposals stay attached to the box-delta conv.

torchvision's RPN detaches its proposals; here the decoded boxes keep their autograd
history so that stage 2-5 losses reach `bbox_pred` through the differentiable RoI warp
(paper Eq. 5-9). Only the *selection* (top-k, NMS, small-box removal) uses detached values.

Gradient safety (following the released Caffe code, which clipped the gradient mapped back
onto the RPN deltas to +-1/512 and zeroed it for clipped boxes):
- `clip_gradient(deltas, c)` is an identity whose backward clamps each element of
  d(loss)/d(delta) to [-c, c]. c defaults to 1/512: RPN box loss is normalised by the 256
  sampled anchors, so its own per-element gradient is at most ~1/256; the downstream signal
  may steer the deltas but never dominates the RPN's own regression target.
- box coordinates clamped to the image (`clip_boxes_to_image` uses clamp) and dw/dh clamped
  at log(1000/16) get zero gradient, i.e. clipped boxes send nothing back.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import boxes as box_ops

from .losses import rpn_losses
from .targets import inside_crowd, match_anchors


class _ClipGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, limit: float) -> Tensor:  # type: ignore[override]
        ctx.limit = limit
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad.clamp(-ctx.limit, ctx.limit), None


def clip_gradient(x: Tensor, limit: float) -> Tensor:
    """Identity forward; backward clamps every gradient element to [-limit, limit] (limit <= 0: off)."""
    if limit <= 0 or not x.requires_grad:
        return x
    return _ClipGradient.apply(x, limit)


def nms_top_n(boxes: Tensor, scores: Tensor, iou_thresh: float, top_n: int, presorted: bool = False) -> Tensor:
    """`nms(boxes, scores, iou_thresh)[:top_n]`, computed exactly but faster: greedy NMS decides each box
    from higher-scored boxes only, so NMS over a score-sorted prefix gives the same first kept boxes;
    grow the prefix until it yields top_n boxes (12000 boxes -> usually one pass over ~2000).
    presorted: the scores are already in descending order (no sort). Each pass is one host sync on a GPU
    (NMS's output size depends on the data); `keep.numel()` then costs nothing more."""
    n = scores.shape[0]
    order = torch.arange(n, device=scores.device) if presorted else scores.argsort(descending=True)
    m = min(n, max(1000, 6 * top_n))
    while True:
        idx = order[:m]
        keep = box_ops.nms(boxes[idx], scores[idx], iou_thresh)
        if keep.numel() >= top_n or m == n:
            return idx[keep[:top_n]]
        m = min(n, m * 4)


class RPNHead(nn.Module):
    """3x3 conv -> ReLU -> (objectness (N, A, h, w), deltas (N, 4A, h, w))."""

    def __init__(self, in_channels: int, mid_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, mid_channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(mid_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(mid_channels, 4 * num_anchors, 1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        t = F.relu(self.conv(x))
        return self.cls_logits(t), self.bbox_pred(t)


class RegionProposalNetwork(nn.Module):
    def __init__(self, in_channels: int, mid_channels: int, anchor_sizes: tuple[tuple[float, ...], ...],
                 anchor_ratios: tuple[float, ...], fg_iou: float, bg_iou: float, batch_size: int,
                 positive_fraction: float, pre_nms_top_n: dict[str, int], post_nms_top_n: dict[str, int],
                 nms_thresh: float, min_size: float, grad_clip: float, detach_proposals: bool,
                 crowd_ioa_thresh: float = 0.7) -> None:
        super().__init__()
        if len({len(sizes) for sizes in anchor_sizes}) != 1:
            raise ValueError("every feature level needs the same number of anchor sizes (the head is shared)")
        # anchor_sizes: per feature level (finest first), the sizes of its anchors; one head for every level
        self.anchor_generator = AnchorGenerator(sizes=tuple(tuple(sizes) for sizes in anchor_sizes),
                                                aspect_ratios=(tuple(anchor_ratios),) * len(anchor_sizes))
        self.num_anchors = len(anchor_sizes[0]) * len(anchor_ratios)
        self.head = RPNHead(in_channels, mid_channels, self.num_anchors)
        self.box_coder = det_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.fg_iou = fg_iou
        self.bg_iou = bg_iou
        # torchvision's sampler: two host syncs per image (its sample sizes depend on the labels); kept, as
        # its random draws decide the sample
        self.sampler = det_utils.BalancedPositiveNegativeSampler(batch_size, positive_fraction)
        self.pre_nms_top_n = dict(pre_nms_top_n)
        self.post_nms_top_n = dict(post_nms_top_n)
        self.nms_thresh = nms_thresh
        self.min_size = min_size
        self.grad_clip = grad_clip
        self.detach_proposals = detach_proposals
        self.crowd_ioa_thresh = crowd_ioa_thresh

    def _mode(self) -> str:
        return "training" if self.training else "testing"

    def forward(self, images: Tensor, features: dict[str, Tensor] | list[Tensor], image_sizes: list[tuple[int, int]],
                gt_boxes: list[Tensor] | None = None, crowd_boxes: list[Tensor] | None = None
                ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """images (N, 3, Hp, Wp) padded batch (only its shape is used); features: per level (finest first)
        (N, C, h_l, w_l), as a list or as the backbone's ordered dict; training: gt_boxes N x (G_i, 4) and crowd_boxes N x (C_i, 4) (regions whose anchors are
        ignored). Returns proposals [(P_i, 4) input pixels, attached unless detach_proposals] and losses.
        The `pre_nms_top_n` best anchors of each level are decoded (as torchvision's FPN RPN), then NMS over all
        levels together keeps the `post_nms_top_n` best proposals."""
        features = list(features.values()) if isinstance(features, dict) else list(features)
        per_level = [self.head(f) for f in features]  # [(N, A, h, w), (N, 4A, h, w)] per level
        N = features[0].shape[0]
        objectness = torch.cat([o.permute(0, 2, 3, 1).reshape(N, -1) for o, _ in per_level], 1).float()  # (N, sum hwA)
        deltas = torch.cat([d.view(N, self.num_anchors, 4, d.shape[2], d.shape[3]).permute(0, 3, 4, 1, 2).reshape(N, -1, 4)
                            for _, d in per_level], 1).float()  # (N, sum hwA, 4)
        anchors = self.anchor_generator(ImageList(images, image_sizes), features)  # N x (sum hwA, 4)

        # every image at once: top-k per level (each sorted, highest first), decoding and clipping; no host sync
        pre_n = self.pre_nms_top_n[self._mode()]
        post_n = self.post_nms_top_n[self._mode()]
        objectness_detached = objectness.detach()
        picks, scores, offset = [], [], 0
        for o, _ in per_level:
            count = o.shape[1] * o.shape[2] * o.shape[3]
            level_scores, level_top = objectness_detached[:, offset:offset + count].topk(min(pre_n, count), dim=1)
            picks.append(level_top + offset)
            scores.append(level_scores)
            offset += count
        top, top_scores = torch.cat(picks, 1), torch.cat(scores, 1)  # (N, k)
        rows = torch.arange(N, device=top.device)[:, None]
        d = deltas[rows, top]  # (N, k, 4)
        # the losses are means over the N images, so limit / N clips each image's own gradient at
        # grad_clip, as if it were alone (one process per image under DDP gives the same)
        d = d.detach() if self.detach_proposals else clip_gradient(d, self.grad_clip / N)
        k = top.shape[1]
        boxes = self.box_coder.decode_single(d.reshape(-1, 4), torch.stack(anchors)[rows, top].reshape(-1, 4))
        limits = torch.tensor([[w, h, w, h] for h, w in image_sizes], dtype=boxes.dtype).to(boxes.device, non_blocking=True)
        boxes = boxes.view(N, k, 4).clamp(min=torch.zeros_like(limits)[:, None], max=limits[:, None])
        presorted = len(per_level) == 1
        bd = boxes.detach()
        large = (bd[..., 2] - bd[..., 0] >= self.min_size) & (bd[..., 3] - bd[..., 1] >= self.min_size)
        # the large boxes of each image first, still in top-k order (a stable sort); one host sync for all
        # images reads how many each has
        order = (~large).to(torch.uint8).argsort(dim=1, stable=True)
        counts = large.sum(dim=1).tolist()
        proposals: list[Tensor] = []
        for i in range(N):  # NMS per image, as torchvision's RPN: its output size depends on the data
            idx = order[i, :counts[i]]
            keep = idx[nms_top_n(bd[i, idx], top_scores[i, idx], self.nms_thresh, post_n, presorted=presorted)]
            proposals.append(boxes[i, keep])

        losses: dict[str, Tensor] = {}
        if self.training:
            if gt_boxes is None:
                raise ValueError("gt_boxes are required in training")
            crowd = crowd_boxes if crowd_boxes is not None else [g.new_zeros((0, 4)) for g in gt_boxes]
            labels, targets = self._targets(anchors, gt_boxes, crowd)
            losses = rpn_losses(objectness, deltas, labels, targets, self.sampler)
        return proposals, losses

    @torch.no_grad()
    def _targets(self, anchors: list[Tensor], gt_boxes: list[Tensor], crowd_boxes: list[Tensor]
                 ) -> tuple[list[Tensor], list[Tensor]]:
        """Per image: labels (hwA,) 1 object, 0 background, -1 ignored (between the IoU thresholds, or a
        background anchor inside a crowd region) and box targets (hwA, 4) (read only where the label is 1)."""
        labels, targets = [], []
        for a, g, crowd in zip(anchors, gt_boxes, crowd_boxes):
            if g.shape[0] == 0:
                lab = torch.zeros(a.shape[0], device=a.device)
                target = torch.zeros_like(a)
            else:
                lab, gt_index = match_anchors(box_ops.box_iou(g, a), self.fg_iou, self.bg_iou)
                target = self.box_coder.encode_single(g[gt_index], a)
            lab = torch.where((lab == 0) & inside_crowd(a, crowd, self.crowd_ioa_thresh), -1.0, lab)
            labels.append(lab)
            targets.append(target)
        return labels, targets
