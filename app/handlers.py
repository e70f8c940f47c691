"""The page's event handlers: what each click, key and upload does, in terms of the services facade
(``services.workbench.Workbench``), and what the page shows afterwards.

Handlers return named tuples whose fields follow the order of the components they fill (see
``app.ui``), so that code and tests read ``out.message``, not ``out[7]``.
"""

from __future__ import annotations

import logging
import os
from typing import Any, NamedTuple

import gradio as gr
import numpy as np
import pandas as pd
from gradio_image_annotation import image_annotator

from app.display import (GALLERY_LIMIT, IMAGE_HEADERS, category_rows, error_text, hex_color, instance_colors,
                         overview_text, progress_bar_html, proposal_message, shown_instances)
from services.images import EDITOR_MAX_SIDE, downscale, downscale_mask, scale_for, upscale_mask
from services.workbench import Workbench, WorkbenchError

log = logging.getLogger(__name__)

ORDER_CHOICES = [("upload order", "upload"), ("most useful next", "most_useful")]
ORDER_PROPOSE_BUDGET = 12  # photos the model looks at when "most useful next" is chosen (a few s each on a CPU)
HELP_FIGURES = (("accepted unchanged", "unchanged_share"), ("added by hand", "hand_share"),
                ("IoU of edited", "edited_iou"))
HELP_COLUMNS = ("version", "class", "final", "unchanged", "edited", "hand", "rejected", "images", "unchanged_share",
                "hand_share", "edited_iou", "rejected_per_image", "seconds_per_instance")


class View(NamedTuple):
    """The current image as the page shows it (the components of ``app.ui``'s view outputs)."""
    title: str
    overlay: Any          # gr.AnnotatedImage
    table: list           # the instance table's rows
    instance: Any         # gr.Dropdown: the selected instance
    annotator: Any        # the Draw tab's box annotator
    revision: int | None  # the image's revision this view shows (sent back with the next edit)
    shown: list           # ids of the instances drawn, in the overlay's order
    message: str
    statuses: Any         # gr.Radio: the status filter with its counts
    box_ids: dict         # "r,g,b" colour of a box in the Draw tab -> the annotation it shows


class Opened(NamedTuple):
    """An image opened: its id, its view, and the mask editor emptied."""
    image_id: int | None
    title: str
    overlay: Any
    table: list
    instance: Any
    annotator: Any
    revision: int | None
    shown: list
    message: str
    statuses: Any
    box_ids: dict
    editor: Any
    editing: Any

    @classmethod
    def of(cls, image_id, view: View) -> "Opened":
        return cls(image_id, *view, None, None)


class ClassView(NamedTuple):
    message: str
    overview: str
    categories: list
    new_class: Any     # gr.Dropdown
    class_pick: Any    # gr.Dropdown
    merge_target: Any  # gr.Dropdown
    annotator: Any     # the Draw tab's box annotator: its class list (its boxes stay as they are)


class RunView(NamedTuple):
    status: str
    bar: str
    curve: Any         # pd.DataFrame of (iteration, loss)
    versions: list
    version_pick: Any  # gr.Dropdown
    timer: Any         # gr.Timer: active while a run is going
    run_id: int | None


def progress_adapter(progress: gr.Progress):
    """A services Progress (iterable, total, description) drawn as Gradio's progress bar."""
    def wrap(iterable, total, description):
        return progress.tqdm(iterable, total=total, desc=description)

    return wrap


def user_of(request: gr.Request | None) -> str | None:
    """The logged-in user (Gradio's ``auth``; see app.ui.launch_app), None when the server runs without logins."""
    return getattr(request, "username", None) if request is not None else None


def _need(value, what: str) -> int:
    if value is None:
        raise WorkbenchError(f"choose {what} first")
    return int(value)


