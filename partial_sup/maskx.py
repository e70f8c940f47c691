"""Mask^X weight transfer (Hu et al., "Learning to Segment Every Thing") on top of MNC.

A class's mask weights are *predicted* from its detection weights by a learned weight
transfer function T, so classes that only have boxes (set B) still get class-specific
masks: T is trained on the classes that have masks (set A) and applied to all.

    w_seg[c] = T(stop_grad(w_det[c]))                w_det[c] = [cls_score.weight[c], bbox_pred.weight[4c:4c+4]]
    logits   = MLP_agnostic(roi) + <FCN(roi), w_seg[c]>   (fused; sigmoid -> the instance's final mask)

Design for MNC: stages 2/4 stay class-agnostic (stage 3 needs their masks before the class
is known, and they are MNC's MLP mask head). The *final* mask of each instance is the
fused class-agnostic MLP logits plus the transferred class-specific FCN logits of its
class (its ground-truth class in training, its predicted class at inference).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

METHODS = ("transfer", "agnostic")  # transfer+MLP (Mask^X) | class-agnostic FCN+MLP (the paper's baseline)


@dataclass(frozen=True)
class MaskXConfig:
    method: str = "transfer"
    fcn_channels: int = 128  # D: channels of the FCN mask feature = length of each class's mask weights
    fcn_convs: int = 2
    transfer_hidden: int = 256
    leaky_slope: float = 0.1
    stop_gradient: bool = True  # the paper's Table 3.4: essential

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {self.method!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "MaskXConfig":
        return cls(**values)


class WeightTransfer(nn.Module):
    """T: (N+1, det_dim) detection weights -> (N+1, D) mask weights; FC -> LeakyReLU -> FC."""

    def __init__(self, det_dim: int, hidden: int, out_dim: int, slope: float, stop_gradient: bool) -> None:
        super().__init__()
        self.stop_gradient = stop_gradient
        self.fc1 = nn.Linear(det_dim, hidden)
        self.act = nn.LeakyReLU(slope)
        self.fc2 = nn.Linear(hidden, out_dim)
        nn.init.normal_(self.fc2.weight, std=0.01)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, det_weights: Tensor) -> Tensor:
        if self.stop_gradient:
            det_weights = det_weights.detach()
        return self.fc2(self.act(self.fc1(det_weights)))


class ClassMaskHead(nn.Module):
    """The class-specific mask branch fused with MNC's class-agnostic MLP mask logits.

    forward(roi_features (K, C, S, S), agnostic_logits (K, m, m), classes (K,) indices 0..N,
            det_weights (N+1, det_dim)) -> fused mask logits (K, m, m)
    """

    def __init__(self, in_channels: int, mask_size: int, det_dim: int, config: MaskXConfig) -> None:
        super().__init__()
        self.config = config
        self.mask_size = mask_size
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(config.fcn_convs):
            layers += [nn.Conv2d(channels, config.fcn_channels, 3, padding=1), nn.ReLU(inplace=True)]
            channels = config.fcn_channels
        layers += [nn.ConvTranspose2d(channels, config.fcn_channels, 2, stride=2), nn.ReLU(inplace=True)]
        self.fcn = nn.Sequential(*layers)
        for module in self.fcn:
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        if config.method == "transfer":
            self.transfer = WeightTransfer(det_dim, config.transfer_hidden, config.fcn_channels, config.leaky_slope,
                                           config.stop_gradient)
            self.shared_weight = None
        else:  # class-agnostic: one set of mask weights for every class
            self.transfer = None
            self.shared_weight = nn.Parameter(torch.randn(config.fcn_channels) * 0.01)

    def mask_weights(self, det_weights: Tensor) -> Tensor:
        """(N+1, D) mask weights of every class."""
        if self.transfer is None:
            return self.shared_weight.expand(det_weights.shape[0], -1)
        return self.transfer(det_weights)

    def forward(self, roi_features: Tensor, agnostic_logits: Tensor, classes: Tensor, det_weights: Tensor) -> Tensor:
        if roi_features.shape[0] == 0:
            return agnostic_logits
        feats = self.fcn(roi_features)  # (K, D, 2S, 2S)
        if feats.shape[-1] != self.mask_size:
            feats = F.interpolate(feats, size=(self.mask_size, self.mask_size), mode="bilinear", align_corners=False)
        weights = self.mask_weights(det_weights).to(feats.dtype)[classes]  # (K, D)
        specific = torch.einsum("kdhw,kd->khw", feats, weights)
        return agnostic_logits + specific.to(agnostic_logits.dtype)
