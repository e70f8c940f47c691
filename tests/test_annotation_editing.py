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


def test_second_save_of_the_same_revision_is_a_conflict_and_both_versions_survive(database, image):
    image_id, h, w = image
    seen, rows = get_annotations(database, image_id)
    mine = [InstanceData(category_id=7, mask=a_mask(h, w), source="drawn")]
    theirs = [InstanceData(category_id=3, mask=a_mask(h, w, 0, 0, 5, 5), source="drawn")]
    save_annotations(database, image_id, theirs, seen_revision=seen, user="bo")
    with pytest.raises(ConflictError) as error:
        save_annotations(database, image_id, mine, seen_revision=seen, user="ana")
    assert "changed by someone else" in str(error.value)
    _, now = get_annotations(database, image_id)
    assert [r["category_id"] for r in now] == [3]  # bo's save stands
    lost = conflict_versions(database, image_id)
    assert len(lost) == 1 and lost[0].user == "ana" and lost[0].snapshot[0]["category_id"] == 7
    assert lost[0].snapshot[0]["mask_rle"]  # ana's mask is recoverable


def test_undo_restores_the_previous_annotations_after_a_restart(database, image, tmp_path):
    image_id, h, w = image
    seen, before = get_annotations(database, image_id)
    save_annotations(database, image_id, [InstanceData(category_id=7, mask=a_mask(h, w))], seen_revision=seen)
    database.close()
    reopened = open_database(database.data_dir, database.url)
    undo(reopened, image_id)
    _, after = get_annotations(reopened, image_id)
    assert [(r["id"], r["category_id"]) for r in after] == [(r["id"], r["category_id"]) for r in before]
    assert all(np.array_equal(a["mask"], b["mask"]) if a["mask"] is not None else b["mask"] is None
               for a, b in zip(after, before))
    with pytest.raises(WorkbenchError, match="nothing to undo"):
        undo(reopened, image_id)
    reopened.close()


def test_undo_still_works_after_a_class_is_merged_or_deleted(database, image):
    from db.categories import delete_category, merge_categories

    image_id, h, w = image
    seen, before = get_annotations(database, image_id)
    assert sorted(r["category_id"] for r in before) == [3, 3, 7, 12]  # the crowd region is a car (3)
    save_annotations(database, image_id, [InstanceData(category_id=3, mask=a_mask(h, w))], seen_revision=seen)
    merge_categories(database, 7, 3)  # the snapshot's ball (7) is now a car (3)
    delete_category(database, 12, delete_annotations=True)  # the snapshot's sign (12) is gone
    undo(database, image_id)
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
    set_review_state(database, image_id, [rows[1]["id"]], "rejected", seen_revision=revision)
    out = database.data_dir / "e.json"
    export_coco(database, out)
    exported = [a for a in json.loads(out.read_text())["annotations"] if a["image_id"] == image_id]
    assert len(exported) == 5 and sum(a["mask_source"] == "predicted" for a in exported) == 1
    undo(database, image_id)  # the rejection is undone: back to proposed
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
        save_annotations(database, 2**40, [], seen_revision=None)


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
    undo(database, target)  # SQLite: the restored annotation's old id is the new one's now
    _, restored = get_annotations(database, target)
    assert sorted(r["category_id"] for r in restored) == sorted(r["category_id"] for r in rows)
    assert any(r["id"] == new_on_second and r["category_id"] == 7 for r in get_annotations(database, second)[1])
