"""The multi-scale MNC: FPN level assignment, the differentiable warp on several levels, old single-scale
checkpoints, and models that output hundreds of instances per photo (config, evaluation, canvas, export)."""
from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch
from pycocotools.coco import COCO

from mnc_core import build_model, load_checkpoint, save_checkpoint
from mnc_core.config import MAX_DETECTIONS, MNCConfig
from mnc_core.roi_warp import multilevel_roi_warp_pooled, roi_warp_pooled

from test_mnc_helpers import small_config


def test_fpn_level_assignment_reads_each_roi_from_the_level_its_size_picks():
    """FPN's rule (Lin et al. 2017, Eq. 1): level = floor(4 + log2(sqrt(w h) / 224)), clamped to p3..p5; each RoI's
    features are the single-level warp of that map."""
    torch.manual_seed(0)
    model = build_model(small_config(min_size=512, max_size=512), 2, backbone_weights="none").eval()
    images = torch.randn(1, 3, 512, 512)
    with torch.no_grad():
        features = model.backbone(images)
    sizes_and_levels = [(20, "p3"), (100, "p3"), (223, "p3"), (225, "p4"), (447, "p4"), (449, "p5"), (500, "p5")]
    boxes = torch.tensor([[4.0, 6.0, 4.0 + s, 6.0 + s] for s, _ in sizes_and_levels])
    levels = model.level_mapper([boxes])
    assert [model.backbone.roi_levels[int(k)] for k in levels] == [name for _, name in sizes_and_levels]
    with torch.no_grad():
        together = model.roi_features(features, [boxes])
    for k, (_, name) in enumerate(sizes_and_levels):
        alone = roi_warp_pooled(features[name], torch.cat([torch.zeros(1, 1), boxes[k:k + 1]], 1),
                                model.config.warp_size, 1.0 / model.backbone.strides[name])
        torch.testing.assert_close(together[k:k + 1], alone)


def test_multilevel_warp_gradcheck_through_features_and_box_coordinates():
    """The warp keeps MNC's gradient w.r.t. the box coordinates (Eq. 9) on every level of the pyramid."""
    torch.manual_seed(0)
    features = [torch.randn(2, 3, 16, 20, dtype=torch.float64, requires_grad=True),
                torch.randn(2, 3, 8, 10, dtype=torch.float64, requires_grad=True),
                torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)]
    scales = [1 / 8, 1 / 16, 1 / 32]
    # off the sample grid's kinks (a sample exactly on a pixel centre has no derivative)
    coords = torch.tensor([[10.3, 12.1, 50.7, 61.9], [3.3, 5.2, 40.1, 30.6], [20.2, 8.3, 120.9, 100.4],
                           [7.7, 9.1, 140.3, 120.2], [30.4, 22.6, 90.8, 70.3]], dtype=torch.float64, requires_grad=True)
    batch = torch.tensor([[0.0], [1.0], [0.0], [1.0], [1.0]], dtype=torch.float64)
    levels = torch.tensor([0, 0, 1, 2, 1])

    def warp(f3, f4, f5, box_coords):
        return multilevel_roi_warp_pooled([f3, f4, f5], scales, torch.cat([batch, box_coords], 1), levels, 4)

    assert torch.autograd.gradcheck(warp, (*features, coords), eps=1e-6, atol=1e-5)
    out = warp(*features, coords)
    (grad,) = torch.autograd.grad(out.sum(), coords)
    assert (grad.abs().sum(1) > 0).all()  # every RoI's box gets a gradient, whatever its level


def _strip_to_old_checkpoint(path, fields: tuple[str, ...]) -> None:
    payload = torch.load(path, weights_only=True)
    for name in fields:
        payload["config"].pop(name)
    torch.save(payload, path)


def test_old_single_scale_checkpoints_still_load_and_predict_the_same(tmp_path):
    """A checkpoint written before the pyramid has no `feature_pyramid` field: it is a single-scale model and
    loads as one (OLD_DEFAULTS), giving the same outputs."""
    torch.manual_seed(0)
    config = small_config(feature_pyramid=False)
    model = build_model(config, 2, backbone_weights="none").eval()
    path = tmp_path / "old.pt"
    save_checkpoint(path, model, config, [(1, "a"), (2, "b")])
    _strip_to_old_checkpoint(path, ("feature_pyramid", "pyramid_levels", "anchor_scales"))
    loaded, loaded_config, _, _ = load_checkpoint(path)
    assert loaded_config.feature_pyramid is False and loaded.backbone.fpn is None
    assert list(loaded.backbone.strides) == ["p4"]
    images = torch.randn(1, 3, 144, 192)
    want, got = model.detect(images, [(144, 192)])[0], loaded.detect(images, [(144, 192)])[0]
    torch.testing.assert_close(got["boxes"], want["boxes"])
    torch.testing.assert_close(got["scores"], want["scores"])


def test_a_checkpoint_of_another_architecture_is_refused_clearly(tmp_path):
    """A pyramid checkpoint whose config was edited to say single-scale does not fit: a clear error, not a crash."""
    torch.manual_seed(0)
    config = small_config()
    model = build_model(config, 2, backbone_weights="none")
    path = tmp_path / "fpn.pt"
    save_checkpoint(path, model, config, [(1, "a"), (2, "b")])
    _strip_to_old_checkpoint(path, ("feature_pyramid",))  # now read as a single-scale model
    with pytest.raises(ValueError, match="corrupt or incompatible"):
        load_checkpoint(path)


