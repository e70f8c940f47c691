"""The browser workbench (Gradio). ``app/`` only calls services of db/, mnc_core/ and partial_sup/.

Layout: the image list (upload, status filter, gallery, previous/next) on the left; on the
right the current image in tabs: Review (model proposals: accept / reject), Draw (boxes
with a class; masks from the model or GrabCut), Correct (brush and eraser on a mask),
and the Classes, Train and Export tabs. Every action is also a headless API endpoint
(see README: upload_images, propose, save_annotations, retrain, export_coco).
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import logging  # noqa: E402

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from gradio_image_annotation import image_annotator  # noqa: E402

from app.display import (EDITOR_MAX_SIDE, downscale, downscale_mask, hex_color, rgb_string,  # noqa: E402
                         scale_for, upscale_mask)
from app.workbench import PRESETS, Workbench, default_backbone_weights  # noqa: E402
from db import categories as category_service  # noqa: E402
from db import queries, registry  # noqa: E402
from db.annotations import ConflictError, get_annotations  # noqa: E402
from db.engine import Database  # noqa: E402
from db.errors import WorkbenchError  # noqa: E402
from db.uploads import MAX_UPLOAD_BYTES  # noqa: E402
from partial_sup import service  # noqa: E402
from partial_sup.proposals import LOW_CONFIDENCE_TOP  # noqa: E402

log = logging.getLogger(__name__)

CATEGORY_HEADERS = ["id", "name", "train box-only", "train masks", "set"]  # accepted, non-crowd, train split
IMAGE_HEADERS = ["id", "file_name", "width", "height", "split", "annotations", "status"]
INSTANCE_HEADERS = ["id", "class", "score", "state", "source", "kind"]
VERSION_HEADERS = ["version", "active", "name", "created",
                   *(header for header, _, _ in queries.VERSION_METRIC_COLUMNS), "run"]
STATUS_FILTERS = ["all", "new", "proposed", "in review", "done"]
GALLERY_LIMIT = 300
MAX_SHOWN = 60  # instances drawn on the image at once

SHORTCUTS = [("→ or j", "next image", "next-image"), ("← or k", "previous image", "prev-image"),
             ("a", "accept the selected instance", "accept-one"), ("r", "reject the selected instance", "reject-one"),
             ("Shift+A", "accept all proposals above the threshold", "accept-all"),
             ("p", "propose (run the model)", "propose"),
             ("s or Ctrl+S", "save (drawn boxes in Draw, the mask in Correct)", "save-boxes / save-mask"),
             ("z or Ctrl+Z", "undo the last change of the image", "undo")]

KEYBOARD_JS = r"""
() => {
  if (window.__workbenchKeys) return;
  window.__workbenchKeys = true;
  const visible = (el) => el && el.offsetParent !== null && !el.disabled;
  const click = (...ids) => {
    for (const id of ids) {
      const el = document.getElementById(id);
      if (visible(el)) { el.click(); return true; }
    }
    return false;
  };
  document.addEventListener('keydown', (event) => {
    const t = event.target;
    if (t && (t.closest && (t.closest('input, textarea, select, [contenteditable="true"], canvas, .annotator-container')))) return;
    if (event.altKey || event.metaKey) return;
    const key = event.key;
    const ctrl = event.ctrlKey;
    let done = false;
    if (ctrl) {
      if (key === 's') done = click('save-boxes', 'save-mask');
      else if (key === 'z') done = click('undo');
    } else if (key === 'ArrowRight' || key === 'j') done = click('next-image');
    else if (key === 'ArrowLeft' || key === 'k') done = click('prev-image');
    else if (key === 'A') done = click('accept-all');
    else if (key === 'a') done = click('accept-one');
    else if (key === 'r') done = click('reject-one');
    else if (key === 'p') done = click('propose');
    else if (key === 's') done = click('save-boxes', 'save-mask');
    else if (key === 'z') done = click('undo');
    if (done) event.preventDefault();
  });
}
"""

CSS = """
#gallery { min-height: 260px; }
.shortcut-table td { padding: 2px 8px; }
"""


def _shortcuts_markdown() -> str:
    rows = "\n".join(f"| `{key}` | {what} |" for key, what, _ in SHORTCUTS)
    return ("Keyboard shortcuts (not while typing in a field or drawing on a canvas):\n\n| key | action |\n|---|---|\n"
            + rows)


def _progress_adapter(progress: gr.Progress):
    def wrap(iterable, total, description):
        return progress.tqdm(iterable, total=total, desc=description)

    return wrap


def _user(request: gr.Request | None) -> str | None:
    """The logged-in user (Gradio's ``auth``; see launch_app), None when the server runs without logins."""
    return getattr(request, "username", None) if request is not None else None


def _error_text(exc: Exception) -> str:
    if isinstance(exc, ConflictError):
        return (f"⚠️ **Conflict:** {exc} The image now shows the other person's version; your version is "
                "kept and can be brought back with *Recover my lost version*.")
    return f"⚠️ {exc}"


def _overview(db: Database):
    summary = queries.summary(db)
    counts = queries.status_counts(db)
    text = (f"**{summary.images} images** ({summary.train_images} train, {summary.val_images} val; "
            + ", ".join(f"{v} {k}" for k, v in counts.items()) + ") · "
            f"**{summary.annotations} annotations** accepted, {summary.proposed} proposed · "
            f"**{len(summary.categories)} categories** · active model: {summary.active_model or 'none yet'}")
    categories = [[c.id, c.name, c.boxes, c.masks, c.supervision] for c in summary.categories]
    images = [[row[h] for h in IMAGE_HEADERS] for row in queries.list_images(db)]
    return text, categories, images


def shown_instances(rows: list[dict], threshold: float, min_score: float) -> tuple[list[dict], set[int]]:
    """What the review draws: the accepted instances and the proposals scoring at least ``threshold``;
    when no proposal reaches it, the best LOW_CONFIDENCE_TOP proposals instead, marked low confidence
    (their ids, the second value), as are stored guesses below ``min_score``. Accepted first, then by score."""
    proposed = sorted((r for r in rows if r["review_state"] == "proposed"), key=lambda r: -(r["score"] or 0.0))
    above = [r for r in proposed if (r["score"] or 0.0) >= threshold]
    guesses = above or proposed[:LOW_CONFIDENCE_TOP]
    low = {r["id"] for r in guesses if not above or (r["score"] is not None and r["score"] < min_score)}
    shown = [r for r in rows if r["review_state"] == "accepted"] + guesses
    shown.sort(key=lambda r: (r["review_state"] != "accepted", -(r["score"] or 0.0)))
    return shown[:MAX_SHOWN], low


def proposal_message(result, min_score: float) -> str:
    if result.low_confidence:
        return (f"No instance reached the minimum score {min_score:.2f}: the model's {result.added} best guess(es) "
                "were stored as low-confidence proposals.")
    return f"The model proposed {result.added} instance(s) (scores ≥ {min_score:.2f} are kept)."


class UI:
    """Handlers of the page's events (each session's state lives in gr.State components)."""

    def __init__(self, db: Database, workbench: Workbench):
        self.db = db
        self.wb = workbench

    # ---- the image list ----------------------------------------------------------------
    def status_choices(self):
        counts = queries.status_counts(self.db)
        return [(f"all ({sum(counts.values())})", "all")] + [(f"{k} ({v})", k) for k, v in counts.items()]

    def gallery(self, status: str):
        status = status or "all"
        rows = queries.list_images(self.db, limit=None, status=None if status == "all" else status)
        choices = self.status_choices()
        items = []
        for row in rows[:GALLERY_LIMIT]:
            try:
                items.append((self.wb.thumbnail(row), f"{row['id']} · {row['file_name']} · {row['status']}"))
            except (OSError, WorkbenchError) as exc:  # a lost file must not hide the other images
                log.warning("no thumbnail for image %s: %s", row["id"], exc)
        ids = [row["id"] for row in rows[:GALLERY_LIMIT]]
        return gr.Gallery(value=items), ids, gr.Radio(choices=choices, value=status)

    # ---- the current image ----------------------------------------------------------------
    def view(self, image_id, threshold, message: str = "", selected=None):
        """Outputs of VIEW: title, overlay, instance table, instance choice, annotator, revision, shown ids, message."""
        if image_id is None:
            empty_annotator = image_annotator(value=None)
            return ("Upload images or pick one in the gallery.", None, [], gr.Dropdown(choices=[], value=None),
                    empty_annotator, None, [], message, gr.Radio(choices=self.status_choices()))
        threshold = float(threshold or 0.0)
        info, rgb = self.wb.rgb(image_id)
        scale = scale_for(info["height"], info["width"])
        small = downscale(rgb, scale)
        revision, rows = get_annotations(self.db, image_id)
        names = queries.category_names(self.db)
        shown, low = shown_instances(rows, threshold, self.wb.min_score)
        if low:
            guesses = ", ".join(f"{r['score']:.3f}" for r in rows if r["id"] in low)
            message = ((message + "\n\n") if message else "") + (
                f"⚠️ No proposal reaches the score threshold {threshold:.2f}: the model's {len(low)} best guesses "
                f"are shown, marked **low confidence** (scores {guesses}). Accept, correct or reject them; "
                "retraining with more labelled photos makes the model surer.")
        overlays, colors = [], {}
        for r in shown:
            name = names.get(r["category_id"], f"class {r['category_id']}")
            score = "" if r["score"] is None else f" {r['score']:.2f}"
            mark = "✓" if r["review_state"] == "accepted" else "? low confidence" if r["id"] in low else "?"
            label = f"#{r['id']} {name}{score} {mark}"
            colors[label] = hex_color(r["category_id"])
            if r["mask"] is not None:
                overlays.append((downscale_mask(r["mask"], small.shape[:2]), label))
            else:
                x1, y1, x2, y2 = (int(round(v * scale)) for v in r["box"])
                overlays.append(((x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)), label))
        table = [[r["id"], names.get(r["category_id"], r["category_id"]),
                  "" if r["score"] is None else round(float(r["score"]), 3), r["review_state"], r["source"],
                  "mask" if r["mask"] is not None else "box"] for r in rows]
        choices = [(f"#{r['id']} {names.get(r['category_id'], r['category_id'])} · {r['review_state']}"
                    + ("" if r["score"] is None else f" · {r['score']:.2f}")
                    + (" · low confidence" if r["id"] in low else ""), r["id"]) for r in rows]
        ids = {r["id"] for r in rows}
        selected = selected if selected in ids else None
        boxes = [{"xmin": int(round(r["box"][0] * scale)), "ymin": int(round(r["box"][1] * scale)),
                  "xmax": int(round(r["box"][2] * scale)), "ymax": int(round(r["box"][3] * scale)),
                  "label": names.get(r["category_id"], ""), "color": rgb_string(r["category_id"])}
                 for r in rows if r["review_state"] == "accepted"]
        label_list = list(names.values())
        annotator = image_annotator(value={"image": small, "boxes": boxes}, label_list=label_list,
                                    label_colors=[hex_color(i) for i in names])
        status = queries.image_status(sum(r["review_state"] == "accepted" for r in rows),
                                      sum(r["review_state"] == "proposed" for r in rows),
                                      sum(r["review_state"] == "rejected" for r in rows))
        active = registry.active_version(self.db)
        lost = self.wb.conflicts(image_id)
        title = (f"**Image {image_id}** · {info['file_name']} · {info['width']}×{info['height']}"
                 f"{' (shown at %d%%)' % round(scale * 100) if scale < 1 else ''} · {info['split']} · **{status}** · "
                 f"revision {revision} · model: {'v%d' % active.id if active else 'none yet'}")
        if lost:
            title += f" · {len(lost)} version(s) lost in conflicts kept (newest: journal entry {lost[0].id})"
        overlay = gr.AnnotatedImage(value=(small, overlays), color_map=colors)
        return (title, overlay, table, gr.Dropdown(choices=choices, value=selected), annotator, revision,
                [r["id"] for r in shown], message, gr.Radio(choices=self.status_choices()))

    def safe_view(self, image_id, threshold, message, selected=None):
        try:
            return self.view(image_id, threshold, message, selected)
        except (WorkbenchError, OSError) as exc:
            return self.view(None, threshold, _error_text(exc))

    def open(self, image_id, threshold, message: str = "", auto_propose: bool = True, user: str | None = None):
        if image_id is None:
            return (None, *self.view(None, threshold, message), None, None)
        image_id = int(image_id)
        try:
            if auto_propose and self.wb.should_propose(image_id):
                result = self.wb.propose(image_id, user=user)
                message = (message + "\n\n" if message else "") + proposal_message(result, self.wb.min_score)
        except (WorkbenchError, OSError) as exc:
            message = (message + "\n\n" if message else "") + _error_text(exc)
        # a new image empties the mask editor (an empty editor costs nothing on later events)
        return (image_id, *self.safe_view(image_id, threshold, message), None, None)

    def act(self, image_id, threshold, selected, action, success):
        """Run an edit; on any problem (a conflict included) show it and the image as it is now."""
        if image_id is None:
            return self.view(None, threshold, "⚠️ Open an image first.")
        try:
            result = action()
            message = success(result) if callable(success) else success
            return self.view(image_id, threshold, message, selected)
        except (WorkbenchError, OSError, ValueError) as exc:
            return self.safe_view(image_id, threshold, _error_text(exc), selected)

    # ---- classes --------------------------------------------------------------------------
    def class_outputs(self, message: str = "", keep=None):
        """Message, overview, class table, and the class choices (new-instance class, picked, merge target)."""
        names = queries.category_names(self.db)
        choices = [(f"{name} (id {cid})", cid) for cid, name in names.items()]
        overview, categories, _ = _overview(self.db)
        first = choices[0][1] if choices else None
        keep = keep if keep in names else None
        return (message, overview, categories, gr.Dropdown(choices=choices, value=first),
                gr.Dropdown(choices=choices, value=keep), gr.Dropdown(choices=choices, value=None))

    # ---- training -----------------------------------------------------------------------
    def versions(self):
        rows = []
        for v in registry.list_versions(self.db):
            metrics = queries.version_metrics(v.metrics)
            rows.append([v.id, "●" if v.is_active else "", v.name, f"{v.created_at:%Y-%m-%d %H:%M}",
                         *(metrics[header] for header, _, _ in queries.VERSION_METRIC_COLUMNS),
                         v.training_run_id or ""])
        choices = [(f"v{v[0]} {v[2]}" + (" (active)" if v[1] else ""), v[0]) for v in rows]
        return rows, gr.Dropdown(choices=choices, value=None)

    def run_outputs(self, run_id):
        """Status text, progress bar, loss curve, versions, version choice, timer (active while running)."""
        if run_id is None:
            run_id = queries.latest_run(self.db)
        rows, choices = self.versions()
        if run_id is None:
            return ("No training run yet.", "", pd.DataFrame({"iteration": [], "loss": []}), rows, choices,
                    gr.Timer(active=False), None)
        state = service.run_state(self.db, int(run_id))
        fraction = state.iteration / state.iterations if state.iterations else 0.0
        loss = "" if state.loss is None else f", loss {state.loss:.4f}"
        text = f"**Training run {state.run_id}: {state.status}** · iteration {state.iteration}/{state.iterations}{loss}"
        eta = state.eta_seconds
        if eta is not None:
            text += f" · about {eta / 60:.1f} min left" if eta >= 90 else f" · about {eta:.0f} s left"
        if state.message and state.message != f"model version {state.version_id}":
            text += f" · {state.message}"
        if state.version_id is not None:
            text += f" · model version {state.version_id} is now active: new images get its proposals"
        bar = (f"<div style='background:#ddd;border-radius:4px;height:14px;width:100%'><div id='train-bar' "
               f"style='background:#3b82f6;height:14px;border-radius:4px;width:{fraction * 100:.1f}%'></div></div>")
        curve = pd.DataFrame({"iteration": [h[0] for h in state.history], "loss": [h[1] for h in state.history]})
        return (text, bar, curve, rows, choices, gr.Timer(active=not state.finished), state.run_id)


