"""The review canvas's server side: its batches of edits (services.editing) through the revision-checked
saves, the value it is given (app.canvas), "done, next image" (Handlers.on_done)."""

from __future__ import annotations

import colorsys

import gradio as gr
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from db import queries
from db.annotations import InstanceData, get_annotations, save_annotations
from db.coco_import import import_coco
from db.errors import WorkbenchError


@pytest.fixture
def db(database, synthetic_coco):
    import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    return database


def counts_of(mask: np.ndarray) -> str:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()


def proposals(db, image_id: int, scores=(0.9, 0.6, 0.2)) -> int:
    """Three model-like proposals on the image (no model needed) -> the new revision."""
    revision, rows = get_annotations(db, image_id, decode_masks=False)
    info = queries.image_info(db, image_id)
    new = []
    for k, score in enumerate(scores):
        mask = np.zeros((info["height"], info["width"]), bool)
        mask[2 + 10 * k:9 + 10 * k, 40:60] = True
        new.append(InstanceData(category_id=3, mask=mask, source="model", review_state="proposed", score=score))
    return save_annotations(db, image_id, [InstanceData.from_row(r) for r in rows] + new, seen_revision=revision)


def test_a_batch_of_canvas_edits_is_saved_in_order(db):
    from services.workbench import Workbench

    wb = Workbench(db)
    revision = proposals(db, 1)
    _, rows = get_annotations(db, 1, decode_masks=False)
    best, middle, low = (r["id"] for r in sorted((r for r in rows if r["review_state"] == "proposed"),
                                                 key=lambda r: -r["score"]))
    drawn = np.zeros((48, 64), bool)
    drawn[30:44, 2:20] = True
    edits = [{"kind": "review", "ids": [best], "state": "accepted"},
             {"kind": "review", "ids": [low], "state": "rejected"},
             {"kind": "class", "id": middle, "category_id": 7},  # a proposal given a class is accepted
             {"kind": "mask", "temp_id": -1, "category_id": 12, "counts": counts_of(drawn), "tool": "polygon"},
             {"kind": "mask", "id": -1, "category_id": 12, "counts": counts_of(drawn[::-1]), "tool": "brush"},
             {"kind": "box", "temp_id": -2, "category_id": "ball", "box": [2.0, 2.0, 24.0, 20.0]}]
    result = wb.editor.apply_edits(1, edits, revision)
    assert result.error is None and result.applied == len(edits) and result.revision == revision + len(edits)
    _, after = get_annotations(db, 1)
    by_id = {r["id"]: r for r in after}
    assert by_id[best]["review_state"] == "accepted" and by_id[low]["review_state"] == "rejected"
    assert by_id[middle]["category_id"] == 7 and by_id[middle]["review_state"] == "accepted"
    polygon = by_id[result.created[-1]]  # the temp id -1 got an annotation id; the second edit changed it
    assert polygon["category_id"] == 12 and polygon["source"] == "drawn"
    assert np.array_equal(polygon["mask"], drawn[::-1])  # the browser's RLE stored as it was sent
    box = by_id[result.created[-2]]
    assert box["category_id"] == 7 and box["source"] == "grabcut" and box["mask"] is not None  # no model: GrabCut
    assert len(after) == len(rows) + 2
    # undo is one edit too: the box goes again
    box_id = result.created[-2]
    result = wb.editor.apply_edits(1, [{"kind": "undo"}], result.revision)
    _, after = get_annotations(db, 1, decode_masks=False)
    assert result.error is None and box_id not in {r["id"] for r in after} and len(after) == len(rows) + 1


