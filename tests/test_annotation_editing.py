"""Saving, reviewing and undoing an image's annotations; two people saving the same image."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import select

from db.annotations import ConflictError, InstanceData, conflict_versions, get_annotations, save_annotations, \
    set_review_state, undo
from db.coco_export import export_coco
from db.coco_import import import_coco
from db.engine import open_database
from db.errors import WorkbenchError
from db.models import Image


@pytest.fixture
def image(database, synthetic_coco):
    import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    with database.session() as session:
        img = session.scalars(select(Image).where(Image.file_name == "img_0.jpg")).one()
        return img.id, img.height, img.width


def a_mask(height, width, x0=10, y0=5, x1=30, y1=25):
    mask = np.zeros((height, width), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_save_replaces_the_annotations_and_keeps_ids(database, image):
    image_id, h, w = image
    revision, rows = get_annotations(database, image_id)
    assert len(rows) == 4
    kept = rows[0]
    new = [InstanceData(category_id=kept["category_id"], mask=kept["mask"], source=kept["source"], id=kept["id"]),
           InstanceData(category_id=7, mask=a_mask(h, w), source="drawn"),
           InstanceData(category_id=12, box=(1, 2, 21, 12), source="drawn")]
    new_revision = save_annotations(database, image_id, new, seen_revision=revision, user="ana")
    assert new_revision == revision + 1
    revision2, rows2 = get_annotations(database, image_id)
    assert revision2 == new_revision and len(rows2) == 3
    assert rows2[0]["id"] == kept["id"] and np.array_equal(rows2[0]["mask"], kept["mask"])
    drawn = rows2[1]
    assert drawn["box"] == (10, 5, 30, 25) and drawn["mask"].sum() == 400 and drawn["created_by"] == "ana"
    assert rows2[2]["mask"] is None and rows2[2]["box"] == (1, 2, 21, 12)
    out = database.data_dir / "e.json"
    export_coco(database, out, mask_format="rle")
    exported = [a for a in json.loads(out.read_text())["annotations"] if a["image_id"] == image_id]
    assert sorted(a["mask_source"] for a in exported) == ["absent", "drawn", "imported"]


def test_saves_from_the_same_revision_merge_when_they_change_different_instances(database, image):
    """Issue 26: two people save the same image from the same revision, each changing other instances: both
    saves go in (a three-way merge against the revision they started from), nobody's edit is lost."""
    image_id, h, w = image
    seen, rows = get_annotations(database, image_id, decode_masks=False)
    theirs = [InstanceData.from_row(r, category_id=12) if r["id"] == rows[0]["id"] else InstanceData.from_row(r)
              for r in rows] + [InstanceData(category_id=3, mask=a_mask(h, w, 0, 0, 5, 5), source="drawn")]
    bo = save_annotations(database, image_id, theirs, seen_revision=seen, user="bo")
    mine = [InstanceData.from_row(r) for r in rows if r["id"] != rows[1]["id"]] + [
        InstanceData(category_id=7, mask=a_mask(h, w), source="drawn")]  # ana deletes #1 and draws one
    ana = save_annotations(database, image_id, mine, seen_revision=seen, user="ana")
    assert ana == bo + 1
    _, now = get_annotations(database, image_id, decode_masks=False)
    by_id = {r["id"]: r for r in now}
    assert by_id[rows[0]["id"]]["category_id"] == 12 and rows[1]["id"] not in by_id  # bo's class, ana's delete
    assert sorted((r["created_by"], r["category_id"]) for r in now if r["source"] == "drawn") == [("ana", 7), ("bo", 3)]
    assert len(now) == len(rows) + 1 and conflict_versions(database, image_id, "ana") == []


