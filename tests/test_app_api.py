"""The headless API through gradio_client: upload_images, propose, save_annotations, retrain, export_coco."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from test_app_helpers import served_workbench


@pytest.fixture(scope="module")
def app_server(tmp_path_factory, db_backend):
    with served_workbench(tmp_path_factory, db_backend, "api", max_request_bytes=2**20) as served:
        yield served


@pytest.fixture(scope="module")
def client(app_server):
    from gradio_client import Client

    return Client(app_server["url"], verbose=False)


def _files(folder):
    folder.mkdir(exist_ok=True)
    pixels = np.full((60, 80, 3), 40, np.uint8)
    pixels[10:30, 10:40] = (220, 40, 40)
    pixels[35:55, 45:75] = (40, 220, 40)
    Image.fromarray(pixels).save(folder / "shapes.png")
    Image.fromarray(pixels).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray((np.arange(60 * 80).reshape(60, 80) * 13).astype(np.uint16)).save(folder / "deep.png")
    rgba = np.dstack([pixels, np.full((60, 80), 128, np.uint8)])
    Image.fromarray(rgba).save(folder / "alpha.png")
    buffer = io.BytesIO()
    Image.fromarray(pixels[:, ::-1].copy()).save(buffer, format="JPEG")
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (folder / "notes.txt.png").write_bytes(b"this is not an image")
    return [folder / n for n in ("shapes.png", "cmyk.jpg", "deep.png", "alpha.png", "truncated.jpg", "notes.txt.png")]


def test_upload_images_returns_ids_and_says_why_files_are_refused(client, app_server):
    from gradio_client import handle_file

    files = _files(app_server["root"] / "uploads")
    result = client.predict([handle_file(str(f)) for f in files], api_name="/upload_images")
    assert result["added"] == 4 and result["existing"] == 0 and len(result["image_ids"]) == 4
    refused = " ".join(result["refused"])
    assert "truncated.jpg" in refused and "notes.txt.png" in refused and "not an image" in refused
    again = client.predict([handle_file(str(files[0]))], "val", api_name="/upload_images")
    assert again["image_ids"] == result["image_ids"][:1] and again["existing"] == 1
    app_server["uploaded"] = result["image_ids"]


def test_propose_then_save_with_conflict_detection(client, app_server):
    image_id = app_server.get("uploaded", [None])[0]
    if image_id is None:
        pytest.skip("needs the upload test")
    proposed = client.predict(image_id, 0.0, api_name="/propose")
    assert proposed["image_id"] == image_id and proposed["added"] == len(proposed["instances"]) > 0
    assert proposed["model_version_id"] == app_server["version"]
    first = proposed["instances"][0]
    assert first["review_state"] == "proposed" and first["source"] == "model" and 0 <= first["score"] <= 1
    assert first["mask"]["size"] == [60, 80] and isinstance(first["mask"]["counts"], str)
    assert first["category"] in ("car", "ball", "sign")
    revision = proposed["revision"]

    keep = dict(first, review_state="accepted")
    drawn = {"category": "ball", "box": [45, 35, 75, 55]}  # box-only
    painted = {"category_id": 3, "mask": [[10, 10, 40, 10, 40, 30, 10, 30]]}  # a polygon
    saved = client.predict(image_id, [keep, drawn, painted], revision, api_name="/save_annotations")
    assert saved["revision"] == revision + 1
    by_source = sorted((i["source"], i["review_state"], i["mask"] is None) for i in saved["instances"])
    assert by_source == [("drawn", "accepted", False), ("drawn", "accepted", True), ("model", "accepted", False)]
    assert next(i for i in saved["instances"] if i["id"] == first["id"])["mask"] == first["mask"]  # as it was

    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="changed by someone else"):  # the revision this client saw is old now
        client.predict(image_id, [drawn], revision, api_name="/save_annotations")
    from db.annotations import conflict_versions

    lost = conflict_versions(app_server["db"], image_id)
    assert len(lost) == 1 and lost[0].snapshot[0]["category_id"] == 7  # the losing version is kept
    now = saved["saved_revision"]
    with pytest.raises(AppError, match="compressed RLE counts are not a 80x60 mask"):
        client.predict(image_id, [{"category": "ball", "mask": {"size": [60, 80], "counts": "0a0"}}], now,
                       api_name="/save_annotations")
    with pytest.raises(AppError, match="no class 'dog'"):
        client.predict(image_id, [{"category": "dog", "box": [1, 1, 9, 9]}], now, api_name="/save_annotations")
    # a save replaces the image's annotations: without the revision it read, it would overwrite others' saves
    with pytest.raises(TypeError, match="seen_revision"):  # gradio_client knows it is required
        client.predict(image_id, [drawn], api_name="/save_annotations")
    with pytest.raises(AppError, match="seen_revision is missing: .*send the image's revision as seen_revision: the 'revision' of /instances"):
        client.predict(image_id, [drawn], None, api_name="/save_annotations")
    with pytest.raises(AppError, match=r"seen_revision -1 \(no check\) is no longer accepted.*/instances"):
        client.predict(image_id, [drawn], -1, api_name="/save_annotations")


def test_export_coco_defaults_and_reviewed_rle(client, app_server):
    from pycocotools.coco import COCO

    path = client.predict(api_name="/export_coco")  # polygon, all images
    data = json.loads(open(path).read())
    assert data["info"]["mask_format"] == "polygon"
    assert len(data["images"]) >= 4
    assert all(isinstance(a["segmentation"], list) for a in data["annotations"] if not a["iscrowd"])
    reviewed = client.predict("rle", "reviewed", api_name="/export_coco")
    coco = COCO(reviewed)
    from db.queries import reviewed_image_ids

    assert set(coco.getImgIds()) == reviewed_image_ids(app_server["db"])
    masks = [a for a in coco.dataset["annotations"] if not a.get("box_only")]
    assert masks and all(isinstance(a["segmentation"], dict) for a in masks)
    assert coco.annToMask(masks[0]).sum() == masks[0]["area"]


@pytest.mark.backends("sqlite")  # training processes on PostgreSQL: tests/test_training_process.py
def test_retrain_waits_for_the_new_version(client, app_server):
    from db import registry

    before = registry.active_version(app_server["db"]).id
    job = client.submit("heads", 2, 64, "none", api_name="/retrain")
    seen = []
    while not job.done():
        progress = job.status().progress_data
        if progress:
            seen.append((progress[0].index, progress[0].length, progress[0].desc))
        time.sleep(0.2)
    result = job.result(timeout=240)
    assert seen and all("training run" in desc for _, _, desc in seen)
    assert result["status"] == "succeeded" and result["iterations"] == 2
    assert result["version_id"] != before and result["active"] is True
    assert {"train_loss", "set_A", "set_B", "mode"} <= set(result["metrics"]) and result["history"][-1][0] == 2
    assert registry.active_version(app_server["db"]).id == result["version_id"]


def test_hostile_masks_are_refused_and_the_server_lives_on(client, app_server):
    """Issue 16, items 1-3: polygons far outside the image or not finite (pycocotools crashed the server on
    them), uncompressed RLE that covers less than the image (pycocotools' uninitialised memory came back as
    a mask) and compressed RLE with over-long numbers (stored, then unreadable) are refused with a message;
    nothing is stored and the server answers the next call."""
    from gradio_client.exceptions import AppError

    from db.annotations import get_annotations

    db = app_server["db"]
    image_id = app_server["uploaded"][0]  # shapes.png, 80x60 (uploaded by the first test)
    def state():
        revision, rows = get_annotations(db, image_id, decode_masks=False)
        return revision, [(r["id"], r["mask_rle"], r["box"]) for r in rows]

    before = state()
    over_long = chr(48 + (5 | 0x20)) + chr(48) + "0"  # 5, then 0 ... a number in two characters where one does
    hostile = [
        ([[0, 0, 1e9, 0, 1e9, 1e9]], "further than one image size outside"),
        ([[0, 0, 2e7, 0, 2e7, 2e7]], "further than one image size outside"),
        ([[0, 0, 10]], "at least 3"),
        ({"size": [48, 64], "counts": [0, 10]}, r"is 64x48 \(w x h\) but its image is 80x60"),
        ({"size": [60, 80], "counts": [0, 10]}, "sum to 10, not height x width = 4800"),
        ({"size": [60, 80], "counts": [-5, 4805]}, "integers from 0 to height x width"),
        ({"size": [60, 80], "counts": over_long}, "extra characters"),
    ]
    for mask, message in hostile:
        with pytest.raises(AppError, match=message):
            client.predict(image_id, [{"category": "ball", "mask": mask}], before[0], api_name="/save_annotations")
    # NaN cannot be sent by gradio_client (not JSON); a raw HTTP call can (Python's json reads it)
    import urllib.request

    body = ('{"data": [%d, [{"category": "ball", "mask": [[0, 0, NaN, 0, 10, 10]]}], %d]}'
            % (image_id, before[0])).encode()
    request = urllib.request.Request(app_server["url"] + "gradio_api/call/save_annotations", data=body,
                                     headers={"Content-Type": "application/json"})
    event = json.loads(urllib.request.urlopen(request, timeout=30).read())["event_id"]
    stream = urllib.request.urlopen(app_server["url"] + f"gradio_api/call/save_annotations/{event}", timeout=30)
    answer = stream.read().decode()
    assert "event: error" in answer and "not a finite number" in answer, answer
    assert state() == before
    saved = client.predict(image_id, [{"category": "ball", "mask": [[10, 10, 40, 10, 40, 30, 10, 30]]}], before[0],
                           api_name="/save_annotations")
    assert saved["instances"][-1]["mask"]["size"] == [60, 80]


def test_other_hosts_origins_and_huge_bodies_are_refused(client, app_server):
    """Issue 16, items 4 and 5, through the real server (no logins): a request addressed to another name (DNS
    rebinding) or sent by a page of another origin gets 403; a body over the limit (here 1 MB) gets 413
    before it is read whole, with or without a Content-Length; the server answers normally afterwards."""
    import httpx

    url = app_server["url"]
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    call = "gradio_api/call/overview"
    assert httpx.post(url + call, json={"data": []}, timeout=30).status_code == 200
    assert httpx.post(url + call, json={"data": []}, timeout=30,
                      headers={"Host": "localhost:%d" % port}).status_code == 200
    rebinding = httpx.post(url + call, json={"data": []}, timeout=30, headers={"Host": "evil.example"})
    assert rebinding.status_code == 403 and "answers requests for" in rebinding.json()["error"]
    assert httpx.get(url, timeout=30, headers={"Host": "evil.example:%d" % port}).status_code == 403
    foreign = httpx.post(url + call, json={"data": []}, timeout=30, headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403
    big = b'{"data": [1, [' + b"0," * 600_000 + b'0], -1]}'  # 1.2 MB
    too_large = httpx.post(url + "gradio_api/call/save_annotations", content=big, timeout=30,
                           headers={"Content-Type": "application/json"})
    assert too_large.status_code == 413 and "--max-request-mb" in too_large.json()["error"]

    def chunks():
        for start in range(0, len(big), 65536):
            yield big[start:start + 65536]

    chunked = httpx.post(url + "gradio_api/call/save_annotations", content=chunks(), timeout=30,
                         headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413
    assert client.predict(api_name="/overview") is not None


def test_wrong_values_and_huge_images_are_refused_through_the_server(client, app_server, tmp_path):
    """Issue 16, items 6 and 9 through the real server: a 17000 x 17000 PNG of 1 MB is refused by its header's
    size; an id given as text, a flipped bbox, a class id 7.5 are refused with a message naming the field."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    from PIL import Image as PILImage

    huge = tmp_path / "huge.png"
    PILImage.new("1", (17000, 17000)).save(huge)
    result = client.predict([handle_file(str(huge))], "train", api_name="/upload_images")
    assert result["image_ids"] == [] and "17000x17000 is more than 150 megapixels" in result["refused"][0]
    image_id = app_server["uploaded"][0]
    for instance, message in (({"category": "ball", "box": [1, 1, 9, 9], "id": "1"}, "'id' must be a whole number"),
                              ({"category": "ball", "bbox": [10, 10, -5, 4]}, "has no area"),
                              ({"category_id": 7.5, "box": [1, 1, 9, 9]}, "a class id"),
                              ({"category": "ball", "box": [1, 1, 9, 9], "iscrowd": "false"}, "'iscrowd' must be")):
        with pytest.raises(AppError, match=message):
            client.predict(image_id, [instance], 0, api_name="/save_annotations")
    with pytest.raises(AppError, match="image_id must be a whole number, not 'x'"):
        client.predict("x", [], 0, api_name="/save_annotations")
    with pytest.raises(AppError, match="seen_revision must be a whole number, not 'abc'"):
        client.predict(image_id, [], "abc", api_name="/save_annotations")
    with pytest.raises(AppError, match="image_id must be a whole number"):
        client.predict(2.5, 0.5, api_name="/propose")


