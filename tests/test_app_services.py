"""Services the UI stands on: classes, proposals, image statuses, reviewed-only export, the UI's handlers."""

from __future__ import annotations

import json

import gradio as gr
import numpy as np
import pytest

from db import categories, queries
from db.annotations import ConflictError, InstanceData, get_annotations, save_annotations, set_review_state
from db.coco_export import export_coco
from db.coco_import import import_coco
from db.errors import WorkbenchError
from test_app_helpers import register_tiny_model


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture
def db(database, synthetic_coco):
    import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    return database


def names(db):
    return queries.category_names(db)


def test_add_rename_and_their_errors(db):
    new_id = categories.add_category(db, "  person  ")
    assert new_id == 13 and names(db)[13] == "person"
    with pytest.raises(WorkbenchError, match="already exists"):
        categories.add_category(db, "CAR")
    with pytest.raises(WorkbenchError, match="needs a name"):
        categories.add_category(db, "   ")
    categories.rename_category(db, 13, "pedestrian")
    assert names(db)[13] == "pedestrian"
    with pytest.raises(WorkbenchError, match="already exists"):
        categories.rename_category(db, 13, "ball")
    with pytest.raises(WorkbenchError, match="no class 99"):
        categories.rename_category(db, 99, "x")
    categories.rename_category(db, 13, "Pedestrian")  # its own name in another case is fine
    assert names(db)[13] == "Pedestrian"


def test_merge_moves_annotations_and_bumps_revisions(db):
    before = {c.name: (c.boxes, c.masks) for c in queries.summary(db).categories}
    revision, _ = get_annotations(db, 1)
    moved = categories.merge_categories(db, 12, 3)  # sign (box-only) into car
    assert moved == 4
    after = {c.name: (c.boxes, c.masks) for c in queries.summary(db).categories}
    assert "sign" not in after
    assert after["car"] == (before["car"][0] + 4, before["car"][1])
    with pytest.raises(ConflictError):  # someone who opened image 1 before the merge
        save_annotations(db, 1, [], seen_revision=revision)
    with pytest.raises(WorkbenchError, match="two different"):
        categories.merge_categories(db, 3, 3)


def test_delete_needs_confirmation_when_annotated(db):
    with pytest.raises(WorkbenchError, match="has 4 annotation"):
        categories.delete_category(db, 7)
    assert 7 in names(db)
    assert categories.delete_category(db, 7, delete_annotations=True) == 4
    assert 7 not in names(db)
    empty = categories.add_category(db, "unused")
    assert categories.delete_category(db, empty) == 0


def test_image_status_follows_the_review(db, tmp_path):
    from db.uploads import add_images
    from PIL import Image

    path = tmp_path / "new.png"
    Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(path)
    new_id = add_images(db, [path]).image_ids[0]
    assert queries.status_counts(db) == {"new": 1, "proposed": 0, "in review": 0, "done": 4}
    mask = np.zeros((30, 40), bool)
    mask[5:15, 5:20] = True
    save_annotations(db, new_id, [InstanceData(3, mask=mask, source="model", review_state="proposed", score=0.9),
                                  InstanceData(7, box=(20, 10, 35, 25), source="model", review_state="proposed",
                                               score=0.4)], seen_revision=0)
    assert [r["status"] for r in queries.list_images(db, status="proposed")] == ["proposed"]
    _, rows = get_annotations(db, new_id)
    set_review_state(db, new_id, [rows[0]["id"]], "accepted")
    assert queries.list_images(db, status="in review")[0]["id"] == new_id
    set_review_state(db, new_id, [rows[1]["id"]], "rejected")
    assert new_id in queries.reviewed_image_ids(db)


def test_export_restricted_to_some_images(db, tmp_path):
    out = tmp_path / "two.json"
    report = export_coco(db, out, mask_format="rle", image_ids={1, 3})
    data = json.loads(out.read_text())
    assert sorted(i["id"] for i in data["images"]) == [1, 3]
    assert {a["image_id"] for a in data["annotations"]} == {1, 3}
    assert report.images == 2 and report.annotations == len(data["annotations"]) == 7
    full = export_coco(db, tmp_path / "all.json")
    assert full.images == 4 and full.annotations == 13


