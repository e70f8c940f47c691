"""Model assistance that saves labelling time (issue 24): proposals shown only where they pay (services.payoff),
hidden ones neither drawn nor charged and closed as hidden on done; box to mask from the model's soft mask
(services.box_masks, partial_sup.grabcut); keep the box; the intelligent scissors; next-photo prefetch."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from db import registry
from db.fates import fate_rows
from partial_sup.grabcut import grabcut_mask, refine_mask
from services import payoff
from services.box_masks import choose_start
from services.proposals import propose
from services.workbench import WorkbenchError
from test_model_help import bench, box_mask, FakeInstance  # noqa: F401 (the fixture)


def iou(a, b) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


# ---- the threshold and the cap ---------------------------------------------------------------------------------
def test_threshold_follows_a_known_precision_curve():
    """Precision p(s) = s: showing a proposal of score s is worth 6 s - (1 - s) (box 7 s - verify 1 s, else a 1 s
    reject), positive from s > 1/7, so the threshold is the first score above 1/7 on the grid: 0.15."""
    records = []
    for step in range(1, 100):
        score = step / 100
        for k in range(100):
            records.append(payoff.Record(score=score, rank=1, match_iou=0.9 if k < step else 0.1, right_class=True,
                                         photo=(step, k)))
    policy = payoff.choose_policy(records)
    assert policy.threshold == 0.15 and policy.cap == 1
    useful = sum(s for s in range(15, 100))
    assert policy.precision == round(useful / (85 * 100), 3)
    # a wrong class costs a class change: the break-even moves to 1/6 (6 s - 1 s - 1 s against a 1 s reject)
    wrong = [payoff.Record(r.score, r.rank, r.match_iou, False, r.photo) for r in records]
    assert payoff.choose_policy(wrong).threshold == 0.17
    # a model whose proposals never find anything: no threshold (none shown)
    useless = [payoff.Record(r.score, 1, 0.2, True, r.photo) for r in records]
    assert payoff.choose_policy(useless).threshold is None and not payoff.choose_policy(useless).shows_any


def test_cap_stops_at_the_first_rank_that_loses():
    records = []
    for photo in range(30):  # ranks 1-2 find instances, rank 3 never does
        for rank in (1, 2, 3):
            records.append(payoff.Record(score=0.9 - 0.1 * rank, rank=rank, match_iou=0.8 if rank < 3 else 0.0,
                                         right_class=True, photo=photo))
    records += [payoff.Record(score=0.95, rank=3, match_iou=0.0, right_class=True, photo=100 + k) for k in range(5)]
    policy = payoff.choose_policy(records)
    assert policy.cap == 2 and policy.threshold == 0.7
    assert policy.saving_s == round(60 * 6.0 / 35, 2) and policy.precision == 1.0  # the cap drops the rank-3 ones
    # too small a record of a class: the version's policy over all classes stands in; none at all: hidden
    pairs = [(1, r) for r in records] + [(2, records[0])]
    policies = payoff.policies(pairs)
    assert policies[2] == policies["all"] and policies[1].source == "record"
    assert payoff.policies([(1, records[0])])["all"] is payoff.NO_RECORD


# ---- hidden proposals ---------------------------------------------------------------------------------------
def test_hidden_proposals_are_neither_drawn_nor_charged_and_are_marked_on_done(bench):  # noqa: F811
    from app.handlers import Handlers

    wb, image_id, h, w, version = bench
    made = [FakeInstance(3, 0.9 - 0.1 * i, (4 * i, 0, 4 * i + 8, 8), box_mask(h, w, 4 * i, 0, 4 * i + 8, 8))
            for i in range(4)]
    propose(wb.db, image_id, None, version, instances=made)
    current = wb.instances(image_id)
    proposed = [i for i in current["instances"] if i["review_state"] == "proposed"]
    assert len(proposed) == 4 and not any(i["shown"] for i in proposed)  # a new version has no record yet
    assert current["policy"][str(version)]["all"]["source"] == "none"
    canvas = Handlers(wb).canvas(image_id, None)
    assert canvas["instances"] == [] and "4 proposal(s) hidden" in canvas["message"].replace("**", "")
    overridden = wb.instances(image_id, review_threshold=0.65)  # the slider's override shows what reaches it
    assert sum(i.get("shown", False) for i in overridden["instances"]) == 3
    with pytest.raises(WorkbenchError, match="no proposals shown"):
        wb.editor.accept_all(image_id, None, current["revision"])
    # a person draws the first proposal's object by hand, then "done"
    revision = wb.editor.save_json(image_id, [*[i for i in current["instances"]],
                                       {"category": 3, "box": [0, 0, 8, 8], "mask": box_mask(h, w, 0, 0, 8, 8)
                                        .astype(np.uint8).tolist(), "tool": "box"}], current["revision"])
    done = wb.editor.finish_image(image_id, revision)
    assert done["hidden"] == 4 and done["rejected"] == 0
    rows = [r for r in fate_rows(wb.db) if r["kind"] == "proposal"]
    assert sorted(r["fate"] for r in rows) == ["hidden"] * 4
    by_rank = {r["rank"]: r for r in rows}
    assert by_rank[1]["match_iou"] == 1.0 and by_rank[3]["match_iou"] == 0.0  # its worth, against the final labels
    assert by_rank[2]["match_iou"] == round(32 / 96, 4) and by_rank[1]["rank"] == 1
    version_help = next(v for v in wb.model_help()["versions"] if v["version_id"] == version)
    assert version_help["rejected"] == 0 and version_help["hidden"] == 4 and version_help["images"] == 0


def test_the_versions_policy_from_val_shows_the_best_proposals_up_to_the_cap(bench):  # noqa: F811
    wb, image_id, h, w, _ = bench
    policy = payoff.Policy(threshold=0.75, cap=1, precision=0.6, saving_s=4.0, records=40, photos=8, source="val")
    checkpoint = wb.db.data_dir / "models" / "fake2.pt"
    checkpoint.write_bytes(b"")
    version = registry.register_version(wb.db, checkpoint, name="val", config={},
                                        metrics={"proposal_policy": {"all": policy.as_dict()}})
    made = [FakeInstance(3, 0.9 - 0.1 * i, (4 * i, 0, 4 * i + 8, 8), box_mask(h, w, 4 * i, 0, 4 * i + 8, 8))
            for i in range(4)]
    propose(wb.db, image_id, None, version, instances=made)
    shown = [i for i in wb.instances(image_id)["instances"] if i.get("shown")]
    assert [i["score"] for i in shown] == [0.9]  # 0.8 reaches the threshold too, but the cap is 1 per photo
    text = next(v.policy_text for v in wb.versions() if v.id == version)
    assert "≥ 0.75" in text and "≤ 1/photo" in text and "precision 60%" in text and "val" in text
    revision, accepted = wb.editor.accept_all(image_id, None, wb.instances(image_id)["revision"])
    assert accepted == 1


# ---- box to mask --------------------------------------------------------------------------------------------
def misleading_photo():
    """A red disk on grey, and inside its box a red patch that is not the object: plain GrabCut takes the patch."""
    image = np.full((90, 90, 3), 90, np.uint8)
    cv2.circle(image, (45, 48), 22, (200, 40, 40), -1)
    image[18:40, 18:46] = (200, 40, 40)  # the misleading patch, inside the box
    truth = np.zeros((90, 90), np.uint8)
    cv2.circle(truth, (45, 48), 22, 1, -1)
    return image, truth.astype(bool)


def test_grabcut_from_a_soft_prior_beats_plain_grabcut_on_a_misleading_colour():
    image, truth = misleading_photo()
    box = (18, 18, 70, 72)
    plain = grabcut_mask(image, box)
    prior = cv2.GaussianBlur(truth.astype(np.float32), (9, 9), 3)  # a model's soft mask: blurred, not exact
    prior[:, :] = np.where(prior > 0.5, np.minimum(prior, 0.85), prior)  # never quite sure
    combined = grabcut_mask(image, box, prior=prior)
    assert iou(plain, truth) < 0.8 and iou(combined, truth) > iou(plain, truth) + 0.1
    outside = np.ones_like(truth)
    outside[18:72, 18:70] = False
    wide = np.ones_like(prior)  # a prior that claims the whole photo: the box stays the limit
    assert not (grabcut_mask(image, box, prior=wide) & outside).any()


def test_refine_keeps_the_box_as_its_limit():
    image, truth = misleading_photo()
    box = (18, 18, 70, 72)
    start = grabcut_mask(image, box)
    refined = refine_mask(image, start, [(45, 48)], [(28, 26)], limit_box=box)
    outside = np.ones_like(truth)
    outside[18:72, 18:70] = False
    assert not (refined & outside).any() and iou(refined, truth) > iou(start, truth)
    grown = refine_mask(image, start, [(80, 80)], [], limit_box=box)  # a positive click outside grows the limit
    assert grown[80, 80]


def test_the_start_is_chosen_from_the_clicks_record_else_from_val():
    val = {"3": {"grabcut": 0.7, "model": 0.6, "combined": 0.8, "chosen": "combined"}}
    assert choose_start([], val, 3, model_knows=True) == "combined"
    assert choose_start([], val, 4, model_knows=True) == "combined"  # nothing measured: combined
    assert choose_start([], val, 3, model_knows=False) == "grabcut"
    record = ([{"category_id": 3, "start": "grabcut", "clicks": 1} for _ in range(10)]
              + [{"category_id": 3, "start": "combined", "clicks": 2} for _ in range(10)])
    assert choose_start(record, val, 3, model_knows=True) == "grabcut"  # fewer clicks in the record win
    assert choose_start(record[:15], val, 3, model_knows=True) == "combined"  # too few of one start: val decides


# ---- keep the box -------------------------------------------------------------------------------------------
def test_keep_the_box_keeps_class_and_box_and_replaces_the_mask(bench):  # noqa: F811
    wb, image_id, h, w, version = bench
    wb.models.active = lambda: (None, None)  # the fake checkpoint holds no model: the box's mask is GrabCut's
    wrong = box_mask(h, w, 2, 2, 6, 6)  # a poor mask in a good box
    propose(wb.db, image_id, None, version,
            instances=[FakeInstance(3, 0.9, (0.0, 0.0, 30.0, 24.0), wrong), FakeInstance(3, 0.8, (0, 0, 9, 9), wrong)])
    before = {i["id"]: i for i in wb.instances(image_id)["instances"]}
    first, second = sorted(before)
    revision = wb.editor.keep_box(image_id, first, wb.instances(image_id)["revision"])
    after = {i["id"]: i for i in wb.instances(image_id)["instances"]}
    kept = after[first]
    x1, y1, x2, y2 = kept["box"]  # a box always encloses its mask tightly (COCO); the mask stays in the kept box
    assert kept["review_state"] == "accepted" and kept["category_id"] == 3 and kept["source"] == "grabcut"
    assert 0 <= x1 and 0 <= y1 and x2 <= 30 and y2 <= 24 and (x2 - x1) * (y2 - y1) > 16
    assert kept["mask"] != before[first]["mask"] and after[second]["review_state"] == "proposed"
    fate = next(r for r in fate_rows(wb.db) if r["annotation_id"] == first)
    assert fate["fate"] == "edited"
    with pytest.raises(WorkbenchError, match="not a proposal"):
        wb.editor.keep_box(image_id, first, revision)
    # the canvas's edit (key k) does the same
    result = wb.editor.apply_edits(image_id, [{"kind": "keep_box", "id": second}], revision)
    assert result.error is None and wb.annotation(image_id, second)["review_state"] == "accepted"


# ---- the scissors -------------------------------------------------------------------------------------------
def disk_photo(scale: int = 1):
    image = np.full((200 * scale, 240 * scale, 3), 30, np.uint8)
    cv2.circle(image, (120 * scale, 100 * scale), 60 * scale, (220, 220, 220), -1)
    return image


@pytest.mark.parametrize("scale", [1, 5])
def test_the_scissors_path_follows_an_edge(scale):
    from services.scissors import MAX_WINDOW_PIXELS, snap_path

    center, radius = np.array([120, 100]) * scale, 60 * scale
    a = center + radius * np.array([np.cos(0.3), np.sin(0.3)])
    b = center + radius * np.array([np.cos(1.6), np.sin(1.6)])
    path = np.array(snap_path(disk_photo(scale), [tuple(a), tuple(b)]))
    assert np.allclose(path[0], a) and np.allclose(path[-1], b) and len(path) > 3
    off = np.abs(np.hypot(*(path - center).T) - radius)
    chord = np.abs(np.hypot(*(((a + b) / 2) - center)) - radius)
    window = (abs(a - b).max() * 2 + 2 * 16) ** 2  # a long segment's window is downscaled: its working pixel
    working_pixel = max(1.0, np.sqrt(window / MAX_WINDOW_PIXELS))
    assert off.max() <= 2.0 * working_pixel < chord


def test_the_scissors_through_the_workbench(bench):  # noqa: F811
    wb, image_id, h, w, _ = bench
    out = wb.scissors_path(image_id, [[1, 1], [w - 2, 1], [w - 2, h - 2]])
    assert out["path"][0] == [1.0, 1.0] and [w - 2.0, h - 2.0] in out["path"]
    closed = wb.scissors_path(image_id, [[1, 1], [w - 2, 1], [w - 2, h - 2]], closed=True)["path"]
    assert closed[0] == [1.0, 1.0] and closed[-1] != [1.0, 1.0] and len(closed) >= len(out["path"])
    with pytest.raises(WorkbenchError, match="2 to 200 points"):
        wb.scissors_path(image_id, [[1, 1]])
    with pytest.raises(WorkbenchError):
        wb.scissors_path(image_id, [[1, 1], [w + 50, 1]])


# ---- next-photo prefetch --------------------------------------------------------------------------------------
def held_model(bench) -> tuple[threading.Event, threading.Event, list[int]]:  # noqa: F811
    """The bench's workbench gets an active model whose run is held until the test releases it -> (set when it
    runs, release, the photos it ran on)."""
    wb, image_id, h, w, version = bench
    made = [FakeInstance(3, 0.9, (0, 0, 8, 8), box_mask(h, w, 0, 0, 8, 8))]
    predicting, release, runs = threading.Event(), threading.Event(), []

    def predictions(image_id_, image):
        runs.append(image_id_)
        predicting.set()
        assert release.wait(10)
        return version, made

    wb.models.predictions = predictions
    registry.activate_version(wb.db, version)
    return predicting, release, runs


def test_prefetch_proposes_once_and_never_overwrites_a_save(bench):  # noqa: F811
    wb, image_id, h, w, version = bench
    predicting, release, runs = held_model(bench)
    wb.prefetcher.ahead_count = 2  # the suite turns prefetch off by default (conftest)
    wb.prefetch([image_id])
    assert predicting.wait(10)
    # a person saves while the model runs in the background: the save goes through at once
    revision = wb.editor.save_json(image_id, [{"category": 3, "box": [20, 20, 30, 30],
                                        "mask": box_mask(h, w, 20, 20, 30, 30).astype(np.uint8).tolist()}],
                            wb.instances(image_id)["revision"])
    release.set()
    assert wb.should_propose(image_id) is False  # waits for the background run: already proposed on
    rows = wb.instances(image_id)["instances"]
    assert runs == [image_id] and wb.prefetcher.runs == 1
    assert sorted(r["review_state"] for r in rows) == ["accepted", "proposed"]  # the save kept, proposed once
    assert wb.instances(image_id)["revision"] == revision + 1
    assert sum(r["kind"] == "proposal" for r in fate_rows(wb.db)) == 1
    wb.prefetch([image_id])  # asked again: not needed, the model does not run
    wb.prefetcher.wait(image_id)
    assert runs == [image_id]
    wb.close()
    assert wb.prefetcher._thread is None or not wb.prefetcher._thread.is_alive()


def test_the_same_photo_opened_twice_at_once_proposes_once_without_a_conflict(bench):  # noqa: F811
    """Two tabs open one photo (or the page sends the open twice) while the model runs: one run, one set of
    proposals, both callers get its result, no conflict journalled and nothing to "recover" (issue 26, bug 1)."""
    wb, image_id, h, w, version = bench
    predicting, release, runs = held_model(bench)  # the model, held until the second open is waiting
    results = [None, None]

    def open_photo(k: int) -> None:
        results[k] = wb.propose_if_needed(image_id, user=f"tab {k}")

    first = threading.Thread(target=open_photo, args=(0,))
    first.start()
    assert predicting.wait(10)
    second = threading.Thread(target=open_photo, args=(1,))
    second.start()
    deadline = time.monotonic() + 10
    while wb.flights.joined < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()
    first.join(10)
    second.join(10)
    assert wb.editor.conflicts(image_id) == [] and runs == [image_id]
    assert [r["review_state"] for r in wb.instances(image_id)["instances"]] == ["proposed"]
    assert results[0] is results[1] and results[0].added == 1 and wb.flights.joined == 1
    assert wb.propose_if_needed(image_id) is None  # opened again later: the model has seen it
    assert runs == [image_id]


# ---- the val record at the end of training ---------------------------------------------------------------------
def test_val_predictions_become_proposal_records_and_box_starts_are_measured(tmp_path):
    from types import SimpleNamespace

    from PIL import Image

    from db import masks as db_masks
    from services.box_masks import box_start_on_val
    from services.evaluation import _ground_truth, proposal_records
    from services.models import instance_to_result, read_image

    image, truth = misleading_photo()
    Image.fromarray(image).save(tmp_path / "val.png")
    counts = db_masks.encode(truth)
    ys, xs = np.nonzero(truth)
    label = SimpleNamespace(category_id=3, bbox=(int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1,
                                                 int(np.ptp(ys)) + 1), mask_rle=counts, iscrowd=False)
    record = SimpleNamespace(image_id=1, width=90, height=90, path=str(tmp_path / "val.png"), instances=[label])
    gt = _ground_truth([record], {3: "disk", 4: "other"})
    found = [FakeInstance(3, 0.9, (20, 22, 70, 72), truth), FakeInstance(4, 0.8, (20, 22, 70, 72), truth),
             FakeInstance(3, 0.3, (0, 0, 10, 10), box_mask(90, 90, 0, 0, 10, 10))]
    records = proposal_records(gt, [instance_to_result(inst, 1) for inst in found])
    by_score = {r.score: (category, r) for category, r in records}
    assert by_score[0.9][1].match_iou == pytest.approx(1.0) and by_score[0.9][1].right_class
    assert by_score[0.8][0] == 4 and not by_score[0.8][1].right_class  # the right mask with the wrong class
    assert by_score[0.3][1].match_iou == 0.0 and [by_score[s][1].rank for s in (0.9, 0.8, 0.3)] == [1, 2, 3]

    class Model:  # a model whose soft mask is the blurred disk
        def masks_for_boxes(self, img, boxes, category_ids, soft=False):
            prior = cv2.GaussianBlur(truth.astype(np.float32), (9, 9), 3)
            return [prior if soft else prior >= 0.5]

    measured = box_start_on_val([record], Model(), read_image)["3"]
    assert measured["instances"] == 1 and measured["combined"] > measured["grabcut"] + 0.1
    assert measured["chosen"] in ("combined", "model")


def test_a_record_that_pays_only_below_the_first_ranks_shows_nothing():
    records = [payoff.Record(score=0.9, rank=1, match_iou=0.0, right_class=True, photo=p) for p in range(30)]
    records += [payoff.Record(score=0.8, rank=2, match_iou=0.9, right_class=True, photo=p) for p in range(30)]
    records += [payoff.Record(score=0.7, rank=3, match_iou=0.9, right_class=True, photo=p) for p in range(3)]
    assert payoff.choose_policy(records[30:]).threshold is not None  # ranks 2-3 alone
    only_deep = [payoff.Record(r.score, r.rank + 1, r.match_iou, True, r.photo) for r in records[30:]]
    assert payoff.choose_policy(only_deep).cap >= 1  # no division by zero when no record has rank 1


def test_the_canvas_scissors_function_answers_a_path_or_a_message(bench):  # noqa: F811
    import gradio as gr

    from app.ui import _scissors_function

    wb, image_id, h, w, _ = bench
    scissors_path = _scissors_function(wb)  # gr.HTML server function: the page's arguments as one list
    assert scissors_path([image_id, [[1, 1], [w - 2, 1]]])["path"][0] == [1.0, 1.0]
    for bad in ([image_id], "x", [image_id, [[1, 1]]], [image_id, [[1, 1], [w + 9, 1]]]):
        with pytest.raises(gr.Error):
            scissors_path(bad)
