"""Backbones (mobilenet_v2, resnet50) with frozen BatchNorm: a feature pyramid (FPN on the stride 8-32 stages,
the default) or MNC's single stride-16 map with a 1x1 reduction; one contract for both (`Backbone`).

BatchNorm is frozen as in torchvision detection (FrozenBatchNorm2d: ImageNet statistics, no
updates; with batch size 1 per step, batch statistics would be useless) and then folded into the
preceding convolutions (`fold_frozen_bn`), which is exact and faster on CPU.

Weights: `weights=None` fetches torchvision's ImageNet weights through the weights API
(cached under torch.hub.get_dir(); a clear `BackboneWeightsError` when they cannot be had),
`weights="none"` is an explicit random init, any other string is a path to a .pth state dict.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models import MobileNet_V2_Weights, ResNet50_Weights, mobilenet_v2, resnet50
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from .config import MNCConfig

DOWNLOAD_TIMEOUT_S = 120.0
# Leading body blocks frozen by default (MNCConfig.backbone_frozen_blocks=None). ResNet-50: stem and res2
# (layer1), as Detectron fine-tunes from res3 on; MobileNetV2: `features` 0-3 (stride <= 4).
DEFAULT_FROZEN_BLOCKS = {"mobilenet_v2": 4, "resnet50": 2}


class BackboneWeightsError(RuntimeError):
    """The requested backbone weights could not be obtained."""


def _torchvision_weights(name: str):
    return MobileNet_V2_Weights.IMAGENET1K_V1 if name == "mobilenet_v2" else ResNet50_Weights.IMAGENET1K_V1


def _download_state_dict(name: str, timeout_s: float | None = None) -> dict[str, Tensor]:
    """torchvision's weights API, guarded: offline it raises our error instead of a raw URLError,
    and a hanging download (DNS, stalled socket) gives up after `timeout_s`."""
    timeout_s = DOWNLOAD_TIMEOUT_S if timeout_s is None else timeout_s
    weights = _torchvision_weights(name)
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    hint = (f"Pass backbone_weights=PATH to a local .pth state dict (for mobilenet_v2 torchvision's "
            f"file mobilenet_v2-b0353104.pth; copying it to {cached} also works) or "
            f"backbone_weights='none' for an explicit random initialisation.")
    result: dict[str, Any] = {}

    def fetch() -> None:
        try:
            result["state"] = weights.get_state_dict(progress=False, check_hash=True)
        except BaseException as e:  # noqa: BLE001 - reported below
            result["error"] = e

    if os.path.exists(cached):
        fetch()
    else:
        t = threading.Thread(target=fetch, daemon=True, name="mnc-backbone-download")
        t.start()
        t.join(timeout_s)
        if t.is_alive():
            raise BackboneWeightsError(
                f"Downloading ImageNet weights for {name} from {weights.url} did not finish within "
                f"{timeout_s:.0f} s (offline?). {hint}")
    if "error" in result:
        e = result["error"]
        raise BackboneWeightsError(
            f"ImageNet weights for {name} ({weights}) are not cached at {cached} and could not be "
            f"downloaded from {weights.url}: {type(e).__name__}: {e}. {hint}") from e
    return result["state"]


def _load_state_dict_file(path: str) -> dict[str, Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"backbone weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"cannot read backbone weights from {path}: {e}") from e
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return obj


def resolve_backbone_state_dict(name: str, weights: str | None) -> dict[str, Tensor] | None:
    """None -> torchvision ImageNet weights; "none" -> None (random); else a path."""
    if weights is None:
        return _download_state_dict(name)
    if isinstance(weights, str) and weights.lower() == "none":
        return None
    return _load_state_dict_file(os.fspath(weights))


# Where each backbone's pyramid levels are tapped: level k (stride 2**k) -> (index of the body block whose output
# it is, its channels). MobileNetV2 `features`: 0-1 stride 2, 2-3 stride 4 (24 ch), 4-6 stride 8 (32 ch), 7-13
# stride 16 (96 ch), 14-17 stride 32 (160/320 ch), 18 the 1280-ch 1x1 conv (not used). ResNet-50 body: stem,
# layer1 (stride 4, 256 ch), layer2 (8, 512), layer3 (16, 1024), layer4 (32, 2048).
PYRAMID_TAPS = {
    "mobilenet_v2": {2: (3, 24), 3: (6, 32), 4: (13, 96), 5: (17, 320)},
    "resnet50": {2: (1, 256), 3: (2, 512), 4: (3, 1024), 5: (4, 2048)},
}


def body_blocks(config: MNCConfig) -> int:
    """Number of blocks of the body a config builds (what `backbone_frozen_blocks` counts)."""
    if config.feature_pyramid:
        return _last_block(_pyramid_taps(config)) + 1
    if config.backbone == "mobilenet_v2":
        return 18 if config.mobilenet_dilated else 15 if config.mobilenet_expansion else 14
    return 4


def _pyramid_taps(config: MNCConfig) -> dict[int, tuple[int, int]]:
    """The config's pyramid levels -> (body block, channels) of its backbone (PYRAMID_TAPS)."""
    return {level: PYRAMID_TAPS[config.backbone][level] for level in config.pyramid_levels}


