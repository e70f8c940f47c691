"""Speed of the review canvas in a real browser (Debian chromium + Playwright), against issue 14's goals:
a key (select, accept, reject) visible <= 50 ms after the press; a brush stroke's move visible <= 16 ms;
an image with 50 instances drawn <= 500 ms after its data arrive; the save behind an edit <= 200 ms at the
server.

Setup: two real COCO val photos (coco_subset; the ones with the most instances), each given 50 proposals
(its true masks, then the same masks shifted to make 50) stored as a model's would be; the workbench served
in this process; Chromium at 1440x900.

What is measured (medians, with min-max):
- key: from the key event's timestamp (the browser's, when the key arrived) to the end of the canvas's
  handler (the canvas is redrawn synchronously in it) and to the next frame (requestAnimationFrame) and
  after it (a task queued from that frame: the frame was painted);
- brush: the same for each pointer move of a stroke;
- open: from the canvas's value arriving in the browser to the instances decoded and drawn (sync), and to
  the photo drawn under them;
- save: the server's handler for one accept (Handlers.on_canvas_save, called in this process: apply the
  edit, build the image's new state), and the browser's round trip (batch sent -> answer applied).

    python benchmarks/bench_canvas.py --out benchmarks/out/canvas_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

from common import DEFAULT_DATA, cpu_name, load_coco, loadavg_text, require, stamp, write_json

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]

KEY_PROBE = """() => {
  window.__probe = []; window.__handled = [];
  for (const type of ['keydown', 'pointermove']) {
    window.addEventListener(type, (event) => {  // capture: before the canvas's handler
      const t0 = event.timeStamp;
      requestAnimationFrame(() => {
        const frame = performance.now() - t0;
        setTimeout(() => window.__probe.push({kind: type, key: event.key || '', frame,
                                              painted: performance.now() - t0}), 0);
      });
    }, true);
    window.addEventListener(type, (event) => {  // bubble: after it
      window.__handled.push({kind: type, ms: performance.now() - event.timeStamp});
    }, false);
  }
}"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stats(values) -> dict:
    values = [float(v) for v in values]
    if not values:
        return {"n": 0}
    return {"n": len(values), "median": round(statistics.median(values), 1), "min": round(min(values), 1),
            "max": round(max(values), 1)}


