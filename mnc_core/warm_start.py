"""Warm start: initialise a model from an earlier model whose categories may differ.

Everything that does not depend on the categories is copied; the class-specific rows of the
stage-3 outputs (cls_score, seg_cls_score: 1 row per class; bbox_pred: 4 rows per class,
background first) are copied for the categories both models know, by category id. New
categories keep their fresh initialisation.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .model import MNC

_ROWS_PER_CLASS = {"classify_head.cls_score": 1, "classify_head.seg_cls_score": 1, "classify_head.bbox_pred": 4}


def warm_start(model: MNC, categories: list[tuple[int, str]], source_state: dict[str, Tensor],
               source_categories: list[tuple[int, str]]) -> dict[str, int]:
    """Copy `source_state` into `model` (in place). Returns counts: copied tensors, classes kept,
    new classes, tensors skipped because their shapes differ (e.g. another backbone)."""
    src_index = {int(cid): i + 1 for i, (cid, _) in enumerate(source_categories)}
    pairs = [(0, 0)] + [(i + 1, src_index[int(cid)]) for i, (cid, _) in enumerate(categories) if int(cid) in src_index]
    dst_rows = torch.tensor([d for d, _ in pairs])
    src_rows = torch.tensor([s for _, s in pairs])
    state = model.state_dict()
    copied = skipped = 0
    with torch.no_grad():
        for name, target in state.items():
            source = source_state.get(name)
            if source is None:
                skipped += 1
                continue
            prefix = name.rsplit(".", 1)[0]
            per = _ROWS_PER_CLASS.get(prefix)
            if per is not None:
                src = source.reshape(-1, per, *source.shape[1:])
                dst = target.view(-1, per, *target.shape[1:])
                if src.shape[2:] != dst.shape[2:]:
                    skipped += 1
                    continue
                dst[dst_rows] = src[src_rows].to(dst.dtype)
            elif source.shape == target.shape:
                target.copy_(source.to(target.dtype))
            else:
                skipped += 1
                continue
            copied += 1
    return {"copied": copied, "skipped": skipped, "classes_kept": len(pairs) - 1,
            "classes_new": len(categories) - (len(pairs) - 1)}
