"""Inference post-processing: per-class box NMS, mask voting, pasting into the original image.

Speed: nothing is pasted at full-image size except the final survivors, and each of those
only inside its window (the union box of its voters). Voting is done for all (survivor, voter)
pairs at once on a fixed R x R grid over each survivor's window (one `grid_sample` call that
resamples each voter's m x m mask into the survivor's window frame, zero outside the voter's
box), then a bilinear resize of each survivor's grid to its window in original pixels: on a GPU all
survivors at once (`paste_windows`: batched matrix products and one scatter), on a CPU one window
after the other (`paste_windows_one_by_one`: only the windows' pixels are computed).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms, box_iou

from .config import MNCConfig


def batched_nms_top_n(boxes: Tensor, scores: Tensor, labels: Tensor, iou_thresh: float, top_n: int) -> Tensor:
    """`batched_nms(...)[:top_n]`, exactly, on growing score-sorted prefixes: greedy per-class NMS decides
    each box from higher-scored boxes only, so a prefix that yields top_n kept boxes gives the same
    answer (600 instances x 80 classes at score 0 -> usually one NMS over a few hundred)."""
    order = scores.argsort(descending=True)
    n = order.numel()
    m = min(n, max(500, 4 * top_n))
    while True:
        idx = order[:m]
        keep = batched_nms(boxes[idx], scores[idx], labels[idx], iou_thresh)
        if keep.numel() >= top_n or m == n:
            return idx[keep[:top_n]]
        m = min(n, m * 4)


def postprocess_image(boxes: Tensor, scores: Tensor, labels: Tensor, mask_probs: Tensor, image_size: tuple[int, int],
                      original_size: tuple[int, int], config: MNCConfig,
                      score_threshold: float | None = None) -> dict[str, Tensor]:
    """Candidate (instance, class) pairs: boxes (P, 4) network-input pixels, scores (P,), labels (P,) 1..N,
    mask_probs (P, m, m) each pair's mask in its box (see MNC._candidates).
    Returns boxes (D, 4) original pixels, scores (D,), labels (D,) 1..N, masks (D, H0, W0) bool."""
    c = config
    thr = c.score_threshold if score_threshold is None else float(score_threshold)
    H0, W0 = int(original_size[0]), int(original_size[1])
    h, w = image_size
    dev = boxes.device
    scale = torch.tensor([W0 / w, H0 / h, W0 / w, H0 / h], device=dev, dtype=boxes.dtype)
    ob = boxes * scale
    ob = torch.stack([ob[:, 0].clamp(0, W0), ob[:, 1].clamp(0, H0), ob[:, 2].clamp(0, W0), ob[:, 3].clamp(0, H0)], 1)

    # candidates: the pairs whose box is not degenerate
    low = min(thr, c.vote_score_threshold) if c.mask_voting else thr
    ok = ((ob[:, 2] - ob[:, 0]) > 1e-2) & ((ob[:, 3] - ob[:, 1]) > 1e-2) & (scores > low)
    cb, cs, cl, cm = ob[ok], scores[ok], labels[ok], mask_probs[ok]

    surv = torch.where(cs > thr)[0]
    surv = surv[batched_nms_top_n(cb[surv], cs[surv], cl[surv], c.nms_thresh, c.detections_per_image)]
    # surv: indices into the candidates, sorted by score desc
    S = surv.numel()
    if S == 0:
        return {"boxes": ob.new_zeros((0, 4)), "scores": ob.new_zeros(0), "labels": torch.zeros(0, dtype=torch.long, device=dev),
                "masks": torch.zeros((0, H0, W0), dtype=torch.bool, device=dev)}

    if c.mask_voting:
        voters = torch.where(cs > c.vote_score_threshold)[0]  # (V,) only these vote
        voter = (box_iou(cb[surv], cb[voters]) >= c.vote_iou_thresh) & (cl[surv][:, None] == cl[voters][None, :])
        s_idx, v_local = torch.where(voter)  # (P,), (P,)
        v_idx = voters[v_local]
        weak = torch.where(cs[surv] <= c.vote_score_threshold)[0]  # a survivor always votes for itself
        s_idx, v_idx = torch.cat([s_idx, weak]), torch.cat([v_idx, surv[weak]])
    else:
        s_idx, v_idx = torch.arange(S, device=dev), surv

    vb = cb[v_idx]  # (P, 4) voter boxes
    inf = torch.full((S,), float("inf"), device=dev, dtype=vb.dtype)
    wx0 = inf.scatter_reduce(0, s_idx, vb[:, 0], "amin").floor().clamp(0, W0 - 1)
    wy0 = inf.scatter_reduce(0, s_idx, vb[:, 1], "amin").floor().clamp(0, H0 - 1)
    wx1 = torch.maximum((-inf).scatter_reduce(0, s_idx, vb[:, 2], "amax").ceil().clamp(1, W0), wx0 + 1)
    wy1 = torch.maximum((-inf).scatter_reduce(0, s_idx, vb[:, 3], "amax").ceil().clamp(1, H0), wy0 + 1)

    R = c.vote_resolution
    u = (torch.arange(R, device=dev, dtype=vb.dtype) + 0.5) / R  # (R,)
    xs = wx0[s_idx, None] + u[None] * (wx1 - wx0)[s_idx, None]  # (P, R) original-pixel coords
    ys = wy0[s_idx, None] + u[None] * (wy1 - wy0)[s_idx, None]
    vw = (vb[:, 2] - vb[:, 0]).clamp(min=1e-3)
    vh = (vb[:, 3] - vb[:, 1]).clamp(min=1e-3)
    gx = 2.0 * (xs - vb[:, 0:1]) / vw[:, None] - 1.0
    gy = 2.0 * (ys - vb[:, 1:2]) / vh[:, None] - 1.0
    P = s_idx.numel()
    grid = torch.stack([gx[:, None, :].expand(P, R, R), gy[:, :, None].expand(P, R, R)], dim=-1)
    sampled = F.grid_sample(cm[v_idx][:, None], grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)[:, 0]  # (P, R, R)
    wts = cs[v_idx]
    soft = torch.zeros((S, R, R), device=dev, dtype=sampled.dtype).index_add_(0, s_idx, sampled * wts[:, None, None])
    soft = soft / torch.zeros(S, device=dev, dtype=wts.dtype).index_add_(0, s_idx, wts)[:, None, None]

    windows = torch.stack([wx0, wy0, wx1, wy1], 1).long()
    paste = paste_windows if dev.type == "cuda" else paste_windows_one_by_one
    masks, tight, non_empty = paste(soft, windows, (H0, W0), c.mask_thresh)
    out_boxes = torch.where(non_empty[:, None], tight.to(cb.dtype), cb[surv])
    return {"boxes": out_boxes, "scores": cs[surv], "labels": cl[surv], "masks": masks}


PASTE_BUDGET = 2**25  # tile elements pasted at once by paste_windows (~32 M: about 0.5 GB of temporaries)


def _interpolation_weights(out_sizes: Tensor, length: int, in_size: int) -> Tensor:
    """(S, length, in_size): row j of survivor s resamples `in_size` values to output pixel j of `out_sizes[s]`
    by F.interpolate's bilinear rule (align_corners=False, source index clamped at 0 and in_size - 1); rows
    j >= out_sizes[s] are zero."""
    j = torch.arange(length, device=out_sizes.device, dtype=torch.float32)
    scale = in_size / out_sizes.to(torch.float32)  # (S,)
    src = ((j[None] + 0.5) * scale[:, None] - 0.5).clamp(min=0)  # (S, length)
    i0 = src.floor().clamp(max=in_size - 1)
    frac = src - i0
    i0 = i0.long()
    i1 = (i0 + 1).clamp(max=in_size - 1)
    valid = (j[None] < out_sizes[:, None]).to(torch.float32)
    weights = torch.zeros((out_sizes.numel(), length, in_size), device=out_sizes.device)
    weights.scatter_add_(2, i0[..., None], ((1 - frac) * valid)[..., None])
    weights.scatter_add_(2, i1[..., None], (frac * valid)[..., None])
    return weights


def paste_windows(soft: Tensor, windows: Tensor, image_shape: tuple[int, int],
                  thresh: float) -> tuple[Tensor, Tensor, Tensor]:
    """Every survivor's R x R soft mask resized (bilinear) into its window of the image and thresholded, all
    at once: separable resampling as two batched matrix products on tiles of the largest window's size, then
    one scatter into the (S, H, W) masks; no per-instance Python loop and one host sync (the tiles' size).
    soft (S, R, R); windows (S, 4) long x0, y0, x1, y1. Returns masks (S, H, W) bool, tight boxes (S, 4) of
    the masks (x0, y0, x1, y1, exclusive) and which masks are non-empty (S,)."""
    height, width = image_shape
    S, R = soft.shape[0], soft.shape[-1]
    dev = soft.device
    sizes = windows[:, 2:] - windows[:, :2]  # (S, 2) window width, height
    max_w, max_h = (int(v) for v in sizes.max(0).values.tolist()) if S else (1, 1)
    masks = torch.zeros(S * height * width + 1, dtype=torch.uint8, device=dev)  # the last: cells outside windows
    tight = windows.clone()
    non_empty = torch.zeros(S, dtype=torch.bool, device=dev)
    chunk = max(1, PASTE_BUDGET // (max_h * max_w))
    ys = torch.arange(max_h, device=dev)
    xs = torch.arange(max_w, device=dev)
    for start in range(0, S, chunk):
        part = slice(start, min(S, start + chunk))
        rows = _interpolation_weights(sizes[part, 1], max_h, R)  # (s, Hm, R)
        cols = _interpolation_weights(sizes[part, 0], max_w, R)  # (s, Wm, R)
        tile = rows @ soft[part].float() @ cols.transpose(1, 2) >= thresh  # (s, Hm, Wm)
        inside = (ys[None, :, None] < sizes[part, 1, None, None]) & (xs[None, None, :] < sizes[part, 0, None, None])
        tile &= inside
        index = (torch.arange(part.start, part.stop, device=dev)[:, None, None] * (height * width)
                 + (windows[part, 1, None, None] + ys[None, :, None]) * width
                 + windows[part, 0, None, None] + xs[None, None, :])
        index = torch.where(inside, index, torch.full_like(index, S * height * width))
        masks.scatter_(0, index.reshape(-1), tile.reshape(-1).to(torch.uint8))
        row_any, col_any = tile.any(2), tile.any(1)  # (s, Hm), (s, Wm)
        first_row, first_col = row_any.int().argmax(1), col_any.int().argmax(1)
        last_row = max_h - 1 - row_any.flip(1).int().argmax(1)
        last_col = max_w - 1 - col_any.flip(1).int().argmax(1)
        tight[part] = torch.stack([windows[part, 0] + first_col, windows[part, 1] + first_row,
                                   windows[part, 0] + last_col + 1, windows[part, 1] + last_row + 1], 1)
        non_empty[part] = row_any.any(1)
    return masks[:-1].view(S, height, width).bool(), tight, non_empty


def paste_windows_one_by_one(soft: Tensor, windows: Tensor, image_shape: tuple[int, int],
                             thresh: float) -> tuple[Tensor, Tensor, Tensor]:
    """`paste_windows` with one F.interpolate per survivor on its own window: on a CPU this touches only
    the windows' pixels (the batched tiles of paste_windows cost S x the largest window)."""
    height, width = image_shape
    S = soft.shape[0]
    masks = torch.zeros((S, height, width), dtype=torch.bool, device=soft.device)
    tight = windows.clone()
    non_empty = torch.zeros(S, dtype=torch.bool, device=soft.device)
    for i, (x0, y0, x1, y1) in enumerate(windows.tolist()):
        m = F.interpolate(soft[i][None, None].float(), size=(y1 - y0, x1 - x0), mode="bilinear",
                          align_corners=False)[0, 0] >= thresh
        masks[i, y0:y1, x0:x1] = m
        rows = torch.where(m.any(dim=1))[0]
        if rows.numel():
            cols = torch.where(m.any(dim=0))[0]
            tight[i] = torch.stack([x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1])
            non_empty[i] = True
    return masks, tight, non_empty