def fill_database(data_dir: Path, data: Path, n_instances: int):
    """The workbench's database with the two photos, each with ``n_instances`` stored proposals."""
    import numpy as np
    from pycocotools import mask as mask_utils

    from db.annotations import InstanceData, save_annotations_unchecked
    from db.categories import add_category
    from db.engine import open_database
    from db.uploads import add_images

    coco = load_coco(data / "val.json")
    busiest = sorted(coco.getImgIds(), key=lambda i: -len(coco.getAnnIds(imgIds=[i], iscrowd=False)))[:2]
    db = open_database(data_dir)
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    ours = {}
    rng = np.random.default_rng(0)
    image_ids = []
    for coco_id in busiest:
        info = coco.loadImgs([coco_id])[0]
        result = add_images(db, [str(data / "images" / info["file_name"])], split="val")
        image_id = result.image_ids[0]
        image_ids.append(image_id)
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=[coco_id], iscrowd=False))]
        instances = []
        for k in range(n_instances):
            ann = anns[k % len(anns)]
            if ann["category_id"] not in ours:
                ours[ann["category_id"]] = add_category(db, names[ann["category_id"]])
            mask = coco.annToMask(ann).astype(bool)
            shift = 6 * (k // len(anns))
            mask = np.roll(mask, (shift, shift), axis=(0, 1))
            if not mask.any():
                continue
            counts = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()
            instances.append(InstanceData(category_id=ours[ann["category_id"]], mask_rle=counts, source="model",
                                          review_state="proposed", score=float(rng.uniform(0.55, 0.99))))
        save_annotations_unchecked(db, image_id, instances)  # the benchmark's own image: nobody else edits it
    return db, image_ids


def server_save_times(ui, image_id: int, repeats: int) -> list[float]:
    """Handlers.on_canvas_save for one accept each (then one reopen, to keep the image's proposals)."""
    import gradio as gr

    times = []
    for k in range(repeats):
        value = ui.canvas(image_id, 0.5)
        target = next(i for i in value["instances"] if i["state"] == "proposed")
        event = gr.EventData(None, {"image_id": image_id, "revision": value["revision"], "seq": k,
                                    "ops": [{"kind": "review", "ids": [target["id"]], "state": "accepted"}]})
        start = time.perf_counter()
        out = ui.on_canvas_save(0.5, "all", "upload", event, None)
        times.append(1000 * (time.perf_counter() - start))
        assert out.canvas["status"] == "saved", out.canvas["message"]
        ui.wb.editor.review(image_id, [target["id"]], "proposed", out.canvas["revision"])
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/canvas_speed.json"))
    parser.add_argument("--screenshot", type=Path, default=None,
                        help="save a 1440x900 screenshot of the canvas here (the README's picture)")
    args = parser.parse_args()
    require(args.data / "val.json", "the COCO subset")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from playwright.sync_api import sync_playwright

    from app.ui import build_app, launch_app

    work = Path(tempfile.mkdtemp(prefix="bench_canvas_"))
    db, image_ids = fill_database(work / "wb", args.data, args.instances)
    demo = build_app(db, score_threshold=0.05)
    port = free_port()
    launch_app(db, port=port, block=False, demo=demo)
    result = {"when": stamp(), "cpu": cpu_name(), "load_before": loadavg_text(),
              "instances_per_image": args.instances, "repeats": args.repeats}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(f"http://127.0.0.1:{port}")
        page.wait_for_selector("#gallery img", timeout=60_000)
        page.evaluate(KEY_PROBE)

        # ---- open: two images alternately ----------------------------------------------------------
        opens, photo = [], []
        for k in range(args.repeats):
            page.locator("#gallery img").nth(k % 2).click()
            page.wait_for_function("id => __wbCanvas.imageId === id && __wbCanvas.perf.imageDrawnAt !== null",
                                   arg=image_ids[k % 2], timeout=60_000)
            sync = page.evaluate("() => __wbCanvas.perf.syncs.filter(s => s.instances > 0).slice(-1)[0]")
            drawn = page.evaluate("() => __wbCanvas.perf.imageDrawnAt")
            assert sync["instances"] == args.instances, sync
            opens.append(sync["ms"])
            photo.append(max(sync["ms"], drawn - sync["at"]))
        result["open_decode_and_draw_ms"] = stats(opens)
        result["open_until_photo_drawn_ms"] = stats(photo)
        # ---- keys: Tab (select) and accept / reject, each saved in the background --------------------
        canvas = page.locator("#review-canvas canvas.wb-view")
        canvas.focus()
        page.evaluate("() => { window.__probe = []; window.__handled = []; }")
        for _ in range(args.repeats):
            page.keyboard.press("Tab")
            time.sleep(0.05)
        for k in range(args.repeats):
            page.keyboard.press("a" if k % 2 == 0 else "r")
            page.wait_for_function("() => !__wbCanvas.inflight && !__wbCanvas.pending.length", timeout=30_000)
        time.sleep(0.2)
        probe = page.evaluate("() => window.__probe")
        handled = page.evaluate("() => window.__handled")
        for kind, keys in (("select (Tab)", ("Tab",)), ("accept / reject (a, r)", ("a", "r"))):
            rows = [r for r in probe if r["kind"] == "keydown" and r["key"] in keys]
            result[f"key {kind}: next frame ms"] = stats([r["frame"] for r in rows])
            result[f"key {kind}: after paint ms"] = stats([r["painted"] for r in rows])
        result["key handler (all keys) ms"] = stats([h["ms"] for h in handled if h["kind"] == "keydown"])
        result["save round trip in the browser ms"] = stats(page.evaluate("() => __wbCanvas.perf.roundTrips"))

        # ---- brush: one stroke of 40 moves on the selected instance -----------------------------------
        page.keyboard.press("Tab")
        page.keyboard.press("b")
        box = canvas.bounding_box()
        page.evaluate("() => { window.__probe = []; window.__handled = []; }")
        page.mouse.move(box["x"] + 0.3 * box["width"], box["y"] + 0.5 * box["height"])
        page.mouse.down()
        for k in range(40):
            page.mouse.move(box["x"] + (0.3 + 0.01 * k) * box["width"], box["y"] + (0.5 + 0.004 * k) * box["height"])
            time.sleep(0.02)
        page.mouse.up()
        page.wait_for_function("() => !__wbCanvas.inflight && !__wbCanvas.pending.length", timeout=30_000)
        time.sleep(0.2)
        probe = [r for r in page.evaluate("() => window.__probe") if r["kind"] == "pointermove"]
        handled = [h for h in page.evaluate("() => window.__handled") if h["kind"] == "pointermove"]
        result["brush move: handler ms"] = stats([h["ms"] for h in handled])
        result["brush move: next frame ms"] = stats([r["frame"] for r in probe])
        if args.screenshot:
            page.keyboard.press("v")
            page.keyboard.press("Tab")
            time.sleep(1.0)
            page.screenshot(path=str(args.screenshot))
        browser.close()

    result["server save (one accept) ms"] = stats(server_save_times(demo.ui, image_ids[1], args.repeats))
    result["load_after"] = loadavg_text()
    write_json(args.out, result, indent=2)
    print(json.dumps(result, indent=2))
    os._exit(0)  # the served app's threads


if __name__ == "__main__":
    main()
