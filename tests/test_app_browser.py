"""The workbench in a real browser (Debian chromium + playwright): upload a photo, see proposals on the review
canvas, select by click and Tab, accept / reject / class by key, brush, polygon, box -> mask, zoom, done and
next, retrain (tiny), export and check the export; every step asserted on the saved database.

Skipped when /usr/bin/chromium is absent (`apt-get install -y chromium`). Screenshots of a
failure are written to the test's temporary folder (its path is printed)."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import COCO_SUBSET, make_synthetic_coco
from test_app_helpers import register_tiny_model
from test_serve import serving

from app.display import MAX_SHOWN

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason="no /usr/bin/chromium: `apt-get install -y chromium`")


def photo(folder: Path) -> Path:
    real = COCO_SUBSET / "images" / "000000000139.jpg"
    if real.is_file():
        return real
    path = folder / "photo.jpg"
    pixels = np.full((300, 400, 3), 60, np.uint8)
    pixels[40:160, 50:200] = (210, 50, 50)
    pixels[170:280, 230:370] = (50, 200, 60)
    Image.fromarray(pixels).save(path, quality=92)
    return path


@pytest.fixture
def workbench(tmp_path, tmp_path_factory):
    from db.coco_import import import_coco
    from db.engine import open_database

    data_dir = tmp_path / "wb"
    coco = make_synthetic_coco(tmp_path / "coco")
    db = open_database(data_dir)
    import_coco(db, coco, coco.parent / "images")
    register_tiny_model(db, tmp_path_factory.getbasetemp())
    try:
        with serving(data_dir, WORKBENCH_SCORE_THRESHOLD="0") as url:
            yield url, db
    finally:
        db.close()


@contextlib.contextmanager
def browser_page(url: str):
    """A page of a headless Chromium at ``url`` (closed afterwards)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            yield page
        finally:
            browser.close()


def wait_text(page, selector: str, text: str, timeout: float = 60):
    page.wait_for_function("([s, t]) => { const e = document.querySelector(s); return e && e.innerText.includes(t); }",
                           arg=[selector, text], timeout=timeout * 1000)


def drag(page, box, start, end, steps=8):
    x0, y0 = box["x"] + box["width"] * start[0], box["y"] + box["height"] * start[1]
    x1, y1 = box["x"] + box["width"] * end[0], box["y"] + box["height"] * end[1]
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x1, y1, steps=steps)
    page.mouse.up()


def wait_saved(page, timeout: float = 60):
    """The canvas's edits all answered by the server, and it said saved."""
    page.wait_for_function("() => !__wbCanvas.inflight && !__wbCanvas.pending.length && "
                           "__wbCanvas.value.status === 'saved'", timeout=timeout * 1000)


def screen_of(page, x: float, y: float) -> tuple[float, float]:
    """Page coordinates of image pixel (x, y) on the review canvas (its zoom and pan)."""
    return tuple(page.evaluate("""([x, y]) => { const r = document.querySelector('#review-canvas canvas.wb-view')
        .getBoundingClientRect(), v = __wbCanvas.view; return [r.left + v.tx + x * v.s, r.top + v.ty + y * v.s]; }""",
                               [x, y]))


def click_image(page, x: float, y: float):
    page.mouse.click(*screen_of(page, x, y))


def drag_image(page, start, end, steps: int = 10):
    page.mouse.move(*screen_of(page, *start))
    page.mouse.down()
    page.mouse.move(*screen_of(page, *end), steps=steps)
    page.mouse.up()


