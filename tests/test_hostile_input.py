"""Issue 23, hostile input (second round): boxes with huge or non-finite coordinates no longer kill the server
(the API, the canvas, the Draw tab, the COCO import and the model itself refuse them), every refusal says what
was wrong, ids are plain ASCII digits, backbone weights come from the data folder's weights/ only, and a
right-to-left override in a class name cannot flip the rest of a row."""

from __future__ import annotations

import inspect
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from db.annotations import get_annotations
from db.coco_import import import_coco
from db.errors import CocoImportError, WorkbenchError

ROOT = Path(__file__).resolve().parents[1]
LOOSE_IDS = ["1_0", "1e1", "\u0663", "\uff18", "+3", " 3", "3 ", "0x3", "", 3.0, True, False, 2**31, 10**30, -1,
             "99999999999999", None, [3], {"id": 3}]
HOSTILE_BOXES = [[1, 1, 1e39, 20], [1, 1, math.inf, 20], [1, 1, math.nan, 20], [1, 1, 3e38, 20],
                 [-3e38, 0, 3e38, 10], [-math.inf, 1, 5, 20], [5, 5, 5, 20], [10, 1, 5, 20], [1, 1, "9", 20],
                 [1, 1, True, 20], [1, 1, 9], [1, 1, 9, 9, 9], "1,1,9,9", None, [[1, 1], [9, 9]]]


@pytest.fixture
def workbench(database, synthetic_coco):
    """The synthetic COCO set (image 1: 64x48) without a model: drawn boxes get GrabCut masks."""
    from services.workbench import Workbench

    import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    return Workbench(database)


def refusal(call, *args, **kwargs) -> str:
    """The message of the gr.Error that ``call`` raises (an API endpoint's refusal; its str() is a repr)."""
    with pytest.raises(gr.Error) as refused:
        call(*args, **kwargs)
    return refused.value.message


def state(db, image_id: int = 1):
    revision, rows = get_annotations(db, image_id, decode_masks=False)
    return revision, [(r["id"], r["box"], r["mask_rle"]) for r in rows]


# ---- boxes and points: one check (services.wire on db.checks), a property --------------------------------
junk = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-10**400, 10**400),
              st.floats(allow_nan=True, allow_infinity=True),
              st.sampled_from([1e39, 3e38, -3e38, 1e308, 5e-324, -0.0, 0.005, 1e-9]), st.text(max_size=6),
              st.sampled_from(["1", "nan", "inf", "1e39", "\u0663"])),
    lambda children: st.lists(children, max_size=5) | st.tuples(children, children), max_leaves=12)
coordinate = st.one_of(st.floats(-200, 300), st.integers(-200, 300), junk)
boxes = st.one_of(st.lists(coordinate, min_size=4, max_size=4),
                  st.tuples(coordinate, coordinate, coordinate, coordinate), junk)
points = st.one_of(st.lists(coordinate, min_size=2, max_size=2), junk)
sizes = st.tuples(st.integers(1, 5000), st.integers(1, 5000))


@settings(max_examples=600, deadline=None)
@given(value=boxes, size=sizes, clip=st.booleans())
def test_a_box_is_refused_with_a_message_or_finite_ordered_and_in_the_image(value, size, clip):
    from services import wire

    width, height = size
    check = wire.clipped_box if clip else wire.box_in_image
    try:
        box = check(value, width, height, "box 0")
    except WorkbenchError as exc:
        assert str(exc).strip() and len(str(exc)) < 400
        return
    assert isinstance(box, tuple) and len(box) == 4 and all(type(v) is float and math.isfinite(v) for v in box)
    x1, y1, x2, y2 = box
    assert x2 - x1 >= wire.MIN_BOX_SIDE and y2 - y1 >= wire.MIN_BOX_SIDE and (x2 - x1) * (y2 - y1) > 0
    if clip:  # clipped to the image: inside it
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
    else:  # at most one image size outside it
        assert -width <= x1 < x2 <= 2 * width and -height <= y1 < y2 <= 2 * height


