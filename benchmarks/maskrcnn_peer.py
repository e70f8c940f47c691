"""The peer of the MNC benchmarks: torchvision's Mask R-CNN on MNC's own backbone.

`pyramid=True` (the fair peer of the multi-scale MNC, issue 25): mnc_core's own pyramid backbone (MobileNetV2
stages at strides 8-32 through torchvision's FPN, a max-pooled 4th level, channels-last on a CPU), the same
anchors per level, FPN's RoIAlign level assignment over p3-p5, and in the heads mode the same frozen-feature
cache as MNC's training (`frozen_blocks` = the whole body: what it computes for an image and flip is computed
once). `pyramid=False` (the earlier peer): MobileNetV2 `features[:14]` (stride 16, 96 channels), a 1x1 conv to 256
channels + ReLU, one map, anchors 32-512. Either way 300 RPN proposals at test time and the same image sizes;
everything else is torchvision's stock Mask R-CNN (RoIAlign 7x7 box head with two 1024-d fcs, 4-conv mask head
at 14x14 -> 28x28).

Used by bench_mnc_latency.py (eval-mode latency) and bench_mnc_accuracy.py (training and
COCO evaluation with the same data as MNC).
"""
from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torchvision.models import mobilenet_v2
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign

class PeerBackbone(nn.Module):
    """MobileNetV2 features[:14] (stride 16, 96 ch) -> 1x1 conv 256 -> ReLU; like mnc_core.backbone."""

    def __init__(self, weights: str | Path | None, out_channels: int = 256, frozen_blocks: int = 4) -> None:
        super().__init__()
        net = mobilenet_v2(weights=None, norm_layer=FrozenBatchNorm2d)
        if weights is not None and str(weights).lower() != "none":
            state = torch.load(str(weights), map_location="cpu", weights_only=True)
            net.load_state_dict(state, strict=True)
        else:  # same data-independent BN calibration as MNC's random init, so both start alike
            from mnc_core.backbone import calibrate_frozen_bn

            calibrate_frozen_bn(net.features[:14])
        self.body = net.features[:14]
        for i in range(frozen_blocks):
            for p in self.body[i].parameters():
                p.requires_grad_(False)
        self.reduce = nn.Conv2d(96, out_channels, 1)
        nn.init.kaiming_normal_(self.reduce.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.reduce.bias)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.reduce(self.body(x)))


class CachedPyramidBackbone(nn.Module):
    """mnc_core's pyramid backbone for torchvision's Mask R-CNN: forward(images) -> the ordered levels. In training
    with `key` set (the image and flip of this step), what the frozen blocks compute comes from an LRU cache, as in
    MNC's heads mode (mnc_core/train.py); torchvision's transform resizes deterministically, so a key names one input."""

    def __init__(self, weights: str | Path | None, channels: int, frozen_blocks: int, cache_bytes: int) -> None:
        super().__init__()
        from mnc_core.backbone import build_backbone
        from mnc_core.cache import ByteBoundedLRU
        from mnc_core.config import MNCConfig

        config = MNCConfig(feature_pyramid=True, feature_channels=channels, backbone_frozen_blocks=frozen_blocks)
        self.body = build_backbone(config, "none" if weights is None else str(weights))
        self.anchor_scales = config.anchor_scales
        self.out_channels = channels
        self.roi_levels = self.body.roi_levels
        self.cache = ByteBoundedLRU(cache_bytes)
        self.key = None

    def forward(self, x: torch.Tensor):
        if not self.training or self.key is None:
            return self.body(x)
        frozen = self.cache.get(self.key)
        if frozen is None:
            frozen = self.body.frozen(x)
            self.cache.put(self.key, frozen)
        return self.body.from_frozen(frozen)