def check_rle_in_the_browser(page):
    """Masks decoded by the canvas equal pycocotools' decode; the canvas's encode equals pycocotools' encode."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    cases = [np.zeros((7, 5), bool), np.ones((7, 5), bool), rng.random((37, 53)) < 0.5]
    corner = np.zeros((40, 30), bool)
    corner[39, 29] = True
    blob = np.zeros((120, 90), bool)
    blob[10:80, 20:70] = True
    blob[30:50, 30:50] = False
    cases += [corner, blob]
    for mask in cases:
        height, width = mask.shape
        counts = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()
        decoded = page.evaluate("""([c, h, w]) => { const L = __wbRle.decodeLayer(c, h, w);
            return {x0: L.x0, y0: L.y0, w: L.w, h: L.h, bits: Array.from(L.bits), again: __wbRle.encodeLayer(L, h, w)}; }""",
                                [counts, height, width])
        full = np.zeros_like(mask)
        if decoded["w"]:
            full[decoded["y0"]:decoded["y0"] + decoded["h"], decoded["x0"]:decoded["x0"] + decoded["w"]] = \
                np.array(decoded["bits"], bool).reshape(decoded["h"], decoded["w"])
        assert np.array_equal(full, mask) and decoded["again"] == counts


def test_upload_review_draw_paint_train_export(workbench, tmp_path):
    from playwright.sync_api import sync_playwright
    from pycocotools.coco import COCO

    from db.annotations import get_annotations

    url, db = workbench
    shots = tmp_path / "screenshots"
    shots.mkdir()
    timings = {}
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=str(CHROMIUM),
                                                       args=ARGS, accept_downloads=True,
                                                       viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        step = "start"
        try:
            page.goto(url)
            page.wait_for_selector("#gallery", timeout=60_000)
            wait_text(page, "#overview", "4 images")

            step = "upload"  # a real photo: stored, opened, the model's proposals drawn on the canvas
            start = time.monotonic()
            page.locator("#upload input[type=file]").set_input_files([str(photo(tmp_path))])
            wait_text(page, "#review-canvas .wb-message", "model proposed")
            timings["upload->proposals"] = time.monotonic() - start
            wait_text(page, "#upload-message", "1 image(s) added")
            wait_text(page, "#image-title", "Image 5")
            image_id = 5

            step = "rle"  # the canvas's RLE decode and encode are pycocotools' to the pixel
            check_rle_in_the_browser(page)

            step = "proposals"  # a new model has no record of whether its proposals pay: hidden, and it says so
            wait_text(page, "#review-canvas .wb-message", "proposal(s) hidden")
            assert page.evaluate("() => __wbCanvas.instances.filter(i => i.state === 'proposed').length") == 0
            page.locator("#model-thresholds input").uncheck()  # the review threshold overrides
            threshold = page.locator("#threshold input[type=number]")
            page.wait_for_function("() => !document.querySelector('#threshold input[type=number]').disabled")
            threshold.fill("0")
            threshold.press("Enter")
            _, proposed = get_annotations(db, image_id, states=["proposed"])
            page.wait_for_function("n => __wbCanvas.threshold === 0 && __wbCanvas.instances.length === n",
                                   arg=min(len(proposed), MAX_SHOWN), timeout=60_000)
            masks = {r["id"]: r["mask"] for r in get_annotations(db, image_id)[1]}

            step = "click to select"  # the topmost instance at the clicked pixel (the last one drawn)
            order = page.evaluate("() => __wbCanvas.instances.map(i => i.id)")
            ys, xs = np.nonzero(masks[order[0]])
            x, y = int(xs[len(xs) // 2]), int(ys[len(ys) // 2])
            expected = [i for i in order if masks[i][y, x]][-1]
            click_image(page, x + 0.5, y + 0.5)
            assert page.evaluate("() => __wbCanvas.sel") == expected

            step = "keys"  # Tab walks by score; a / r save in the background and jump to the next proposal
            page.keyboard.press("Escape")
            page.keyboard.press("Tab")
            best = max(proposed, key=lambda r: r["score"])["id"]
            assert page.evaluate("() => __wbCanvas.sel") == best
            start = time.monotonic()
            page.keyboard.press("a")
            assert page.evaluate("() => __wbCanvas.instances.find(i => i.id === %d).state" % best) == "accepted"
            wait_saved(page)
            timings["accept (key -> saved)"] = time.monotonic() - start
            rejected = page.evaluate("() => __wbCanvas.sel")
            assert rejected not in (None, best)
            page.keyboard.press("r")
            wait_saved(page)
            states = {r["id"]: r["review_state"] for r in get_annotations(db, image_id)[1]}
            assert states[best] == "accepted" and states[rejected] == "rejected"

            step = "class key"  # 2 = the second class (ball) for the selected instance
            page.evaluate("id => { __wbCanvas.sel = id; }", best)
            page.keyboard.press("2")
            wait_saved(page)
            row = next(r for r in get_annotations(db, image_id)[1] if r["id"] == best)
            assert row["category_id"] == 7 and row["source"] == "model"

            step = "merge"  # someone else accepts one proposal; deleting another here merges (issue 26)
            from db.annotations import conflict_versions, set_review_state

            revision, rows = get_annotations(db, image_id, states=["proposed"])
            assert len(rows) >= 3, "the tiny model proposes at least three instances on the photo"
            theirs, other, mine = (r["id"] for r in rows[:3])
            set_review_state(db, image_id, [theirs], "accepted", seen_revision=revision, user="someone else")
            page.evaluate("id => { __wbCanvas.sel = id; }", other)
            page.keyboard.press("d")
            wait_saved(page)
            assert page.evaluate("id => __wbCanvas.instances.find(i => i.id === id).state", theirs) == "accepted"
            states = {r["id"]: r["review_state"] for r in get_annotations(db, image_id)[1]}
            assert states[theirs] == "accepted" and other not in states and not conflict_versions(db, image_id)

            step = "conflict"  # someone else rejects the proposal this person deletes: the canvas says so
            revision = get_annotations(db, image_id)[0]
            set_review_state(db, image_id, [mine], "rejected", seen_revision=revision, user="someone else")
            page.evaluate("id => { __wbCanvas.sel = id; }", mine)
            page.keyboard.press("d")  # the losing delete is kept in the journal, for its author
            page.wait_for_function("() => __wbCanvas.value.status === 'conflict' && !__wbCanvas.inflight")
            assert "Conflict" in page.inner_text("#review-canvas .wb-message")
            assert f"#{mine}" in page.inner_text("#review-canvas .wb-message")
            assert {r["id"]: r["review_state"] for r in get_annotations(db, image_id)[1]}[mine] == "rejected"
            assert not page.evaluate("id => __wbCanvas.instances.some(i => i.id === id && i.state !== 'rejected')",
                                     mine)  # the canvas shows their reject
            assert len(conflict_versions(db, image_id)) == 1
            assert "recover my lost version" in page.inner_text("#review-canvas .wb-status")
            page.locator("#review-canvas .wb-status a[data-act=recover]").click()  # the delete goes in, once
            wait_saved(page)
            assert mine not in {r["id"] for r in get_annotations(db, image_id)[1]}
            assert "recover my lost version" not in page.inner_text("#review-canvas .wb-status")
            assert not conflict_versions(db, image_id)
            page.evaluate("id => { __wbCanvas.sel = id; }", best)

            step = "brush"  # a stroke on the selected mask, in the same canvas
            page.keyboard.press("b")
            before = row["mask"].sum()
            height, width = row["mask"].shape
            drag_image(page, (0.05 * width, 0.9 * height), (0.3 * width, 0.9 * height))
            wait_saved(page)
            row = next(r for r in get_annotations(db, image_id)[1] if r["id"] == best)
            assert row["source"] == "drawn" and row["mask"].sum() > before
            assert row["mask"][int(0.9 * height), int(0.15 * width)]  # painted where the stroke went

            step = "refine clicks"  # c: a left click adds "this is object" (GrabCut from the current mask)
            page.keyboard.press("c")
            before = row["mask"].copy()
            ys, xs = np.nonzero(~before)
            outside = next((x, y) for x, y in zip(xs[::97], ys[::97])
                           if abs(x - xs.mean()) < width / 2 and not before[max(0, y - 3):y + 4, max(0, x - 3):x + 4].any()
                           and before[max(0, y - 40):y + 41, max(0, x - 40):x + 41].any())
            click_image(page, outside[0] + 0.5, outside[1] + 0.5)
            wait_saved(page, timeout=90)
            row = next(r for r in get_annotations(db, image_id)[1] if r["id"] == best)
            assert row["source"] == "grabcut" and row["mask"][outside[1], outside[0]]  # the clicked pixel is in it
            page.keyboard.press("v")

            step = "polygon"  # a new instance of class 3 (sign)
            before_ids = {r["id"] for r in get_annotations(db, image_id)[1]}
            page.keyboard.press("Escape")
            page.keyboard.press("3")
            page.keyboard.press("g")
            corners = [(0.6 * width, 0.1 * height), (0.8 * width, 0.1 * height), (0.8 * width, 0.3 * height),
                       (0.6 * width, 0.3 * height)]
            for x, y in corners:
                click_image(page, x, y)
            click_image(page, *corners[0])  # the first point again closes it
            wait_saved(page)
            signs = [r for r in get_annotations(db, image_id)[1] if r["id"] not in before_ids]
            assert len(signs) == 1 and signs[0]["source"] == "drawn" and signs[0]["category_id"] == 12
            area = 0.2 * width * 0.2 * height
            assert abs(signs[0]["mask"].sum() - area) < 0.1 * area

            step = "scissors"  # i: each click's segment follows the photo's edges (server side), Enter closes it
            before_ids = {r["id"] for r in get_annotations(db, image_id)[1]}
            page.keyboard.press("Escape")
            page.keyboard.press("3")
            page.keyboard.press("i")
            clicks = [(0.55 * width, 0.55 * height), (0.75 * width, 0.55 * height), (0.7 * width, 0.75 * height)]
            for x, y in clicks:
                click_image(page, x, y)
            page.wait_for_function("() => __wbCanvas.cut.segments.length === 2 && "
                                   "__wbCanvas.cut.segments.every(s => s && s.length >= 2)", timeout=30_000)
            page.keyboard.press("Enter")  # the closing segment is asked for too, then the polygon is saved
            page.wait_for_function("() => __wbCanvas.cut.clicks.length === 0", timeout=30_000)
            wait_saved(page)
            cut = [r for r in get_annotations(db, image_id)[1] if r["id"] not in before_ids]
            assert len(cut) == 1 and cut[0]["category_id"] == 12 and cut[0]["mask"].any()
            page.keyboard.press("v")

            step = "box -> mask"
            page.keyboard.press("Escape")
            page.keyboard.press("2")
            page.keyboard.press("x")
            before_ids = {r["id"] for r in get_annotations(db, image_id)[1]}
            drag_image(page, (0.05 * width, 0.05 * height), (0.3 * width, 0.4 * height))
            wait_saved(page)
            new = [r for r in get_annotations(db, image_id)[1] if r["id"] not in before_ids]
            assert len(new) == 1 and new[0]["category_id"] == 7 and new[0]["source"] in ("model", "grabcut")
            assert new[0]["mask"] is not None and new[0]["mask"].any()
            page.wait_for_function("id => __wbCanvas.instances.some(i => i.id === id && i.layer)", arg=new[0]["id"])

            step = "keep the box"  # k: a proposal's box kept, its mask made again from the box, its class kept
            kept_id = page.evaluate("() => __wbCanvas.instances.find(i => i.state === 'proposed' && !i.deleted).id")
            kept = next(r for r in get_annotations(db, image_id)[1] if r["id"] == kept_id)
            page.keyboard.press("Escape")
            page.evaluate("id => { __wbCanvas.sel = id; }", kept["id"])
            page.keyboard.press("k")
            wait_saved(page, timeout=90)
            row = next(r for r in get_annotations(db, image_id)[1] if r["id"] == kept["id"])
            assert row["review_state"] == "accepted" and row["category_id"] == kept["category_id"]
            assert row["mask"] is not None and not np.array_equal(row["mask"], kept["mask"])

            step = "zoom"
            scale = page.evaluate("() => __wbCanvas.view.s")
            box = page.locator("#review-canvas canvas.wb-view").bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.mouse.wheel(0, -400)
            assert page.evaluate("() => __wbCanvas.view.s") > 1.5 * scale
            page.keyboard.press("0")
            assert abs(page.evaluate("() => __wbCanvas.view.s") - scale) < 1e-6

            step = "done"  # n: the proposals left are rejected, the next image opens
            page.keyboard.press("n")
            wait_text(page, "#image-title", "Image 1 ")
            _, rows = get_annotations(db, image_id)
            assert not any(r["review_state"] == "proposed" for r in rows)
            accepted = [r for r in rows if r["review_state"] == "accepted"]
            assert len(accepted) == 6  # the brushed one, the other person's accept, the polygon, the scissors' one,
            # the box and the kept box
            from db.fates import fate_rows, visit_rows  # the proposals' fates and the visit's active time

            fates = {r["annotation_id"]: r for r in fate_rows(db) if r["image_id"] == image_id}
            assert fates[best]["fate"] == "edited" and fates[rejected]["fate"] == "rejected"
            tools = sorted(r["tool"] for r in fates.values() if r["kind"] == "hand")
            assert len(tools) == 3 and tools.count("polygon") == 2 and tools[0] in ("box", "grabcut"), tools
            assert fates[kept["id"]]["fate"] == "edited"
            deadline = time.monotonic() + 30  # the visit is sent when the image is left
            while not [v for v in visit_rows(db) if v["image_id"] == image_id] and time.monotonic() < deadline:
                time.sleep(0.2)
            visits = [v for v in visit_rows(db) if v["image_id"] == image_id]
            assert visits and visits[-1]["active_seconds"] > 0 and visits[-1]["events"] >= 2  # inputs noted at most 1 per s

            step = "train"
            page.get_by_role("tab", name="Train").click()
            page.locator("#iterations input").fill("2")
            page.locator("#image-size input").fill("64")
            page.locator("#weights textarea, #weights input").first.fill("none")
            page.locator("#train").click()
            wait_text(page, "#train-status", "Training run")
            start = time.monotonic()
            wait_text(page, "#train-status", "succeeded", timeout=240)
            timings["tiny retrain (2 iterations, seen by the UI)"] = time.monotonic() - start
            wait_text(page, "#train-status", "model version 2 is now active")
            wait_text(page, "#overview", "active model: v2")  # the summary line follows (it said v1 before)
            from db import registry

            assert registry.active_version(db).id == 2

            step = "export"
            page.get_by_role("tab", name="Export").click()
            page.locator("#export").click()
            wait_text(page, "#export-summary", "Exported")
            with page.expect_download() as download:
                page.locator("#export-file a").first.click()
            out = tmp_path / "export.json"
            download.value.save_as(out)
            coco = COCO(str(out))
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
            sources = sorted(a["mask_source"] for a in anns)
            assert len(anns) == len(accepted) and "drawn" in sources, sources
            assert all(coco.annToMask(a).sum() > 0 for a in anns)
            assert json.loads(out.read_text())["info"]["mask_format"] == "polygon"

            step = "keyboard navigation"
            page.get_by_role("tab", name="Review").click()
            page.locator("#image-title").click()
            page.keyboard.press("ArrowRight")
            wait_text(page, "#image-title", "Image 2 ")
            page.wait_for_function("() => __wbCanvas.imageId === 2 && __wbCanvas.instances.length > 0")
            page.locator("#next-image").focus()  # a key on a button (not Tab or Enter) still reaches the canvas
            page.keyboard.press("v")
            page.locator("#image-title").click()
            page.keyboard.press("Tab")  # from the page (no field focused) Tab walks the canvas's instances
            assert page.evaluate("() => __wbCanvas.sel") is not None
        except Exception:
            shot = shots / f"failed-at-{step.replace(' ', '-')}.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot of the failure: {shot}")
            raise
        finally:
            context.close()
    print("browser timings (s):", {k: round(v, 2) for k, v in timings.items()})


def test_most_useful_next_proposes_once_per_photo(workbench, tmp_path):
    """Issue 26, bug 1: choosing Order -> "most useful next" (the dropdown sends its input again when it loses
    focus) runs the model once per unlabelled photo: nothing is journalled as a conflict, so no photo offers to
    "recover my lost version" that nobody made."""
    from sqlalchemy import select

    from db.models import JournalEntry
    from db.uploads import add_images

    url, db = workbench
    files = []
    for k in range(3):  # three unlabelled photos for the model to look at
        pixels = np.full((120, 160, 3), 40 + 50 * k, np.uint8)
        pixels[20:80, 30:100] = (200, 60, 60)
        files.append(tmp_path / f"new{k}.png")
        Image.fromarray(pixels).save(files[-1])
    new_ids = add_images(db, files).image_ids

    def journal():
        with db.session() as session:
            return [(e.image_id, e.action) for e in session.scalars(select(JournalEntry))]

    with browser_page(url) as page:
        page.wait_for_selector("#gallery", timeout=60_000)
        page.locator("#gallery-order input").click()
        page.get_by_role("option", name="most useful next").click()
        page.locator("#app-title").click()  # focus leaves the dropdown: Gradio sends its input again
        wait_text(page, "#gallery", "uncertainty")
        deadline = time.monotonic() + 60
        while sum(image in new_ids for image, _ in journal()) < len(new_ids) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)  # room for a second run to store (or lose) its proposals
    entries = [(image, action) for image, action in journal() if image in new_ids]
    assert sorted(entries) == sorted((image, "save") for image in new_ids), entries


def test_the_delete_class_confirmation_is_asked_again_after_each_delete(workbench):
    """Issue 26, bug 5: after a class was deleted with its annotations, the confirmation stayed ticked, so the
    next delete went through in one click. It is unticked after every delete."""

    from db import queries

    url, db = workbench
    names = queries.category_names(db)
    with browser_page(url) as page:
        page.wait_for_selector("#gallery", timeout=60_000)
        page.get_by_role("tab", name="Classes").click()
        victim = next(iter(names.values()))
        page.locator("#class-pick input").click()
        page.get_by_role("option", name=f"{victim} (id", exact=False).first.click()
        page.locator("#confirm-delete input").check()
        page.locator("#delete-class").click()
        wait_text(page, "#class-message", "Class deleted")
        page.wait_for_function("() => !document.querySelector('#confirm-delete input').checked", timeout=30_000)
    assert victim not in queries.category_names(db).values()


def test_opening_a_photo_that_gets_proposals_updates_its_caption_and_the_counts(workbench, tmp_path):
    """Issue 26, bug 6: opening a new photo proposes on it, but its gallery caption still said "new" and the
    overview's counts stayed as they were until Refresh."""

    from db.uploads import add_images

    url, db = workbench
    pixels = np.full((120, 160, 3), 70, np.uint8)
    pixels[20:80, 30:100] = (200, 60, 60)
    Image.fromarray(pixels).save(tmp_path / "fresh.png")
    image_id = add_images(db, [tmp_path / "fresh.png"]).image_ids[0]
    with browser_page(url) as page:
        wait_text(page, "#gallery", f"{image_id} · new")
        before = page.inner_text("#overview")
        page.locator("#gallery").get_by_text(f"{image_id} · new").click()
        wait_text(page, "#review-canvas .wb-message", "model proposed")
        wait_text(page, "#gallery", f"{image_id} · proposed")
        page.wait_for_function("t => document.querySelector('#overview').innerText !== t", arg=before,
                               timeout=30_000)