def _last_block(taps: dict[int, tuple[int, int]]) -> int:
    return max(block for block, _ in taps.values())


def level_name(level: int) -> str:
    """The name of pyramid level k (stride 2**k) in a backbone's output: "p3", "p4", ..."""
    return f"p{level}"


class Backbone(nn.Module):
    """The backbone contract (as torchvision's BackboneWithFPN): images (N, 3, H, W) -> an ordered dict of
    feature maps, finest first, each (N, out_channels, H / stride, W / stride); `strides` says each level's
    stride, `roi_levels` which levels the RoI heads read (the rest, a max-pooled level, is the RPN's only).

    body: an nn.Sequential of blocks; taps: level -> (block index, channels) of the body outputs used.
    neck: with one tap, a 1x1 conv + ReLU (the single-scale MNC: one stride-16 map); with several, torchvision's
    FeaturePyramidNetwork with a max-pooled extra level on top (FPN, Lin et al. 2017).

    The first `frozen_blocks` blocks of the body are frozen (`set_frozen_blocks`); `frozen` and `from_frozen`
    split the forward pass there, so training can cache what the frozen blocks compute once per input
    (`train_model(cache_frozen_features=True)`, the `heads` mode)."""

    def __init__(self, body: nn.Sequential, taps: dict[int, tuple[int, int]], out_channels: int,
                 frozen_blocks: int = 0) -> None:
        super().__init__()
        if not taps:
            raise ValueError("a backbone needs at least one tapped level")
        self.body = body
        self.levels = sorted(taps)
        self._tap_blocks = {taps[level][0]: level_name(level) for level in self.levels}
        channels = [taps[level][1] for level in self.levels]
        if len(self.levels) == 1:
            self.reduce = nn.Conv2d(channels[0], out_channels, kernel_size=1)
            nn.init.kaiming_normal_(self.reduce.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(self.reduce.bias)
            self.fpn = None
            output_levels = list(self.levels)
        else:
            self.fpn = FeaturePyramidNetwork(channels, out_channels, extra_blocks=LastLevelMaxPool())
            output_levels = [*self.levels, max(self.levels) + 1]
        self.out_channels = out_channels
        self.strides = {level_name(level): 2 ** level for level in output_levels}  # ordered finest first
        self.roi_levels = [level_name(level) for level in self.levels]
        self.set_frozen_blocks(frozen_blocks)

    @property
    def num_blocks(self) -> int:
        return len(self.body)

    def set_frozen_blocks(self, frozen_blocks: int) -> None:
        """Freeze the first `frozen_blocks` body blocks (clipped to the body's length); the others train."""
        self.frozen_blocks = min(int(frozen_blocks), len(self.body))
        for i, block in enumerate(self.body):
            for p in block.parameters():
                p.requires_grad_(i >= self.frozen_blocks)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return self.from_frozen(self.frozen(x))

    def _channels_last(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu":  # oneDNN convolutions are ~30% faster channels-last on CPU
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def _run(self, x: Tensor, start: int, stop: int, taps: dict[str, Tensor]) -> Tensor:
        """Body blocks start..stop-1 on x, the tapped outputs added to `taps`."""
        for i in range(start, stop):
            x = self.body[i](x)
            if i in self._tap_blocks:
                taps[self._tap_blocks[i]] = x
        return x

    def frozen(self, x: Tensor) -> dict[str, Tensor]:
        """images (N, 3, H, W) -> what the frozen blocks compute: their tapped outputs by level name, and under
        "x" the last frozen block's output when more blocks follow (the images themselves when none is frozen)."""
        if self.frozen_blocks == 0:
            return {"x": x}
        taps: dict[str, Tensor] = {}
        with torch.set_grad_enabled(False):
            last = self._run(self._channels_last(x), 0, self.frozen_blocks, taps)
        if self.frozen_blocks < len(self.body):
            taps["x"] = last
        return taps

    def from_frozen(self, frozen: dict[str, Tensor]) -> OrderedDict[str, Tensor]:
        """What `frozen` returned -> the trainable blocks -> the neck: the output levels (class doc)."""
        taps = {name: value for name, value in frozen.items() if name != "x"}
        if self.frozen_blocks < len(self.body):
            self._run(self._channels_last(frozen["x"]), self.frozen_blocks, len(self.body), taps)
        return self.neck(OrderedDict((name, taps[name]) for name in self.roi_levels))

    def neck(self, taps: OrderedDict[str, Tensor]) -> OrderedDict[str, Tensor]:
        """The tapped body outputs (finest first) -> the output levels."""
        if self.fpn is None:
            (name, value), = taps.items()
            return OrderedDict([(name, torch.relu(self.reduce(value)))])
        out = self.fpn(taps)
        return OrderedDict(zip(self.strides, out.values()))  # FPN's "pool" level gets its level name


def _mobilenet_body(state: dict[str, Tensor] | None, config: MNCConfig) -> tuple[nn.Sequential, dict[int, tuple[int, int]]]:
    net = mobilenet_v2(weights=None, norm_layer=FrozenBatchNorm2d)
    if state is not None:
        net.load_state_dict(state, strict=True)
    if config.feature_pyramid:
        taps = _pyramid_taps(config)
        return net.features[:_last_block(taps) + 1], taps
    # Single-scale (one stride-16 map, as MNC's VGG/ResNet map). Default: stop after block 13. Blocks 14-17 are the
    # widest (960-ch expansions); run at stride 16 (dilated) they would roughly double the backbone's CPU cost
    # at 600 px. `mobilenet_dilated` keeps them: block 14's depthwise conv gets stride 1 and 14-17 dilation 2, so
    # their receptive field matches the ImageNet-trained stride-32 layers (DeepLab-style).
    if config.mobilenet_dilated:
        body = net.features[:18]
        for i in range(14, 18):
            dw = body[i].conv[1][0]
            dw.stride, dw.dilation, dw.padding = (1, 1), (2, 2), (2, 2)
        return body, {4: (17, 320)}
    if config.mobilenet_expansion:  # block 14's expansion (Conv 1x1 96 -> 576, BN, ReLU6) still runs at stride 16
        return nn.Sequential(*net.features[:14], net.features[14].conv[0]), {4: (14, 576)}
    return net.features[:14], {4: (13, 96)}


def _resnet50_body(state: dict[str, Tensor] | None, config: MNCConfig
                   ) -> tuple[nn.Sequential, dict[int, tuple[int, int]]]:
    net = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    if state is not None:
        net.load_state_dict(state, strict=True)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    blocks = [stem, net.layer1, net.layer2, net.layer3, net.layer4]
    taps = _pyramid_taps(config) if config.feature_pyramid else {4: PYRAMID_TAPS["resnet50"][4]}  # single: C4
    return nn.Sequential(*blocks[:_last_block(taps) + 1]), taps


@torch.no_grad()
def calibrate_frozen_bn(body: nn.Module, image_size: int = 128) -> None:
    """Random init only: frozen BN at its defaults (mean 0, var 1) is the identity, and a randomly
    initialised MobileNet/ResNet without normalisation shrinks its activations ~10x per stage
    (to ~1e-6 at stride 16), which makes training from scratch hopeless. So, like data-independent
    LSUV init, set each frozen BN's statistics to those of its input on one random-noise image, in a
    single forward pass (each pre-hook sets its layer's buffers before the layer runs)."""
    def hook(module: FrozenBatchNorm2d, args: tuple[Tensor, ...]) -> None:
        x = args[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False).clamp(min=1e-5))

    handles = [m.register_forward_pre_hook(hook) for m in body.modules() if isinstance(m, FrozenBatchNorm2d)]
    try:
        gen = torch.Generator().manual_seed(0)
        body(torch.randn(2, 3, image_size, image_size, generator=gen))
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: FrozenBatchNorm2d) -> None:
    scale = bn.weight * (bn.running_var + bn.eps).rsqrt()  # (C,)
    shift = bn.bias - bn.running_mean * scale
    conv.weight.mul_(scale.view(-1, 1, 1, 1))
    if conv.bias is None:
        conv.bias = nn.Parameter(shift.clone(), requires_grad=conv.weight.requires_grad)
    else:
        conv.bias.mul_(scale).add_(shift)