def build_peer(num_classes_with_bg: int, weights: str | Path | None, *, min_size: int | tuple[int, ...] = 600,
               max_size: int = 1000, frozen_blocks: int = 4,
               box_score_thresh: float = 0.05, detections_per_img: int = 100,
               rpn_post_nms_top_n_test: int = 300, rpn_pre_nms_top_n_test: int = 6000,
               rpn_post_nms_top_n_train: int = 2000, box_batch_size_per_image: int = 512,
               pyramid: bool = False, channels: int = 128, cache_bytes: int = 0) -> MaskRCNN:
    """torchvision's defaults except the backbone, anchors, single-map RoIAlign, test-time proposal counts
    and image sizes; `rpn_post_nms_top_n_train` / `box_batch_size_per_image` (training RoI budget) are
    torchvision's 2000 / 512 unless given (the accuracy benchmark passes MNC's 300 / 64). min_size: a tuple
    draws one short side per training image (torchvision's scale jitter); frozen_blocks: leading MobileNetV2
    `features` modules frozen (14: the whole body)."""
    if pyramid:  # MNC's multi-scale layout (mnc_core MNCConfig defaults: anchors at multiples of each level's stride)
        backbone = CachedPyramidBackbone(weights, channels, frozen_blocks, cache_bytes)
        strides = backbone.body.strides.values()
        anchors = AnchorGenerator(sizes=tuple(tuple(scale * s for scale in backbone.anchor_scales) for s in strides),
                                  aspect_ratios=((0.5, 1.0, 2.0),) * len(strides))
        levels = backbone.roi_levels
    else:
        backbone = PeerBackbone(weights, frozen_blocks=frozen_blocks)
        anchors = AnchorGenerator(sizes=((32, 64, 128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),))
        levels = ["0"]
    return MaskRCNN(
        backbone, num_classes=num_classes_with_bg, min_size=min_size, max_size=max_size,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=12000, rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
        box_batch_size_per_image=box_batch_size_per_image,
        rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        box_roi_pool=MultiScaleRoIAlign(levels, output_size=7, sampling_ratio=2),
        mask_roi_pool=MultiScaleRoIAlign(levels, output_size=14, sampling_ratio=2),
        box_score_thresh=box_score_thresh, box_detections_per_img=detections_per_img)


def image_tensor(image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [0, 1]; the model's transform resizes and normalises."""
    return torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1).float().div_(255.0)


def sample_to_target(sample, cat_to_label: dict[int, int], flip: bool, device) -> tuple[torch.Tensor, dict]:
    img = image_tensor(sample.image, device)
    H, W = sample.image.shape[:2]
    boxes = torch.as_tensor(np.asarray(sample.boxes, np.float32), device=device).reshape(-1, 4)
    labels = torch.tensor([cat_to_label[int(c)] for c in sample.category_ids], dtype=torch.int64, device=device)
    masks = torch.as_tensor(np.asarray(sample.masks), device=device).reshape(-1, H, W).to(torch.uint8)
    if flip:
        img = img.flip(-1)
        masks = masks.flip(-1)
        boxes = torch.stack([W - boxes[:, 2], boxes[:, 1], W - boxes[:, 0], boxes[:, 3]], 1)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)
    return img, {"boxes": boxes[keep], "labels": labels[keep], "masks": masks[keep]}


