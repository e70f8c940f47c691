"""Stage-2 (mask) and stage-3 (categorise) heads; stages 4-5 reuse the same modules."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .roi_warp import max_pool_2x2


def _init_fc(layer: nn.Linear, std: float | None = None) -> nn.Linear:
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
        self.fc = _init_fc(nn.Linear(in_channels * pooled_size * pooled_size, fc_dim))
        self.pred = _init_fc(nn.Linear(fc_dim, mask_size * mask_size), std=0.001)

    def forward(self, x: Tensor) -> Tensor:
        t = F.relu(self.fc(x.flatten(1)))
        return self.pred(t).view(-1, self.mask_size, self.mask_size)


class ClassifyHead(nn.Module):
    """Stage 3: mask pathway (features x mask, 2x2 max-pool, 2 fcs) + box pathway (2x2 max-pool, 2 fcs),
    concatenated -> cls_score (K, N+1), seg_cls_score (K, N+1), bbox_pred (K, 4(N+1)).

    x: (K, C, S, S) warped + pooled RoI features (S = 14); mask_probs: (K, m, m) stage-2 sigmoid output.
    Gradients flow into both the features and the mask (paper's masking layer)."""

    def __init__(self, in_channels: int, pooled_size: int, mask_dim: int, box_dim: int, num_classes: int) -> None:
        super().__init__()
        self.pooled_size = pooled_size
        n_in = in_channels * (pooled_size // 2) ** 2
        self.mask_fc1 = _init_fc(nn.Linear(n_in, mask_dim))
        self.mask_fc2 = _init_fc(nn.Linear(mask_dim, mask_dim))
        self.box_fc1 = _init_fc(nn.Linear(n_in, box_dim))
        self.box_fc2 = _init_fc(nn.Linear(box_dim, box_dim))
        joint = mask_dim + box_dim
        self.cls_score = _init_fc(nn.Linear(joint, num_classes + 1), std=0.01)
        self.seg_cls_score = _init_fc(nn.Linear(joint, num_classes + 1), std=0.01)
        self.bbox_pred = _init_fc(nn.Linear(joint, 4 * (num_classes + 1)), std=0.001)

    def forward(self, x: Tensor, mask_probs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        S = self.pooled_size
        m = mask_probs[:, None]  # (K, 1, m, m)
        if m.shape[-1] != S:
            m = F.interpolate(m, size=(S, S), mode="bilinear", align_corners=False)
        masked = max_pool_2x2(x * m.to(x.dtype)).flatten(1)  # (K, C*(S/2)^2)
        plain = max_pool_2x2(x).flatten(1)
        a = F.relu(self.mask_fc2(F.relu(self.mask_fc1(masked))))
        b = F.relu(self.box_fc2(F.relu(self.box_fc1(plain))))
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