def test_edits_of_the_same_instance_conflict_and_only_the_loser_recovers_them(database, image):
    """Issue 26, bug 2: A and B change the same instance from the same revision: B's save is refused and named
    for that instance, B's whole edit is journalled (content "lost"); only B is offered it, and recovering it
    changes what B changed (not A's other edits), once."""
    from db.annotations import recover_lost

    image_id, h, w = image
    seen, rows = get_annotations(database, image_id, decode_masks=False)
    target, other = rows[0]["id"], rows[2]["id"]
    a_data = [InstanceData.from_row(r, category_id=12 if r["id"] == target else r["category_id"]) for r in rows]
    a_rev = save_annotations(database, image_id, a_data, seen_revision=seen, user="A")
    a_rev = set_review_state(database, image_id, [other], "rejected", seen_revision=a_rev, user="A")
    b_data = [InstanceData.from_row(r, category_id=7) if r["id"] == target else InstanceData.from_row(r)
              for r in rows] + [InstanceData(category_id=3, mask=a_mask(h, w), source="drawn")]
    with pytest.raises(ConflictError) as error:
        save_annotations(database, image_id, b_data, seen_revision=seen, user="B")
    assert error.value.instance_ids == [target] and f"#{target}" in str(error.value)
    assert "recover my lost version" in str(error.value)
    revision, now = get_annotations(database, image_id, decode_masks=False)
    assert revision == a_rev and len(now) == len(rows)  # nothing of B's written
    assert conflict_versions(database, image_id, "A") == []
    lost = conflict_versions(database, image_id, "B")
    assert len(lost) == 1 and lost[0].content == "lost" and error.value.journal_id == lost[0].id
    assert sorted((row["id"] is None, row["conflict"]) for row in lost[0].snapshot) == [(False, True), (True, False)]
    recovered = recover_lost(database, image_id, seen_revision=revision, user="B")
    _, after = get_annotations(database, image_id, decode_masks=False)
    by_id = {r["id"]: r for r in after}
    assert by_id[target]["category_id"] == 7 and by_id[other]["review_state"] == "rejected"  # A's reject stays
    assert sum(r["created_by"] == "B" for r in after) == 1 and recovered == revision + 1
    assert conflict_versions(database, image_id, "B") == []  # recovered: no longer offered
    with pytest.raises(WorkbenchError, match="no lost version"):
        recover_lost(database, image_id, seen_revision=recovered, user="B")


def test_a_review_of_another_instance_merges_and_of_the_same_one_is_journalled(database, image):
    """Issue 26, bug 2: tab A accepts #x, tab B (same revision) rejects #y: both stand. B then rejects #x, which A
    changed since B looked: refused, and the refusal is journalled (it was not: "kept in the journal" was false)."""
    image_id, _, _ = image
    seen, rows = get_annotations(database, image_id, decode_masks=False)
    x, y = rows[0]["id"], rows[1]["id"]
    set_review_state(database, image_id, [x], "proposed", seen_revision=seen, user="A")
    set_review_state(database, image_id, [y], "rejected", seen_revision=seen, user="B")
    states = {r["id"]: r["review_state"] for r in get_annotations(database, image_id, decode_masks=False)[1]}
    assert (states[x], states[y]) == ("proposed", "rejected")
    with pytest.raises(ConflictError) as error:
        set_review_state(database, image_id, [x], "rejected", seen_revision=seen, user="B")
    assert error.value.instance_ids == [x] and error.value.journal_id is not None
    assert [row["review_state"] for row in conflict_versions(database, image_id, "B")[0].snapshot] == ["rejected"]


def test_undo_restores_the_previous_annotations_after_a_restart(database, image, tmp_path):
    image_id, h, w = image
    seen, before = get_annotations(database, image_id)
    saved = save_annotations(database, image_id, [InstanceData(category_id=7, mask=a_mask(h, w))], seen_revision=seen)
    database.close()
    reopened = open_database(database.data_dir, database.url)
    undone = undo(reopened, image_id, seen_revision=saved)
    _, after = get_annotations(reopened, image_id)
    assert [(r["id"], r["category_id"]) for r in after] == [(r["id"], r["category_id"]) for r in before]
    assert all(np.array_equal(a["mask"], b["mask"]) if a["mask"] is not None else b["mask"] is None
               for a, b in zip(after, before))
    with pytest.raises(WorkbenchError, match="nothing to undo"):
        undo(reopened, image_id, seen_revision=undone)
    reopened.close()


