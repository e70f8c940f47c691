"""Round trips on real COCO 2017 images (../shared/data/coco_subset; skipped when absent)."""

from __future__ import annotations

import numpy as np
import pytest

from coco_checks import ann_mask, coco_eval_against, load, mask_iou, paired_annotations
from db.coco_export import export_coco
from db.coco_import import import_coco

# About 70 s per backend; on PostgreSQL the synthetic COCO tests cover the same import and export.
pytestmark = pytest.mark.backends("sqlite")


@pytest.fixture
def imported(database, coco_subset):
    for split in ("train", "val"):
        report = import_coco(database, coco_subset / f"{split}.json", coco_subset / "images", split=split)
        assert report.images_added > 0
    return database


def test_rle_round_trip_is_exact(imported, coco_subset, tmp_path):
    out = tmp_path / "rle.json"
    report = export_coco(imported, out, mask_format="rle")
    assert (report.images, report.annotations) == (239, 1444 + 624)
    exported = load(out)
    for split in ("train", "val"):
        original = load(coco_subset / f"{split}.json")
        pairs = paired_annotations(original, exported)
        assert len(pairs) == len(original.dataset["annotations"])
        for oa, ea in pairs:
            assert ea["iscrowd"] == oa["iscrowd"]
            np.testing.assert_array_equal(ann_mask(original, oa), ann_mask(exported, ea), err_msg=str(oa["id"]))
        assert coco_eval_against(coco_subset / f"{split}.json", out, "segm")[0] == pytest.approx(1.0)
        # COCO's own boxes are the polygons' real-valued extents; the export's are the masks'
        # tight boxes in whole pixels (export rule 6), so boxes agree at IoU 0.5, not exactly.
        assert coco_eval_against(coco_subset / f"{split}.json", out, "bbox")[1] == pytest.approx(1.0)
    # the export scored against itself (export rule 8): AP 1.0 for masks and boxes
    for iou_type in ("segm", "bbox"):
        assert coco_eval_against(out, out, iou_type)[0] == pytest.approx(1.0)


def test_polygon_round_trip_keeps_masks(imported, coco_subset, tmp_path):
    out = tmp_path / "polygon.json"
    export_coco(imported, out, mask_format="polygon")
    exported = load(out)
    original = load(coco_subset / "train.json")
    ious = [mask_iou(ann_mask(original, oa), ann_mask(exported, ea)) for oa, ea in paired_annotations(original, exported)]
    assert np.mean(ious) >= 0.95
    stats = coco_eval_against(coco_subset / "train.json", out, "segm")
    assert stats[1] == pytest.approx(1.0)
