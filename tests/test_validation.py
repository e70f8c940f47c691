"""Categories' A/B sets from the train split, evaluation on the reviewed val images, version metrics shown."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from conftest import make_synthetic_coco
from db import categories, queries, registry
from db.annotations import InstanceData, get_annotations, save_annotations, set_review_state
from db.coco_import import import_coco
from mnc_core import Instance
from services.evaluation import evaluate_on_val, val_ground_truth
from test_app_helpers import register_tiny_model
from test_coco_import_export import run_cli

TRAIN_IDS, VAL_IDS = [1, 2, 3, 4], [5, 6, 7]  # database ids of the imported images
METRIC_KEYS = {"val_images", "mask_AP", "mask_AP50", "box_AP", "box_AP50", "proposal_policy"}
SET_KEYS = {"mask_AP_A", "mask_AP50_A", "mask_AP_B", "mask_AP50_B"}


@pytest.fixture
def db(database, tmp_path):
    """Train: 4 synthetic images (car and ball with masks, a car crowd region, sign box-only);
    val: 3 other synthetic images with the same kinds of annotations, all reviewed (imported)."""
    train = make_synthetic_coco(tmp_path / "train", n_images=4, seed=0)
    val = make_synthetic_coco(tmp_path / "val", n_images=3, seed=1)
    import_coco(database, train, train.parent / "images", split="train")
    import_coco(database, val, val.parent / "images", split="val")
    assert [r["id"] for r in queries.list_images(database) if r["split"] == "val"] == VAL_IDS
    return database


def add_instance(db, image_id: int, new: InstanceData) -> None:
    """Keep the image's annotations and add one."""
    revision, rows = get_annotations(db, image_id)
    keep = [InstanceData(r["category_id"], box=r["box"] if r["mask"] is None else None, mask=r["mask"],
                         source=r["source"], review_state=r["review_state"], score=r["score"],
                         model_version_id=r["model_version_id"], iscrowd=r["iscrowd"], id=r["id"]) for r in rows]
    save_annotations(db, image_id, [*keep, new], seen_revision=revision)


