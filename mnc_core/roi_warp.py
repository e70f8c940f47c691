"""Differentiable RoI warping (MNC paper, Eq. 6-9).

`roi_warp` crops and bilinearly resamples each box of a feature map to a fixed
P x P grid. Sample positions follow torchvision's RoIAlign with `aligned=True`
and `sampling_ratio=1` (one sample at each bin centre, pixel centres at integer
coordinates after subtracting 0.5), so for boxes whose samples lie inside the map
the forward equals `roi_align(..., sampling_ratio=1, aligned=True)`.

Unlike `roi_align`, the result is differentiable w.r.t. the box coordinates: the
sampling grid is built from the boxes without detaching them and fed to
`grid_sample`, whose bilinear kernel kappa(.) = max(0, 1 - |.|) is exactly the paper's
Eq. 8, so autograd yields Eq. 9. Border convention: `padding_mode='zeros'` (samples
fade linearly to 0 within one pixel outside the map and are 0 beyond); RoIAlign
instead replicates the border for samples in [-1, 0) and 0 beyond -1, so the two
differ only for samples within one feature pixel outside the map.

Without gradients (inference) the same values come from torchvision's `roi_align` on the map with a
one-pixel ring of zeros (`_warp_without_gradient`: grid_sample's border rule, ~40 % less time on a CPU),
on a CPU a few RoIs at a time, spread over the intra-op threads (torchvision's CPU kernel uses one core).

Boxes that are not finite (a NaN, an infinity, or a size that overflows, e.g. -3e38 to 3e38 in float32) are
refused with a ValueError before they reach `roi_align` on a CPU (`check_boxes`): its CPU kernel turns a NaN
sample position into an index far outside the map and the process dies. On a GPU the check would cost a host
sync per call; boxes from people are checked on the host before they reach the model
(`Predictor.masks_for_boxes`, `MNC.masks_for_boxes`), the model's own proposals are clipped to the image.

Precision: the sampling grid and the bilinear sampling are always float32, also under autocast
(bf16 has 8 significant bits: a grid position near the right edge of a 60-pixel map would be off by
up to ~0.5 pixel, and the box gradient would use the rounded grid). The output is float32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from .cpu_threads import for_row_chunks


def check_boxes(boxes: Tensor, what: str = "boxes", *, degenerate: bool = False) -> None:
    """Raise ValueError naming the first bad box of ``boxes`` (K, 4) [x1, y1, x2, y2]: a coordinate or a size
    (x2 - x1, y2 - y1, in the boxes' dtype) that is not finite; with ``degenerate`` also x2 <= x1 or y2 <= y1
    (a box without area)."""
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{what} must be (K, 4) [x1, y1, x2, y2], got {tuple(boxes.shape)}")
    sizes = boxes[:, 2:] - boxes[:, :2]
    finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(sizes).all(dim=1)
    bad = ~finite | (sizes <= 0).any(dim=1) if degenerate else ~finite
    if bool(bad.any()):
        k = int(bad.nonzero()[0, 0])
        why = ("has a coordinate or a size that is not finite" if not bool(finite[k])
               else "has no area (x2 <= x1 or y2 <= y1)")
        raise ValueError(f"{what}: box {k} {boxes[k].tolist()} {why} in {str(boxes.dtype).replace('torch.', '')}; "
                         "a box is finite [x1, y1, x2, y2] with x1 < x2 and y1 < y2")


def max_pool_2x2(x: Tensor, out: Tensor | None = None) -> Tensor:
    """2x2 / stride-2 max-pool over the last two dims (both even). Without autograd it is the max of four
    strided views, ~8x faster on CPU than max_pool2d for the tall (1, C, K*P, P) warp output, written into
    ``out`` when given; with autograd it is F.max_pool2d (whose index-based backward is the fastest option
    measured)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return F.max_pool2d(x, kernel_size=2, stride=2)
    return torch.maximum(torch.maximum(x[..., 0::2, 0::2], x[..., 0::2, 1::2]),
                         torch.maximum(x[..., 1::2, 0::2], x[..., 1::2, 1::2]), out=out)


def _at_least_float32(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def sampling_grid(boxes: Tensor, height: int, width: int, output_size: int, spatial_scale: float) -> Tensor:
    """boxes (K, 4) image pixels -> grid (K, P, P, 2) in grid_sample's normalised coordinates, float32
    (float64 for float64 boxes) whatever an enclosing autocast says."""
    with torch.autocast(boxes.device.type, enabled=False):
        return _sampling_grid(boxes.to(_at_least_float32(boxes.dtype)), height, width, output_size, spatial_scale)


def _sampling_grid(boxes: Tensor, height: int, width: int, output_size: int, spatial_scale: float) -> Tensor:
    P = output_size
    x1 = boxes[:, 0] * spatial_scale - 0.5
    y1 = boxes[:, 1] * spatial_scale - 0.5
    bin_w = (boxes[:, 2] - boxes[:, 0]) * spatial_scale / P  # (K,)
    bin_h = (boxes[:, 3] - boxes[:, 1]) * spatial_scale / P
    centres = torch.arange(P, device=boxes.device, dtype=boxes.dtype) + 0.5  # (P,)
    xs = x1[:, None] + centres[None, :] * bin_w[:, None]  # (K, P) feature-pixel coords
    ys = y1[:, None] + centres[None, :] * bin_h[:, None]
    # align_corners=False: pixel coordinate p <-> normalised (2p + 1) / W - 1
    gx = (2.0 * xs + 1.0) / width - 1.0
    gy = (2.0 * ys + 1.0) / height - 1.0
    K = boxes.shape[0]
    return torch.stack((gx[:, None, :].expand(K, P, P), gy[:, :, None].expand(K, P, P)), dim=-1)


def _warp_without_gradient(features: Tensor, boxes: Tensor, output_size: int, spatial_scale: float,
                           pool: bool) -> Tensor:
    """The same values as the grid_sample path, through torchvision's roi_align (faster; no box gradient):
    a one-pixel ring of zeros around the map turns RoIAlign's border rule into grid_sample's zero padding
    (a sample within one pixel outside the map fades linearly to 0, beyond it is 0), and the boxes move by
    that pixel."""
    with torch.autocast(features.device.type, enabled=False):
        padded = F.pad(features.to(_at_least_float32(features.dtype)), (1, 1, 1, 1))
        shifted = boxes.to(padded.dtype).clone()
        if shifted.device.type == "cpu":  # the boxes in the dtype roi_align reads them (module doc)
            check_boxes(shifted[:, 1:], "roi_warp")
        shifted[:, 1:] += 1.0 / spatial_scale

        def warp(part: Tensor) -> Tensor:
            return roi_align(padded, part, output_size, spatial_scale=spatial_scale, sampling_ratio=1, aligned=True)

        if not pool:
            return warp(shifted)
        if features.device.type != "cpu":
            return max_pool_2x2(warp(shifted))
        # on a CPU, a few RoIs at a time: their (k, C, P, P) warp stays in cache until it is pooled, straight
        # into the result (300 RoIs at once write and read ~240 MB: ~1.8x the time); torchvision's CPU
        # roi_align runs on one core, so the chunks are shared out over the intra-op threads
        Q = output_size // 2
        result = padded.new_empty((shifted.shape[0], padded.shape[1], Q, Q))
        for_row_chunks(shifted.shape[0], CPU_POOL_CHUNK,
                       lambda rows: max_pool_2x2(warp(shifted[rows]), out=result[rows]))
        return result


CPU_POOL_CHUNK = 8  # RoIs warped and pooled together on a CPU (fastest of 4-64 measured for 300 RoIs x 256 ch)


def _warp(features: Tensor, boxes: Tensor, output_size: int, spatial_scale: float, pool: bool) -> Tensor:
    if boxes.ndim != 2 or boxes.shape[1] != 5:
        raise ValueError(f"boxes must be (K, 5) [batch_index, x1, y1, x2, y2], got {tuple(boxes.shape)}")
    N, C, H, W = features.shape
    P = output_size
    Q = P // 2 if pool else P
    K = boxes.shape[0]
    if K == 0:
        return features.new_zeros((0, C, Q, Q))
    if not (torch.is_grad_enabled() and (features.requires_grad or boxes.requires_grad)):
        return _warp_without_gradient(features, boxes, output_size, spatial_scale, pool)  # inference
    features = features.to(_at_least_float32(features.dtype))  # float32 sampling (module doc)
    # channels-last makes grid_sample's per-sample work contiguous across channels (~15-30% less
    # CPU time forward + backward); the conversion of the (N, C, h, w) map is negligible.
    if features.device.type == "cpu":
        features = features.contiguous(memory_format=torch.channels_last)
    batch_idx = boxes[:, 0].detach().long()  # (K,)
    coords = boxes[:, 1:]
    outs: list[Tensor] = []
    order: list[Tensor] = []
    groups = [torch.arange(K, device=boxes.device)] if N == 1 else [
        (batch_idx == b).nonzero().squeeze(1) for b in range(N)]
    for b, idx in enumerate(groups):
        k = idx.numel()
        if k == 0:
            continue
        c = coords if N == 1 else coords[idx]
        grid = sampling_grid(c, H, W, P, spatial_scale).to(features.dtype)  # (k, P, P, 2) float32 or float64
        # All RoIs of one image in one call: grid (1, k*P, P, 2) -> out (1, C, k*P, P).
        with torch.autocast(features.device.type, enabled=False):
            out = F.grid_sample(features[b:b + 1], grid.reshape(1, k * P, P, 2), mode="bilinear",
                                padding_mode="zeros", align_corners=False)
        if pool:  # 2x2 windows never straddle two RoIs since P is even
            out = max_pool_2x2(out)
        outs.append(out.reshape(C, k, Q, Q).permute(1, 0, 2, 3))
        order.append(idx)
    result = outs[0] if len(outs) == 1 else torch.cat(outs, 0)
    if N == 1:
        return result.contiguous()
    perm = torch.cat(order)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(K, device=perm.device)
    return result[inv].contiguous()


def roi_warp(features: Tensor, boxes: Tensor, output_size: int, spatial_scale: float) -> Tensor:
    """Differentiable RoI warp.

    features: (N, C, H, W); boxes: (K, 5) rows [batch_index, x1, y1, x2, y2] in input-image
    pixels; returns (K, C, output_size, output_size). Gradients flow to features and boxes.
    """
    return _warp(features, boxes, output_size, spatial_scale, pool=False)


def roi_warp_pooled(features: Tensor, boxes: Tensor, warp_size: int, spatial_scale: float) -> Tensor:
    """roi_warp to warp_size x warp_size followed by a 2x2 max-pool (paper: 28 -> 14).

    Equal to `F.max_pool2d(roi_warp(...), 2)` but pools before the per-RoI transpose, so the
    (K, C, 28, 28) tensor is never copied. Returns (K, C, warp_size // 2, warp_size // 2).
    """
    if warp_size % 2:
        raise ValueError("warp_size must be even")
    return _warp(features, boxes, warp_size, spatial_scale, pool=True)


def multilevel_roi_warp_pooled(features: list[Tensor], spatial_scales: list[float], boxes: Tensor, levels: Tensor,
                               warp_size: int) -> Tensor:
    """`roi_warp_pooled` of each RoI on the feature map its level picks (a feature pyramid).

    features: per level (N, C, H_l, W_l); spatial_scales: per level 1 / stride; boxes (K, 5) [batch_index, x1, y1,
    x2, y2]; levels (K,) index into `features` of each RoI (`FPN level assignment`, model.py). Returns
    (K, C, warp_size // 2, warp_size // 2), differentiable w.r.t. the features and the box coordinates (the level
    choice itself is piecewise constant: no gradient, as in FPN)."""
    if len(features) == 1:
        return roi_warp_pooled(features[0], boxes, warp_size, spatial_scales[0])
    Q = warp_size // 2
    result: Tensor | None = None
    for level, (feature_map, scale) in enumerate(zip(features, spatial_scales)):
        rows = torch.where(levels == level)[0]
        if rows.numel() == 0:
            continue
        part = roi_warp_pooled(feature_map, boxes[rows], warp_size, scale)
        if result is None:
            result = part.new_zeros((boxes.shape[0], part.shape[1], Q, Q))
        result.index_copy_(0, rows, part)  # in place: no copy of the whole result per level (autograd records it)
    if result is None:
        return features[0].new_zeros((0, features[0].shape[1], Q, Q), dtype=torch.float32)
    return result
