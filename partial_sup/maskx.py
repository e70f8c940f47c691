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

from mnc_core import MNC, MNCConfig, Predictor, build_model, load_checkpoint

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

    forward(roi_features (U, C, S, S), agnostic_logits (K, m, m), classes (K,) row indices into det_weights,
            det_weights (P, det_dim), roi_index (K,) row of roi_features of each mask or None (U == K))
            -> fused mask logits (K, m, m)

    The FCN runs on the S x S (14 x 14) RoI features; its 1x1 class-specific logits are upsampled
    bilinearly to m x m (the 1x1 conv is linear, so this equals convolving upsampled features at a
    quarter of the cost: what matters on a CPU). The MLP logits carry the full m x m detail.
    T runs only on the rows of the classes present in ``classes``, so thousands of classes cost
    nothing extra per RoI.
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
        self.fcn = nn.Sequential(*layers)
        for module in self.fcn:
            if isinstance(module, nn.Conv2d):
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
        """(N', D) mask weights of the classes whose detection weights (N', det_dim) are given."""
        if self.transfer is None:
            return self.shared_weight.expand(det_weights.shape[0], -1)
        return self.transfer(det_weights)

    def forward(self, roi_features: Tensor, agnostic_logits: Tensor, classes: Tensor, det_weights: Tensor,
                roi_index: Tensor | None = None) -> Tensor:
        if agnostic_logits.shape[0] == 0:
            return agnostic_logits
        feats = self.fcn(roi_features)  # (U, D, S, S): once per RoI, whatever the number of its classes
        if roi_index is not None:
            feats = feats[roi_index]  # (K, D, S, S)
        present, inverse = torch.unique(classes, return_inverse=True)
        weights = self.mask_weights(det_weights[present]).to(feats.dtype)[inverse]  # (K, D)
        specific = torch.einsum("kdhw,kd->khw", feats, weights)[:, None]  # (K, 1, S, S)
        if specific.shape[-1] != self.mask_size:
            specific = F.interpolate(specific, size=(self.mask_size, self.mask_size), mode="bilinear",
                                     align_corners=False)
        return agnostic_logits + specific[:, 0].to(agnostic_logits.dtype)


def detection_weights_dim(config: MNCConfig) -> int:
    """Length of a class's detection weights: its cls_score row + its 4 bbox_pred rows (paper: 5 x 1024)."""
    return 5 * (config.mask_pathway_dim + config.box_pathway_dim)


def make_head(config: MNCConfig, maskx: MaskXConfig) -> ClassMaskHead:
    return ClassMaskHead(config.feature_channels, config.mask_size, detection_weights_dim(config), maskx)


def build_maskx_model(config: MNCConfig, num_classes: int, maskx: MaskXConfig | None,
                      backbone_weights: str | None = None) -> MNC:
    """An MNC whose final masks come from the fused transfer (or class-agnostic FCN) head;
    ``maskx=None``: plain MNC (stage-2/4 class-agnostic MLP masks only).

    The MNC is built before the head, and the head's FCN before its method-specific part, so that with
    the same torch seed the class-agnostic and the transfer models start their shared layers from the
    same weights (a comparison of the two methods is then one of the methods, not of initialisations)."""
    model = build_model(config, num_classes, backbone_weights)
    if maskx is not None:
        model.final_mask_head = make_head(config, maskx)
    return model


def head_from_extra(config: MNCConfig, extra: dict) -> ClassMaskHead | None:
    """The final mask head a checkpoint describes in ``extra["maskx"]`` (None: a plain MNC checkpoint)."""
    values = extra.get("maskx")
    return make_head(config, MaskXConfig.from_dict(values)) if values else None


def load_model(path, device=None) -> tuple[MNC, MNCConfig, list[tuple[int, str]], dict]:
    """mnc_core.load_checkpoint that also rebuilds a Mask^X head."""
    return load_checkpoint(path, device=device, final_mask_head=head_from_extra)


def predictor_from_file(path, device=None) -> Predictor:
    """mnc_core.Predictor.from_checkpoint that also rebuilds a Mask^X head."""
    return Predictor.from_checkpoint(path, device=device, final_mask_head=head_from_extra)
