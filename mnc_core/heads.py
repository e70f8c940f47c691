"""Stage-2 (mask) and stage-3 (categorise) heads; stages 4-5 reuse the same modules."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cpu_threads import for_row_chunks
from .linear import Linear
from .roi_warp import max_pool_2x2


def _init_fc(layer: Linear, std: float | None = None) -> Linear:
    if std is None:
        nn.init.kaiming_uniform_(layer.weight, a=1)
    else:
        nn.init.normal_(layer.weight, std=std)
    nn.init.zeros_(layer.bias)
    return layer


class MaskHead(nn.Module):
    """Class-agnostic mask regression: (K, C, S, S) RoI features -> fc -> ReLU -> fc m*m -> logits (K, m, m)."""

    def __init__(self, in_channels: int, pooled_size: int, fc_dim: int, mask_size: int) -> None:
        super().__init__()
        self.mask_size = mask_size
        self.fc = _init_fc(Linear(in_channels * pooled_size * pooled_size, fc_dim, relu=True))
        self.pred = _init_fc(Linear(fc_dim, mask_size * mask_size), std=0.001)

    def forward(self, x: Tensor) -> Tensor:
        t = self.fc(x.flatten(1))  # fc + ReLU
        return self.pred(t).view(-1, self.mask_size, self.mask_size)


CPU_MASKING_CHUNK = 16  # RoIs masked and pooled together on a CPU (8-32 measured alike for 300 RoIs x 256 ch)


def _pooled_pathway_inputs(x: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
    """x (K, C, S, S), m (K, 1, S, S) -> the 2x2-max-pooled masked and plain features, each (K, C*(S/2)^2).
    CPU inference: a few RoIs at a time over the threads (cpu_threads.py; ~5x less time for 300 RoIs than
    writing and reading the whole (K, C, S, S) product), the same values."""
    if x.device.type != "cpu" or (torch.is_grad_enabled() and (x.requires_grad or m.requires_grad)):
        return max_pool_2x2(x * m).flatten(1), max_pool_2x2(x).flatten(1)
    K, C, S, _ = x.shape
    masked = x.new_empty((K, C, S // 2, S // 2))
    plain = x.new_empty((K, C, S // 2, S // 2))

    def pool(rows: slice) -> None:
        max_pool_2x2(x[rows] * m[rows], out=masked[rows])
        max_pool_2x2(x[rows], out=plain[rows])

    for_row_chunks(K, CPU_MASKING_CHUNK, pool)
    return masked.flatten(1), plain.flatten(1)


class ClassifyHead(nn.Module):
    """Stage 3: mask pathway (features x mask, 2x2 max-pool, 2 fcs) + box pathway (2x2 max-pool, 2 fcs),
    concatenated -> cls_score (K, N+1), seg_cls_score (K, N+1), bbox_pred (K, 4(N+1)).

    x: (K, C, S, S) warped + pooled RoI features (S = 14); mask_probs: (K, m, m) stage-2 sigmoid output.
    Gradients flow into both the features and the mask (paper's masking layer)."""

    def __init__(self, in_channels: int, pooled_size: int, mask_dim: int, box_dim: int, num_classes: int) -> None:
        super().__init__()
        self.pooled_size = pooled_size
        n_in = in_channels * (pooled_size // 2) ** 2
        self.mask_fc1 = _init_fc(Linear(n_in, mask_dim, relu=True))
        self.mask_fc2 = _init_fc(Linear(mask_dim, mask_dim, relu=True))
        self.box_fc1 = _init_fc(Linear(n_in, box_dim, relu=True))
        self.box_fc2 = _init_fc(Linear(box_dim, box_dim, relu=True))
        joint = mask_dim + box_dim
        self.cls_score = _init_fc(Linear(joint, num_classes + 1), std=0.01)
        self.seg_cls_score = _init_fc(Linear(joint, num_classes + 1), std=0.01)
        self.bbox_pred = _init_fc(Linear(joint, 4 * (num_classes + 1)), std=0.001)

    def forward(self, x: Tensor, mask_probs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        S = self.pooled_size
        m = mask_probs[:, None]  # (K, 1, m, m)
        if m.shape[-1] != S:
            m = F.interpolate(m, size=(S, S), mode="bilinear", align_corners=False)
        masked, plain = _pooled_pathway_inputs(x, m.to(x.dtype))  # (K, C*(S/2)^2) each
        a = self.mask_fc2(self.mask_fc1(masked))  # fcs with ReLU
        b = self.box_fc2(self.box_fc1(plain))
        h = torch.cat([a, b], dim=1)
        return self.cls_score(h), self.seg_cls_score(h), self.bbox_pred(h)

    def detection_weights(self, classes: Tensor | None = None) -> Tensor:
        """(P, 5J): per class its cls_score row and its 4 bbox_pred rows (the input of a Mask^X weight
        transfer function), for `classes` (P,) indices 0..N, or all N+1 rows (background first)."""
        n = self.cls_score.weight.shape[0]
        cls_w = self.cls_score.weight
        box_w = self.bbox_pred.weight.view(n, -1)
        if classes is not None:
            cls_w, box_w = cls_w[classes], box_w[classes]
        return torch.cat([cls_w, box_w], dim=1)