@settings(max_examples=400, deadline=None)
@given(value=points, size=sizes)
def test_a_point_is_refused_with_a_message_or_finite_and_inside_the_image(value, size):
    from services import wire

    width, height = size
    try:
        x, y = wire.point_in_image(value, width, height, "positive_points")
    except WorkbenchError as exc:
        assert str(exc).strip() and "positive_points" in str(exc)
        return
    assert type(x) is float and type(y) is float and 0 <= x < width and 0 <= y < height


# ---- boxes through every entry --------------------------------------------------------------------------
@pytest.mark.parametrize("box", HOSTILE_BOXES, ids=repr)
def test_hostile_boxes_are_refused_by_the_api_the_canvas_and_the_draw_tab(workbench, box):
    """/add_boxes (the Api object), the canvas's box edit and the Draw tab's boxes: a clear message, nothing
    stored (add_boxes: the boxes are checked before any reaches GrabCut or the model)."""
    from app.api import Api

    db = workbench.db
    before = state(db)
    message = refusal(Api(workbench).add_boxes, 1, [{"category": "ball", "box": box}], before[0], request=None)
    assert message.startswith("box 0") and any(said in message for said in (
        "[x1, y1, x2, y2]", "a box value must be a finite number", "has no area", "more than one image size outside"))
    result = workbench.editor.apply_edits(1, [{"kind": "box", "temp_id": -1, "category_id": 7, "box": box}], before[0])
    assert result.applied == 0 and "edit 0: box" in str(result.error)
    if isinstance(box, list) and len(box) == 4:
        drawn = [{"xmin": box[0], "ymin": box[1], "xmax": box[2], "ymax": box[3], "label": "ball", "id": None}]
        with pytest.raises(WorkbenchError, match="drawn box 1"):
            workbench.editor.save_drawn_boxes(1, drawn, 1.0, box_only=False, seen_revision=None)
    assert state(db) == before


def test_boxes_partly_outside_are_clipped_and_the_api_save_keeps_its_limit(workbench):
    """A drawn box that overlaps the image is clipped to it (its mask is made inside the image); the API's save
    stores a box as sent, up to one image size outside the 64x48 image."""
    revision, how = workbench.editor.add_boxes(1, [(7, [-10, -5, 30, 400 / 10])], box_only=False, seen_revision=None)
    _, rows = get_annotations(workbench.db, 1, decode_masks=False)
    assert rows[-1]["box"] == (0.0, 0.0, 30.0, 40.0) and how == ["grabcut mask"]
    with pytest.raises(WorkbenchError, match="does not overlap the 64x48 image"):
        workbench.editor.add_boxes(1, [(7, [70, 5, 100, 20])], box_only=False, seen_revision=None)
    revision = workbench.editor.save_json(1, [{"category": "ball", "box": [-64, -48, 128, 96]}], revision)
    with pytest.raises(WorkbenchError, match="more than one image size outside"):
        workbench.editor.save_json(1, [{"category": "ball", "box": [-64.5, -48, 128, 96]}], revision)


@pytest.mark.parametrize("points", [[[math.nan, 3]], [[3, math.inf]], [[1e39, 3]], [[3, "4"]], [[True, 3]],
                                    [[3, 4, 5]], "3,4", [[-1, 3]], [[64, 3]], [[3, 48]]], ids=repr)
def test_hostile_clicks_are_refused_by_the_api_and_the_canvas(workbench, points):
    from app.api import Api

    db = workbench.db
    before = state(db)
    ann_id = before[1][0][0]
    assert refusal(Api(workbench).refine, 1, ann_id, points, [], before[0], request=None).startswith("positive_points")
    result = workbench.editor.apply_edits(1, [{"kind": "refine", "id": ann_id, "positive": points}], before[0])
    assert result.applied == 0 and "edit 0: positive" in str(result.error)
    assert state(db) == before


@pytest.mark.parametrize("bbox, message", [([1, 1, 1e39, 5], "more than one image size outside"),
                                           ([1, 1, 10**400, 5], "finite number"),
                                           ([-1e9, 1, 5, 5], "more than one image size outside"),
                                           ([70, 10, 5, 5], "does not overlap"),
                                           ([1, 1, 0.001, 5], "no area")])