def test_every_refusal_through_the_server_says_what_was_wrong(app_server):
    """Issue 23: refusals Gradio makes before an endpoint runs (too few values, a value its input component cannot
    take, a file the client did not upload) and errors no check foresaw (an id beyond the database's integers)
    reached the client as {"error": null}; each now says what was wrong and what the endpoint takes."""
    import httpx

    from test_security import call

    http = httpx.Client(base_url=app_server["url"], timeout=60)
    cases = [
        ("propose", [], "/propose: it got 0 value(s), not 2; it takes image_id (a whole number)"),
        ("save_annotations", [1], "/save_annotations: it got 1 value(s), not 3"),
        ("propose", [10**30, 0.5], "image_id must be a whole number from 0 to 2147483647"),
        ("propose", [1, "x"], "score_threshold must be a finite number, not 'x'"),
        ("instances", ["1_0"], "image_id must be a whole number, not '1_0'"),
        ("save_annotations", [1, [], "\u0663"], "seen_revision must be a whole number"),
        ("list_images", ["all", "upload", "x"], "propose_missing must be a whole number, not 'x'"),
        ("retrain", ["heads", "x", 0, "none"], "iterations must be a whole number, not 'x'"),
        ("retrain", ["heads", 2, 64, "/etc/passwd"], "backbone_weights must be empty (the server's default), 'none'"),
        ("upload_images", ["x", "train"], "/upload_images: a value cannot be read"),
        ("upload_images", [[{"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}], "train"],
         "/upload_images: a value cannot be read"),
    ]
    for api_name, data, message in cases:
        event, payload = call(http, api_name, data)
        assert event == "error" and message in ((payload or {}).get("error") or ""), (api_name, data, payload)
    assert call(http, "instances", [1])[0] == "complete"


# ---- issue 26: the endpoints are gr.api declarations, as README.md's "Headless API" documents them ----------------
DOCUMENTED = {  # endpoint -> its parameters in order, with their defaults (absent: required)
    "/upload_images": [("files",), ("split", "train")], "/propose": [("image_id",), ("score_threshold", None)],
    "/save_annotations": [("image_id",), ("instances",), ("seen_revision",)],
    "/retrain": [("mode", "heads"), ("iterations", 0), ("image_size", 0), ("backbone_weights", "")],
    "/export_coco": [("mask_format", "polygon"), ("images", "all")], "/overview": [], "/instances": [("image_id",)],
    "/finish_image": [("image_id",), ("seen_revision",)], "/keep_box": [("image_id",), ("ann_id",), ("seen_revision",)],
    "/scissors_path": [("image_id",), ("points",)], "/prefetch": [("image_ids",)],
    "/add_boxes": [("image_id",), ("boxes",), ("seen_revision",)],
    "/refine": [("image_id",), ("ann_id",), ("positive_points",), ("negative_points",), ("seen_revision",)],
    "/record_visit": [("image_id",), ("event_times",)],
    "/list_images": [("status", "all"), ("order", "upload"), ("propose_missing", 0)], "/model_help": []}


def test_every_documented_endpoint_is_listed_with_its_parameters(client):
    """view_api lists exactly the documented endpoints, each with its parameters' names, order and defaults (what
    gradio_client's positional and keyword calls rely on), one result each (/overview: three; /export_coco: a
    file that gradio_client downloads)."""
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    listed = {name: [(p["parameter_name"], p["parameter_default"]) if p["parameter_has_default"]
                     else (p["parameter_name"],) for p in endpoint["parameters"]]
              for name, endpoint in endpoints.items()}
    assert listed == DOCUMENTED
    assert {name: len(endpoint["returns"]) for name, endpoint in endpoints.items()} == \
        {name: 3 if name == "/overview" else 1 for name in DOCUMENTED}
    assert endpoints["/export_coco"]["returns"][0]["python_type"]["type"] == "filepath"
    assert endpoints["/upload_images"]["parameters"][0]["python_type"]["type"] == "list[filepath]"
    overview, categories, images = client.predict(api_name="/overview")
    assert "images" in overview and set(categories) == set(images) == {"headers", "data", "metadata"}
    assert categories["headers"][:2] == ["id", "name"] and images["headers"][:2] == ["id", "file_name"]
    instances = client.predict(image_id=1, api_name="/instances")  # by name as well as by position
    assert instances == client.predict(1, api_name="/instances") and instances["image_id"] == 1


@pytest.mark.backends("sqlite")
def test_no_hidden_component_or_button_serves_the_api(database):
    """The endpoints are gr.api declarations: triggered by no button or other event, their inputs and outputs
    Gradio's API placeholders ("api"), none of the page's components; nothing on the page is hidden to serve
    them (there were 22 hidden components and 11 hidden buttons in a hidden row)."""
    from app.ui import build_app

    config = build_app(database).config
    components = {component["id"]: component for component in config["components"]}
    hidden = [(c["type"], c["props"].get("label")) for c in components.values() if c["props"].get("visible") is False]
    assert hidden == []
    public = [d for d in config["dependencies"] if d["api_visibility"] != "private"]
    assert sorted("/" + d["api_name"] for d in public) == sorted(DOCUMENTED)
    for dependency in public:
        assert dependency["targets"] == [], dependency["api_name"]
        kinds = {components[i]["type"] for i in dependency["inputs"] + dependency["outputs"]}
        assert kinds <= {"api"}, (dependency["api_name"], kinds)
    assert not any(c["type"] == "api" for d in config["dependencies"] if d["api_visibility"] == "private"
                   for c in map(components.get, d["inputs"] + d["outputs"]))