def build_app(db: Database, *, proposal_min_score: float | None = None, device: str | None = None) -> gr.Blocks:
    wb = Workbench(db, proposal_min_score=proposal_min_score, device=device)
    ui = UI(db, wb)
    with gr.Blocks(title="Instance segmentation workbench") as demo:
        image_id = gr.State(None)
        revision = gr.State(None)
        ids = gr.State([])
        shown = gr.State([])
        editing = gr.State(None)  # (image id, annotation id or None) the editor was loaded for
        run_id = gr.State(None)

        gr.Markdown("# Instance segmentation workbench")
        overview = gr.Markdown(elem_id="overview")
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                upload = gr.File(label="Drop images here (many at once)", file_count="multiple",
                                 file_types=["image"], elem_id="upload")
                split = gr.Radio(["train", "val"], value="train", label="Add to split")
                upload_msg = gr.Markdown(elem_id="upload-message")
                status_filter = gr.Radio(choices=STATUS_FILTERS, value="all", label="Show", elem_id="status-filter")
                gallery = gr.Gallery(label="Images", columns=3, height=360, allow_preview=False, elem_id="gallery")
                with gr.Row():
                    prev_btn = gr.Button("◀ Previous", elem_id="prev-image", size="sm")
                    next_btn = gr.Button("Next ▶", elem_id="next-image", size="sm")
                refresh = gr.Button("Refresh", size="sm")
            with gr.Column(scale=3):
                title = gr.Markdown("Upload images or pick one in the gallery.", elem_id="image-title")
                message = gr.Markdown(elem_id="message")
                with gr.Row():
                    instance = gr.Dropdown(label="Selected instance (click it on the image)", choices=[],
                                           elem_id="instance", scale=3)
                    threshold = gr.Slider(0.0, 1.0, value=0.5, step=0.01, label="Score threshold",
                                          elem_id="threshold", scale=2)
                with gr.Tabs():
                    with gr.Tab("Review", id="review"):
                        overlay = gr.AnnotatedImage(label="Proposals (?) and annotations (✓)", height=520,
                                                    elem_id="overlay")
                        with gr.Row():
                            propose_btn = gr.Button("Propose (p)", elem_id="propose", size="sm")
                            accept_btn = gr.Button("Accept (a)", elem_id="accept-one", variant="primary", size="sm")
                            reject_btn = gr.Button("Reject (r)", elem_id="reject-one", size="sm")
                            accept_all_btn = gr.Button("Accept all above threshold (A)", elem_id="accept-all",
                                                       size="sm")
                            delete_btn = gr.Button("Delete", elem_id="delete-one", variant="stop", size="sm")
                            undo_btn = gr.Button("Undo (z)", elem_id="undo", size="sm")
                            recover_btn = gr.Button("Recover my lost version", elem_id="recover", size="sm")
                        instances_table = gr.Dataframe(headers=INSTANCE_HEADERS, interactive=False,
                                                       elem_id="instances", label="Instances of this image")
                    with gr.Tab("Draw", id="draw"):
                        gr.Markdown("Draw a box (*Create box*), pick its class, then **Add drawn boxes**: each new "
                                    "box gets a mask from the model (its best instance of that class) or GrabCut "
                                    "when there is none. Tick *box only* to keep the class box-supervised.")
                        annotator = image_annotator(label_list=[], label_colors=[], image_type="numpy",
                                                    sources=[], show_clear_button=False, elem_id="annotator",
                                                    height=560)
                        with gr.Row():
                            box_only = gr.Checkbox(label="box only (no mask)", value=False, elem_id="box-only")
                            save_boxes_btn = gr.Button("Add drawn boxes (s)", elem_id="save-boxes", variant="primary")
                    with gr.Tab("Correct", id="correct"):
                        gr.Markdown("Pick an instance above (or none to paint a new one of the class below), "
                                    "**Edit mask**, paint with the brush or erase, then **Save mask**.")
                        with gr.Row():
                            new_class = gr.Dropdown(label="Class of a new painted instance", choices=[],
                                                    elem_id="new-class")
                            edit_btn = gr.Button("Edit mask", elem_id="edit-mask")
                            save_mask_btn = gr.Button("Save mask (s)", elem_id="save-mask", variant="primary")
                        editor = gr.ImageEditor(type="numpy", image_mode="RGBA", transforms=(), sources=(),
                                                layers=gr.LayerOptions(allow_additional_layers=False,
                                                                       layers=["mask"]),
                                                brush=gr.Brush(colors=["#ff2020"], color_mode="fixed",
                                                               default_size=12),
                                                eraser=gr.Eraser(default_size=12), elem_id="editor", height=520,
                                                canvas_size=(EDITOR_MAX_SIDE, EDITOR_MAX_SIDE))
                    with gr.Tab("Classes", id="classes"):
                        gr.Markdown("Counts of the accepted annotations of the **train** split (crowd regions "
                                    "left out). Set **A**: at least one mask (mask-supervised); **B**: boxes "
                                    "only (the model transfers masks to them); **-**: no train annotations.")
                        categories = gr.Dataframe(headers=CATEGORY_HEADERS, interactive=False, elem_id="categories")
                        class_msg = gr.Markdown(elem_id="class-message")
                        with gr.Row():
                            class_name = gr.Textbox(label="New class name (or new name for Rename)",
                                                    elem_id="class-name")
                            add_class_btn = gr.Button("Add class", elem_id="add-class")
                        with gr.Row():
                            class_pick = gr.Dropdown(label="Class", choices=[], elem_id="class-pick")
                            rename_btn = gr.Button("Rename to the name above", elem_id="rename-class")
                        with gr.Row():
                            merge_target = gr.Dropdown(label="Merge the class into", choices=[],
                                                       elem_id="merge-target")
                            merge_btn = gr.Button("Merge", elem_id="merge-class")
                        with gr.Row():
                            confirm_delete = gr.Checkbox(label="yes, also delete the class's annotations",
                                                         elem_id="confirm-delete")
                            delete_class_btn = gr.Button("Delete class", variant="stop", elem_id="delete-class")
                    with gr.Tab("Train", id="train"):
                        with gr.Row():
                            mode = gr.Radio(list(PRESETS), value="heads", label="Mode",
                                            info="; ".join(f"{k}: {p.description}" for k, p in PRESETS.items()))
                            iterations = gr.Number(label="Iterations (0 = the mode's)", value=0, precision=0,
                                                   elem_id="iterations")
                            image_size = gr.Number(label="Image size (0 = the mode's)", value=0, precision=0,
                                                   elem_id="image-size")
                            weights = gr.Textbox(label="Backbone weights (.pth, 'none', empty = ImageNet)",
                                                 value=default_backbone_weights() or "", elem_id="weights")
                        with gr.Row():
                            train_btn = gr.Button("Train a new model version", variant="primary", elem_id="train")
                            cancel_btn = gr.Button("Cancel training", variant="stop", elem_id="cancel-train")
                            min_score = gr.Number(value=wb.min_score, minimum=0.0, maximum=0.99, step=0.01,
                                                  label="Minimum score of stored proposals", elem_id="min-score",
                                                  info="below it a proposal is not stored, unless none reaches it "
                                                       "(then the best 3 are, marked low confidence)")
                        train_estimate = gr.Markdown(wb.training_estimate("heads"), elem_id="train-estimate")
                        train_status = gr.Markdown(elem_id="train-status")
                        train_bar = gr.HTML(elem_id="train-progress")
                        loss_plot = gr.LinePlot(x="iteration", y="loss", title="Training loss", height=240,
                                                elem_id="loss-plot")
                        versions = gr.Dataframe(headers=VERSION_HEADERS, interactive=False, elem_id="versions",
                                                label="Model versions")
                        with gr.Row():
                            version_pick = gr.Dropdown(label="Version", choices=[], elem_id="version-pick")
                            activate_btn = gr.Button("Activate (roll back / forward)", elem_id="activate")
                        timer = gr.Timer(2.0, active=False)
                    with gr.Tab("Export", id="export"):
                        with gr.Row():
                            mask_format = gr.Radio(["polygon", "rle"], value="polygon", label="Mask format",
                                                   elem_id="mask-format")
                            which = gr.Radio([("all images", "all"), ("reviewed (done) images only", "reviewed")],
                                             value="all", label="Images", elem_id="export-images")
                            export_btn = gr.Button("Export COCO", variant="primary", elem_id="export")
                        export_summary = gr.Markdown(elem_id="export-summary")
                        export_file = gr.File(label="COCO file", elem_id="export-file")
                    with gr.Tab("Keys", id="keys"):
                        gr.Markdown(_shortcuts_markdown(), elem_id="shortcuts")
        with gr.Row(visible=False):  # the headless API's inputs and outputs
            api_files = gr.File(file_count="multiple", label="files")
            api_split = gr.Textbox(value="train", label="split")
            api_image = gr.Number(label="image_id", precision=0)
            api_threshold = gr.Number(value=wb.min_score, label="score_threshold")
            api_instances = gr.JSON(label="instances")
            api_seen = gr.Number(value=-1, label="seen_revision (-1: no check)", precision=0)
            api_mode = gr.Textbox(value="heads", label="mode")
            api_iterations = gr.Number(value=0, label="iterations", precision=0)
            api_size = gr.Number(value=0, label="image_size", precision=0)
            api_weights = gr.Textbox(value="", label="backbone_weights")
            api_format = gr.Textbox(value="polygon", label="mask_format")
            api_which = gr.Textbox(value="all", label="images")
            api_out = gr.JSON(label="result")
            api_file = gr.File(label="coco_file")
            api_buttons = [gr.Button(f"api{i}") for i in range(5)]

        view_outputs = [title, overlay, instances_table, instance, annotator, revision, shown, message, status_filter]
        open_outputs = [image_id, *view_outputs, editor, editing]
        gallery_outputs = [gallery, ids, status_filter]

        def _refresh_gallery(event):
            """After an edit, the gallery's captions (each image's status) follow without a Refresh."""
            return event.then(ui.gallery, [status_filter], gallery_outputs, show_progress="hidden",
                              api_visibility="private")
        class_outputs = [class_msg, overview, categories, new_class, class_pick, merge_target]
        run_outputs = [train_status, train_bar, loss_plot, versions, version_pick, timer, run_id]
        private = dict(api_visibility="private")

        # ---- overview (also the `overview` API) --------------------------------------------
        images_table = gr.Dataframe(headers=IMAGE_HEADERS, interactive=False, visible=False, elem_id="images")
        demo.load(lambda: _overview(db), outputs=[overview, categories, images_table], api_name="overview")
        demo.load(lambda: ui.gallery("all"), outputs=gallery_outputs, **private)
        demo.load(lambda: ui.class_outputs()[3:], outputs=class_outputs[3:], **private)
        demo.load(lambda: ui.run_outputs(queries.latest_run(db, active_only=True)), outputs=run_outputs, **private)

        def refresh_all(status):
            return (*_overview(db), *ui.gallery(status))

        refresh.click(refresh_all, [status_filter], [overview, categories, images_table, *gallery_outputs], **private)

        # ---- images ----------------------------------------------------------------------
        def on_upload(files, split_value, threshold_value, request: gr.Request, progress=gr.Progress()):
            text, first = "", None
            if files:
                try:
                    result = wb.upload(files, names=[os.path.basename(getattr(f, "orig_name", None) or str(f))
                                                     for f in files], split=split_value,
                                       progress=_progress_adapter(progress))
                    text = result.summary().replace("\n", "  \n")
                    first = result.image_ids[0] if result.image_ids else None
                except WorkbenchError as exc:
                    text = _error_text(exc)
            opened = ui.open(first, threshold_value, user=_user(request))  # proposes first: the gallery's counts include it
            return (text, _overview(db)[0], *ui.gallery("all"), *opened)

        upload.upload(on_upload, [upload, split, threshold], [upload_msg, overview, *gallery_outputs, *open_outputs],
                      **private)
        status_filter.input(ui.gallery, [status_filter], gallery_outputs, **private)

        def on_select(id_list, threshold_value, evt: gr.SelectData, request: gr.Request):
            if evt.index is None or evt.index >= len(id_list):
                return ui.open(None, threshold_value)
            return ui.open(id_list[evt.index], threshold_value, user=_user(request))

        gallery.select(on_select, [ids, threshold], open_outputs, **private)

        def step(delta):
            def go(current, id_list, status_value, threshold_value, request: gr.Request):
                if not id_list:
                    id_list = [r["id"] for r in queries.list_images(
                        db, limit=GALLERY_LIMIT, status=None if status_value in (None, "all") else status_value)]
                if not id_list:
                    return ui.open(None, threshold_value, "No images in this list.")
                if current in id_list:
                    index = (id_list.index(current) + delta) % len(id_list)
                else:
                    index = 0 if delta > 0 else len(id_list) - 1
                return ui.open(id_list[index], threshold_value, user=_user(request))
            return go

        next_btn.click(step(+1), [image_id, ids, status_filter, threshold], open_outputs, **private)
        prev_btn.click(step(-1), [image_id, ids, status_filter, threshold], open_outputs, **private)

        # ---- review ----------------------------------------------------------------------
        threshold.change(lambda i, t, s: ui.safe_view(i, t, "", s), [image_id, threshold, instance], view_outputs,
                         trigger_mode="always_last", show_progress="hidden", **private)

        def on_overlay_select(shown_ids, evt: gr.SelectData):
            index = evt.index
            if isinstance(index, int) and 0 <= index < len(shown_ids):
                return gr.Dropdown(value=shown_ids[index])
            return gr.Dropdown()

        overlay.select(on_overlay_select, [shown], [instance], **private)

        def propose_click(i, t, s, rev, request: gr.Request):
            return ui.act(i, t, s, lambda: wb.propose(int(i), seen_revision=rev, user=_user(request)),
                          lambda r: f"{proposal_message(r, wb.min_score)} {r.replaced} older proposal(s) replaced.")

        _refresh_gallery(propose_btn.click(propose_click, [image_id, threshold, instance, revision], view_outputs, **private))

        def review_click(state):
            def handler(i, t, s, rev, request: gr.Request):
                def action():
                    if s is None:
                        raise WorkbenchError("select an instance first (click it on the image or pick it in the list)")
                    return wb.review(int(i), [int(s)], state, rev, _user(request))
                return ui.act(i, t, s, action, f"Instance #{s} {state}.")
            return handler

        _refresh_gallery(accept_btn.click(review_click("accepted"), [image_id, threshold, instance, revision], view_outputs, **private))
        _refresh_gallery(reject_btn.click(review_click("rejected"), [image_id, threshold, instance, revision], view_outputs, **private))
        def accept_all_click(i, t, s, rev, request: gr.Request):
            return ui.act(i, t, s, lambda: wb.accept_all(int(i), float(t), rev, _user(request)),
                          lambda r: f"{r[1]} proposal(s) accepted.")

        _refresh_gallery(accept_all_btn.click(accept_all_click, [image_id, threshold, instance, revision], view_outputs,
                                              **private))

        def delete_click(i, t, s, rev, request: gr.Request):
            def action():
                if s is None:
                    raise WorkbenchError("select the instance to delete first")
                return wb.delete_instance(int(i), int(s), rev, _user(request))
            return ui.act(i, t, None, action, f"Instance #{s} deleted (Undo brings it back).")

        _refresh_gallery(delete_btn.click(delete_click, [image_id, threshold, instance, revision], view_outputs, **private))
        def undo_click(i, t, s, request: gr.Request):
            return ui.act(i, t, s, lambda: wb.undo(int(i), _user(request)), "Undone.")

        def recover_click(i, t, s, rev, request: gr.Request):
            return ui.act(i, t, s, lambda: wb.recover_conflict(int(i), rev, _user(request)),
                          "Your version from the conflict is back (Undo reverts it).")

        _refresh_gallery(undo_btn.click(undo_click, [image_id, threshold, instance], view_outputs, **private))
        _refresh_gallery(recover_btn.click(recover_click, [image_id, threshold, instance, revision], view_outputs,
                                           **private))

        # ---- draw --------------------------------------------------------------------------
        def save_boxes(i, t, s, rev, value, only, request: gr.Request):
            def action():
                info = queries.image_info(db, int(i))
                scale = scale_for(info["height"], info["width"])
                _, rows = get_annotations(db, int(i), states=["accepted"])
                existing = [(r["category_id"], [v * scale for v in r["box"]]) for r in rows]
                new = []
                for box in (value or {}).get("boxes") or []:
                    small_box = [float(box["xmin"]), float(box["ymin"]), float(box["xmax"]), float(box["ymax"])]
                    label = box.get("label") or ""
                    if not label:
                        raise WorkbenchError("a drawn box has no class: click it and choose its class (add classes in the Classes tab)")
                    category_id = wb.category_id(label)
                    from partial_sup.proposals import box_iou

                    if any(c == category_id and box_iou(small_box, b) >= 0.9 for c, b in existing):
                        continue  # an annotation that is already there
                    new.append((category_id, tuple(v / scale for v in small_box)))
                if not new:
                    raise WorkbenchError("no new box: draw one with 'Create box' and choose its class first")
                return wb.add_boxes(int(i), new, box_only=bool(only), seen_revision=rev, user=_user(request))
            return ui.act(i, t, s, action, lambda r: f"{len(r[1])} box(es) added: {', '.join(r[1])}.")

        _refresh_gallery(save_boxes_btn.click(save_boxes, [image_id, threshold, instance, revision, annotator, box_only], view_outputs,
                             **private))

        # ---- correct (kept out of progress-heavy events: explicit buttons only) ------------
        def load_editor(i, s):
            if i is None:
                return None, None, "⚠️ Open an image first."
            try:
                info, rgb = wb.rgb(int(i))
                scale = scale_for(info["height"], info["width"], EDITOR_MAX_SIDE)
                background = downscale(rgb, scale)
                layer = np.zeros((*background.shape[:2], 4), np.uint8)
                if s is not None:
                    rows = {r["id"]: r for r in get_annotations(db, int(i))[1]}
                    row = rows.get(int(s))
                    if row is None:
                        return None, None, f"⚠️ Instance #{s} is gone; reload the image."
                    if row["mask"] is not None:
                        small = downscale_mask(row["mask"], background.shape[:2]) >= 0.5
                    else:
                        small = np.zeros(background.shape[:2], bool)
                        x1, y1, x2, y2 = (int(round(v * scale)) for v in row["box"])
                        small[y1:y2, x1:x2] = True
                    layer[small] = (255, 32, 32, 255)
                # The editor misplaces layers that are smaller than its canvas (Gradio 6.31): background
                # and layer are padded to the canvas size, and the padding is cut off again on saving.
                height, width = background.shape[:2]
                canvas = np.full((EDITOR_MAX_SIDE, EDITOR_MAX_SIDE, 4), (128, 128, 128, 255), np.uint8)
                canvas[:height, :width, :3] = background
                padded = np.zeros_like(canvas)
                padded[:height, :width] = layer
                value = {"background": canvas, "layers": [padded], "composite": None}
                what = f"instance #{s}" if s is not None else "a new instance"
                return (value, (int(i), None if s is None else int(s), height, width),
                        f"Editing the mask of {what} (grey: outside the image).")
            except (WorkbenchError, OSError) as exc:
                return None, None, _error_text(exc)

        edit_btn.click(load_editor, [image_id, instance], [editor, editing, message], **private)

        def save_mask(i, t, rev, value, target, klass, request: gr.Request):
            def action():
                if not target or target[0] != i:
                    raise WorkbenchError("load a mask with 'Edit mask' first (for the image that is open)")
                layers = (value or {}).get("layers") or []
                if not layers or layers[0] is None:
                    raise WorkbenchError("nothing painted yet")
                painted = np.asarray(layers[0])
                mask = painted[..., 3] > 0 if painted.ndim == 3 and painted.shape[2] == 4 else painted.any(axis=-1)
                mask = mask[:target[2], :target[3]]  # without the padding
                info = queries.image_info(db, int(i))
                full = upscale_mask(mask, (info["height"], info["width"]))
                return wb.save_mask(int(i), target[1], klass, full, rev, _user(request))
            out = ui.act(i, t, target[1] if target else None, action, "Mask saved.")
            if out[7] == "Mask saved.":
                return (*out, None, None)  # saved: the editor is emptied
            return (*out, gr.skip(), gr.skip())  # not saved: the painting stays

        _refresh_gallery(save_mask_btn.click(save_mask, [image_id, threshold, revision, editor, editing, new_class],
                            [*view_outputs, editor, editing], **private))

        # ---- classes ---------------------------------------------------------------------
        def class_action(action, success, keep=None):
            try:
                result = action()
                return ui.class_outputs(success(result) if callable(success) else success, keep)
            except WorkbenchError as exc:
                return ui.class_outputs(_error_text(exc), keep)

        add_class_btn.click(lambda name: class_action(lambda: category_service.add_category(db, name),
                                                      lambda cid: f"Class {name.strip()!r} added (id {cid})."),
                            [class_name], class_outputs, **private)

        def need(value, what):
            if value is None:
                raise WorkbenchError(f"choose {what} first")
            return int(value)

        rename_btn.click(lambda c, name: class_action(lambda: category_service.rename_category(
            db, need(c, "the class to rename"), name), f"Class renamed to {str(name).strip()!r}.", c),
            [class_pick, class_name], class_outputs, **private)
        def merge_click(c, target, request: gr.Request):
            return class_action(lambda: category_service.merge_categories(
                db, need(c, "the class to merge"), need(target, "the class to merge into"), user=_user(request)),
                lambda n: f"Merged: {n} annotation(s) moved.")

        merge_btn.click(merge_click, [class_pick, merge_target], class_outputs, **private)
        delete_class_btn.click(lambda c, ok: class_action(lambda: category_service.delete_category(
            db, need(c, "the class to delete"), delete_annotations=bool(ok)),
            lambda n: f"Class deleted with {n} annotation(s).", c), [class_pick, confirm_delete], class_outputs,
            **private)

        # ---- train -------------------------------------------------------------------------
        def start_train(mode_value, its, size, weights_value):
            try:
                new_run = wb.start_training(mode_value, its, size, weights_value)
            except WorkbenchError as exc:
                out = list(ui.run_outputs(None))
                out[0] = _error_text(exc)
                return tuple(out)
            return ui.run_outputs(new_run)

        train_btn.click(start_train, [mode, iterations, image_size, weights], run_outputs, **private).then(
            wb.training_estimate, [mode, iterations, image_size], [train_estimate], **private)
        for setting in (mode, iterations, image_size):
            setting.change(wb.training_estimate, [mode, iterations, image_size], [train_estimate], **private)

        def set_min_score(value):
            try:
                wb.set_min_score(value)
            except WorkbenchError as exc:
                gr.Warning(str(exc))
            return wb.min_score

        min_score.input(set_min_score, [min_score], [min_score], **private)
        timer.tick(ui.run_outputs, [run_id], run_outputs, show_progress="hidden", **private).then(
            wb.training_estimate, [mode, iterations, image_size], [train_estimate], show_progress="hidden", **private)

        def cancel(run):
            if run is not None:
                service.cancel_training(db, int(run))
            return ui.run_outputs(run)

        cancel_btn.click(cancel, [run_id], run_outputs, **private)

        def activate(version, run):
            try:
                if version is None:
                    raise WorkbenchError("choose a model version first")
                registry.activate_version(db, int(version))
                out = list(ui.run_outputs(run))
                out[0] = f"Model version {int(version)} is active: proposals now come from it."
                return tuple(out)
            except WorkbenchError as exc:
                out = list(ui.run_outputs(run))
                out[0] = _error_text(exc)
                return tuple(out)

        activate_btn.click(activate, [version_pick, run_id], run_outputs, **private)

        # ---- export ----------------------------------------------------------------------------
        def export_click(fmt, images, progress=gr.Progress()):
            try:
                path, report = wb.export(fmt, images, progress=_progress_adapter(progress))
            except WorkbenchError as exc:
                return _error_text(exc), None
            return f"Exported {report.summary()}", str(path)

        export_btn.click(export_click, [mask_format, which], [export_summary, export_file], **private)

        # ---- the headless API -------------------------------------------------------------------
        def upload_images(files, split, progress=gr.Progress()):
            """Add image files; returns their image ids (existing images keep theirs) and refusals."""
            try:
                result = wb.upload(files, split=split or "train", progress=_progress_adapter(progress))
            except WorkbenchError as exc:
                raise gr.Error(str(exc)) from None
            return {"image_ids": result.image_ids, "added": result.added, "existing": result.existing,
                    "refused": result.refused}

        def api_propose(image_id, score_threshold, request: gr.Request):
            """Run the active model on an image, store its instances as proposals; returns the image's instances."""
            try:
                result = wb.propose(int(image_id), score_threshold=score_threshold, user=_user(request))
                out = wb.instances(int(image_id))
                out.update(added=result.added, replaced=result.replaced, saved_revision=result.revision,
                           low_confidence=result.low_confidence, model_version_id=registry.active_version(db).id)
                return out
            except (WorkbenchError, TypeError, ValueError) as exc:
                raise gr.Error(str(exc)) from None

        def api_save(image_id, instances, seen_revision, request: gr.Request):
            """Make the instances the image's annotations; returns the annotations as they are now, their
            revision, and the revision this save made (saved_revision: another save may follow at once)."""
            try:
                seen = None if seen_revision is None or int(seen_revision) < 0 else int(seen_revision)
                saved = wb.save_json(int(image_id), instances if instances is not None else [], seen,
                                     user=_user(request))
                return {**wb.instances(int(image_id)), "saved_revision": saved}
            except (WorkbenchError, TypeError, ValueError, KeyError) as exc:
                raise gr.Error(str(exc)) from None

        def api_retrain(mode, iterations, image_size, backbone_weights, progress=gr.Progress()):
            """Train a new model version (its own process) and wait for it; returns the version and its metrics."""
            try:
                run = wb.start_training(mode, iterations, image_size, backbone_weights)
            except WorkbenchError as exc:
                raise gr.Error(str(exc)) from None
            progress(0.0, desc=f"training run {run}")

            def report(state):
                if state.iterations:
                    progress((state.iteration, state.iterations), desc=f"training run {run}", unit="iterations")

            state = wb.wait_for_run(run, report)
            if state.status != "succeeded":
                raise gr.Error(f"training run {run} {state.status}: {state.message}")
            return {"run_id": run, "status": state.status, "iterations": state.iterations, "loss": state.loss,
                    "history": state.history, **(wb.version_info(state.version_id) or {})}

        def api_export(mask_format, images, progress=gr.Progress()):
            """Export COCO (mask_format polygon|rle, images all|reviewed); returns the file."""
            try:
                path, _ = wb.export(mask_format, images, progress=_progress_adapter(progress))
            except WorkbenchError as exc:
                raise gr.Error(str(exc)) from None
            return str(path)

        api_buttons[0].click(upload_images, [api_files, api_split], api_out, api_name="upload_images")
        api_buttons[1].click(api_propose, [api_image, api_threshold], api_out, api_name="propose")
        api_buttons[2].click(api_save, [api_image, api_instances, api_seen], api_out, api_name="save_annotations")
        api_buttons[3].click(api_retrain, [api_mode, api_iterations, api_size, api_weights], api_out,
                             api_name="retrain")
        api_buttons[4].click(api_export, [api_format, api_which], api_file, api_name="export_coco")
    demo.workbench, demo.ui = wb, ui  # for tests and scripts
    return demo