def test_the_coco_import_refuses_hostile_boxes_and_loose_ids(database, synthetic_coco, bbox, message):
    """A box-only annotation's bbox follows the API's rule (db.checks); ids are JSON integers (1.0 and true
    used to match image 1 and category 1)."""
    data = json.loads(synthetic_coco.read_text())
    box_only = next(a for a in data["annotations"] if a["segmentation"] == [])
    box_only["bbox"] = bbox
    data["annotations"][0]["image_id"] = 1.0
    data["annotations"][1]["image_id"] = True
    data["annotations"][3]["category_id"] = "7"
    synthetic_coco.write_text(json.dumps(data))
    with pytest.raises(CocoImportError) as refused:
        import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    text = str(refused.value)
    assert f"annotation {box_only['id']}: a box-only annotation" in text and message in text
    for index in (0, 1, 3):
        assert f"annotation {data['annotations'][index]['id']}: 'image_id' and 'category_id' must be integers" in text


# ---- the model refuses what it cannot use (in a subprocess: a crash must fail the test, not end pytest) ----
MODEL_SCRIPT = r"""
import math, sys
import numpy as np, torch
from mnc_core import MNCConfig, Predictor, build_model
from mnc_core.roi_warp import roi_warp, roi_warp_pooled

torch.manual_seed(0)
config = MNCConfig(min_size=64, max_size=96)
predictor = Predictor(build_model(config, 3, backbone_weights="none"), config, [(3, "car"), (7, "ball"), (12, "sign")],
                      "cpu")
image = np.full((60, 80, 3), 90, np.uint8)
features = torch.randn(1, 8, 12, 14)
for box in ([1, 1, math.inf, 20], [1, 1, math.nan, 20], [1, 1, 1e39, 20], [-3e38, 0, 3e38, 10], [5, 5, 5, 20]):
    calls = {"roi_warp": lambda: roi_warp(features, torch.tensor([[0.0, *box]]), 7, 1 / 8),
             "roi_warp_pooled": lambda: roi_warp_pooled(features, torch.tensor([[0.0, *box]]), 14, 1 / 8),
             "masks_for_boxes": lambda: predictor.masks_for_boxes(image, [box], [7])}
    for name, call in calls.items():
        try:
            with torch.no_grad():
                call()
            print(name, box, "computed")
        except ValueError as exc:
            print(name, box, "refused:", exc)
print(len(predictor.masks_for_boxes(image, [[8, 8, 40, 30]], [7])), "mask for a good box")
"""


