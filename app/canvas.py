"""The review canvas: a gr.HTML whose page-side code (app/canvas.js) draws the photo and every instance from
its compressed RLE, and handles selection, review keys, classes, brush, eraser, polygon, box -> mask, zoom
and pan in the browser. Edits show at once and reach the server in the background as the component's
'save' event; the server answers with the image's new state (the component's value, built here).

The value: {image_id, revision, width, height, image_url, threshold, classes: [{id, name, color}],
instances: [{id, category_id, state, score, low, box, counts, color, source}], ack, created, status,
message, lost}. ``ack``: the browser's batch number this state answers; ``created``: temp id -> new id.
"""

from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import quote

from app.display import class_shades, hex_color, hex_of, hidden_message, shown_instances
from services.workbench import MAX_BOXES, MAX_EDITS


def _script() -> str:
    """canvas.js with the server's limits of a batch of edits (services.editing) in its BATCH_LIMITS line."""
    text = Path(__file__).with_name("canvas.js").read_text(encoding="utf-8")
    line = "const BATCH_LIMITS = {edits: 500, costly: 20};"
    if line not in text:
        raise RuntimeError(f"app/canvas.js lost its line {line!r}, which app/canvas.py fills in")
    return text.replace(line, f"const BATCH_LIMITS = {{edits: {MAX_EDITS}, costly: {MAX_BOXES}}};")


JS = _script()

TOOLS = [("select", "Select · pan (v)"), ("box", "Box → mask (x)"), ("polygon", "Polygon (g)"),
         ("scissors", "Scissors (i)"),
         ("brush", "Brush (b)"), ("eraser", "Eraser (e)"), ("refine", "Refine clicks (c)")]
ACTIONS = [("accept", "Accept (a)"), ("reject", "Reject (r)"), ("delete", "Delete (d)"), ("keep_box", "Keep box (k)"),
           ("accept_all", "Accept all shown (A)"), ("undo", "Undo (z)"), ("propose", "Propose (p)"),
           ("fit", "Fit (0)"), ("done", "Done, next (n)")]
KEYS = [("click", "select the topmost instance"), ("Tab / Shift+Tab", "next / previous instance (by score)"),
        ("a / r / d", "accept / reject / delete it, then the next proposal"),
        ("k", "keep the proposal's box, make its mask again from the box"),
        ("Shift+A", "accept all the proposals shown"), ("1-9", "class of the selected one (or of new ones)"),
        ("n / Enter", "done (proposals left are rejected), next image"), ("→ / ←", "next / previous image"),
        ("v x g i b e c", "select, box, polygon, scissors (snaps to edges), brush, eraser, refine clicks"),
        ("refine: left / right click", "this is the object / this is not (GrabCut)"), ("[ / ]", "brush radius"),
        ("wheel, + / -", "zoom; space+drag or middle drag: pan"), ("z", "undo"), ("Esc", "cancel / deselect")]


def _buttons(items, attribute: str) -> str:
    return "".join(f'<button {attribute}="{name}" tabindex="-1">{label}</button>' for name, label in items)


TEMPLATE = (
    '<div class="wb-canvas"><div class="wb-tools">' + _buttons(TOOLS, "data-tool") + '<span class="wb-gap"></span>'
    + _buttons(ACTIONS, "data-act") + '</div><div class="wb-main">'
    '<div class="wb-stage"><canvas class="wb-view" tabindex="0" aria-label="review canvas"></canvas></div>'
    '<div class="wb-side"><div class="wb-status"></div><div class="wb-message" role="status"></div>'
    '<div class="wb-head">Classes</div><div class="wb-classes"></div>'
    '<div class="wb-head">Instances</div><div class="wb-list"></div>'
    '<details class="wb-help"><summary>Keys</summary><table>'
    + "".join(f"<tr><td><kbd>{key}</kbd></td><td>{what}</td></tr>" for key, what in KEYS)
    + '</table></details></div></div></div>')