def test_proposals_replace_only_still_proposed_model_annotations(db, tmp_path_factory):
    from services.workbench import Workbench

    version = register_tiny_model(db, tmp_path_factory.getbasetemp())
    wb = Workbench(db, score_threshold=0.0)
    first = wb.propose(1)
    assert first.added > 0
    _, rows = get_annotations(db, 1)
    proposed = [r for r in rows if r["review_state"] == "proposed"]
    assert len(proposed) == first.added
    assert all(r["source"] == "model" and r["model_version_id"] == version and r["score"] is not None
               for r in proposed)
    kept = proposed[0]["id"]
    set_review_state(db, 1, [kept], "accepted")
    second = wb.propose(1)
    assert second.replaced == first.added - 1
    _, rows = get_annotations(db, 1)
    assert any(r["id"] == kept and r["review_state"] == "accepted" for r in rows)
    assert sum(r["source"] == "imported" for r in rows) == 4  # the imported labels are untouched


def test_box_mask_from_model_or_grabcut():
    from services.box_masks import mask_for_box

    image = np.full((40, 50, 3), 30, np.uint8)
    image[10:30, 10:30] = 220
    calls = []

    def model_masks(img, boxes, category_ids, soft=False):  # the interface of Predictor.masks_for_boxes
        calls.append((boxes, category_ids))
        if category_ids[0] != 3:
            raise ValueError("the model does not know categories [7]")
        mask = np.zeros(img.shape[:2], np.float32)
        mask[12:28, 12:28] = 0.95
        return [mask if soft else mask >= 0.5]

    mask, source = mask_for_box(image, (9, 9, 31, 31), 3, model_masks, "model")
    assert source == "model" and mask.sum() == 16 * 16 and calls[0] == ([(9.0, 9.0, 31.0, 31.0)], [3])
    mask, source = mask_for_box(image, (9, 9, 31, 31), 3, model_masks, "combined")  # GrabCut from the soft mask
    assert source == "combined" and mask[12:28, 12:28].all() and not mask[:9].any() and not mask[31:].any()
    mask, source = mask_for_box(image, (9, 9, 31, 31), 7, model_masks)  # a class the model does not know
    assert source == "grabcut" and mask[15:25, 15:25].all() and not mask[:5].any()
    mask, source = mask_for_box(image, (9, 9, 31, 31), 3, None)  # no model yet
    assert source == "grabcut"