def test_a_batch_merges_edits_of_other_instances_and_stops_at_a_conflict(db):
    """Issue 26: A's batch, started before B accepted #0, deletes #1 (merged: another instance), rejects #0 (a
    conflict: B changed it since; journalled for A) and would delete #2 (not sent on: the batch stops there)."""
    from services.workbench import ConflictError, Workbench

    wb = Workbench(db)
    revision = proposals(db, 1)
    _, rows = get_annotations(db, 1, decode_masks=False)
    ids = [r["id"] for r in rows if r["review_state"] == "proposed"]
    other = wb.editor.apply_edits(1, [{"kind": "review", "ids": [ids[0]], "state": "accepted"}], revision, "B")
    mine = wb.editor.apply_edits(1, [{"kind": "delete", "ids": [ids[1]]}, {"kind": "review", "ids": [ids[0]],
                                                                     "state": "rejected"},
                              {"kind": "delete", "ids": [ids[2]]}], revision, "A")
    assert isinstance(mine.error, ConflictError) and mine.error.instance_ids == [ids[0]]
    assert mine.applied == 1 and mine.revision == other.revision + 1
    now = {r["id"]: r["review_state"] for r in get_annotations(db, 1, decode_masks=False)[1]}
    assert ids[1] not in now and now[ids[0]] == "accepted" and ids[2] in now
    assert len(wb.editor.conflicts(1, "A")) == 1 and wb.editor.conflicts(1, "B") == []  # A's reject, for A to recover


def test_a_batch_never_conflicts_with_its_own_edits(db):
    """A's batch, started before B accepted #0, edits #1 twice (class, then reject) and deletes #2: B's accept
    merges in, and A's second edit of #1 is not taken for someone else's change (db.annotations.Seen)."""
    from services.workbench import Workbench

    wb = Workbench(db)
    revision = proposals(db, 1)
    ids = [r["id"] for r in get_annotations(db, 1, states=["proposed"], decode_masks=False)[1]]
    wb.editor.apply_edits(1, [{"kind": "review", "ids": [ids[0]], "state": "accepted"}], revision, "B")
    mine = wb.editor.apply_edits(1, [{"kind": "class", "id": ids[1], "category_id": 7},
                              {"kind": "review", "ids": [ids[1]], "state": "rejected"},
                              {"kind": "delete", "ids": [ids[2]]}], revision, "A")
    assert mine.error is None and mine.applied == 3 and mine.revision == revision + 4
    now = {r["id"]: (r["category_id"], r["review_state"]) for r in get_annotations(db, 1, decode_masks=False)[1]}
    assert now[ids[0]][1] == "accepted" and now[ids[1]] == (7, "rejected") and ids[2] not in now


def test_an_undo_sent_with_a_stale_revision_is_a_conflict_and_undoes_nothing(db):
    """Issue 23, finding 4 on the canvas: A's undo (sent with the revision A sees) after B's acknowledged save
    is refused; B's change stays."""
    from services.workbench import ConflictError, Workbench

    wb = Workbench(db)
    revision = proposals(db, 1)
    ids = [r["id"] for r in get_annotations(db, 1, states=["proposed"], decode_masks=False)[1]]
    theirs = wb.editor.apply_edits(1, [{"kind": "review", "ids": [ids[0]], "state": "accepted"}], revision, "B")
    mine = wb.editor.apply_edits(1, [{"kind": "undo"}], revision, "A")
    assert isinstance(mine.error, ConflictError) and mine.applied == 0 and mine.revision == theirs.revision
    assert "nothing was changed" in str(mine.error)
    accepted = {r["id"] for r in get_annotations(db, 1, states=["accepted"], decode_masks=False)[1]}
    assert ids[0] in accepted and get_annotations(db, 1)[0] == theirs.revision


@pytest.mark.parametrize("edits, message", [
    ("not a list", "must be a list"),
    ([{"kind": "paint"}], "kind is one of"),
    ([{"kind": "mask", "temp_id": -1, "category_id": 3, "counts": "", "tool": "brush"}], "compressed COCO RLE"),
    ([{"kind": "mask", "temp_id": -1, "category_id": 3, "counts": "abc", "tool": "spray"}], "tool must be"),
    ([{"kind": "review", "ids": [-5], "state": "accepted"}], "never saved"),
    ([{"kind": "review", "ids": [1.5], "state": "accepted"}], "whole number"),
    ([{"kind": "mask", "temp_id": -1, "category_id": 3, "counts": "PPYo1", "tool": "brush"}], "RLE"),
])
def test_bad_edits_are_refused_with_a_reason(db, edits, message):
    from services.workbench import Workbench

    wb = Workbench(db)
    revision, rows = get_annotations(db, 1, decode_masks=False)
    if not isinstance(edits, list):
        with pytest.raises(WorkbenchError, match=message):
            wb.editor.apply_edits(1, edits, revision)
        return
    result = wb.editor.apply_edits(1, edits, revision)
    assert result.applied == 0 and message in str(result.error)
    assert get_annotations(db, 1, decode_masks=False)[0] == revision  # nothing written