def _preload_model(workbench: Workbench) -> None:
    try:
        workbench.models.active()  # torch and the active model load while the page opens
    except Exception as exc:  # noqa: BLE001 (shown again, with its message, when a proposal is asked for)
        log.warning("the active model could not be loaded: %s", exc)


def served_folders(db: Database) -> list[str]:
    """The only folders whose files the server hands out (exports and thumbnails): not the database,
    the stored images or the checkpoints."""
    folders = [db.data_dir / "exports", db.data_dir / "thumbs"]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    return [str(folder) for folder in folders]


def launch_app(db: Database, host: str = "127.0.0.1", port: int = 7860, *, block: bool = True, auth=None,
               max_file_size: int = MAX_UPLOAD_BYTES, **build_kwargs):
    """``auth``: Gradio's login check, a callable (username, password) -> bool (app.users.UsersFile);
    ``max_file_size``: bytes; larger uploads are refused by the server before any handler sees them."""
    import threading

    demo = build_app(db, **build_kwargs)
    threading.Thread(target=_preload_model, args=(demo.workbench,), daemon=True).start()
    demo.queue(default_concurrency_limit=4)
    demo.launch(server_name=host, server_port=port, share=False, inbrowser=False, js=KEYBOARD_JS, css=CSS,
                allowed_paths=served_folders(db), auth=auth, max_file_size=max_file_size,
                prevent_thread_lock=not block, quiet=not block)
    return demo


def serve(db: Database, host: str = "127.0.0.1", port: int = 7860, *, auth_file=None,
          max_file_size: int = MAX_UPLOAD_BYTES) -> None:
    """Refuses a non-loopback ``host`` without a users file (see app.users.server_auth)."""
    from app.users import server_auth

    auth = server_auth(host, auth_file)
    logins = f", logins from {auth_file} ({len(auth.users)} users)" if auth else ""
    print(f"workbench on http://{host}:{port} (data in {db.data_dir}{logins})")
    launch_app(db, host, port, block=True, auth=auth, max_file_size=max_file_size)
