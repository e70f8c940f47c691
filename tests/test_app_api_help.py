"""The headless API's endpoints for the labelling loop: add_boxes, refine, record_visit, list_images (order),
model_help (through gradio_client, as a client or the benchmark's simulated labeller calls them)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from test_app_helpers import served_workbench


@pytest.fixture(scope="module")
def served(tmp_path_factory, db_backend):
    from gradio_client import Client

    with served_workbench(tmp_path_factory, db_backend, "api_help") as workbench:
        yield Client(workbench["url"], verbose=False), workbench["root"], workbench["version"]


def test_the_loop_through_the_api(served):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    client, root, version = served
    pixels = np.full((60, 80, 3), 40, np.uint8)
    pixels[10:30, 10:40] = (220, 40, 40)
    pixels[35:55, 45:75] = (40, 220, 40)
    Image.fromarray(pixels).save(root / "shapes.png")
    image_id = client.predict([handle_file(str(root / "shapes.png"))], "train", api_name="/upload_images")[
        "image_ids"][0]
    listed = client.predict("all", "most_useful", 5, api_name="/list_images")["images"]
    assert listed[0]["id"] == image_id and listed[0]["uncertainty"] is not None  # the only unlabelled photo
    assert listed[0]["status"] == "proposed"  # the model looked at it and its proposals are stored
    assert client.predict(image_id, api_name="/instances")["image_id"] == image_id
    for missing, message in ((None, "seen_revision is missing"), (-1, r"seen_revision -1 \(no check\) is no longer")):
        with pytest.raises(AppError, match=message):  # a save of the image: the revision read is required
            client.predict(image_id, [{"category": "car", "box": [8, 8, 42, 32]}], missing, api_name="/add_boxes")
    seen = client.predict(image_id, api_name="/instances")["revision"]
    added = client.predict(image_id, [{"category": "car", "box": [8, 8, 42, 32]}], seen, api_name="/add_boxes")
    new = [i for i in added["instances"] if i["review_state"] == "accepted"]
    assert len(new) == 1 and added["masks"][0] in ("model mask", "combined mask", "grabcut mask")
    refined = client.predict(image_id, new[0]["id"], [[20, 20]], [[41, 31]], added["saved_revision"],
                             api_name="/refine")
    row = next(i for i in refined["instances"] if i["id"] == new[0]["id"])
    assert row["source"] == "grabcut" and refined["saved_revision"] == added["saved_revision"] + 1
    visit = client.predict(image_id, [0, 2.5, 5, 100, 101], api_name="/record_visit")
    assert (visit["active_seconds"], visit["idle_seconds"]) == (6.0, 95.0)
    for proposal in [i for i in refined["instances"] if i["review_state"] == "proposed"]:
        proposal["review_state"] = "rejected"
    client.predict(image_id, refined["instances"], refined["revision"], api_name="/save_annotations")
    help_ = client.predict(api_name="/model_help")
    row = next(v for v in help_["versions"] if v["version_id"] == version)
    assert row["final"] == 1 and row["hand"] == 1 and row["rejected"] >= 1 and row["active_seconds"] == 6.0
    with pytest.raises(AppError, match="outside the 80x60 image"):
        client.predict(image_id, new[0]["id"], [[500, 5]], [], refined["revision"], api_name="/refine")
    with pytest.raises(AppError, match="seen_revision is missing"):
        client.predict(image_id, new[0]["id"], [[20, 20]], [], None, api_name="/refine")
    with pytest.raises(AppError, match="order must be one of upload, most_useful"):
        client.predict("all", "best", 0, api_name="/list_images")
    with pytest.raises(AppError, match="event times must be finite numbers"):
        client.predict(image_id, [0, "soon"], api_name="/record_visit")


def test_the_assistance_endpoints(served):
    """Issue 24's endpoints through the server: the scissors, prefetch, keep the box, done (finish_image)."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    client, root, version = served
    pixels = np.full((60, 80, 3), 40, np.uint8)
    pixels[10:30, 10:40] = (220, 40, 40)
    Image.fromarray(pixels).save(root / "edges.png")
    image_id = client.predict([handle_file(str(root / "edges.png"))], "train", api_name="/upload_images")["image_ids"][0]
    out = client.predict(image_id, [[10, 10], [39, 10], [39, 29]], api_name="/scissors_path")
    assert out["path"][0] == [10.0, 10.0] and out["path"][-1] == [39.0, 29.0] and len(out["path"]) >= 3
    with pytest.raises(AppError, match="2 to 200 points"):
        client.predict(image_id, [[10, 10]], api_name="/scissors_path")
    assert client.predict([image_id], api_name="/prefetch")["queued"] in ([], [image_id])  # off in the suite
    with pytest.raises(AppError, match="image_ids"):
        client.predict([1.5], api_name="/prefetch")
    current = client.predict(image_id, None, api_name="/propose")
    proposals = [i for i in current["instances"] if i["review_state"] == "proposed"]
    assert proposals and all("shown" in i for i in proposals) and str(version) in current["policy"]
    kept = client.predict(image_id, proposals[0]["id"], current["revision"], api_name="/keep_box")
    row = next(i for i in kept["instances"] if i["id"] == proposals[0]["id"])
    assert row["review_state"] == "accepted" and row["category_id"] == proposals[0]["category_id"]
    with pytest.raises(AppError, match="not a proposal"):
        client.predict(image_id, proposals[0]["id"], kept["revision"], api_name="/keep_box")
    done = client.predict(image_id, kept["revision"], api_name="/finish_image")
    assert done["rejected"] + done["hidden"] == len(proposals) - 1 and done["revision"] == kept["revision"] + 1
    left = client.predict(image_id, api_name="/instances")["instances"]
    assert not any(i["review_state"] == "proposed" for i in left)