def test_a_second_upload_sends_only_its_own_files_and_opens_the_new_photo(workbench, tmp_path):
    """Issue 26, bug 5: the upload widget kept its files, so the next upload sent every earlier one again
    ("1 added, 1 already there") and then opened the first of them, not the new photo."""

    url, db = workbench
    files = []
    for k in range(2):
        pixels = np.full((90, 120, 3), 50 + 90 * k, np.uint8)
        pixels[10:50, 20:80] = (60, 60 + 100 * k, 200)
        files.append(tmp_path / f"upload{k}.png")
        Image.fromarray(pixels).save(files[-1])
    with browser_page(url) as page:
        page.wait_for_selector("#gallery", timeout=60_000)
        page.locator("#upload input[type=file]").set_input_files([str(files[0])])
        wait_text(page, "#upload-message", "1 image(s) added, 0 already there")
        wait_text(page, "#image-title", "upload0.png")
        page.wait_for_function("() => !document.querySelector('#upload .file-preview')", timeout=30_000)
        page.locator("#upload input[type=file]").set_input_files([str(files[1])])
        wait_text(page, "#upload-message", "1 image(s) added, 0 already there")
        wait_text(page, "#image-title", "upload1.png")


def test_a_reload_opens_the_same_image_again(workbench):
    """Issue 26, bug 6: a reload forgot the open image (there was no link per image). The address carries
    ?image=N for the open image; loading it opens that image; a link to no image says so."""

    url, _ = workbench
    with browser_page(url) as page:
        page.wait_for_selector("#gallery", timeout=60_000)
        wait_text(page, "#gallery", "3 · ")
        page.locator("#gallery").get_by_text("3 · ", exact=False).first.click()
        wait_text(page, "#image-title", "Image 3 ")
        page.wait_for_function("() => new URL(location.href).searchParams.get('image') === '3'", timeout=30_000)
        page.reload()
        wait_text(page, "#image-title", "Image 3 ")
        page.goto(url.rstrip("/") + "/?image=999")
        wait_text(page, "#review-canvas .wb-message", "no image 999")