class Handlers:
    """Handlers of the page's events (each session's state lives in gr.State components)."""

    def __init__(self, workbench: Workbench):
        self.wb = workbench

    # ---- the image list ----------------------------------------------------------------
    def status_choices(self):
        counts = self.wb.status_counts()
        return [(f"all ({sum(counts.values())})", "all")] + [(f"{k} ({v})", k) for k, v in counts.items()]

    def gallery(self, status: str, order: str = "upload", propose_missing: int = 0):
        """Gallery items, their image ids, the status filter with counts; ``order``: "upload" or "most_useful"
        (Workbench.list_images)."""
        status = status or "all"
        rows = self.wb.list_images(status, limit=None, order=order or "upload", propose_missing=propose_missing)
        items = []
        for row in rows[:GALLERY_LIMIT]:
            useful = "" if row.get("uncertainty") is None else f" · uncertainty {row['uncertainty']:.2f}"
            try:
                items.append((self.wb.thumbnail(row), f"{row['id']} · {row['file_name']} · {row['status']}{useful}"))
            except (OSError, WorkbenchError) as exc:  # a lost file must not hide the other images
                log.warning("no thumbnail for image %s: %s", row["id"], exc)
        ids = [row["id"] for row in rows[:GALLERY_LIMIT]]
        return gr.Gallery(value=items), ids, gr.Radio(choices=self.status_choices(), value=status)

    def overview(self):
        """Summary line, class table, image table (also the `overview` API)."""
        summary = self.wb.summary()
        images = [[row[h] for h in IMAGE_HEADERS] for row in self.wb.list_images()]
        return self.summary_line(summary), category_rows(summary), images

    def summary_line(self, summary=None) -> str:
        """The line at the top: counts, classes, the active model and where it runs."""
        summary = self.wb.summary() if summary is None else summary
        return f"{overview_text(summary, self.wb.status_counts())} · model on {self.wb.device_text()}"

    def refresh_all(self, status, order="upload"):
        return (*self.overview(), *self.gallery(status, order))

    # ---- the current image ----------------------------------------------------------------
    def view(self, image_id, review_threshold, message: str = "", selected=None) -> View:
        if image_id is None:
            return View("Upload images or pick one in the gallery.", None, [], gr.Dropdown(choices=[], value=None),
                        image_annotator(value=None), None, [], message, gr.Radio(choices=self.status_choices()), {})
        review_threshold = float(review_threshold or 0.0)
        info, rgb = self.wb.rgb(image_id)
        scale = scale_for(info["height"], info["width"])
        small = downscale(rgb, scale)
        revision, rows = self.wb.annotations(image_id)
        names = self.wb.category_names()
        shown, low = shown_instances(rows, review_threshold, self.wb.score_threshold)
        if low:
            guesses = ", ".join(f"{r['score']:.3f}" for r in rows if r["id"] in low)
            message = ((message + "\n\n") if message else "") + (
                f"⚠️ No proposal reaches the review threshold {review_threshold:.2f}: the model's {len(low)} best "
                f"guesses are shown, marked **low confidence** (scores {guesses}). Accept, correct or reject them; "
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
        selected = selected if selected in {r["id"] for r in rows} else None
        accepted = [r for r in rows if r["review_state"] == "accepted"]
        colors_of = instance_colors([r["id"] for r in accepted])
        boxes = [{"xmin": int(round(r["box"][0] * scale)), "ymin": int(round(r["box"][1] * scale)),
                  "xmax": int(round(r["box"][2] * scale)), "ymax": int(round(r["box"][3] * scale)),
                  "label": names.get(r["category_id"], ""), "color": "rgb(%d, %d, %d)" % colors_of[r["id"]]}
                 for r in accepted]
        box_ids = {",".join(map(str, color)): annotation_id for annotation_id, color in colors_of.items()}
        annotator = image_annotator(value={"image": small, "boxes": boxes}, label_list=list(names.values()),
                                    label_colors=[hex_color(i) for i in names])
        active = self.wb.active_version_id()
        lost = self.wb.conflicts(image_id)
        title = (f"**Image {image_id}** · {info['file_name']} · {info['width']}×{info['height']}"
                 f"{' (shown at %d%%)' % round(scale * 100) if scale < 1 else ''} · {info['split']} · "
                 f"**{self.wb.image_status(rows)}** · revision {revision} · "
                 f"model: {'v%d' % active if active else 'none yet'}")
        if lost:
            title += f" · {len(lost)} version(s) lost in conflicts kept (newest: journal entry {lost[0]})"
        overlay = gr.AnnotatedImage(value=(small, overlays), color_map=colors)
        return View(title, overlay, table, gr.Dropdown(choices=choices, value=selected), annotator, revision,
                    [r["id"] for r in shown], message, gr.Radio(choices=self.status_choices()), box_ids)

    def safe_view(self, image_id, review_threshold, message, selected=None) -> View:
        try:
            return self.view(image_id, review_threshold, message, selected)
        except (WorkbenchError, OSError) as exc:
            return self.view(None, review_threshold, error_text(exc))

    def open(self, image_id, review_threshold, message: str = "", auto_propose: bool = True,
             user: str | None = None) -> Opened:
        """Open an image (proposing first when the active model has not seen it); the mask editor empties."""
        if image_id is None:
            return Opened.of(None, self.view(None, review_threshold, message))
        image_id = int(image_id)
        try:
            if auto_propose and self.wb.should_propose(image_id):
                result = self.wb.propose(image_id, user=user)
                message = (message + "\n\n" if message else "") + proposal_message(result, self.wb.score_threshold)
        except (WorkbenchError, OSError) as exc:
            message = (message + "\n\n" if message else "") + error_text(exc)
        return Opened.of(image_id, self.safe_view(image_id, review_threshold, message))

    def act(self, image_id, review_threshold, selected, action, success) -> View:
        """Run an edit; on any problem (a conflict included) show it and the image as it is now."""
        if image_id is None:
            return self.view(None, review_threshold, "⚠️ Open an image first.")
        try:
            result = action()
            message = success(result) if callable(success) else success
            return self.view(image_id, review_threshold, message, selected)
        except (WorkbenchError, OSError, ValueError) as exc:
            return self.safe_view(image_id, review_threshold, error_text(exc), selected)

    # ---- events of the image list -----------------------------------------------------
    def on_upload(self, files, split, review_threshold, request: gr.Request, progress=gr.Progress()):
        """Upload message, overview, gallery outputs, then the first new image opened."""
        text, first = "", None
        if files:
            try:
                result = self.wb.upload(files, names=[os.path.basename(getattr(f, "orig_name", None) or str(f))
                                                      for f in files], split=split,
                                        progress=progress_adapter(progress))
                text = result.summary().replace("\n", "  \n")
                first = result.image_ids[0] if result.image_ids else None
            except WorkbenchError as exc:
                text = error_text(exc)
        opened = self.open(first, review_threshold, user=user_of(request))  # proposes first: the counts include it
        return (text, self.overview()[0], *self.gallery("all"), *opened)

    def on_select(self, id_list, review_threshold, evt: gr.SelectData, request: gr.Request) -> Opened:
        if evt.index is None or evt.index >= len(id_list):
            return self.open(None, review_threshold)
        return self.open(id_list[evt.index], review_threshold, user=user_of(request))

    def step(self, delta: int):
        """The handler of Next (+1) / Previous (-1) through the listed images."""
        def go(current, id_list, status, review_threshold, request: gr.Request) -> Opened:
            if not id_list:
                id_list = [r["id"] for r in self.wb.list_images(status, limit=GALLERY_LIMIT)]
            if not id_list:
                return self.open(None, review_threshold, "No images in this list.")
            if current in id_list:
                index = (id_list.index(current) + delta) % len(id_list)
            else:
                index = 0 if delta > 0 else len(id_list) - 1
            return self.open(id_list[index], review_threshold, user=user_of(request))
        return go

    # ---- review --------------------------------------------------------------------------
    def order_gallery(self, status, order):
        """The gallery in the chosen order; "most useful next" first runs the active model on up to
        ORDER_PROPOSE_BUDGET unlabelled photos it has not seen (their proposals are stored, ready to review)."""
        try:
            return self.gallery(status, order, propose_missing=ORDER_PROPOSE_BUDGET if order == "most_useful" else 0)
        except WorkbenchError as exc:
            gr.Warning(str(exc))
            return self.gallery(status)

    def step_in_order(self, delta: int):
        """Next / Previous in the gallery's order: with "most useful next", Next opens the most useful
        unlabelled train photo (new or proposed) other than the one open now."""
        plain = self.step(delta)

        def go(current, id_list, status, review_threshold, order, request: gr.Request) -> Opened:
            if order != "most_useful" or delta < 0:
                return plain(current, id_list, status, review_threshold, request)
            rows = self.wb.list_images(status, limit=None, order="most_useful")
            useful = [r["id"] for r in rows if r["split"] == "train" and r["status"] in ("new", "proposed")
                      and r["id"] != current]
            if not useful:
                return plain(current, id_list, status, review_threshold, request)
            return self.open(useful[0], review_threshold, user=user_of(request))
        return go

    # ---- model help -----------------------------------------------------------------------------------
    def show_model_help(self):
        """The "Model help" tab (not named model_help: that is the API endpoint's name): shares across versions
        (plot), seconds per instance (plot), per version and per class tables."""
        help_ = self.wb.model_help()
        versions, classes = help_["versions"], help_["classes"]
        number = {v["version"]: v["version_id"] or 0 for v in versions}  # the plots' x: version id, 0 = no model
        shares = pd.DataFrame([{"version": number[v["version"]], "figure": figure, "value": v[key]}
                               for v in versions for figure, key in HELP_FIGURES if v[key] is not None],
                              columns=["version", "figure", "value"])
        seconds = pd.DataFrame([{"version": number[v["version"]], "seconds per instance": v["seconds_per_instance"]}
                                for v in versions if v["seconds_per_instance"] is not None],
                               columns=["version", "seconds per instance"])
        table = [[v[c] if v[c] is not None else "-" for c in HELP_COLUMNS] for v in versions]
        per_class = [[v[c] if v[c] is not None else "-" for c in HELP_COLUMNS] for v in classes]
        note = ("No proposals reviewed and nothing drawn yet: label a few photos, train, and come back."
                if not versions else f"{len(versions)} version(s) · the plot shows whether retraining paid: more "
                "proposals accepted unchanged, fewer added by hand, fewer seconds per instance.")
        return note, shares, seconds, table, per_class

    def on_review_threshold(self, image_id, review_threshold, selected) -> View:
        return self.safe_view(image_id, review_threshold, "", selected)

    @staticmethod
    def on_overlay_select(shown_ids, evt: gr.SelectData):
        index = evt.index
        if isinstance(index, int) and 0 <= index < len(shown_ids):
            return gr.Dropdown(value=shown_ids[index])
        return gr.Dropdown()

    def on_propose(self, image_id, review_threshold, selected, revision, request: gr.Request) -> View:
        return self.act(image_id, review_threshold, selected,
                        lambda: self.wb.propose(int(image_id), seen_revision=revision, user=user_of(request)),
                        lambda r: f"{proposal_message(r, self.wb.score_threshold)} {r.replaced} older proposal(s) "
                                  "replaced.")

    def review(self, state: str):
        """The handler of Accept / Reject of the selected instance."""
        def handler(image_id, review_threshold, selected, revision, request: gr.Request) -> View:
            def action():
                if selected is None:
                    raise WorkbenchError("select an instance first (click it on the image or pick it in the list)")
                return self.wb.review(int(image_id), [int(selected)], state, revision, user_of(request))
            return self.act(image_id, review_threshold, selected, action, f"Instance #{selected} {state}.")
        return handler

    def accept_all(self, image_id, review_threshold, selected, revision, request: gr.Request) -> View:
        return self.act(image_id, review_threshold, selected,
                        lambda: self.wb.accept_all(int(image_id), float(review_threshold), revision,
                                                   user_of(request)),
                        lambda r: f"{r[1]} proposal(s) accepted.")

    def delete(self, image_id, review_threshold, selected, revision, request: gr.Request) -> View:
        def action():
            if selected is None:
                raise WorkbenchError("select the instance to delete first")
            return self.wb.delete_instance(int(image_id), int(selected), revision, user_of(request))
        return self.act(image_id, review_threshold, None, action, f"Instance #{selected} deleted (Undo brings it back).")

    def undo(self, image_id, review_threshold, selected, request: gr.Request) -> View:
        return self.act(image_id, review_threshold, selected, lambda: self.wb.undo(int(image_id), user_of(request)),
                        "Undone.")

    def recover(self, image_id, review_threshold, selected, revision, request: gr.Request) -> View:
        return self.act(image_id, review_threshold, selected,
                        lambda: self.wb.recover_conflict(int(image_id), revision, user_of(request)),
                        "Your version from the conflict is back (Undo reverts it).")

    # ---- draw ------------------------------------------------------------------------------
    def save_boxes(self, image_id, review_threshold, selected, revision, value, box_only, box_ids,
                   request: gr.Request) -> View:
        """The Draw tab's boxes saved: new ones added, moved or re-classed ones changed, removed ones deleted
        (which annotation a box is: its colour, see display.instance_colors)."""
        def action():
            info = self.wb.image_info(int(image_id))
            drawn = [dict(box, id=(box_ids or {}).get(",".join(str(int(v)) for v in box.get("color") or ())))
                     for box in (value or {}).get("boxes") or []]
            return self.wb.save_drawn_boxes(int(image_id), drawn, scale_for(info["height"], info["width"]),
                                            box_only=bool(box_only), seen_revision=revision, user=user_of(request))
        return self.act(image_id, review_threshold, selected, action, lambda r: f"Boxes saved: {'; '.join(r[1])}.")

    # ---- correct -------------------------------------------------------------------------------
    def load_editor(self, image_id, selected):
        """Editor value, what it edits (image id, annotation id or None, height, width), message."""
        if image_id is None:
            return None, None, "⚠️ Open an image first."
        try:
            info, rgb = self.wb.rgb(int(image_id))
            scale = scale_for(info["height"], info["width"], EDITOR_MAX_SIDE)
            background = downscale(rgb, scale)
            layer = np.zeros((*background.shape[:2], 4), np.uint8)
            if selected is not None:
                row = self.wb.annotation(int(image_id), int(selected))
                if row["mask"] is not None:
                    small = downscale_mask(row["mask"], background.shape[:2]) >= 0.5
                else:
                    small = np.zeros(background.shape[:2], bool)
                    x1, y1, x2, y2 = (int(round(v * scale)) for v in row["box"])
                    small[y1:y2, x1:x2] = True
                layer[small] = (255, 32, 32, 255)
            height, width = background.shape[:2]
            value = {"background": _pad_to_editor(background, (128, 128, 128, 255)),
                     "layers": [_pad_to_editor(layer, (0, 0, 0, 0))], "composite": None}
            what = f"instance #{selected}" if selected is not None else "a new instance"
            return (value, (int(image_id), None if selected is None else int(selected), height, width),
                    f"Editing the mask of {what} (grey: outside the image).")
        except (WorkbenchError, OSError) as exc:
            return None, None, error_text(exc)

    def save_mask(self, image_id, review_threshold, revision, value, target, new_class, request: gr.Request):
        """The view, then the editor and its target: emptied when saved, kept when not."""
        def action():
            if not target or target[0] != image_id:
                raise WorkbenchError("load a mask with 'Edit mask' first (for the image that is open)")
            layers = (value or {}).get("layers") or []
            if not layers or layers[0] is None:
                raise WorkbenchError("nothing painted yet")
            painted = np.asarray(layers[0])
            mask = painted[..., 3] > 0 if painted.ndim == 3 and painted.shape[2] == 4 else painted.any(axis=-1)
            mask = mask[:target[2], :target[3]]  # without the padding
            info = self.wb.image_info(int(image_id))
            full = upscale_mask(mask, (info["height"], info["width"]))
            return self.wb.save_mask(int(image_id), target[1], new_class, full, revision, user_of(request))
        saved = []
        view = self.act(image_id, review_threshold, target[1] if target else None,
                        lambda: saved.append(action()), "Mask saved.")
        if saved:
            return (*view, None, None)  # saved: the editor is emptied
        return (*view, gr.skip(), gr.skip())  # not saved: the painting stays

    # ---- classes ---------------------------------------------------------------------------
    def class_outputs(self, message: str = "", keep=None) -> ClassView:
        names = self.wb.category_names()
        choices = [(f"{name} (id {cid})", cid) for cid, name in names.items()]
        overview, categories, _ = self.overview()
        first = choices[0][1] if choices else None
        keep = keep if keep in names else None
        # a class added while boxes are drawn reaches the Draw tab at once (they can be labelled without a reload)
        annotator = image_annotator(label_list=list(names.values()), label_colors=[hex_color(i) for i in names])
        return ClassView(message, overview, categories, gr.Dropdown(choices=choices, value=first),
                         gr.Dropdown(choices=choices, value=keep), gr.Dropdown(choices=choices, value=None), annotator)

    def _class_action(self, action, success, keep=None) -> ClassView:
        try:
            result = action()
            return self.class_outputs(success(result) if callable(success) else success, keep)
        except WorkbenchError as exc:
            return self.class_outputs(error_text(exc), keep)

    def add_class(self, name) -> ClassView:
        return self._class_action(lambda: self.wb.add_category(name),
                                  lambda cid: f"Class {str(name).strip()!r} added (id {cid}).")

    def rename_class(self, category_id, name) -> ClassView:
        return self._class_action(lambda: self.wb.rename_category(_need(category_id, "the class to rename"), name),
                                  f"Class renamed to {str(name).strip()!r}.", category_id)

    def merge_class(self, category_id, target, request: gr.Request) -> ClassView:
        return self._class_action(lambda: self.wb.merge_categories(
            _need(category_id, "the class to merge"), _need(target, "the class to merge into"), user=user_of(request)),
            lambda n: f"Merged: {n} annotation(s) moved.")

    def delete_class(self, category_id, confirmed) -> ClassView:
        return self._class_action(lambda: self.wb.delete_category(
            _need(category_id, "the class to delete"), delete_annotations=bool(confirmed)),
            lambda n: f"Class deleted with {n} annotation(s).", category_id)

    # ---- training ----------------------------------------------------------------------------
    def versions(self):
        rows = [[v.id, "●" if v.is_active else "", v.name, f"{v.created_at:%Y-%m-%d %H:%M}",
                 *v.metric_texts.values(), v.training_run_id or ""] for v in self.wb.versions()]
        choices = [(f"v{v[0]} {v[2]}" + (" (active)" if v[1] else ""), v[0]) for v in rows]
        return rows, gr.Dropdown(choices=choices, value=None)

    def run_outputs(self, run_id) -> RunView:
        if run_id is None:
            run_id = self.wb.latest_run()
        rows, choices = self.versions()
        if run_id is None:
            return RunView("No training run yet.", "", pd.DataFrame({"iteration": [], "loss": []}), rows, choices,
                           gr.Timer(active=False), None)
        state = self.wb.run_state(int(run_id))
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
        curve = pd.DataFrame({"iteration": [h[0] for h in state.history], "loss": [h[1] for h in state.history]})
        return RunView(text, progress_bar_html(fraction), curve, rows, choices, gr.Timer(active=not state.finished),
                       state.run_id)

    def active_run_outputs(self) -> RunView:
        return self.run_outputs(self.wb.latest_run(active_only=True))

    def start_training(self, mode, iterations, image_size, weights) -> RunView:
        try:
            new_run = self.wb.start_training(mode, iterations, image_size, weights)
        except WorkbenchError as exc:
            return self.run_outputs(None)._replace(status=error_text(exc))
        return self.run_outputs(new_run)

    def cancel_training(self, run_id) -> RunView:
        if run_id is not None:
            self.wb.cancel_training(int(run_id))
        return self.run_outputs(run_id)

    def activate(self, version, run_id) -> RunView:
        try:
            self.wb.activate_version(_need(version, "a model version"))
        except WorkbenchError as exc:
            return self.run_outputs(run_id)._replace(status=error_text(exc))
        return self.run_outputs(run_id)._replace(
            status=f"Model version {int(version)} is active: proposals now come from it.")

    def set_score_threshold(self, value) -> float:
        try:
            self.wb.set_score_threshold(value)
        except WorkbenchError as exc:
            gr.Warning(str(exc))
        return self.wb.score_threshold

    # ---- export ----------------------------------------------------------------------------------
    def on_export(self, mask_format, images, progress=gr.Progress()):
        try:
            path, report = self.wb.export(mask_format, images, progress=progress_adapter(progress))
        except WorkbenchError as exc:
            return error_text(exc), None
        return f"Exported {report.summary()}", str(path)


def _pad_to_editor(image: np.ndarray, fill: tuple[int, int, int, int]) -> np.ndarray:
    """An RGB or RGBA image on an EDITOR_MAX_SIDE square RGBA canvas, top-left. The editor misplaces layers that
    are smaller than its canvas (Gradio 6.31): background and layer are padded to the canvas size, and the
    padding is cut off again on saving (``Handlers.save_mask``)."""
    canvas = np.empty((EDITOR_MAX_SIDE, EDITOR_MAX_SIDE, 4), np.uint8)
    canvas[:] = fill
    height, width, channels = image.shape
    canvas[:height, :width, :channels] = image
    if channels == 3:
        canvas[:height, :width, 3] = 255
    return canvas
