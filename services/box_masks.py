"""A mask for a box a person drew (or kept from a proposal), from one of three starts:

- grabcut: GrabCut inside the box (no model needed);
- model: the active model's mask for exactly that box and class (Mask^X's for a box-only class);
- combined: GrabCut started from the model's soft mask (its probabilities at full resolution: sure / probable
  object, probable / sure background), the box the hard outer limit (partial_sup.grabcut.grabcut_mask(prior=)).

Which start a class gets: the one whose instances needed the fewest refine clicks in the record (instances made
from boxes while the active version was active and kept, db.fates), once each compared start has
MIN_RECORD of them; before that, the one whose masks best matched the val labels at the end of training (the
version's metrics["box_start"], box_start_on_val); with neither, "combined" where a model knows the class."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from partial_sup.grabcut import grabcut_mask

STARTS = ("grabcut", "model", "combined")
MIN_RECORD = 10  # instances made with a start before its clicks count
VAL_INSTANCES = 40  # at most this many val instances measured at the end of training (GrabCut: ~0.3 s each)


def mask_for_box(image: np.ndarray, box, category_id: int, masks_for_boxes=None, start: str = "combined"
                 ) -> tuple[np.ndarray, str]:
    """(mask, start used) for a box (x1, y1, x2, y2) of ``category_id``. ``masks_for_boxes(image, boxes,
    category_ids, soft=)``: the active model's (services.models.ModelCache.masks_for_boxes), None without a
    model; a class the model does not know, or a model that sees nothing in the box, falls back to grabcut."""
    if start not in STARTS:
        raise ValueError(f"start must be one of {', '.join(STARTS)}, not {start!r}")
    x1, y1, x2, y2 = (float(v) for v in box)
    if start != "grabcut" and masks_for_boxes is not None:
        try:
            soft = masks_for_boxes(image, [(x1, y1, x2, y2)], [int(category_id)], soft=True)
        except ValueError:  # a class the model has not been trained on yet
            soft = None
        if soft:
            probabilities = soft[0]
            if start == "model":
                mask = probabilities >= 0.5
                if mask.any():
                    return mask, "model"
            elif (probabilities >= 0.5).any():
                return grabcut_mask(image, (x1, y1, x2, y2), prior=probabilities), "combined"
    return grabcut_mask(image, (x1, y1, x2, y2)), "grabcut"


def choose_start(records: list[dict], val: dict | None, category_id: int, model_knows: bool) -> str:
    """The start for a class: fewest mean clicks in ``records`` ({"category_id", "start", "clicks"}; starts with
    at least MIN_RECORD instances, two or more needed to compare), else val's choice ({category_id: {"chosen"}}),
    else combined (grabcut without a model that knows the class)."""
    if not model_knows:
        return "grabcut"
    clicks = defaultdict(list)
    for r in records:
        if r["category_id"] == category_id and r["start"] in STARTS:
            clicks[r["start"]].append(r["clicks"])
    counted = {start: sum(v) / len(v) for start, v in clicks.items() if len(v) >= MIN_RECORD}
    if len(counted) >= 2:
        return min(counted, key=lambda start: (counted[start], STARTS.index(start)))
    chosen = ((val or {}).get(str(category_id)) or {}).get("chosen")
    return chosen if chosen in STARTS else "combined"


def box_start_on_val(records, predictor, read_image) -> dict:
    """Each start's mean mask IoU with the val labels, per class, from the labels' own boxes: {category_id (str):
    {start: mean IoU, "instances": n, "chosen": best start}}. ``records``: db.dataset ImageRecords of the val
    photos; at most VAL_INSTANCES instances (the first photos first)."""
    from pathlib import Path

    from db import masks

    scores: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    done = 0
    for record in records:
        labelled = [inst for inst in record.instances if inst.mask_rle is not None and not inst.iscrowd]
        if not labelled or done >= VAL_INSTANCES:
            continue
        image = read_image(Path(record.path))
        for inst in labelled[:VAL_INSTANCES - done]:
            truth = masks.decode(inst.mask_rle, record.height, record.width)
            x, y, w, h = (float(v) for v in inst.bbox)
            for start in STARTS:
                mask, _ = mask_for_box(image, (x, y, x + w, y + h), inst.category_id, predictor.masks_for_boxes,
                                       start)
                union = (mask | truth).sum()
                scores[int(inst.category_id)][start].append(float((mask & truth).sum() / union) if union else 0.0)
            done += 1
    out = {}
    for category_id, by_start in scores.items():
        means = {start: round(sum(v) / len(v), 4) for start, v in by_start.items()}
        out[str(category_id)] = {**means, "instances": len(next(iter(by_start.values()))),
                                 "chosen": max(STARTS, key=lambda s: (means.get(s, -1.0), -STARTS.index(s)))}
    return out