def test_number_keys_stay_with_their_class_when_a_class_is_deleted(workbench):
    """Issue 26, bug 5: the number keys were positions in the class list, so deleting or merging a class gave the
    later classes other numbers (a person's "3" became another class). Each class keeps its key while it exists."""

    from db.annotations import get_annotations

    url, db = workbench
    with browser_page(url.rstrip("/") + "/?image=1") as page:
        page.wait_for_function("() => window.__wbCanvas && __wbCanvas.imageId === 1 && __wbCanvas.keyOf", timeout=60_000)
        keys = page.evaluate("() => __wbCanvas.keyOf")
        assert keys == {"3": 1, "7": 2, "12": 3}, keys
        page.get_by_role("tab", name="Classes").click()
        page.locator("#class-pick input").click()
        page.get_by_role("option", name="ball (id 7)").click()
        page.locator("#confirm-delete input").check()
        page.locator("#delete-class").click()
        wait_text(page, "#class-message", "Class deleted")
        page.get_by_role("tab", name="Review").click()
        page.wait_for_function("() => !__wbCanvas.classes.some(c => c.id === 7)", timeout=30_000)
        assert page.evaluate("() => __wbCanvas.keyOf") == {"3": 1, "12": 3}
        target = page.evaluate("() => __wbCanvas.instances.find(i => i.category_id === 3).id")
        page.evaluate("id => { __wbCanvas.sel = id; }", target)
        page.locator("#image-title").click()
        page.keyboard.press("3")  # still "sign"
        wait_saved(page)
    assert next(r for r in get_annotations(db, 1)[1] if r["id"] == target)["category_id"] == 12


