"""Property-based fuzzing (Hypothesis) of what enters through the API's save: random instances never crash the
process (a WorkbenchError with a message, or a save), never store a mask pycocotools cannot read, and what
is accepted comes back exactly through a COCO RLE export (issue 16)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from db.annotations import get_annotations
from db.coco_export import export_coco
from db.coco_import import import_coco
from db.errors import WorkbenchError

pytestmark = pytest.mark.backends("sqlite")  # the property is the validation's; the backends have their own tests

numbers = st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
                    st.floats(-200, 200), st.sampled_from([0, 1, 2, -1, 5.5, 1e9, 2e7, float("nan")]))
junk = st.one_of(st.none(), st.booleans(), st.text(max_size=8), numbers, st.lists(st.integers(0, 3), max_size=3))
polygons = st.lists(st.lists(st.one_of(st.floats(-80, 130), numbers, junk), min_size=0, max_size=12), min_size=1,
                    max_size=3)
rle_chars = st.text(alphabet=[chr(c) for c in range(48, 112)], min_size=0, max_size=30)
masks = st.one_of(
    st.none(), polygons,
    st.fixed_dictionaries({"size": st.sampled_from([[48, 64], [64, 48], [48, 64.0], "48x64"]),
                           "counts": st.one_of(rle_chars, st.lists(st.integers(-5, 3100), max_size=6),
                                               st.just([0, 3072]), st.just([100, 2000, 972]), junk)}),
    st.lists(st.lists(st.integers(0, 2), min_size=64, max_size=64), min_size=48, max_size=48),
    junk)
boxes = st.one_of(st.none(), st.lists(st.one_of(st.floats(-10, 80), numbers, junk), min_size=0, max_size=5))
hostile = st.fixed_dictionaries(
    {"category": st.sampled_from([3, 7, 12, "ball", "Car", 7.5, True, "nope", None, 10**20])},
    optional={"mask": masks, "box": boxes, "bbox": boxes, "score": st.one_of(numbers, junk),
              "iscrowd": st.one_of(st.booleans(), st.sampled_from([0, 1, 2, "false", 0.0])),
              "id": st.one_of(st.none(), st.integers(-3, 200), st.text(max_size=3)),
              "source": st.sampled_from(["drawn", "model", "grabcut", "imported", "alien"]),
              "review_state": st.sampled_from(["accepted", "proposed", "rejected", "maybe"])})





@st.composite
def valid_box(draw):
    x1, y1 = draw(st.floats(-60, 120)), draw(st.floats(-40, 90))
    return [x1, y1, x1 + draw(st.floats(0.5, 60)), y1 + draw(st.floats(0.5, 40))]


@st.composite
def valid_mask(draw):
    kind = draw(st.sampled_from(["none", "polygon", "uncompressed", "compressed"]))
    if kind == "none":
        return None
    if kind == "polygon":
        return [draw(st.lists(st.floats(-60, 120), min_size=6, max_size=12).filter(lambda p: len(p) % 2 == 0))]
    pixels = np.asfortranarray(np.array(draw(st.lists(st.booleans(), min_size=48 * 64, max_size=48 * 64)),
                                        np.uint8).reshape(48, 64))
    if kind == "compressed":
        return {"size": [48, 64], "counts": mask_utils.encode(pixels)["counts"].decode()}
    flat, runs, current, length = pixels.reshape(-1, order="F"), [], 0, 0
    for value in flat:
        if value == current:
            length += 1
        else:
            runs.append(length)
            current, length = value, 1
    runs.append(length)
    return {"size": [48, 64], "counts": runs}


valid = st.fixed_dictionaries(
    {"category": st.sampled_from([3, 7, 12, "ball", "Car"]), "box": valid_box()},
    optional={"mask": valid_mask(), "score": st.one_of(st.none(), st.floats(0, 1)), "iscrowd": st.booleans(),
              "review_state": st.sampled_from(["accepted", "proposed", "rejected"])})
instances = st.one_of(valid, valid, hostile)


@pytest.fixture
def workbench(database, synthetic_coco):
    from services.workbench import Workbench

    import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    return Workbench(database)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(instances, min_size=1, max_size=3))
def test_random_instances_are_refused_clearly_or_stored_readably(workbench, tmp_path, batch):
    db = workbench.db
    try:
        workbench.editor.save_json(1, batch, workbench.annotations(1)[0])
    except WorkbenchError as exc:
        assert str(exc) and len(str(exc)) < 1000
        event("refused")
        return
    event("saved")
    _, rows = get_annotations(db, 1, decode_masks=False)
    height, width = 48, 64
    stored = {}
    for row in rows:
        assert all(math.isfinite(v) for v in row["box"]) and row["box"][2] > row["box"][0]
        assert row["score"] is None or 0.0 <= row["score"] <= 1.0
        if row["mask_rle"] is not None:  # pycocotools reads what was stored, of the image's size
            mask = mask_utils.decode({"size": [height, width], "counts": row["mask_rle"].encode()})
            assert mask.shape == (height, width)
            stored[row["id"]] = mask
            event("saved with a mask")
    out = tmp_path / "export.json"
    export_coco(db, out, mask_format="rle", image_ids={1})
    exported = json.loads(out.read_text())
    for ann in exported["annotations"]:
        segmentation = ann["segmentation"]
        if isinstance(segmentation, dict) and ann["id"] in stored:
            decoded = mask_utils.decode({"size": segmentation["size"], "counts": segmentation["counts"].encode()})
            assert np.array_equal(decoded, stored[ann["id"]])