def test_undo_still_works_after_a_class_is_merged_or_deleted(database, image):
    from db.categories import delete_category, merge_categories

    image_id, h, w = image
    seen, before = get_annotations(database, image_id)
    assert sorted(r["category_id"] for r in before) == [3, 3, 7, 12]  # the crowd region is a car (3)
    save_annotations(database, image_id, [InstanceData(category_id=3, mask=a_mask(h, w))], seen_revision=seen)
    merge_categories(database, 7, 3)  # the snapshot's ball (7) is now a car (3)
    delete_category(database, 12, delete_annotations=True)  # the snapshot's sign (12) is gone
    undo(database, image_id, seen_revision=get_annotations(database, image_id)[0])
    _, after = get_annotations(database, image_id)
    assert sorted(r["category_id"] for r in after) == [3, 3, 3]
    ball = next(r for r in before if r["category_id"] == 7)
    assert any(np.array_equal(r["mask"], ball["mask"]) for r in after if r["mask"] is not None)


def test_review_states_decide_what_is_exported(database, image):
    image_id, h, w = image
    seen, rows = get_annotations(database, image_id)
    proposals = [InstanceData(category_id=7, mask=a_mask(h, w), source="model", review_state="proposed", score=0.9),
                 InstanceData(category_id=3, mask=a_mask(h, w, 40, 30, 60, 40), source="model",
                              review_state="proposed", score=0.4)]
    keep = [InstanceData(category_id=r["category_id"], mask=r["mask"], box=r["box"], source=r["source"], id=r["id"],
                         iscrowd=r["iscrowd"]) for r in rows]
    revision = save_annotations(database, image_id, keep + proposals, seen_revision=seen)
    _, rows = get_annotations(database, image_id, states=["proposed"])
    assert len(rows) == 2
    revision = set_review_state(database, image_id, [rows[0]["id"]], "accepted", seen_revision=revision)
    revision = set_review_state(database, image_id, [rows[1]["id"]], "rejected", seen_revision=revision)
    out = database.data_dir / "e.json"
    export_coco(database, out)
    exported = [a for a in json.loads(out.read_text())["annotations"] if a["image_id"] == image_id]
    assert len(exported) == 5 and sum(a["mask_source"] == "predicted" for a in exported) == 1
    undo(database, image_id, seen_revision=revision)  # the rejection is undone: back to proposed
    _, proposed = get_annotations(database, image_id, states=["proposed"])
    assert [r["id"] for r in proposed] == [rows[1]["id"]]


def test_bad_saves_write_nothing(database, image):
    image_id, h, w = image
    seen, rows = get_annotations(database, image_id)
    for bad, message in [(InstanceData(category_id=7, mask=np.ones((h + 1, w), bool)), "does not fit"),
                         (InstanceData(category_id=99, box=(0, 0, 5, 5)), "category 99"),
                         (InstanceData(category_id=7, mask=np.zeros((h, w), bool)), "empty"),
                         (InstanceData(category_id=7, box=(5, 5, 5, 9)), "empty")]:
        with pytest.raises(WorkbenchError, match=message):
            save_annotations(database, image_id, [bad], seen_revision=seen)
    revision, after = get_annotations(database, image_id)
    assert revision == seen and [r["id"] for r in after] == [r["id"] for r in rows]


def test_an_id_beyond_32_bits_is_a_clear_error(database, image):
    with pytest.raises(WorkbenchError, match="there is no image|does not fit the database"):
        get_annotations(database, 2**40)
    with pytest.raises(WorkbenchError, match="there is no image|does not fit the database"):
        save_annotations(database, 2**40, [], seen_revision=0)