def test_the_model_refuses_non_finite_and_degenerate_boxes_instead_of_crashing():
    done = subprocess.run([sys.executable, "-c", MODEL_SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, f"the process ended with {done.returncode}: {done.stdout}{done.stderr[-2000:]}"
    lines = done.stdout.splitlines()
    assert lines[-1] == "1 mask for a good box"
    said = {line.split(" [", 1)[0] + " " + line.split("]", 1)[0].split("[", 1)[1]: line for line in lines[:-1]}
    for box in ("1, 1, inf, 20", "1, 1, nan, 20", "1, 1, 1e+39, 20", "-3e+38, 0, 3e+38, 10"):
        for name in ("roi_warp", "roi_warp_pooled", "masks_for_boxes"):
            assert "refused:" in said[f"{name} {box}"] and "not finite" in said[f"{name} {box}"], said
    assert "has no area" in said["masks_for_boxes 5, 5, 5, 20"]  # roi_warp warps a line; a person's box is refused


# ---- a real server with a model lives on ---------------------------------------------------------------------
@pytest.mark.backends("sqlite")
def test_the_server_refuses_hostile_boxes_and_lives_on(tmp_path, tmp_path_factory, synthetic_coco):
    """`launch.py serve` (its own process) with an active model: /add_boxes with [1, 1, 1e39, 20], inf and NaN
    (a raw HTTP body: JSON has no inf) used to end the server in torchvision's C code; each is answered with a
    message, nothing is stored, and the server then adds a good box."""
    import httpx
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from db.engine import open_database
    from test_app_helpers import register_tiny_model
    from test_security import call
    from test_serve import start_server

    data_dir = tmp_path / "wb"
    db = open_database(data_dir)
    import_coco(db, synthetic_coco, synthetic_coco.parent / "images")
    register_tiny_model(db, tmp_path_factory.getbasetemp())
    before = state(db)
    db.close()
    process, url = start_server(data_dir, WORKBENCH_SCORE_THRESHOLD="0")
    try:
        client = Client(url, verbose=False)
        for box in ([1, 1, 1e39, 20], [1, 1, 3e38, 20], [-3e38, 1, 3e38, 20]):
            with pytest.raises(AppError, match="box 0 .* is more than one image size outside the 64x48 image"):
                client.predict(1, [{"category": "ball", "box": box}], before[0], api_name="/add_boxes")
        http = httpx.Client(base_url=url, timeout=120)
        for token in ("Infinity", "-Infinity", "NaN"):
            body = '{"data": [1, [{"category": "ball", "box": [1, 1, %s, 20]}], %d]}' % (token, before[0])
            response = http.post("gradio_api/call/add_boxes", content=body,
                                 headers={"Content-Type": "application/json"})
            assert response.status_code == 200, response.text
            event = response.json()["event_id"]
            with http.stream("GET", f"gradio_api/call/add_boxes/{event}") as stream:
                answer = "".join(stream.iter_text())
            assert "event: error" in answer and "a box value must be a finite number" in answer, answer
            assert process.poll() is None
        check = open_database(data_dir, migrate=False)
        try:
            assert state(check) == before  # nothing stored
        finally:
            check.close()
        added = client.predict(1, [{"category": "ball", "box": [30, 20, 55, 40]}], before[0], api_name="/add_boxes")
        assert added["masks"][0] in ("model mask", "combined mask", "grabcut mask") and process.poll() is None
        assert call(http, "instances", [1])[0] == "complete"
    finally:
        process.terminate()
        process.wait(timeout=60)


# ---- every refusal says what was wrong ------------------------------------------------------------------------
FUZZED = ("propose", "save_annotations", "add_boxes", "refine", "record_visit", "list_images", "instances",
          "export_coco", "model_help")
values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 8), st.sampled_from([10**30, 2**63, -10**30]),
              st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e39, 3e38, 2.5, 3.0]),
              st.text(max_size=5), st.sampled_from(["1", "1_0", "\u0663", "all", "rle", "most_useful", "ball"]),
              st.fixed_dictionaries({"category": st.sampled_from(["ball", 7, None, [1]]),
                                     "box": st.lists(st.one_of(st.floats(-100, 100), st.floats()), max_size=5)})),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=10)


@pytest.mark.backends("sqlite")
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(endpoint=st.sampled_from(FUZZED), arguments=st.lists(values, max_size=7))
def test_every_refusal_of_the_api_says_what_was_wrong(workbench, endpoint, arguments):
    """The Api's endpoints called with wrong types, wrong values and too many or too few values: each call
    either answers or raises gr.Error with a message (85 of 805 fuzzed calls used to answer {"error": null})."""
    from app.api import Api

    method = getattr(Api(workbench), endpoint)
    keywords = {"request": None} if "request" in inspect.signature(method).parameters else {}
    try:
        method(*arguments, **keywords)
    except gr.Error as exc:
        assert isinstance(exc.message, str) and exc.message.strip() and exc.message != "None", (endpoint, arguments)


@pytest.mark.parametrize("arguments, message", [
    (["nope", 0, 0, ""], "the mode must be one of heads, full"),
    (["heads", "x", 0, "none"], "iterations must be a whole number, not 'x'"),
    (["heads", 1e30, 0, "none"], "iterations must be a whole number, not 1e+30"),
    (["heads", 2, "64", ["none"]], "backbone_weights must be empty"),
    (["heads", 2, -64, "none"], "image_size must be a whole number from 0 to"),
])
def test_retrain_refuses_wrong_values_before_a_run_starts(workbench, arguments, message):
    from app.api import Api

    assert message in refusal(Api(workbench).retrain, *arguments)
    assert workbench.latest_run() is None