def square_mask(db, image_id: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    info = queries.image_info(db, image_id)
    mask = np.zeros((info["height"], info["width"]), bool)
    mask[y0:y1, x0:x1] = True
    return mask


# ---- A / B sets ------------------------------------------------------------------------------
def test_category_sets_come_from_accepted_train_annotations(db):
    assert queries.category_sets(db) == {3: "A", 7: "A", 12: "B"}
    unused = categories.add_category(db, "unused")
    stats = {c.id: c for c in queries.summary(db).categories}
    # train split only, crowd regions left out: car has 4 masks (plus 1 crowd), sign 4 boxes
    assert [(stats[c].boxes, stats[c].masks, stats[c].category_set) for c in (3, 7, 12, unused)] == [
        (0, 4, "A"), (0, 4, "A"), (4, 0, "B"), (0, 0, None)]

    # none of these makes sign mask-supervised or unused used: a val mask, a proposal, a crowd region
    add_instance(db, VAL_IDS[0], InstanceData(12, mask=square_mask(db, VAL_IDS[0], 30, 40, 5, 17)))
    add_instance(db, TRAIN_IDS[0], InstanceData(12, mask=square_mask(db, 1, 30, 40, 5, 17), source="model",
                                                review_state="proposed", score=0.9))
    add_instance(db, TRAIN_IDS[1], InstanceData(unused, mask=square_mask(db, 2, 0, 5, 0, 5), iscrowd=True))
    assert queries.category_sets(db) == {3: "A", 7: "A", 12: "B"}
    stats = {c.id: c for c in queries.summary(db).categories}
    assert (stats[12].boxes, stats[12].masks, stats[unused].category_set) == (4, 0, None)

    # a person accepts the proposed mask: sign is in A; a box-only train annotation puts unused in B
    _, rows = get_annotations(db, TRAIN_IDS[0])
    proposal = next(r["id"] for r in rows if r["review_state"] == "proposed")
    set_review_state(db, TRAIN_IDS[0], [proposal], "accepted")
    add_instance(db, TRAIN_IDS[2], InstanceData(unused, box=(1, 1, 9, 9)))
    assert queries.category_sets(db) == {3: "A", 7: "A", 12: "A", unused: "B"}
    stats = {c.id: c for c in queries.summary(db).categories}
    assert [stats[c].category_set for c in (12, unused)] == ["A", "B"]
    from app.display import category_rows  # the Classes tab's words for the sets

    assert [row[4] for row in category_rows(queries.summary(db)) if row[0] in (3, 12, unused)] == [
        "A (masks)", "A (masks)", "B (boxes only)"]


# ---- ground truth and evaluation ----------------------------------------------------------
def test_val_ground_truth_is_the_reviewed_val_images(db):
    # a model proposal left on the last val image: it is in review, not part of the ground truth
    add_instance(db, VAL_IDS[2], InstanceData(7, box=(1, 1, 20, 20), source="model", review_state="proposed",
                                              score=0.5))
    gt = val_ground_truth(db)
    assert sorted(gt.getImgIds()) == VAL_IDS[:2]
    anns = gt.loadAnns(gt.getAnnIds())
    # per image car, ball, sign; the first image also has the car crowd region
    assert sorted((a["image_id"], a["category_id"], a["iscrowd"], bool(a["segmentation"])) for a in anns) == [
        (5, 3, 0, True), (5, 3, 1, True), (5, 7, 0, True), (5, 12, 0, False),
        (6, 3, 0, True), (6, 7, 0, True), (6, 12, 0, False)]
    sign = next(a for a in anns if a["category_id"] == 12 and a["image_id"] == 5)
    assert sign["bbox"] == [5.5, 30.25, 12, 10] and sign["area"] == 120
    _, rows = get_annotations(db, 6)
    ball = next(r["mask"] for r in rows if r["category_id"] == 7)
    gt_ball = next(a for a in anns if a["category_id"] == 7 and a["image_id"] == 6)
    assert np.array_equal(gt.annToMask(gt_ball).astype(bool), ball) and gt_ball["area"] == ball.sum()
    assert {c["id"] for c in gt.dataset["categories"]} == {3, 7, 12}


def ground_truth_predict(db, seen: list, wrong_masks_of: int | None = None):
    """A predict() that returns the accepted non-crowd annotations of the image as instances with score 1
    (box-only ones with a box-shaped mask); ``wrong_masks_of``: that class's masks miss the object."""
    records = iter(sorted(queries.reviewed_image_ids(db) & set(VAL_IDS)))

    def predict(image: np.ndarray) -> list[Instance]:
        image_id = next(records)
        seen.append(image_id)
        info = queries.image_info(db, image_id)
        assert image.shape == (info["height"], info["width"], 3) and image.dtype == np.uint8
        out = []
        for r in get_annotations(db, image_id, states=["accepted"])[1]:
            if r["iscrowd"]:
                continue
            x1, y1, x2, y2 = r["box"]
            if r["mask"] is not None:
                mask = r["mask"]
            else:  # the box as the pixels that COCOeval's ignore region of a box-only annotation covers
                polygon = mask_utils.frPyObjects([[x1, y1, x2, y1, x2, y2, x1, y2]], *image.shape[:2])
                mask = mask_utils.decode(mask_utils.merge(polygon)).astype(bool)
            if r["category_id"] == wrong_masks_of:
                mask = np.zeros(image.shape[:2], bool)
                mask[-2:, -2:] = True
            out.append(Instance(r["category_id"], 1.0, (x1, y1, x2, y2), mask))
        return out

    return predict


def test_the_ground_truth_itself_scores_1_and_sets_a_b_split(db):
    a_set = {c for c, s in queries.category_sets(db).items() if s == "A"}
    assert a_set == {3, 7}
    seen: list[int] = []
    metrics = evaluate_on_val(db, ground_truth_predict(db, seen), mask_set=a_set)
    assert seen == VAL_IDS and set(metrics) == METRIC_KEYS | SET_KEYS
    assert metrics["val_images"] == 3
    assert [metrics[k] for k in ("mask_AP", "mask_AP50", "box_AP", "box_AP50", "mask_AP_A", "mask_AP50_A")] == \
        pytest.approx([1.0] * 6)
    # sign (B) has only boxes in val: its mask AP cannot be measured
    assert metrics["mask_AP_B"] is None and metrics["mask_AP50_B"] is None

    # a person draws a sign mask on a val image: B becomes measurable (sign stays B: train has no mask)
    add_instance(db, VAL_IDS[1], InstanceData(12, mask=square_mask(db, VAL_IDS[1], 2, 12, 40, 60)))
    assert queries.category_sets(db)[12] == "B"
    metrics = evaluate_on_val(db, ground_truth_predict(db, []), mask_set=a_set)
    assert [metrics[k] for k in ("mask_AP", "box_AP", "mask_AP_A", "mask_AP_B", "mask_AP50_B")] == \
        pytest.approx([1.0] * 5)

    # sign's masks miss: mask AP on B drops to 0, A and box AP stay 1, overall mask AP is the class mean
    metrics = evaluate_on_val(db, ground_truth_predict(db, [], wrong_masks_of=12), mask_set=a_set)
    assert metrics["mask_AP_B"] == 0.0 and metrics["mask_AP50_B"] == 0.0
    assert metrics["mask_AP_A"] == pytest.approx(1.0) and metrics["box_AP"] == pytest.approx(1.0)
    assert metrics["mask_AP"] == pytest.approx(2 / 3)

    # without a mask set only the overall metrics; an empty A set: everything is B
    assert set(evaluate_on_val(db, ground_truth_predict(db, []))) == METRIC_KEYS
    metrics = evaluate_on_val(db, ground_truth_predict(db, [], wrong_masks_of=12), mask_set=set())
    assert metrics["mask_AP_A"] is None and metrics["mask_AP_B"] == pytest.approx(2 / 3)


def test_no_reviewed_val_image_gives_none(database, synthetic_coco):
    import_coco(database, synthetic_coco, synthetic_coco.parent / "images", split="train")
    assert val_ground_truth(database) is None
    assert evaluate_on_val(database, lambda image: pytest.fail("nothing to predict"), mask_set={3}) is None


def test_reviewed_val_images_without_objects_measure_nothing(database, synthetic_coco):
    import_coco(database, synthetic_coco, synthetic_coco.parent / "images", split="val")
    for image_id in (1, 2, 3, 4):  # a person rejects every annotation: the images are reviewed, with no objects
        _, rows = get_annotations(database, image_id)
        set_review_state(database, image_id, [r["id"] for r in rows], "rejected")
    assert val_ground_truth(database).getAnnIds() == []
    def predict(image: np.ndarray) -> list[Instance]:  # a detection on every image, all false positives
        mask = np.zeros(image.shape[:2], bool)
        mask[1:10, 1:10] = True
        return [Instance(3, 0.9, (1.0, 1.0, 10.0, 10.0), mask)]

    metrics = evaluate_on_val(database, predict, mask_set={3})
    policy = metrics.pop("proposal_policy")
    assert metrics == {"val_images": 4, **dict.fromkeys(METRIC_KEYS - {"val_images", "proposal_policy"} | SET_KEYS)}
    assert policy["all"]["source"] == "none"  # 4 false positives: too small a record to choose a threshold


def test_a_real_tiny_model_on_the_val_images(db, tmp_path_factory):
    from services.models import load_predictor

    register_tiny_model(db, tmp_path_factory.getbasetemp())
    predictor = load_predictor(db, device="cpu")
    steps = []

    def progress(items, total, description):
        steps.append((total, description))
        return items

    metrics = evaluate_on_val(db, predictor, mask_set={3, 7}, progress=progress)
    assert steps == [(3, "val images")]
    assert set(metrics) == METRIC_KEYS | SET_KEYS and metrics["val_images"] == 3
    for key in ("mask_AP", "mask_AP50", "box_AP", "box_AP50", "mask_AP_A", "mask_AP50_A"):
        assert type(metrics[key]) is float and 0.0 <= metrics[key] <= 1.0, (key, metrics[key])
    assert metrics["mask_AP_B"] is None  # sign has no val masks
    assert json.loads(json.dumps(metrics)) == metrics  # storable as a version's metrics


# ---- version metrics shown -----------------------------------------------------------------
def register(db, name: str, metrics: dict) -> int:
    path = registry.models_dir(db) / f"{name}.pt"
    path.write_bytes(b"not a real checkpoint")
    return registry.register_version(db, path, name=name, config={}, metrics=metrics)


OLD = {"final_loss": 1.23456, "train_images": 4}
NEW = {"train_loss": 0.5, "train_images": 4, "val_images": 2, "mask_AP": 0.3, "box_AP": 0.125,
       "mask_AP_A": 0.25, "mask_AP50_A": 0.5, "mask_AP_B": None, "mask_AP50_B": None}


def test_version_metrics_text():
    from services.versions import version_metrics

    assert version_metrics(OLD) == {"train loss (last 20 it)": "1.2346", "mask AP A": "-", "mask AP B": "-",
                                            "box AP": "-", "val images": "-", "train images": "4"}
    assert version_metrics(NEW) == {"train loss (last 20 it)": "0.5000", "mask AP A": "0.250",
                                            "mask AP B": "-", "box AP": "0.125", "val images": "2",
                                            "train images": "4"}
    assert set(version_metrics(None).values()) == {"-"}


def test_versions_table_and_models_command_show_the_metrics(database, tmp_path):
    from app.display import VERSION_HEADERS
    from app.handlers import Handlers
    from services.workbench import Workbench

    register(database, "old", OLD)
    register(database, "new", NEW)
    rows, _ = Handlers(Workbench(database)).versions()
    table = [dict(zip(VERSION_HEADERS, row)) for row in rows]
    assert [(r["version"], r["active"], r["train loss (last 20 it)"], r["mask AP A"], r["mask AP B"], r["box AP"],
             r["val images"]) for r in table] == [(1, "", "1.2346", "-", "-", "-", "-"),
                                                  (2, "●", "0.5000", "0.250", "-", "0.125", "2")]

    listed = run_cli("models", "--data-dir", database.data_dir, "--db", database.url, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    old, new = listed.stdout.splitlines()
    assert old.startswith("  v1") and "train loss (last 20 it) 1.2346, mask AP A -, mask AP B -, box AP -" in old
    assert new.startswith("* v2") and ("train loss (last 20 it) 0.5000, mask AP A 0.250, mask AP B -, box AP 0.125, "
                                       "val images 2, train images 4") in new