def test_encoded_masks_are_stored_as_given_and_checked(database, image):
    """The API hands masks out as compressed RLE and takes them back the same way: stored without a
    decode/encode round trip, but a string that is not an RLE of the image's size is refused."""
    from db import masks

    image_id, h, w = image
    seen, rows = get_annotations(database, image_id, decode_masks=False)
    assert all(r["mask"] is None for r in rows) and rows[0]["mask_rle"] is not None
    counts = masks.encode(a_mask(h, w))
    kept = [InstanceData.from_row(r) for r in rows]
    assert kept[0].mask is None and kept[0].mask_rle == rows[0]["mask_rle"]
    revision = save_annotations(database, image_id, kept + [InstanceData(category_id=7, mask_rle=counts)],
                                seen_revision=seen)
    _, after = get_annotations(database, image_id)
    assert [r["mask_rle"] for r in after[:-1]] == [r["mask_rle"] for r in rows]
    assert after[-1]["mask_rle"] == counts and after[-1]["box"] == (10, 5, 30, 25) and after[-1]["mask"].sum() == 400
    for bad, message in [(masks.encode(np.ones((h + 1, w), bool)), "does not fit"), ("not an RLE!", "does not fit"),
                         (masks.encode(np.zeros((h, w), bool)), "empty")]:
        with pytest.raises(WorkbenchError, match=message):
            save_annotations(database, image_id, [InstanceData(category_id=7, mask_rle=bad)], seen_revision=revision)
    assert get_annotations(database, image_id)[0] == revision
    # a changed mask replaces the stored one
    changed = InstanceData.from_row(after[-1], mask=a_mask(h, w, 0, 0, 4, 4))
    assert changed.mask_rle is None
    save_annotations(database, image_id, [changed], seen_revision=revision)
    assert get_annotations(database, image_id)[1][0]["mask"].sum() == 16


def test_undo_works_when_sqlite_reused_an_annotation_id(database, image):
    """Issue 16, item 8: delete the highest annotation id (of all images), add an annotation on another image
    (SQLite hands out that id again), undo on the first: the deleted annotation comes back (under a new id),
    the other image keeps its own."""
    image_id, h, w = image
    by_image = {i: get_annotations(database, i)[1] for i in range(1, 5)}
    highest = max(r["id"] for rows in by_image.values() for r in rows)
    target = next(i for i, rows in by_image.items() if any(r["id"] == highest for r in rows))
    second = next(i for i in by_image if i != target)
    seen, rows = get_annotations(database, target)
    save_annotations(database, target, [InstanceData.from_row(r) for r in rows if r["id"] != highest],
                     seen_revision=seen)  # the highest id is deleted
    seen2, rows2 = get_annotations(database, second)
    save_annotations(database, second, [InstanceData.from_row(r) for r in rows2]
                     + [InstanceData(category_id=7, box=(1.0, 1.0, 9.0, 9.0))], seen_revision=seen2)
    new_on_second = max(r["id"] for r in get_annotations(database, second)[1])
    undo(database, target, seen_revision=seen + 1)  # SQLite: the restored annotation's old id is the new one's now
    _, restored = get_annotations(database, target)
    assert sorted(r["category_id"] for r in restored) == sorted(r["category_id"] for r in rows)
    assert any(r["id"] == new_on_second and r["category_id"] == 7 for r in get_annotations(database, second)[1])


# ---- issue 23: the journal holds diffs; undo is revision-checked and journalled ---------------------------
def _masked_image(database, count: int = 50, height: int = 240, width: int = 320, seed: int = 0) -> int:
    """An image (no file needed) with ``count`` accepted instances whose masks are irregular blobs."""
    from db.models import Category

    rng = np.random.default_rng(seed)
    with database.session() as session:
        for category_id, name in ((3, "car"), (7, "ball"), (12, "sign")):
            if session.get(Category, category_id) is None:
                session.add(Category(id=category_id, name=name))
        image = Image(sha256=f"{seed:064x}", stored_path="images/none.jpg", file_name="blobs.jpg", width=width,
                      height=height)
        session.add(image)
        session.flush()
        image_id = image.id
    yy, xx = np.mgrid[:height, :width]
    instances = []
    for k in range(count):
        cy, cx, r = rng.integers(20, height - 20), rng.integers(20, width - 20), rng.integers(8, 20)
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
        blob &= rng.random((height, width)) < 0.8  # ragged: a long RLE, as real masks have
        instances.append(InstanceData(category_id=int(rng.choice([3, 7, 12])), mask=blob))
    save_annotations(database, image_id, instances, seen_revision=0, user="importer")
    return image_id