# ---- loose ids ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", LOOSE_IDS, ids=repr)
def test_ids_are_plain_ascii_digits_everywhere(workbench, value):
    """Python's int() reads "1_0" as 10 and "٣" / "８" as 3 / 8, float() reads "1e1": an id is a JSON integer or
    a text of ASCII digits, nothing else (API, canvas edits, the page's handlers, the class field)."""
    from app.api import Api
    from app.handlers import _need

    api = Api(workbench)
    assert refusal(api.instances, value).startswith("image_id must be a whole number")
    if value is None or value == "":
        expected = "seen_revision is missing"
    elif value == -1 and not isinstance(value, bool):
        expected = "seen_revision -1 (no check) is no longer accepted"
    else:
        expected = "seen_revision must be a whole number"
    assert refusal(api.save_annotations, 1, [], value, request=None).startswith(expected)
    revision, rows = get_annotations(workbench.db, 1, decode_masks=False)
    for edit in ({"kind": "review", "ids": [value], "state": "accepted"}, {"kind": "delete", "ids": [value]},
                 {"kind": "class", "id": rows[0]["id"], "category_id": value}):
        if value is None and edit["kind"] != "class":
            continue  # no id: nothing to review or delete
        result = workbench.editor.apply_edits(1, [edit], revision)
        assert result.applied == 0 and any(said in str(result.error) for said in ("whole number", "no class",
                                                                                    "was never saved"))
    with pytest.raises(WorkbenchError):
        workbench.editor.apply_edits(value, [], None)
    if value is not None:
        with pytest.raises(WorkbenchError, match="whole number"):
            _need(value, "a model version")
    with pytest.raises(WorkbenchError, match="there is no class"):
        workbench.editor.category_id(value)
    assert get_annotations(workbench.db, 1, decode_masks=False)[0] == revision


def test_ids_as_numbers_and_digit_texts_still_work(workbench):
    from app.api import Api

    api = Api(workbench)
    assert api.instances(1)["image_id"] == api.instances("1")["image_id"] == 1
    assert workbench.editor.category_id(7) == workbench.editor.category_id("7") == workbench.editor.category_id(" Ball ") == 7
    revision = api.instances(1)["revision"]
    assert api.save_annotations("1", api.instances(1)["instances"], str(revision), request=None)["revision"] == \
        revision + 1
    result = workbench.editor.apply_edits(1, [{"kind": "delete", "ids": "12"}], revision + 1)  # a text is not a list of ids
    assert result.applied == 0 and "ids must be a list" in str(result.error)


# ---- backbone weights: only the data folder's weights/ ---------------------------------------------------------
def test_backbone_weights_come_from_the_weights_folder_only(workbench, tmp_path):
    """/retrain's and the Train tab's backbone_weights: empty, "none", the server's default, or a file in
    <data dir>/weights/. Anything else gets the same message whether or not the file exists (nothing about
    the server's other files leaks), and no run starts."""
    from services import wire

    data_dir = workbench.db.data_dir
    folder = data_dir / "weights"
    folder.mkdir()
    (folder / "mobilenet.pth").write_bytes(b"PK weights")
    outside = tmp_path / "secret.pth"
    outside.write_bytes(b"secret")
    (folder / "link.pth").symlink_to(outside)
    inside = str((folder / "mobilenet.pth").resolve())
    assert wire.backbone_weights("mobilenet.pth", data_dir, None) == inside
    assert wire.backbone_weights(str(folder / "mobilenet.pth"), data_dir, None) == inside
    assert wire.backbone_weights(" none ", data_dir, "/opt/w.pth") == "none"
    assert wire.backbone_weights("", data_dir, "/opt/w.pth") == wire.backbone_weights(None, data_dir, "/opt/w.pth") == \
        wire.backbone_weights("/opt/w.pth", data_dir, "/opt/w.pth") == "/opt/w.pth"
    messages = set()
    for value in (str(outside), str(tmp_path / "missing.pth"), "/etc/passwd", "/etc/missing", "../secret.pth",
                  "weights/../../secret.pth", "link.pth", "missing.pth", str(folder), "a\x00b", 5, ["x"]):
        with pytest.raises(WorkbenchError) as refused:
            workbench.start_training("heads", 2, 64, value)
        messages.add(str(refused.value).split(", not ")[0])
        assert "secret" not in str(refused.value).replace(str(value), "") and "list index" not in str(refused.value)
    assert len(messages) == 1 and f"weights file in the data folder's weights/ folder ({folder})" in messages.pop()
    assert workbench.latest_run() is None