def fold_frozen_bn(module: nn.Module) -> int:
    """Fold every FrozenBatchNorm2d into the convolution before it (in nn.Sequential containers and
    ResNet's convK/bnK attribute pairs) and replace it with Identity. Frozen BN is a fixed affine map,
    so this is exact in the forward pass; it removes two elementwise passes (and their backward) per
    layer, ~15-20% of a CPU training step. Returns the number of folded layers."""
    folded = 0
    for parent in list(module.modules()):
        if isinstance(parent, nn.Sequential):
            items = list(parent._modules.items())
            for (_, a), (kb, b) in zip(items, items[1:]):
                if isinstance(a, nn.Conv2d) and isinstance(b, FrozenBatchNorm2d):
                    _fold(a, b)
                    parent._modules[kb] = nn.Identity()
                    folded += 1
        for i in range(1, 4):
            conv, bn = getattr(parent, f"conv{i}", None), getattr(parent, f"bn{i}", None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, FrozenBatchNorm2d):
                _fold(conv, bn)
                setattr(parent, f"bn{i}", nn.Identity())
                folded += 1
    return folded


def build_backbone(config: MNCConfig, weights: str | None) -> Backbone:
    """The backbone a config describes (`backbone`, `feature_pyramid` and its levels, `feature_channels`), its
    first `backbone_frozen_blocks` body blocks frozen (None: DEFAULT_FROZEN_BLOCKS of the backbone). weights:
    None = torchvision's ImageNet weights, "none" = random init (calibrated), else a path to a state dict."""
    state = resolve_backbone_state_dict(config.backbone, weights)
    build_body = _mobilenet_body if config.backbone == "mobilenet_v2" else _resnet50_body
    body, taps = build_body(state, config)
    if state is None:
        calibrate_frozen_bn(body)
    fold_frozen_bn(body)
    if any(isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)) for m in body.modules()):
        raise AssertionError("unfolded BatchNorm left in the backbone")
    frozen_blocks = config.backbone_frozen_blocks
    return Backbone(body, taps, config.feature_channels,
                    DEFAULT_FROZEN_BLOCKS[config.backbone] if frozen_blocks is None else frozen_blocks)