def test_for_instances_sizes_the_outputs_to_the_busiest_photo():
    config = MNCConfig()
    assert config.for_instances(12) is config  # 100 detections are enough
    nuclei = config.for_instances(375)
    assert nuclei.detections_per_image == 469 and nuclei.rpn_post_nms_top_n_test == 938
    assert nuclei.cascade_top_n_test == 469 and nuclei.max_candidates >= 4690
    assert nuclei.architecture() == config.architecture()  # inference settings only
    assert config.for_instances(10_000).detections_per_image == MAX_DETECTIONS


def test_postprocess_keeps_hundreds_of_detections():
    """400 separate objects with confident candidates: all 400 come out when the config allows it (100 before)."""
    from mnc_core.postprocess import postprocess_image

    grid = [(x, y) for y in range(20) for x in range(20)]
    boxes = torch.tensor([[20.0 * x + 2, 20.0 * y + 2, 20.0 * x + 16, 20.0 * y + 16] for x, y in grid])
    scores = torch.linspace(0.99, 0.6, len(grid))
    labels = torch.ones(len(grid), dtype=torch.long)
    mask_probs = torch.ones(len(grid), 14, 14)
    config = MNCConfig().for_instances(400)
    out = postprocess_image(boxes, scores, labels, mask_probs, (400, 400), (400, 400), config, None)
    assert out["masks"].shape[0] == 400 and bool(out["masks"].flatten(1).any(1).all())
    capped = postprocess_image(boxes, scores, labels, mask_probs, (400, 400), (400, 400), MNCConfig(), None)
    assert capped["masks"].shape[0] == 100


def _grid_of_instances(count: int, side: int = 20) -> tuple[np.ndarray, list[np.ndarray]]:
    per_row = int(np.ceil(np.sqrt(count)))
    masks = []
    for k in range(count):
        mask = np.zeros((per_row * side, per_row * side), bool)
        y, x = divmod(k, per_row)
        mask[y * side + 3:y * side + side - 3, x * side + 2:x * side + side - 4] = True
        masks.append(mask)
    return np.zeros((per_row * side, per_row * side, 3), np.uint8), masks


def test_400_instances_reach_the_canvas_the_export_and_the_evaluation(database, tmp_path):
    """A photo of 400 objects (nuclei-like): the canvas's value carries all 400, the COCO export writes all 400,
    and COCOeval counts all 400 results (COCO's default would count 100: AP 0.25 instead of 1)."""
    from app.canvas import canvas_value
    from db.annotations import InstanceData, get_annotations, save_annotations
    from db.coco_export import export_coco
    from services.evaluation import coco_metrics
    from services.workbench import Workbench

    wb = Workbench(database)
    image, masks = _grid_of_instances(400)
    path = tmp_path / "cells.png"
    PIL.Image.fromarray(image).save(path)
    wb.upload([str(path)])
    (image_id,) = [row["id"] for row in wb.list_images()]
    category_id = wb.add_category("nucleus")
    revision, _ = get_annotations(database, image_id, decode_masks=False)
    revision = save_annotations(database, image_id, [
        InstanceData(category_id=category_id, mask=m, source="model", review_state="proposed", score=0.9 - k * 1e-4)
        for k, m in enumerate(masks)], seen_revision=revision)
    listed = wb.instances(image_id, review_threshold=0.5)
    value = canvas_value(image=wb.image_info(image_id), image_url=None, revision=listed["revision"],
                         instances=listed["instances"], classes={category_id: "nucleus"}, review_threshold=0.5,
                         score_threshold=0.05)
    assert len(value["instances"]) == 400 and all(row["counts"] for row in value["instances"])

    _, accepted = wb.editor.accept_all(image_id, 0.5, revision)
    assert accepted == 400
    out = tmp_path / "export.json"
    export_coco(database, out, mask_format="rle")
    exported = json.loads(out.read_text())
    assert len(exported["annotations"]) == 400

    truth = COCO()
    truth.dataset = exported
    truth.createIndex()
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"],
                "bbox": a["bbox"], "score": 0.9} for a in exported["annotations"]]
    metrics = coco_metrics(truth, results)
    assert metrics["max_detections"] == 400
    assert metrics["segm"]["AP"] == pytest.approx(1.0) and metrics["bbox"]["AP50"] == pytest.approx(1.0)
    assert coco_metrics(truth, results, max_detections=100)["segm"]["AP"] < 0.3


def test_coco_metrics_equal_cocoeval_summarize_at_100_detections(synthetic_coco):
    """Our summary read from COCOeval's arrays is COCOeval's own summary when 100 detections are the limit."""
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    from services.evaluation import STAT_NAMES, coco_metrics

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(synthetic_coco / "annotations.json")) if synthetic_coco.is_dir() else COCO(str(synthetic_coco))
    rng = np.random.default_rng(0)
    results = []
    for ann in truth.dataset["annotations"]:
        if ann.get("iscrowd"):
            continue
        x, y, w, h = ann["bbox"]
        results.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                        "bbox": [x + rng.uniform(-2, 2), y + rng.uniform(-2, 2), w, h], "score": float(rng.uniform())})
    ours = coco_metrics(truth, results)["bbox"]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert [ours[name] for name in STAT_NAMES] == pytest.approx(list(evaluator.stats))