def test_the_canvas_value_draws_what_the_review_shows(db):
    from app.handlers import Handlers
    from services.workbench import Workbench

    ui = Handlers(Workbench(db, score_threshold=0.05))
    proposals(db, 1)
    value = ui.canvas(1, 0.5)
    states = {i["id"]: (i["state"], i["score"]) for i in value["instances"]}
    assert sorted(s for s, _ in states.values()).count("proposed") == 2  # 0.9 and 0.6; 0.2 is under 0.5
    assert value["width"] == 64 and value["height"] == 48 and value["image_url"].startswith("/gradio_api/file=")
    # colour by class (issue 26, finding 7): one hue per class, the instances of a class told apart by shade
    hues = {}
    for inst in value["instances"]:
        r, g, b = (int(inst["color"][k:k + 2], 16) / 255 for k in (1, 3, 5))
        hues.setdefault(inst["category_id"], []).append(colorsys.rgb_to_hsv(r, g, b)[0])
    assert all(max(h) - min(h) < 0.02 for h in hues.values())  # (8-bit colour channels round a little)
    firsts = sorted(h[0] for h in hues.values())
    assert all(b - a > 0.05 for a, b in zip(firsts, firsts[1:]))  # classes apart
    same_class = [i["color"] for i in value["instances"] if i["category_id"] == value["instances"][0]["category_id"]]
    assert len(set(same_class)) == len(same_class)
    _, rows = get_annotations(db, 1, decode_masks=False)
    stored = {r["id"]: r["mask_rle"] for r in rows}
    assert all(i["counts"] == stored[i["id"]] for i in value["instances"])  # the stored RLE, not re-encoded
    value = ui.canvas(1, 0.95)  # none reaches it: the best guesses, marked low confidence
    assert [i["low"] for i in value["instances"] if i["state"] == "proposed"] == [True, True, True]
    assert "best guesses" in value["message"]
    assert "<b>" not in ui.canvas(1, 0.5, "<b>class</b>")["message"]  # messages are escaped


def test_done_rejects_the_proposals_left_and_opens_the_next_image(db):
    from app.handlers import Handlers, Opened
    from services.workbench import Workbench

    ui = Handlers(Workbench(db))
    revision = proposals(db, 2)
    gallery, ids, _ = ui.gallery("all")
    out = ui.on_done(ids, "all", 0.5, "upload", gr.EventData(None, {"image_id": 2, "revision": revision}), None)
    assert out[0] == ids[ids.index(2) + 1]  # the next image of the list is open, and highlighted in the list
    assert out[len(Opened._fields)].selected_index == ids.index(out[0])
    assert ui.step(-1)(out[0], ids, "all", 0.5, "upload", None)[-1].selected_index == ids.index(2)  # Previous moves it too
    _, rows = get_annotations(db, 2, decode_masks=False)
    assert not any(r["review_state"] == "proposed" for r in rows) and ui.wb.image_status(rows) == "done"
    # a stale revision: nothing is rejected, the image stays open with the conflict said
    revision = proposals(db, 3)
    out = ui.on_done(ids, "all", 0.5, "upload", gr.EventData(None, {"image_id": 3, "revision": revision - 1}), None)
    assert out[0] == 3 and "Conflict" in out[2]["message"]


def test_an_edited_image_stays_in_a_filtered_list(db):
    from app.handlers import Handlers
    from services.workbench import Workbench

    ui = Handlers(Workbench(db))
    revision = proposals(db, 2)
    _, ids, _ = ui.gallery("in review")  # the image has accepted annotations and proposals
    assert 2 in ids
    ui.wb.editor.finish_image(2, revision)
    assert 2 not in ui.gallery("in review")[1] and 2 in ui.gallery("in review", keep=2)[1]