def _journal_bytes(database, image_id: int) -> int:
    from db.models import JournalEntry

    with database.session() as session:
        return sum(len(json.dumps(entry.snapshot)) + len(json.dumps(getattr(entry, "added", None)))
                   for entry in session.scalars(select(JournalEntry).where(JournalEntry.image_id == image_id)))


def _state(database, image_id: int) -> list[tuple]:
    return [(r["id"], r["category_id"], r["review_state"], r["mask_rle"], r["box"])
            for r in get_annotations(database, image_id, decode_masks=False)[1]]


def test_200_canvas_edits_grow_the_journal_by_their_own_size_and_undo_restores_each(database):
    """Issue 23, finding 3a: a 200-edit canvas batch grew the database by 74 MB, the journal storing every
    annotation of the image (masks included) for every edit. Each entry now holds what its edit replaced:
    200 edits of one instance each (class, review, brush) on an image of 50 masked instances grow the journal by
    at most 200 of those instances' rows, not 200 x 50; and undo still walks back every step."""
    from db import masks
    from services.workbench import Workbench

    image_id = _masked_image(database)
    wb = Workbench(database, device="cpu")
    revision, rows = get_annotations(database, image_id, decode_masks=False)
    row_bytes = max(len(json.dumps({**r, "box": list(r["box"])})) for r in rows) + 200  # one whole instance, generous
    whole_image = sum(len(json.dumps({**r, "box": list(r["box"])})) for r in rows)
    before_bytes = _journal_bytes(database, image_id)
    rng = np.random.default_rng(1)
    states, edits = [_state(database, image_id)], []
    for step in range(200):
        target = rows[int(rng.integers(len(rows)))]
        kind = ("class", "review", "mask")[step % 3]
        if kind == "class":
            edit = {"kind": "class", "id": target["id"], "category_id": int(rng.choice([3, 7, 12]))}
        elif kind == "review":
            edit = {"kind": "review", "ids": [target["id"]], "state": str(rng.choice(["accepted", "rejected"]))}
        else:  # a brush stroke: the instance's mask and a small disk more
            mask = masks.decode(get_annotations(database, image_id, decode_masks=False)[1][
                [r["id"] for r in rows].index(target["id"])]["mask_rle"], 240, 320)
            y, x = int(rng.integers(10, 230)), int(rng.integers(10, 310))
            mask[y - 3:y + 3, x - 3:x + 3] = True
            edit = {"kind": "mask", "id": target["id"], "category_id": target["category_id"],
                    "counts": masks.encode(mask), "tool": "brush"}
        result = wb.editor.apply_edits(image_id, [edit], revision, user="ana")  # one canvas batch per edit: each state
        assert result.error is None, result.error
        revision = result.revision
        edits.append(edit)
        states.append(_state(database, image_id))
    grown = _journal_bytes(database, image_id) - before_bytes
    sent = len(json.dumps(edits))  # what the edits weigh (the brush strokes' whole masks included)
    assert grown < 2 * sent and grown < 200 * row_bytes, (grown, sent, row_bytes)  # (measured: 27 KB, sent 29 KB)
    assert 200 * whole_image > 20 * grown  # whole-image snapshots: 5.2 MB
    for step in range(200, 0, -1):  # undo walks back every edit
        revision = wb.editor.undo(image_id, revision, user="ana")
        assert _state(database, image_id) == states[step - 1], f"undo of edit {step} ({edits[step - 1]['kind']})"