CSS = """
.wb-canvas { display: flex; flex-direction: column; gap: 4px; }
.wb-tools { display: flex; flex-wrap: wrap; gap: 3px; align-items: center; }
.wb-tools button, .wb-class { font-size: 12px; padding: 2px 7px; border: 1px solid #bbb; border-radius: 4px;
  background: #f6f6f6; color: #222; cursor: pointer; }
.wb-tools button.on, .wb-class.on { background: #2563eb; color: #fff; border-color: #2563eb; }
.wb-tools button[data-act="accept"], .wb-tools button[data-act="done"] { font-weight: 600; }
.wb-gap { width: 12px; }
.wb-main { display: flex; gap: 8px; }
.wb-stage { flex: 1; min-width: 0; height: calc(100vh - 330px); min-height: 300px; position: relative; }
.wb-view { width: 100%; height: 100%; display: block; outline: none; border-radius: 4px; }
.wb-view:focus { box-shadow: 0 0 0 2px #2563eb; }
.wb-side { width: 230px; flex: none; font-size: 12px; display: flex; flex-direction: column; gap: 4px;
  height: calc(100vh - 330px); min-height: 300px; overflow: hidden; }
.wb-status { font-weight: 600; }
.wb-state.saving { color: #b45309; } .wb-state.saved { color: #15803d; }
.wb-state.conflict, .wb-state.notsaved { color: #b91c1c; }
.wb-message { color: #92400e; max-height: 120px; overflow-y: auto; }
.wb-head { font-weight: 600; margin-top: 4px; }
.wb-classes { display: flex; flex-wrap: wrap; gap: 3px; max-height: 110px; overflow-y: auto; }
.wb-list { flex: 1; overflow-y: auto; position: relative; border: 1px solid #ddd; border-radius: 4px; }
.wb-row { padding: 2px 4px; cursor: pointer; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.wb-row.on { background: #dbeafe; } .wb-row.low { opacity: 0.6; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 4px; }
.wb-help table td { padding: 0 4px; }
"""


def canvas_value(*, image: dict | None, image_url: str | None, revision: int | None, instances: list[dict],
                 classes: dict[int, str], review_threshold: float | None, score_threshold: float,
                 message: str = "", status: str = "saved", ack: int | None = None, created: dict | None = None,
                 lost: int = 0, policies: dict | None = None) -> dict:
    """The canvas's value. ``image``: services' image_info (None: nothing open); ``instances``: the
    workbench's instances() list (masks as compressed RLE); only what the review shows is sent (accepted
    ones, proposals above ``review_threshold`` or the low-confidence best guesses, which the message names; with
    ``review_threshold`` None, the proposals the model's thresholds show: ``policies`` as instances() gives them)."""
    shown, low = shown_instances(instances, review_threshold, score_threshold)
    hidden = hidden_message(instances, policies or {}) if review_threshold is None else ""
    if hidden:
        message = ((message + "\n") if message else "") + hidden
    if low:
        guesses = ", ".join(f"{r['score']:.3f}" for r in shown if r["id"] in low)
        message = ((message + "\n") if message else "") + (
            f"⚠️ No proposal reaches the review threshold {review_threshold:.2f}: the model's {len(low)} best "
            f"guesses are shown, faded (scores {guesses}). Accept, correct or reject them; retraining with more "
            "labelled photos makes the model surer.")
    colors = class_shades(shown)
    return {
        "image_id": None if image is None else int(image["id"]), "revision": revision,
        "width": 0 if image is None else int(image["width"]), "height": 0 if image is None else int(image["height"]),
        "image_url": image_url, "threshold": None if review_threshold is None else float(review_threshold),
        "classes": [{"id": int(cid), "name": name, "color": hex_color(cid)} for cid, name in classes.items()],
        "instances": [{"id": r["id"], "category_id": r["category_id"], "state": r["review_state"], "score": r["score"],
                       "low": r["id"] in low, "box": r["box"], "source": r["source"],
                       "counts": None if r["mask"] is None else r["mask"]["counts"],
                       "color": hex_of(colors[r["id"]])} for r in shown],
        "ack": ack, "created": {str(k): v for k, v in (created or {}).items()}, "status": status,
        "message": html.escape(message.replace("**", "")).replace("\n", "<br>"), "lost": lost}


def file_url(path: str) -> str:
    """The URL Gradio serves a file under (the folder must be in launch(allowed_paths=...))."""
    return "/gradio_api/file=" + quote(str(path))
