"""Proposal fates, hand-made instances and active time (db.fates) through the services, and "Model help"."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from sqlalchemy import select

from db import registry
from db.fates import fate_rows
from db.coco_import import import_coco
from db.models import Image
from services.proposals import propose
from services.workbench import Workbench, WorkbenchError


@dataclass
class FakeInstance:
    category_id: int
    score: float
    box: tuple
    mask: np.ndarray


def box_mask(h, w, x0, y0, x1, y1):
    mask = np.zeros((h, w), bool)
    mask[y0:y1, x0:x1] = True
    return mask


@pytest.fixture
def bench(database, synthetic_coco):
    import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    with database.session() as session:
        image = session.scalars(select(Image).where(Image.file_name == "img_0.jpg")).one()
        image_id, h, w = image.id, image.height, image.width
    checkpoint = database.data_dir / "models" / "fake.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_bytes(b"")
    version = registry.register_version(database, checkpoint, name="fake", config={}, metrics={})
    wb = Workbench(database, device="cpu")
    wb.editor.save_json(image_id, [], wb.annotations(image_id)[0])  # start from no annotations
    return wb, image_id, h, w, version


def proposals(db, image_id, version, h, w, n=4):
    made = [FakeInstance(3, 0.9 - 0.1 * i, (4 * i, 0, 4 * i + 8, 8), box_mask(h, w, 4 * i, 0, 4 * i + 8, 8))
            for i in range(n)]
    propose(db, image_id, None, version, instances=made)


def fates(wb):
    return {r["annotation_id"]: r for r in fate_rows(wb.db)}


def test_accept_edit_reject_delete_and_hand_made_are_recorded(bench):
    wb, image_id, h, w, version = bench
    proposals(wb.db, image_id, version, h, w)
    revision, rows = wb.annotations(image_id)
    a, b, c, d = (r["id"] for r in rows)
    assert {r["fate"] for r in fates(wb).values()} == {"proposed"}
    revision = wb.editor.review(image_id, [a, b, d], "accepted", revision, user="ana")
    revision = wb.editor.review(image_id, [c], "rejected", revision, user="ana")
    # b: its mask painted over (a quarter of it kept) and its class changed
    revision = wb.editor.save_mask(image_id, b, None, box_mask(h, w, 4, 0, 6, 8), revision, user="ana")
    row_b = wb.annotation(image_id, b)
    json_rows = [{"id": r["id"], "category_id": 7 if r["id"] == b else r["category_id"],
                  "mask": r["mask"].astype(int).tolist(), "source": r["source"], "review_state": r["review_state"],
                  "model_version_id": r["model_version_id"], "score": r["score"]}
                 for r in wb.annotations(image_id)[1] if r["id"] != d]  # d deleted after it was accepted
    assert row_b["source"] == "drawn"
    json_rows.append({"category_id": 7, "mask": box_mask(h, w, 30, 20, 40, 30).astype(int).tolist(),
                      "tool": "polygon"})
    revision = wb.editor.save_json(image_id, json_rows, revision, user="ana")
    revision, _ = wb.editor.add_boxes(image_id, [(3, (40, 30, 60, 45))], box_only=True, seen_revision=revision)
    got = fates(wb)
    assert got[a]["fate"] == "accepted" and got[a]["iou"] is None
    assert got[b]["fate"] == "edited" and got[b]["iou"] == pytest.approx(0.25) and \
        (got[b]["category_id"], got[b]["final_category_id"]) == (3, 7)
    assert got[c]["fate"] == "rejected" and got[d]["fate"] == "deleted"
    hand = sorted((r["tool"], r["fate"]) for r in got.values() if r["kind"] == "hand")
    assert hand == [("box", "kept"), ("polygon", "kept")]
    assert all(r["model_version_id"] == version for r in got.values())
    # undo the box: its record goes; undo the save: d is back accepted and the hand-made polygon gone
    revision = wb.editor.undo(image_id, revision)
    wb.editor.undo(image_id, revision)
    got = fates(wb)
    assert got[d]["fate"] == "accepted" and got[b]["category_id"] == 3 and got[b]["fate"] == "edited"
    assert [r["tool"] for r in got.values() if r["kind"] == "hand"] == []
    help_ = wb.model_help()["versions"]
    assert [(v["version_id"], v["final"], v["unchanged"], v["edited"], v["rejected"], v["images"]) for v in help_] \
        == [(version, 3, 2, 1, 1, 1)]


def test_new_proposals_replace_unreviewed_ones_without_rejecting_them(bench):
    wb, image_id, h, w, version = bench
    proposals(wb.db, image_id, version, h, w, n=2)
    proposals(wb.db, image_id, version, h, w, n=3)
    fates_now = sorted(r["fate"] for r in fates(wb).values())
    assert fates_now == ["proposed"] * 3 + ["replaced"] * 2
    revision, rows = wb.annotations(image_id)
    wb.editor.save_json(image_id, [{"id": r["id"], "category_id": r["category_id"], "box": list(r["box"]),
                             "mask": r["mask"].astype(int).tolist(), "source": "model", "review_state": "proposed",
                             "model_version_id": version, "score": r["score"]} for r in rows[1:]], revision)
    assert sorted(r["fate"] for r in fates(wb).values()) == ["proposed"] * 2 + ["rejected"] + ["replaced"] * 2


def test_active_time_leaves_idle_gaps_out_and_counts_per_version(bench):
    wb, image_id, h, w, version = bench
    visit = wb.record_visit(image_id, [100.0, 101.5, 104.0, 200.0, 230.0], user="ana")
    assert visit == {"image_id": image_id, "active_seconds": 34.0, "idle_seconds": 96.0, "events": 5}
    wb.editor.add_boxes(image_id, [(3, (40, 30, 60, 45))], box_only=True, seen_revision=None)
    row = wb.model_help()["versions"][0]
    assert (row["version_id"], row["final"], row["hand"], row["active_seconds"], row["seconds_per_instance"]) == \
        (version, 1, 1, 34.0, 34.0)
    for bad in ([1.0], [1.0, float("nan")], "1,2", [1, True]):
        with pytest.raises(WorkbenchError, match="event times|at least 2"):
            wb.record_visit(image_id, bad)
    with pytest.raises(WorkbenchError, match="there is no image"):
        wb.record_visit(99999, [1.0, 2.0])


def test_a_failing_record_does_not_fail_the_save(bench, monkeypatch, caplog):
    from db import fates as fates_module

    wb, image_id, h, w, version = bench

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(fates_module, "_update", broken)
    revision, _ = wb.editor.add_boxes(image_id, [(3, (40, 30, 60, 45))], box_only=True, seen_revision=None)
    assert len(wb.annotations(image_id)[1]) == 1 and "recording the fates" in caplog.text
    assert fates(wb) == {}  # the savepoint took the half-written record back


def test_a_tool_must_be_known(bench):
    wb, image_id, h, w, version = bench
    with pytest.raises(WorkbenchError, match="tool must be one of box, polygon, brush, grabcut, other"):
        wb.editor.save_json(image_id, [{"category_id": 3, "box": [1, 1, 9, 9], "tool": "lasso"}], None)


# ---- "most useful next" ------------------------------------------------------------------------------------
def test_uncertainty_prefers_mid_scores_and_many_of_them():
    from services.proposals import uncertainty

    assert uncertainty([0.5]) == pytest.approx(1.0)
    assert uncertainty([0.99]) < uncertainty([0.2]) < uncertainty([0.5]) < uncertainty([0.5, 0.3])
    assert uncertainty([]) == 0.0


def test_most_useful_order_is_deterministic_for_a_fixed_model(database, synthetic_coco, tmp_path_factory):
    from db.uploads import add_images
    from test_app_helpers import register_tiny_model

    rng = np.random.default_rng(3)
    folder = tmp_path_factory.mktemp("photos")
    files = []
    for index in range(6):
        pixels = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
        pixels[10 + index:30, 10:40 + index] = (220, 40, 40)
        path = folder / f"p{index}.png"
        from PIL import Image as PILImage

        PILImage.fromarray(pixels).save(path)
        files.append(path)
    import_coco(database, synthetic_coco, synthetic_coco.parent / "images")  # the classes; labelled photos
    ids = add_images(database, files).image_ids
    register_tiny_model(database, tmp_path_factory.getbasetemp())
    wb = Workbench(database, device="cpu", score_threshold=0.0)
    with pytest.raises(WorkbenchError, match="order must be one of upload, most_useful"):
        wb.list_images(order="random")
    first = wb.list_images(order="most_useful", limit=None, propose_missing=3)  # the model runs on 3 photos
    scored = [r["id"] for r in first if r["uncertainty"] is not None]
    assert len(scored) == 3 and set(scored) <= set(ids)
    values = [r["uncertainty"] for r in first if r["uncertainty"] is not None]
    assert values == sorted(values, reverse=True)
    first = wb.list_images(order="most_useful", limit=None, propose_missing=10)
    again = Workbench(database, device="cpu", score_threshold=0.0).list_images(order="most_useful", limit=None)
    assert [r["id"] for r in again] == [r["id"] for r in first]
    assert [r["id"] for r in first][:6] == sorted(ids, key=lambda i: (-next(
        r["uncertainty"] for r in first if r["id"] == i), i))
    # the same scores from the model itself, run again on a fresh copy of the photos' proposals
    for image_id in ids:
        wb.propose(image_id)
    assert [r["id"] for r in wb.list_images(order="most_useful", limit=None)] == [r["id"] for r in first]


# ---- refine with clicks ------------------------------------------------------------------------------------
def test_click_refinement_improves_iou_on_a_synthetic_shape(database, tmp_path):
    import cv2
    from PIL import Image as PILImage

    from db.uploads import add_images

    rng = np.random.default_rng(0)
    h, w = 120, 160
    pixels = rng.normal(90, 20, (h, w, 3)).clip(0, 255).astype(np.uint8)
    truth = np.zeros((h, w), np.uint8)
    cv2.ellipse(truth, (80, 60), (45, 30), 20, 0, 360, 1, -1)
    truth = truth.astype(bool)
    pixels[truth] = rng.normal(170, 20, (int(truth.sum()), 3)).clip(0, 255).astype(np.uint8)
    PILImage.fromarray(pixels).save(tmp_path / "ellipse.png")
    image_id = add_images(database, [tmp_path / "ellipse.png"]).image_ids[0]
    wb = Workbench(database, device="cpu")
    wb.add_category("blob")
    rough = np.zeros((h, w), bool)
    rough[40:80, 50:95] = True
    revision = wb.editor.save_mask(image_id, None, "blob", rough, None)
    ann_id = wb.annotations(image_id)[1][0]["id"]

    def iou(mask):
        return (mask & truth).sum() / (mask | truth).sum()

    before = iou(wb.annotation(image_id, ann_id)["mask"])
    revision = wb.editor.refine_with_clicks(image_id, ann_id, [(80, 60), (115, 75)], [(20, 20)], revision)
    after = iou(wb.annotation(image_id, ann_id)["mask"])
    assert before < 0.5 and after > 0.75 and after > before + 0.25
    row = wb.annotation(image_id, ann_id)
    assert (row["source"], row["review_state"]) == ("grabcut", "accepted")
    with pytest.raises(WorkbenchError, match="outside the 160x120 image"):
        wb.editor.refine_with_clicks(image_id, ann_id, [(500, 5)], [], revision)
    with pytest.raises(WorkbenchError, match="click the instance first"):
        wb.editor.refine_with_clicks(image_id, ann_id, [], None, revision)
    with pytest.raises(WorkbenchError, match=r"each point must be \[x, y\]"):
        wb.editor.refine_with_clicks(image_id, ann_id, [5], [], revision)


# ---- the page -------------------------------------------------------------------------------------------------
@pytest.mark.backends("sqlite")
def test_the_model_help_tab_and_the_gallery_order(bench, tmp_path):
    from PIL import Image as PILImage

    from app.handlers import Handlers

    wb, image_id, h, w, version = bench
    proposals(wb.db, image_id, version, h, w)
    revision, rows = wb.annotations(image_id)
    wb.editor.review(image_id, [rows[0]["id"]], "accepted", revision)
    note, shares, seconds, table, per_class = Handlers(wb).show_model_help()
    assert "1 version(s)" in note
    assert set(shares["figure"]) == {"accepted unchanged", "added by hand"} and len(seconds) == 0
    assert table[0][:4] == ["v%d fake" % version, "all", 1, 1] and per_class[0][1] == "car"
    ui = Handlers(wb)
    for k in range(2):  # two new train photos: unlabelled, so first in "most useful next"
        path = tmp_path / f"new{k}.png"
        PILImage.fromarray(np.full((40, 50, 3), 30 + 100 * k, np.uint8)).save(path)
        wb.upload([path])
    _, ids, _ = ui.gallery("all", order="most_useful")
    ranked = wb.list_images(order="most_useful", limit=None)
    assert ids == [r["id"] for r in ranked] and sorted(ids) == sorted(r["id"] for r in wb.list_images(limit=None))
    useful = [r["id"] for r in ranked if r["split"] == "train" and r["status"] in ("new", "proposed")]
    assert len(useful) >= 2  # Next (and "done, next") in this order: the most useful unlabelled photo but the open one
    assert ui.neighbour(-1, ids, "all", +1, "most_useful") == useful[0]
    assert ui.neighbour(useful[0], ids, "all", +1, "most_useful") == useful[1]
    assert ui.neighbour(useful[1], ids, "all", -1, "most_useful") == ids[ids.index(useful[1]) - 1]  # Previous: the list


# ---- the migration -------------------------------------------------------------------------------------------
def test_a_database_of_schema_0004_is_upgraded_and_records_fates(tmp_path, database_url):
    from datetime import datetime, timezone

    from PIL import Image as PILImage
    from sqlalchemy import MetaData, inspect

    from db.engine import make_engine, open_database
    from db.uploads import add_images
    from test_db_schema import _migrate

    engine = make_engine(database_url)
    _migrate(engine, "0004")  # a database of the release before the fates
    old = MetaData()
    old.reflect(engine)
    with engine.begin() as connection:
        connection.execute(old.tables["categories"].insert().values(id=4, name="dog", supercategory="",
                                                                       created_at=datetime.now(timezone.utc)))
    engine.dispose()
    db = open_database(tmp_path / "data", database_url)  # upgrades
    assert {"instance_fates", "image_visits"} <= set(inspect(db.engine).get_table_names())
    image = tmp_path / "a.png"
    PILImage.fromarray(np.zeros((20, 30, 3), np.uint8)).save(image)
    image_id = add_images(db, [image]).image_ids[0]
    wb = Workbench(db, device="cpu")
    wb.editor.save_json(image_id, [{"category": "dog", "box": [1, 1, 10, 10], "tool": "box"}], wb.annotations(image_id)[0])
    assert [(r["kind"], r["tool"], r["fate"]) for r in fate_rows(db)] == [("hand", "box", "kept")]
    db.close()