def test_a_control_clicked_hands_the_keyboard_back_and_number_boxes_take_only_numbers(workbench):
    """Issue 26, bug 5: after a control was clicked, Tab moved the browser's focus (to the review threshold's
    number box, where a review key typed became the threshold). A control clicked with the mouse gives the
    keyboard back to the canvas (Tab walks the instances); a number box takes only what makes a number."""

    url, _ = workbench
    with browser_page(url.rstrip("/") + "/?image=1") as page:
        page.wait_for_function("() => window.__wbCanvas && __wbCanvas.imageId === 1 && __wbCanvas.instances.length > 1",
                               timeout=60_000)
        page.evaluate("() => { __wbCanvas.sel = null; }")
        page.locator("#refresh").click()
        page.keyboard.press("Tab")
        assert page.evaluate("() => document.activeElement.classList.contains('wb-view')")
        assert page.evaluate("() => __wbCanvas.sel") is not None  # Tab walked to an instance
        page.locator("#model-thresholds input").uncheck()  # the slider's override: its number box takes input
        box = page.locator("#threshold input[type=number]")
        page.wait_for_function("() => !document.querySelector('#threshold input[type=number]').disabled",
                               timeout=30_000)
        box.click()
        box.press("End")
        before, threshold = box.input_value(), page.evaluate("() => __wbCanvas.threshold")
        for key in "arAde":  # review keys and tools; "e" (eraser) is what a browser lets into a number box
            box.press(key)
        box.press("Tab")  # the box's value is sent when it loses focus
        page.wait_for_timeout(1000)
        assert box.input_value() == before  # no review key became the threshold
        assert page.evaluate("() => __wbCanvas.threshold") == threshold
        box.click()
        box.fill("0.7")
        box.press("Enter")
        page.wait_for_function("() => __wbCanvas.threshold === 0.7", timeout=30_000)