def test_ui_handlers_show_proposals_and_surface_a_conflict(db, tmp_path_factory, tmp_path):
    """Opening a new image proposes; two people on one image: the second save gets a clear
    message and a way back to their version."""
    from PIL import Image

    from app.ui import build_app

    register_tiny_model(db, tmp_path_factory.getbasetemp())
    demo = build_app(db, score_threshold=0.0)
    ui = demo.ui
    path = tmp_path / "shapes.png"
    pixels = np.full((60, 80, 3), 40, np.uint8)
    pixels[10:30, 10:40] = (220, 40, 40)
    Image.fromarray(pixels).save(path)
    new_id = ui.wb.upload([path]).image_ids[0]
    # open it: the active model's proposals are stored and drawn on the canvas
    opened = ui.open(new_id, 0.0)
    drawn, revision_a = opened.canvas["instances"], opened.revision
    assert opened.image_id == new_id and f"Image {new_id}" in opened.title and "model proposed" in opened.draw_message
    assert "model proposed" in opened.canvas["message"] and opened.canvas["revision"] == revision_a
    assert drawn and all(i["state"] == "proposed" and i["source"] == "model" for i in drawn)
    assert ("proposed (1)", "proposed") in opened.statuses.choices
    first, second = drawn[0]["id"], drawn[1]["id"]

    def save(revision, *ops, seq=1):
        return ui.on_canvas_save(0.0, "all", "upload", gr.EventData(None, {"image_id": new_id, "revision": revision,
                                                                 "seq": seq, "ops": list(ops)}), None)
    # person B (same revision) accepts one proposal on the canvas
    classes_before = ui.overview()[1]
    out_b = save(revision_a, {"kind": "review", "ids": [first], "state": "accepted"})
    assert out_b.canvas["status"] == "saved" and out_b.canvas["ack"] == 1
    assert out_b.classes == ui.overview()[1] != classes_before  # the Classes tab's counts follow (issue 26)
    assert out_b.canvas["revision"] == revision_a + 1 and "in review" in out_b.title
    assert out_b.gallery is not gr.skip() and out_b.statuses.choices  # the status changed: the list follows
    # person A, still on revision_a, deletes another one: merged (issue 26: other instances do not conflict)
    out_a = save(revision_a, {"kind": "delete", "ids": [second]}, seq=7)
    assert out_a.canvas["status"] == "saved" and out_a.canvas["ack"] == 7 and out_a.canvas["lost"] == 0
    assert out_a.canvas["revision"] == revision_a + 2
    _, rows = get_annotations(db, new_id)
    assert not any(r["id"] == second for r in rows) and next(r for r in rows if r["id"] == first)["review_state"] \
        == "accepted"  # A's delete and B's accept both stand
    # A, still on revision_a, rejects the proposal B accepted: a conflict on that instance, A's version kept
    out_a = save(revision_a, {"kind": "review", "ids": [first], "state": "rejected"}, seq=8)
    assert out_a.canvas["status"] == "conflict" and out_a.canvas["ack"] == 8
    assert "Conflict" in out_a.canvas["message"] and f"#{first}" in out_a.canvas["message"]
    assert out_a.canvas["lost"] == 1 and out_a.canvas["revision"] == revision_a + 2
    assert ui.canvas(new_id, 0.0, user="someone else")["lost"] == 0  # only its author is offered it
    # A recovers the lost version (the canvas's "recover my lost version"): only A's reject goes in
    out = save(out_a.canvas["revision"], {"kind": "recover"}, seq=9)
    revision = out.canvas["revision"]
    assert out.canvas["status"] == "saved" and out.canvas["lost"] == 0 and revision == revision_a + 3
    _, rows = get_annotations(db, new_id)
    assert next(r for r in rows if r["id"] == first)["review_state"] == "rejected" and len(rows) == len(drawn) - 1
    # accept all above a threshold
    scores = sorted(r["score"] for r in rows)
    cut = scores[len(scores) // 2]
    to_accept = {r["id"] for r in rows if r["review_state"] == "proposed" and r["score"] >= cut}
    already = {r["id"] for r in rows if r["review_state"] == "accepted"}
    revision, accepted = ui.wb.editor.accept_all(new_id, cut, revision)
    _, rows = get_annotations(db, new_id)
    assert accepted == len(to_accept) > 0
    assert {r["id"] for r in rows if r["review_state"] == "accepted"} == to_accept | already


def test_large_images_are_predicted_downscaled_with_full_size_masks():
    from services.models import FULL_MASK_BUDGET, predict_scaled
    from mnc_core import Instance

    seen = []

    def predictor(image, score_threshold=None):
        seen.append(image.shape)
        mask = np.zeros(image.shape[:2], bool)
        mask[10:20, 10:30] = True
        return [Instance(3, 0.9 - k * 0.01, (10, 10, 30, 20), mask) for k in range(30)]

    huge = predict_scaled(predictor, np.zeros((10000, 10000, 3), np.uint8), 0.0)
    assert len(huge) == 15 and seen == [(1600, 1600, 3)]  # 15 masks of 100 MB fit in the budget
    seen.clear()
    image = np.zeros((3200, 4000, 3), np.uint8)
    out = predict_scaled(predictor, image, 0.0)
    assert seen == [(1280, 1600, 3)]
    assert len(out) == min(30, FULL_MASK_BUDGET // (3200 * 4000)) and out[0].box == (25.0, 25.0, 75.0, 50.0)
    assert out[0].mask.shape == (3200, 4000) and out[0].mask.sum() == 25 * 50
    small = np.zeros((300, 400, 3), np.uint8)
    assert len(predict_scaled(predictor, small, 0.0)) == 30 and seen[-1] == (300, 400, 3)


def test_drawn_boxes_and_painted_masks_without_a_model(db):
    from services.workbench import Workbench

    wb = Workbench(db)
    revision, before = get_annotations(db, 1)
    revision, sources = wb.editor.add_boxes(1, [(7, (30.0, 20.0, 55.0, 40.0)), (12, (2.0, 2.0, 20.0, 15.0))],
                                     box_only=False, seen_revision=revision)
    assert sources == ["grabcut mask", "grabcut mask"]  # no model yet: GrabCut
    revision, _ = wb.editor.add_boxes(1, [(12, (40.0, 2.0, 60.0, 12.0))], box_only=True, seen_revision=revision)
    _, rows = get_annotations(db, 1)
    new = rows[len(before):]
    assert [(r["category_id"], r["source"], r["mask"] is None) for r in new] == [
        (7, "grabcut", False), (12, "grabcut", False), (12, "drawn", True)]
    painted = np.zeros((48, 64), bool)
    painted[5:9, 5:30] = True
    revision = wb.editor.save_mask(1, None, "ball", painted, revision)  # a new painted instance of a class by name
    revision = wb.editor.save_mask(1, new[0]["id"], None, painted, revision)  # replaces the GrabCut mask
    _, rows = get_annotations(db, 1)
    assert sum(r["source"] == "drawn" and r["mask"] is not None and r["mask"].sum() == painted.sum()
               for r in rows) == 2
    with pytest.raises(WorkbenchError, match="empty"):
        wb.editor.save_mask(1, None, "ball", np.zeros((48, 64), bool), revision)
    with pytest.raises(WorkbenchError, match="no model is trained"):
        wb.propose(1)


def _instance(score, category_id=3, offset=0):
    from mnc_core import Instance

    mask = np.zeros((40, 60), bool)
    mask[5 + offset:15 + offset, 5:20] = True
    return Instance(category_id, score, (5.0, 5.0 + offset, 20.0, 15.0 + offset), mask)


def test_a_young_model_still_proposes_its_best_guesses(database, tmp_path):
    """Nothing reaches the minimum score: the best 3 above the floor are stored, flagged low confidence;
    once something reaches it, only those are stored."""
    from PIL import Image

    from db.uploads import add_images
    from services.proposals import LOW_CONFIDENCE_FLOOR, LOW_CONFIDENCE_TOP, propose

    categories.add_category(database, "car")
    car = next(iter(queries.category_names(database)))
    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(tmp_path / "a.png")
    image_id = add_images(database, [str(tmp_path / "a.png")]).image_ids[0]
    weak = [_instance(s, car, k) for k, s in enumerate([0.04, 0.03, 0.02, 0.01, LOW_CONFIDENCE_FLOOR / 2])]
    result = propose(database, image_id, None, None, score_threshold=0.05, instances=weak)
    assert result.added == result.low_confidence == LOW_CONFIDENCE_TOP == 3
    _, rows = get_annotations(database, image_id)
    assert sorted(r["score"] for r in rows) == [0.02, 0.03, 0.04]
    assert all(r["review_state"] == "proposed" for r in rows)
    sure = [_instance(0.3, car), _instance(0.04, car, 1)]
    result = propose(database, image_id, None, None, score_threshold=0.05, instances=sure)
    assert result.added == 1 and result.low_confidence == 0 and result.replaced == 3
    _, rows = get_annotations(database, image_id)
    assert [r["score"] for r in rows] == [0.3]
    # nothing above the floor: nothing stored
    result = propose(database, image_id, None, None, score_threshold=0.05, instances=weak[-1:])
    assert result.added == 0 and result.low_confidence == 0


def test_the_review_marks_low_confidence_guesses():
    from app.display import proposal_message, shown_instances
    from services.proposals import ProposalResult

    rows = [{"id": i, "review_state": state, "score": score} for i, (state, score) in enumerate(
        [("accepted", None), ("proposed", 0.04), ("proposed", 0.3), ("proposed", 0.02), ("proposed", 0.01),
         ("rejected", 0.9)])]
    shown, low = shown_instances(rows, review_threshold=0.5, score_threshold=0.05)  # no proposal reaches the slider's 0.5
    assert [r["id"] for r in shown] == [0, 2, 1, 3] and low == {2, 1, 3}
    shown, low = shown_instances(rows, review_threshold=0.25, score_threshold=0.05)  # one does: only it, not low
    assert [r["id"] for r in shown] == [0, 2] and low == set()
    shown, low = shown_instances(rows, review_threshold=0.0, score_threshold=0.05)  # stored guesses below the minimum
    assert [r["id"] for r in shown] == [0, 2, 1, 3, 4] and low == {1, 3, 4}
    assert "low-confidence" in proposal_message(ProposalResult(1, 3, 0, 0, low_confidence=3), 0.05)
    assert "proposed 2 instance(s)" in proposal_message(ProposalResult(1, 2, 0, 0), 0.05)


def test_the_model_cache_falls_back_to_best_guesses_and_follows_the_minimum_score(database, monkeypatch):
    from services.models import ModelCache
    from services.workbench import Workbench
    from services.proposals import LOW_CONFIDENCE_FLOOR

    calls = []

    def predictor(image, score_threshold=None):
        calls.append(score_threshold)
        scores = [0.2, 0.04, 0.03, 0.02, 0.01]
        return [_instance(s) for s in scores if s > score_threshold]

    cache = ModelCache(database, score_threshold=0.3)
    monkeypatch.setattr(cache, "active", lambda: (1, predictor))
    _, out = cache.predictions(7, np.zeros((40, 60, 3), np.uint8))
    assert calls == [0.3, LOW_CONFIDENCE_FLOOR] and [i.score for i in out] == [0.2, 0.04, 0.03]
    cache.set_score_threshold(0.1)  # a new minimum: earlier predictions are not reused
    _, out = cache.predictions(7, np.zeros((40, 60, 3), np.uint8))
    assert calls[2:] == [0.1] and [i.score for i in out] == [0.2]
    wb = Workbench(database, score_threshold=0.05)
    assert wb.set_score_threshold("0.2") == 0.2 and wb.score_threshold == 0.2 and wb.models.score_threshold == 0.2
    for bad in (1.0, -0.1, "x"):
        with pytest.raises(WorkbenchError, match="score threshold"):
            wb.set_score_threshold(bad)
    assert wb.score_threshold == 0.2


def test_the_train_tab_says_how_long_a_run_takes(database):
    """Before any run of a mode on this machine: no time (none measured here), the progress will show it; after
    one: that run's pace on this machine, scaled to the iterations and the pixels of the image size asked for."""
    from services.workbench import Workbench
    from db import registry
    from db.models import RunStatus
    from services.presets import PRESETS

    wb = Workbench(database, device="cpu")  # runs train on the CPU
    heads = PRESETS["heads"]
    text = wb.training_estimate("heads")
    assert f"{heads.iterations} iterations at {heads.image_size} px" in text
    assert "min**" not in text and "No heads run has finished on this machine yet" in text
    run = registry.start_run(database, mode="heads", iterations=100, params={"image_size": 400})
    registry.record_progress(database, run, iteration=100, loss=1.0, seconds=300.0)  # 3 s an iteration at 400 px
    registry.finish_run(database, run, RunStatus.succeeded)
    paced = wb.training_estimate("heads", 40, 400)
    assert "about **2 min**" in paced and "last heads run" in paced  # 40 x 3 s
    assert "about **8 min**" in wb.training_estimate("heads", 40, 800)  # 4x the pixels
    assert "min**" not in wb.training_estimate("full")  # no full run yet
    assert wb.training_estimate("nonsense") == ""


@pytest.mark.skipif(torch_cuda_available(), reason="checks the no-GPU answers")
def test_the_model_device_is_auto_by_default_and_said(database):
    from app.handlers import Handlers
    from services.models import inference_device
    from services.workbench import Workbench

    assert inference_device(None) == inference_device("auto") == "cpu" and inference_device("cpu") == "cpu"
    with pytest.raises(WorkbenchError, match="no CUDA GPU is visible"):
        inference_device("cuda")
    with pytest.raises(WorkbenchError, match="not one of auto, cpu, cuda"):
        inference_device("tpu")
    wb = Workbench(database)
    assert wb.device == "cpu" and wb.device_text().startswith("CPU (")
    assert Handlers(wb).overview()[0].endswith(f"· model on {wb.device_text()}")


def test_a_class_added_reaches_the_draw_tab_and_the_canvas_without_a_reload(database):
    """Boxes drawn before any class exists can be labelled once a class is added: the class actions update
    the annotator's class list (only it: the boxes on it stay) and the canvas's classes (app.ui wires
    Handlers.canvas after each class action)."""
    from app.handlers import Handlers
    from services.workbench import Workbench

    ui = Handlers(Workbench(database))
    assert ui.canvas(None, 0.5)["classes"] == []
    out = ui.add_class("ball")
    assert "added" in out.message and out.annotator.constructor_args == {"label_list": ["ball"],
                                                                           "label_colors": [out.annotator.label_colors[0]]}
    out = ui.add_class("car")
    assert out.annotator.constructor_args["label_list"] == ["ball", "car"] and "value" not in out.annotator.constructor_args
    assert [c["name"] for c in ui.canvas(None, 0.5)["classes"]] == ["ball", "car"]


def test_the_draw_tab_moves_reclasses_and_deletes_boxes_without_duplicates(db):
    """Saved boxes are the image's accepted annotations: a moved box changes its annotation (a new mask for
    the new box), a class change keeps the mask, a removed box deletes its annotation, a new box is added;
    nothing is duplicated."""
    from services.workbench import Workbench

    wb = Workbench(db)
    revision, rows = get_annotations(db, 1, states=["accepted"])
    assert len(rows) >= 3
    scale = 0.5  # the Draw tab shows the image at half size
    first, second, third, *rest = rows
    names = queries.category_names(db)

    def shown(row, dx=0.0, label=None):
        x1, y1, x2, y2 = (v * scale for v in row["box"])
        return {"xmin": x1 + dx, "ymin": y1, "xmax": x2 + dx, "ymax": y2,
                "label": label or names[row["category_id"]], "id": row["id"]}

    other = next(name for cid, name in names.items() if cid != second["category_id"])
    drawn = [shown(first, dx=4.0), shown(second, label=other), *[shown(r) for r in rest],
             {"xmin": 1, "ymin": 1, "xmax": 12, "ymax": 9, "label": "ball"}]  # `third` is gone
    revision, said = wb.editor.save_drawn_boxes(1, drawn, scale, box_only=False, seen_revision=revision)
    assert said == [f"#{first['id']} moved (grabcut mask)" if first["mask_rle"] else f"#{first['id']} moved (box only)",
                    f"#{second['id']} now {other}", f"#{third['id']} deleted", "ball added (grabcut mask)"]
    _, after = get_annotations(db, 1, states=["accepted"])
    by_id = {r["id"]: r for r in after}
    assert len(after) == len(rows)  # one deleted, one added, none duplicated
    assert third["id"] not in by_id
    assert by_id[first["id"]]["box"][0] == pytest.approx(first["box"][0] + 8.0, abs=0.5)
    assert by_id[second["id"]]["category_id"] != second["category_id"]
    assert by_id[second["id"]]["mask_rle"] == second["mask_rle"]  # a class change keeps the mask
    with pytest.raises(WorkbenchError, match="nothing to save"):
        wb.editor.save_drawn_boxes(1, [shown(by_id[r["id"]]) for r in after], scale, box_only=False, seen_revision=revision)


@pytest.mark.parametrize("instance, message", [
    ({"category": "ball", "box": ["nan", 1, 10, 10]}, "a box value must be a finite number"),
    ({"category": "ball", "box": [float("nan"), 1, 10, 10]}, "a box value must be a finite number"),
    ({"category": "ball", "box": [1, 1, 10, 10], "score": float("inf")}, "'score' must be a finite number"),
    ({"category": "ball", "box": [1, 1, 10, 10], "score": "abc"}, "'score' must be a finite number"),
    ({"category": "ball", "box": [1, 1, 10, 10], "id": "1"}, "'id' must be a whole number"),
    ({"category": "ball", "box": [1, 1, 10, 10], "iscrowd": "false"}, "'iscrowd' must be true/false or 0/1"),
    ({"category_id": 7.5, "box": [1, 1, 10, 10]}, "a class id"),
    ({"category": "ball", "bbox": [10, 10, -5, 4]}, "has no area"),
    ({"category": "ball", "box": [1, 1, 1e9, 10]}, "more than one image size outside"),
    ({"category": "ball", "box": [1, 1, 10, 10], "model_version_id": 999}, "there is no model version 999"),
    ({"category": "ball", "box": [1, 1, 10, 10], "review_state": "maybe"}, "'review_state' must be one of"),
])
def test_the_api_save_refuses_what_it_would_store_wrongly(db, instance, message):
    """Issue 16, items 9 and 10: values that used to be stored silently wrong, or refused without a word,
    are refused with a message that names the field; nothing is written."""
    from services.workbench import Workbench

    wb = Workbench(db)
    before = get_annotations(db, 1, decode_masks=False)
    with pytest.raises(WorkbenchError, match=message):
        wb.editor.save_json(1, [instance], None)
    assert get_annotations(db, 1, decode_masks=False) == before


def test_the_api_save_refuses_one_id_twice_and_keeps_good_values(db):
    from services.workbench import Workbench

    wb = Workbench(db)
    _, rows = get_annotations(db, 1, decode_masks=False)
    first = rows[0]["id"]
    with pytest.raises(WorkbenchError, match=f"annotation id {first} appears twice"):
        wb.editor.save_json(1, [{"category": "ball", "box": [1, 1, 9, 9], "id": first},
                         {"category": "ball", "box": [2, 2, 9, 9], "id": first}], None)
    with pytest.raises(WorkbenchError, match="seen_revision must be a whole number"):
        wb.editor.save_json(1, [], "abc")
    for missing in (None, -1):  # a save replaces the image's annotations: the revision it read is required
        with pytest.raises(WorkbenchError, match="send the image's revision as seen_revision"):
            wb.editor.save_json(1, [], missing)
    wb.editor.save_json(1, [{"category_id": 7, "bbox": [1, 2, 8, 6], "iscrowd": 1, "id": first, "score": 0.5}],
                 get_annotations(db, 1, decode_masks=False)[0])
    _, rows = get_annotations(db, 1, decode_masks=False)
    assert [(r["id"], r["category_id"], r["box"], r["iscrowd"], r["score"]) for r in rows] == [
        (first, 7, (1.0, 2.0, 9.0, 8.0), True, 0.5)]


def test_a_huge_unknown_class_name_is_not_echoed_whole(db):
    """Issue 16, item 10: the message names the value, cut short (a 10 MB name used to fill the error and the log)."""
    from services.workbench import Workbench

    with pytest.raises(WorkbenchError) as error:
        Workbench(db).editor.category_id("x" * 10_000_000)
    assert "there is no class 'xxxx" in str(error.value) and len(str(error.value)) < 400


@pytest.mark.parametrize("typed", [None, "", "a", "nan", 1.5, -0.1])
def test_a_cleared_or_wrong_review_threshold_keeps_the_setting(db, typed):
    """Issue 26, bug 5: clearing the review threshold's number box raised a server traceback. Nothing that is not a
    number from 0 to 1 changes the setting (the page keeps what it had)."""
    from app.handlers import Handlers
    from services.workbench import Workbench

    ui = Handlers(Workbench(db, device="cpu"))
    assert all(out is gr.skip() or out == gr.skip() for out in ui.on_review_setting(None, False, typed))
    setting, _, canvas = ui.on_review_setting(None, False, 0.3)
    assert setting == 0.3 and canvas["threshold"] == 0.3


def test_the_open_images_title_follows_a_new_active_model(db, tmp_path_factory):
    """Issue 26, bug 6: after training, the open image's title still said "model: none yet" (the training
    timer's ticks and Activate now refresh it)."""
    from app.handlers import Handlers
    from services.workbench import Workbench

    ui = Handlers(Workbench(db, device="cpu"))
    image_id = ui.wb.list_images()[0]["id"]
    assert "model: none yet" in ui.current_title(image_id)
    version = register_tiny_model(db, tmp_path_factory.getbasetemp())
    assert f"model: v{version}" in ui.current_title(image_id)
    assert ui.current_title(None) == gr.skip()  # no image open: the title stays
