"""`MNCConfig`: every hyper-parameter of the model, its training and its inference.

One frozen dataclass, serialisable to plain types (`to_dict`) and back (`from_dict`),
so a checkpoint can describe the model that it holds.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any


RENAMED_FIELDS = {"score_thresh": "score_threshold", "vote_score_thresh": "vote_score_threshold"}  # older checkpoints
# Fields whose default changed: a checkpoint written before the field existed had this value, not the default.
OLD_DEFAULTS = {"feature_pyramid": False}  # models before the feature pyramid were single-scale
BACKBONES = ("mobilenet_v2", "resnet50")  # the backbones mnc_core builds (backbone.py)
MAX_DETECTIONS = 1000  # the most detections per image `for_instances` asks for


@dataclass(frozen=True)
class MNCConfig:
    # ---- backbone ----
    backbone: str = "mobilenet_v2"          # one of BACKBONES
    feature_pyramid: bool = True            # FPN over the body's `pyramid_levels` (+ a max-pooled level for the RPN);
                                            # False: MNC's single stride-16 map (1x1 reduction of the body's output)
    pyramid_levels: tuple[int, ...] = (3, 4, 5)  # body levels k (stride 2**k) the pyramid taps, 2..5
    feature_channels: int = 128             # channels of every feature map (FPN's, or the 1x1 reduction's); 128, not
                                            # FPN's 256: a 3x3 conv on the stride-8 map costs a quarter
    mobilenet_dilated: bool = False         # True: keep blocks 14-17 at stride 16 (dilation 2); False: stop after block 13
    mobilenet_expansion: bool = False       # True: end with block 14's 1x1 expansion (576 ch, stride 16), where
                                            # SSDLite attaches its head (MobileNetV2 paper, sec. 6.2)
    backbone_frozen_blocks: int | None = None  # leading body blocks frozen (mobilenet_v2: `features` modules, 14 or
                                            # 18 dilated; resnet50: stem, layer1, layer2, layer3); None: the
                                            # backbone's default (backbone.DEFAULT_FROZEN_BLOCKS)
    # ---- stage 1: RPN ----
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)   # single-scale anchors (paper: (128, 256, 512) for
                                            # ~600-1000 px VOC images)
    anchor_scales: tuple[float, ...] = (4.0, 8.0)  # pyramid: each level's anchor sizes, in multiples of its stride
                                            # (p3: 32 and 64 px, ..., p6: 256 and 512 px)
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_channels: int = 128
    rpn_fg_iou: float = 0.7
    rpn_bg_iou: float = 0.3
    rpn_batch_size: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_nms_thresh: float = 0.7
    rpn_pre_nms_top_n_train: int = 12000
    rpn_post_nms_top_n_train: int = 300
    rpn_pre_nms_top_n_test: int = 6000
    rpn_post_nms_top_n_test: int = 300
    rpn_min_size: float = 4.0               # proposals smaller than this (input pixels) are dropped
    # ---- end-to-end box gradients ----
    detach_proposals: bool = False          # True: torchvision-style detached proposals (no Eq. 9 gradient)
    proposal_grad_clip: float = 1.0 / 512   # element-wise clip of d(loss)/d(box deltas) flowing back through decoding
    # ---- stage 2/3 RoI sampling (training) ----
    roi_batch_size: int = 64                # RoIs per image
    roi_positive_fraction: float = 0.25
    roi_fg_iou: float = 0.5
    roi_bg_iou_lo: float = 0.1              # bg mostly from [lo, fg_iou) ...
    roi_bg_low_fraction: float = 0.25       # ... and this fraction of the bg quota from [0, lo)
    crowd_ioa_thresh: float = 0.7           # anchors / RoIs with this share of their area in a crowd region are
                                            # ignored (neither object nor background; Detectron's crowd filter)
    # ---- heads ----
    warp_size: int = 28                     # RoI warp resolution; 2x2 max-pool -> warp_size // 2 (14)
    mask_size: int = 28                     # m: stage-2 mask resolution (m x m)
    mask_fc_dim: int = 256
    mask_pathway_dim: int = 512             # stage-3 fcs on the masked feature
    box_pathway_dim: int = 512              # stage-3 fcs on the unmasked feature
    bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)  # = 1 / stds (0.1, 0.1, 0.2, 0.2)
    mask_target_thresh: float = 0.4         # GT mask crop binarised at this
    seg_mask_iou: float = 0.5               # seg_cls positive: box IoU >= roi_fg_iou AND mask IoU >= this
    # ---- cascade ----
    num_stages: int = 5                     # 3 or 5 (training structure)
    inference_stages: int | None = None     # None: same as num_stages
    cascade_top_n_test: int | None = 100    # inference: stages 4-5 refine only the top-n stage-3 RoIs by
                                            # foreground score (None: all 300, as in the paper)
    # ---- loss weights (release: same again for stages 4-5) ----
    loss_rpn_cls: float = 1.0
    loss_rpn_box: float = 1.0
    loss_mask: float = 2.0
    loss_mask_final: float = 2.0            # the final-mask head's loss (only with a final_mask_head)
    loss_cls: float = 1.0
    loss_seg_cls: float = 1.0
    loss_bbox: float = 1.0
    loss_cascade: float = 1.0               # multiplier on the stage 4-5 losses
    # ---- inference ----
    test_score: str = "seg_cls"             # class scores of the output: "seg_cls" (the paper: positive only for
                                            # good masks), "cls" (box-IoU classifier) or "mean" (their geometric mean)
    score_threshold: float = 0.05              # candidates (and default Predictor threshold)
    nms_thresh: float = 0.3
    detections_per_image: int = 100
    mask_voting: bool = True
    vote_iou_thresh: float = 0.5
    vote_score_threshold: float = 0.05         # only candidates above this vote (and get pasted)
    vote_resolution: int = 56               # voting is done on an R x R grid over each survivor's window
    max_candidates: int = 5000              # (candidate, class) pairs kept per image before NMS (bounds a very
                                            # low threshold with thousands of classes)
    mask_thresh: float = 0.4
    # ---- images ----
    min_size: int = 600                     # short side
    max_size: int = 1000                    # long side cap
    size_divisibility: int = 32
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)   # RGB in [0, 1]
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # ---- training ----
    optimizer: str = "adamw"                # "adamw" | "sgd" (AdamW learns much faster on short budgets; see train.py)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 50
    warmup_factor: float = 0.001
    lr_steps: tuple[float, ...] = (0.75, 0.9)   # fractions of the iterations where lr *= 0.1
    grad_clip_norm: float = 10.0
    hflip_prob: float = 0.5
    scale_jitter: tuple[float, ...] = (1.0,)  # training scales: multipliers of min_size / max_size, one drawn per image
    photometric_jitter: float = 0.0         # brightness, contrast, saturation each x U[1 - s, 1 + s] (0: off)
    images_per_batch: int = 1               # images per process and iteration; the lr scales with it (train.py)

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; use one of {', '.join(BACKBONES)}")
        if self.feature_pyramid and (not self.pyramid_levels or len(set(self.pyramid_levels)) < 2
                                     or any(level not in (2, 3, 4, 5) for level in self.pyramid_levels)
                                     or list(self.pyramid_levels) != sorted(self.pyramid_levels)):
            raise ValueError("pyramid_levels must be at least two increasing levels of 2, 3, 4, 5 (stride 4-32)")
        if self.feature_pyramid and (self.mobilenet_dilated or self.mobilenet_expansion):
            raise ValueError("mobilenet_dilated / mobilenet_expansion are single-scale bodies: "
                             "set feature_pyramid=False for them")
        if self.feature_pyramid and self.size_divisibility % 2 ** max(self.pyramid_levels):
            raise ValueError("size_divisibility must be a multiple of the coarsest pyramid level's stride")
        if not self.anchor_scales or any(s <= 0 for s in self.anchor_scales):
            raise ValueError("anchor_scales must hold at least one positive multiple of the stride")
        if self.num_stages not in (3, 5):
            raise ValueError("num_stages must be 3 or 5")
        if self.inference_stages not in (None, 3, 5):
            raise ValueError("inference_stages must be None, 3 or 5")
        if self.warp_size % 4 != 0:
            raise ValueError("warp_size must be a multiple of 4 (two 2x2 max-pools)")
        if self.mobilenet_dilated and self.mobilenet_expansion:
            raise ValueError("mobilenet_dilated and mobilenet_expansion exclude each other")
        if self.test_score not in ("seg_cls", "cls", "mean"):
            raise ValueError("test_score must be 'seg_cls', 'cls' or 'mean'")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError("optimizer must be 'sgd' or 'adamw'")
        if not self.scale_jitter or any(f <= 0 for f in self.scale_jitter):
            raise ValueError("scale_jitter must hold at least one positive multiplier")
        if not 0.0 <= self.photometric_jitter < 1.0:
            raise ValueError("photometric_jitter must be in [0, 1)")
        if self.images_per_batch < 1:
            raise ValueError("images_per_batch must be at least 1")
        if self.backbone_frozen_blocks is not None and self.backbone_frozen_blocks < 0:
            raise ValueError("backbone_frozen_blocks must be >= 0 (or None for the backbone's default)")

    @property
    def pooled_size(self) -> int:
        return self.warp_size // 2

    @property
    def test_stages(self) -> int:
        return self.num_stages if self.inference_stages is None else self.inference_stages

    def architecture(self) -> dict[str, Any]:
        """The fields that decide the model's parameters (two configs with equal architectures can
        exchange weights; sampling, cascade depth, losses and inference settings may differ)."""
        names = ("backbone", "feature_pyramid", "pyramid_levels", "feature_channels", "mobilenet_dilated",
                 "mobilenet_expansion", "anchor_sizes" if not self.feature_pyramid else "anchor_scales", "anchor_ratios",
                 "rpn_channels", "warp_size", "mask_size", "mask_fc_dim", "mask_pathway_dim", "box_pathway_dim")
        return {name: getattr(self, name) for name in names}

    def for_instances(self, most_per_image: int) -> "MNCConfig":
        """This config able to output every object of photos with up to `most_per_image` objects (nuclei: 375):
        detections per image at least 1.25x that (at most MAX_DETECTIONS, at least this config's), and enough
        proposals and refined RoIs behind them (test-time RPN output 2x the detections, stages 4-5 on as many
        as the detections). Inference settings only: the weights are the same."""
        wanted = min(MAX_DETECTIONS, math.ceil(1.25 * max(0, int(most_per_image))))
        if wanted <= self.detections_per_image:
            return self
        top_n = self.cascade_top_n_test
        return self.replace(detections_per_image=wanted,
                            rpn_post_nms_top_n_test=max(self.rpn_post_nms_top_n_test, 2 * wanted),
                            cascade_top_n_test=None if top_n is None else max(top_n, wanted),
                            max_candidates=max(self.max_candidates, 10 * wanted))

    def replace(self, **changes: Any) -> "MNCConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MNCConfig":
        """The config a `to_dict` describes; a field missing from `d` (a checkpoint written before the field
        existed) takes what such a model did: its OLD_DEFAULTS value where the default changed since, else the
        default."""
        known = {f.name: f for f in fields(cls)}
        d = {**OLD_DEFAULTS, **{RENAMED_FIELDS.get(k, k): v for k, v in d.items()}}
        unknown = set(d) - set(known)
        if unknown:
            raise ValueError(f"unknown MNCConfig fields: {sorted(unknown)}")
        kw: dict[str, Any] = {}
        for k, v in d.items():
            kw[k] = tuple(v) if isinstance(v, list) else v
        return cls(**kw)