# ---- bidi: a right-to-left override in a class name ------------------------------------------------------------
def test_names_are_bidi_isolated_in_the_page_texts(workbench):
    """Python side: the Draw tab's messages, the class pickers and the "no such class" list isolate names."""
    from app.handlers import Handlers

    flipped = workbench.add_category("\u202ecar2")
    revision, said = workbench.editor.save_drawn_boxes(1, [{"xmin": 2, "ymin": 2, "xmax": 30, "ymax": 30, "label": flipped,
                                                     "id": None}], 1.0, box_only=True, seen_revision=None)
    assert said[-1] == "\u2068car2\u2069 added (box only)"
    choices = Handlers(workbench).class_outputs().class_pick.choices
    assert ("\u2068car2\u2069 (id %d)" % flipped, flipped) in [tuple(c) for c in choices]
    with pytest.raises(WorkbenchError) as refused:
        workbench.editor.category_id("dog")
    assert "\u202e" not in str(refused.value) and "\u2068car2\u2069" in str(refused.value)


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="no /usr/bin/chromium: `apt-get install -y chromium`")
def test_the_review_canvas_isolates_class_names_in_its_rows():
    """The review canvas (app/canvas.js in Chromium): a class named "\u202ecar" (RIGHT-TO-LEFT OVERRIDE) or
    "\u2069\u202eball" used to reverse the rest of its instance row (score and state read backwards, left of
    the name); now the name is isolated: the row still reads "#id name · score · state" left to right."""
    from playwright.sync_api import sync_playwright

    from app.canvas import CSS, JS, TEMPLATE, canvas_value

    instances = [{"id": 5, "category_id": 3, "review_state": "proposed", "score": 0.9, "box": [1, 1, 20, 20],
                  "mask": None, "source": "model"},
                 {"id": 6, "category_id": 7, "review_state": "proposed", "score": 0.8, "box": [5, 5, 30, 30],
                  "mask": None, "source": "model"}]
    value = canvas_value(image={"id": 1, "width": 64, "height": 48}, image_url=None, revision=1, instances=instances,
                         classes={3: "\u202ecar", 7: "\u2069\u202eball"}, review_threshold=0.5, score_threshold=0.05)
    page_html = (f"<html><head><meta charset='utf-8'><style>{CSS}</style></head><body style='width:900px'>"
                 f"<div id='host'>{TEMPLATE}</div></body></html>")
    start = ("([source, value]) => { new Function('element', 'trigger', 'props', 'server', 'upload', 'watch', source)"
             "(document.getElementById('host'), () => {}, {value}, {}, null, () => {}); }")  # as gr.HTML's js_on_load
    measure = """(id) => {  // where the class name and the score are drawn in the row of instance `id`
      const row = document.querySelector(`.wb-row[data-id="${id}"]`);
      const place = (needle) => {  // [left, right] of the glyphs of the first text `needle` in the row
        const walker = document.createTreeWalker(row, NodeFilter.SHOW_TEXT);
        for (let node = walker.nextNode(); node; node = walker.nextNode()) {
          const at = node.data.indexOf(needle);
          if (at >= 0) {
            const range = document.createRange(); range.setStart(node, at); range.setEnd(node, at + needle.length);
            const box = range.getBoundingClientRect(); return [box.left, box.right];
          }
        }
        return null;
      };
      return {name: place(id === 5 ? 'car' : 'ball'), score: place(id === 5 ? '0.90' : '0.80'), html: row.innerHTML};
    }"""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.set_content(page_html)
            page.evaluate(start, [JS, value])
            page.wait_for_selector('.wb-row[data-id="6"]')
            for instance_id in (5, 6):
                seen = page.evaluate(measure, instance_id)
                assert seen["name"] and seen["score"], seen
                assert seen["score"][0] >= seen["name"][1] - 0.5, seen  # the score right of the name, as written
        finally:
            browser.close()