def test_an_undo_is_journalled_and_nothing_saved_leaves_the_journal(database, image):
    image_id, h, w = image
    seen, rows = get_annotations(database, image_id, decode_masks=False)
    mine = save_annotations(database, image_id, [InstanceData.from_row(r) for r in rows]
                            + [InstanceData(category_id=7, mask=a_mask(h, w))], seen_revision=seen, user="bo")
    added = max(r["id"] for r in get_annotations(database, image_id, decode_masks=False)[1])
    with pytest.raises(ConflictError):  # an undo sent with the revision before bo's save
        undo(database, image_id, seen_revision=seen, user="ana")
    assert added in {r["id"] for r in get_annotations(database, image_id, decode_masks=False)[1]}
    undone = undo(database, image_id, seen_revision=mine, user="ana")
    assert undone == mine + 1 and added not in {r["id"] for r in get_annotations(database, image_id)[1]}
    from db.models import JournalEntry

    with database.session() as session:
        entry = session.scalars(select(JournalEntry).where(JournalEntry.image_id == image_id)
                                .order_by(JournalEntry.id.desc())).first()
    assert (entry.action, entry.user, entry.revision, entry.content) == ("undo", "ana", mine, "diff")
    assert [row["id"] for row in entry.snapshot] == [added] and entry.snapshot[0]["created_by"] == "bo"
    assert entry.snapshot[0]["mask_rle"]  # bo's instance, whole, as the undo found it
    with pytest.raises(WorkbenchError, match="needs the revision"):
        undo(database, image_id, seen_revision=None)


def test_a_save_without_the_revision_it_read_is_refused(database, image):
    from db.annotations import save_annotations_unchecked

    image_id, h, w = image
    for missing in (None, -1):
        with pytest.raises(WorkbenchError, match="needs the revision"):
            save_annotations(database, image_id, [], seen_revision=missing)
    revision = get_annotations(database, image_id)[0]
    assert save_annotations_unchecked(database, image_id, [], user="script") == revision + 1  # imports, scripts
    undo(database, image_id, seen_revision=revision + 1)
    assert len(get_annotations(database, image_id)[1]) == 4


def test_whole_image_journal_entries_of_older_databases_are_still_undone(database, image):
    """Entries written before migration 0006 hold the whole image: undo restores it whole (and journals what it
    replaced as a diff)."""
    from db.models import JournalEntry

    image_id, h, w = image
    seen, rows = get_annotations(database, image_id, decode_masks=False)
    with database.session() as session:  # as the old code journalled a save that replaced everything by one box
        from db.models import Annotation

        old = [{"id": a.id, "category_id": a.category_id, "bbox_x": a.bbox_x, "bbox_y": a.bbox_y,
                "bbox_w": a.bbox_w, "bbox_h": a.bbox_h, "mask_rle": a.mask_rle, "mask_polygons": a.mask_polygons,
                "area": a.area, "iscrowd": a.iscrowd, "source": a.source.value, "model_version_id": None,
                "score": a.score, "review_state": a.review_state.value, "created_by": None}  # (no updated_by yet)
               for a in session.scalars(select(Annotation).where(Annotation.image_id == image_id))]
    save_annotations_unchecked = __import__("db.annotations", fromlist=["x"]).save_annotations_unchecked
    revision = save_annotations_unchecked(database, image_id, [InstanceData(category_id=12, box=(1, 1, 9, 9))])
    with database.session() as session:
        session.query(JournalEntry).delete()
        session.add(JournalEntry(image_id=image_id, revision=seen, action="save", content="snapshot", snapshot=old,
                                 user=None))
    undo(database, image_id, seen_revision=revision)
    _, after = get_annotations(database, image_id, decode_masks=False)
    assert [(r["id"], r["category_id"], r["mask_rle"]) for r in after] == [(r["id"], r["category_id"], r["mask_rle"])
                                                                           for r in rows]