def train_peer(dataset, *, iterations: int, image_size: int, weights: str | Path | None, lr: float = 0.01,
               momentum: float = 0.9, weight_decay: float = 1e-4, warmup_iters: int = 50,
               warmup_factor: float = 0.001, lr_steps: tuple[float, ...] = (0.75, 0.9), grad_clip_norm: float = 10.0,
               hflip_prob: float = 0.5, seed: int = 0, device: str = "cpu",
               rpn_post_nms_top_n_train: int = 300, box_batch_size_per_image: int = 64, optimizer: str = "sgd",
               frozen_blocks: int = 4, scale_jitter: tuple[float, ...] = (1.0,), pyramid: bool = False,
               channels: int = 128, cache_bytes: int = 2 * 2**30, detections_per_img: int = 100,
               rpn_post_nms_top_n_test: int = 300,
               on_progress: Callable[[int, float, float], None] | None = None) -> tuple[MaskRCNN, dict]:
    """Training RoI budget defaults to MNC's (300 proposals, 64 sampled RoIs per image, 25 % foreground)
    rather than torchvision's 2000 / 512: on this 2-core CPU the stock budget's mask head (4 convs on up
    to 128 positives) makes an iteration ~2.5x slower than MNC's. Batch 1 SGD with linear warmup and step decay (MNC's train_model schedule, torchvision's reference
    optimiser, or AdamW with `optimizer="adamw"`); images drawn in a seeded random order epoch by epoch,
    horizontal flips, a short side drawn from image_size x `scale_jitter` per image; annotations without
    a mask (and crowd regions) are dropped. detections_per_img / rpn_post_nms_top_n_test: inference limits (the
    benchmarks pass MNC's, `MNCConfig.for_instances`, so that both may output as many objects). pyramid: the fair peer (module doc), its frozen features cached per
    (image, flip) in `cache_bytes` when the whole body is frozen and there is no scale jitter."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    categories = [(int(c), str(n)) for c, n in dataset.categories]
    cat_to_label = {c: i + 1 for i, (c, _) in enumerate(categories)}
    # torchvision draws the training short side from the tuple and evaluates at its last entry: image_size
    sizes = tuple(sorted({int(round(image_size * f)) for f in scale_jitter} - {image_size})) + (image_size,)
    build = {"num_classes_with_bg": len(categories) + 1, "min_size": sizes if len(sizes) > 1 else image_size,
             "max_size": max(max(sizes), int(max(sizes) * 5 / 3)), "frozen_blocks": frozen_blocks,
             "rpn_post_nms_top_n_train": rpn_post_nms_top_n_train,
             "box_batch_size_per_image": box_batch_size_per_image, "pyramid": pyramid, "channels": channels,
             "detections_per_img": detections_per_img, "rpn_post_nms_top_n_test": rpn_post_nms_top_n_test}
    model = build_peer(weights=weights, cache_bytes=cache_bytes, **build).to(device).train()
    cached = pyramid and len(sizes) == 1 and model.backbone.body.frozen_blocks == model.backbone.body.num_blocks
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=lr, fused=True)
    else:
        opt = torch.optim.SGD(groups, lr=lr, momentum=momentum)
    order: list[int] = []
    start = time.perf_counter()
    history = []
    for it in range(iterations):
        f = 1.0
        if it < warmup_iters:
            a = it / warmup_iters
            f = warmup_factor * (1 - a) + a
        for s in lr_steps:
            if it >= int(s * iterations):
                f *= 0.1
        for g in opt.param_groups:
            g["lr"] = lr * f
        if not order:
            order = list(rng.permutation(len(dataset)))
        index = int(order.pop())
        s = dataset[index]
        flip = bool(rng.random() < hflip_prob)
        if cached:
            model.backbone.key = (index, flip)
        if not np.asarray(s.has_mask).all() or s.crowd_flags().any():
            keep = np.asarray(s.has_mask, bool) & ~s.crowd_flags()
            s = type(s)(image=s.image, boxes=s.boxes[keep], category_ids=s.category_ids[keep], masks=s.masks[keep],
                        has_mask=s.has_mask[keep], image_id=s.image_id)
        img, tgt = sample_to_target(s, cat_to_label, flip, device)
        losses = model([img], [tgt])
        total = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        if not torch.isfinite(total):
            continue
        total.backward()
        if grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip_norm)
        opt.step()
        history.append(float(total.detach()))
        if on_progress is not None:
            on_progress(it + 1, history[-1], time.perf_counter() - start)
    model.eval()
    if pyramid:
        model.backbone.key = None
        model.backbone.cache.clear()
    tail = history[-20:]
    return model, {"iterations": iterations, "seconds": time.perf_counter() - start, "categories": categories,
                   "final_loss": sum(tail) / len(tail) if tail else math.nan, "build": build}


def save_peer(path: Path, model: MaskRCNN, build: dict, categories: list[tuple[int, str]]) -> None:
    """A trained peer: its weights and what build_peer needs to make it again (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    torch.save({"build": build, "categories": categories, "state_dict": model.state_dict(),
                "score_thresh": model.roi_heads.score_thresh}, temporary)
    temporary.replace(path)


def load_peer(path: Path) -> tuple[MaskRCNN, list[tuple[int, str]]]:
    """(model in eval mode, categories) of a save_peer file; the evaluation short side is the training one."""
    saved = torch.load(path, map_location="cpu", weights_only=False)
    build = dict(saved["build"])
    if isinstance(build["min_size"], (tuple, list)):
        build["min_size"] = build["min_size"][-1]
    model = build_peer(weights=None, box_score_thresh=saved["score_thresh"], **build)
    model.load_state_dict(saved["state_dict"])
    return model.eval(), [(int(c), str(n)) for c, n in saved["categories"]]


@torch.inference_mode()
def peer_predict(model: MaskRCNN, image: np.ndarray, categories: list[tuple[int, str]], device="cpu",
                 mask_thresh: float = 0.5):
    """-> list of mnc_core.Instance (so services.models.instance_to_result applies)."""
    from mnc_core import Instance

    out = model([image_tensor(image, device)])[0]
    masks = (out["masks"][:, 0] >= mask_thresh).cpu().numpy()
    boxes = out["boxes"].cpu().numpy()
    res = []
    for i in range(len(out["scores"])):
        res.append(Instance(category_id=categories[int(out["labels"][i]) - 1][0], score=float(out["scores"][i]),
                            box=tuple(float(v) for v in boxes[i]), mask=masks[i]))
    return res
