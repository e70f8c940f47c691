"""Shared helpers for the mnc_core tests: a synthetic shapes dataset and a COCO mask-AP evaluation.

(No tests here; pytest collects nothing from this module.)
"""
from __future__ import annotations

import contextlib
import io

import numpy as np

from mnc_core import MNCConfig, Sample

CIRCLE_ID, SQUARE_ID = 7, 3  # deliberately non-contiguous dataset ids


class ShapesDataset:
    """Images with 2-3 coloured circles (id 7) and squares (id 3) on a noisy background."""

    categories = [(CIRCLE_ID, "circle"), (SQUARE_ID, "square")]

    def __init__(self, n: int = 4, size: tuple[int, int] = (144, 176), seed: int = 0,
                 drop_masks: bool = False) -> None:
        rng = np.random.default_rng(seed)
        self.samples: list[Sample] = []
        H, W = size
        yy, xx = np.mgrid[0:H, 0:W]
        for i in range(n):
            img = (rng.normal(110, 12, size=(H, W, 3))).clip(0, 255)
            boxes, cats, masks = [], [], []
            k = 2 + (i % 2)
            tries = 0
            while len(boxes) < k and tries < 200:
                tries += 1
                r = int(rng.integers(16, 30))
                cx, cy = int(rng.integers(r + 2, W - r - 2)), int(rng.integers(r + 2, H - r - 2))
                b = np.array([cx - r, cy - r, cx + r, cy + r], np.float32)
                if any(not (b[2] + 4 < o[0] or o[2] + 4 < b[0] or b[3] + 4 < o[1] or o[3] + 4 < b[1]) for o in boxes):
                    continue
                circle = (len(boxes) + i) % 2 == 0
                if circle:
                    m = (xx - cx + 0.5) ** 2 + (yy - cy + 0.5) ** 2 <= r * r
                else:
                    m = (xx >= cx - r) & (xx < cx + r) & (yy >= cy - r) & (yy < cy + r)
                color = rng.integers(30, 255, size=3)
                img[m] = color
                ys, xs = np.where(m)
                boxes.append(np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32))
                cats.append(CIRCLE_ID if circle else SQUARE_ID)
                masks.append(m)
            has = np.ones(len(boxes), bool)
            mk = np.stack(masks).astype(bool)
            if drop_masks:
                has[:] = False
                mk[:] = False
            self.samples.append(Sample(image=img.astype(np.uint8), boxes=np.stack(boxes),
                                       category_ids=np.array(cats, np.int64), masks=mk, has_mask=has, image_id=i + 1))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]


def small_config(**kw) -> MNCConfig:
    """A CPU-quick configuration for 128-192 px images."""
    base = dict(feature_channels=64, rpn_channels=64, anchor_sizes=(16, 32, 64), anchor_scales=(2.0, 4.0),
                backbone_frozen_blocks=0,
                rpn_batch_size=64, rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=64,
                rpn_pre_nms_top_n_test=600, rpn_post_nms_top_n_test=64, roi_batch_size=32,
                warp_size=16, mask_size=16, mask_fc_dim=128, mask_pathway_dim=128, box_pathway_dim=128,
                min_size=144, max_size=192, warmup_iters=20, vote_resolution=32)
    base.update(kw)
    return MNCConfig(**base)


def mask_ap50(dataset: ShapesDataset, predictions: list[list]) -> float:
    """COCOeval segm AP@0.5 of Predictor outputs (one list of Instance per image)."""
    from pycocotools import mask as mask_util
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, dets = [], [], []
    aid = 1
    for s, preds in zip(dataset.samples, predictions):
        H, W = s.image.shape[:2]
        images.append({"id": s.image_id, "height": H, "width": W})
        for b, c, m in zip(s.boxes, s.category_ids, s.masks):
            rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            anns.append({"id": aid, "image_id": s.image_id, "category_id": int(c), "segmentation": rle,
                         "area": float(m.sum()), "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                         "iscrowd": 0})
            aid += 1
        for p in preds:
            rle = mask_util.encode(np.asfortranarray(p.mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            dets.append({"image_id": s.image_id, "category_id": p.category_id, "segmentation": rle, "score": p.score})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": c, "name": n} for c, n in dataset.categories]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        if not dets:
            return 0.0
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[1])
