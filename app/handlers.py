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
import pandas as pd
from gradio_image_annotation import image_annotator

from app.canvas import canvas_value, file_url
from app.display import (GALLERY_LIMIT, IMAGE_HEADERS, category_rows, error_text, hex_color, instance_colors,
                         isolated, overview_text, progress_bar_html, proposal_message)
from services import wire
from services.images import downscale, scale_for
from services.workbench import ConflictError, Workbench, WorkbenchError

log = logging.getLogger(__name__)

ORDER_CHOICES = [("upload order", "upload"), ("most useful next", "most_useful")]
ORDER_PROPOSE_BUDGET = 12  # photos the model looks at when "most useful next" is chosen (a few s each on a CPU)
HELP_FIGURES = (("accepted unchanged", "unchanged_share"), ("added by hand", "hand_share"),
                ("IoU of edited", "edited_iou"))
HELP_COLUMNS = ("version", "class", "final", "unchanged", "edited", "hand", "rejected", "hidden", "images", "unchanged_share",
                "hand_share", "edited_iou", "rejected_per_image", "seconds_per_instance")


class View(NamedTuple):
    """The current image as the page shows it (the components of ``app.ui``'s view outputs)."""
    title: str
    canvas: dict          # the review canvas's value (app.canvas.canvas_value)
    annotator: Any        # the Draw tab's box annotator
    revision: int | None  # the image's revision this view shows (sent back with the Draw tab's save)
    statuses: Any         # gr.Dropdown: the status filter with its counts
    box_ids: dict         # "r,g,b" colour of a box in the Draw tab -> the annotation it shows
    draw_message: str     # the Draw tab's message (the canvas shows its own next to it)


class Opened(NamedTuple):
    """An image opened: its id and its view."""
    image_id: int | None
    title: str
    canvas: dict
    annotator: Any
    revision: int | None
    statuses: Any
    box_ids: dict
    draw_message: str

    @classmethod
    def of(cls, image_id, view: View) -> "Opened":
        return cls(image_id, *view)


class Saved(NamedTuple):
    """The canvas's edits saved: its new state, the title, the summary line, the image list when the image's
    status changed, and the Classes tab's table (its counts follow every edit, not only Refresh)."""
    canvas: dict
    title: str
    overview: Any
    gallery: Any
    ids: Any
    statuses: Any
    classes: Any


class ClassView(NamedTuple):
    message: str
    overview: str
    categories: list
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
    return wire.strict_id(value, what)


class Handlers:
    """Handlers of the page's events (each session's state lives in gr.State components)."""

    def __init__(self, workbench: Workbench):
        self.wb = workbench

    # ---- the image list ----------------------------------------------------------------
    def status_choices(self):
        counts = self.wb.status_counts()
        return [(f"all ({sum(counts.values())})", "all")] + [(f"{k} ({v})", k) for k, v in counts.items()]

    def statuses(self, value: str | None = None):
        """The status filter with each status's count (its value kept unless given)."""
        if value is None:
            return gr.Dropdown(choices=self.status_choices(), interactive=True)
        return gr.Dropdown(choices=self.status_choices(), value=value, interactive=True)

    def gallery(self, status: str, keep: int | None = None, selected: int | None = None, order: str = "upload",
                propose_missing: int = 0):
        """Gallery (``selected``: the image highlighted, the open one), its image ids, the status filter with
        counts; ``keep``: an image listed even when it no longer has the status (the open one, just edited:
        the list does not drop it under the person); ``order``: "upload" or "most_useful"
        (Workbench.list_images)."""
        items, ids = self.gallery_items(status, keep, order, propose_missing)
        return self.highlighted(items, ids, selected), ids, self.statuses(status or "all")

    def gallery_items(self, status: str, keep: int | None = None, order: str = "upload",
                      propose_missing: int = 0) -> tuple[list, list[int]]:
        status = status or "all"
        rows = self.wb.list_images(status, limit=None, order=order or "upload", propose_missing=propose_missing)
        if keep is not None and status != "all" and all(row["id"] != keep for row in rows):
            rows = [*rows, *(r for r in self.wb.list_images("all", limit=None) if r["id"] == keep)]
            if (order or "upload") == "upload":
                rows.sort(key=lambda row: row["id"])
        items, ids = [], []
        for row in rows[:GALLERY_LIMIT]:
            useful = "" if row.get("uncertainty") is None else f" · uncertainty {row['uncertainty']:.2f}"
            try:
                items.append((self.wb.thumbnail(row),
                              f"{row['id']} · {row['status']}{useful} · {isolated(row['file_name'])}"))
                ids.append(row["id"])
            except (OSError, WorkbenchError) as exc:  # a lost file must not hide the other images
                log.warning("no thumbnail for image %s: %s", row["id"], exc)
        return items, ids

    @staticmethod
    def highlighted(items, ids: list[int], selected: int | None):
        """The gallery with the open image highlighted (setting it does not fire the gallery's select)."""
        index = ids.index(selected) if selected in ids else None
        return gr.Gallery(value=items, selected_index=index) if items is not None else gr.Gallery(selected_index=index)

    def overview(self, with_images: bool = True):
        """Summary line, class table and (``with_images``: the `overview` API's) image table."""
        summary = self.wb.summary()
        if not with_images:  # the page: its gallery lists the images
            return self.summary_line(summary), category_rows(summary)
        images = [[row[h] for h in IMAGE_HEADERS] for row in self.wb.list_images()]
        return self.summary_line(summary), category_rows(summary), images

    def summary_line(self, summary=None) -> str:
        """The line at the top: counts, classes, the active model and where it runs."""
        summary = self.wb.summary() if summary is None else summary
        return f"{overview_text(summary, self.wb.status_counts())} · model on {self.wb.device_text()}"

    def refresh_all(self, status, order="upload"):
        """Refresh: the summary line, the class table and the gallery."""
        return (*self.overview(with_images=False), *self.gallery(status, order=order))

    # ---- the current image ----------------------------------------------------------------
    def view(self, image_id, review_threshold, message: str = "", user: str | None = None) -> View:
        if image_id is None:
            return View("Upload images or pick one in the gallery.", self.canvas(None, review_threshold, message),
                        image_annotator(value=None), None, self.statuses(), {}, message)
        info, rgb = self.wb.rgb(image_id)
        scale = scale_for(info["height"], info["width"])
        small = downscale(rgb, scale)
        current = self.wb.instances(image_id, review_threshold)  # read once: the canvas, Draw tab's boxes, title
        rows = current["instances"]
        names = self.wb.category_names()
        canvas = self.canvas(image_id, review_threshold, message, current=current, user=user)
        accepted = [r for r in rows if r["review_state"] == "accepted"]
        colors_of = instance_colors([r["id"] for r in accepted])
        boxes = [{"xmin": int(round(r["box"][0] * scale)), "ymin": int(round(r["box"][1] * scale)),
                  "xmax": int(round(r["box"][2] * scale)), "ymax": int(round(r["box"][3] * scale)),
                  "label": names.get(r["category_id"], ""), "color": "rgb(%d, %d, %d)" % colors_of[r["id"]]}
                 for r in accepted]
        box_ids = {",".join(map(str, color)): annotation_id for annotation_id, color in colors_of.items()}
        annotator = image_annotator(value={"image": small, "boxes": boxes}, label_list=list(names.values()),
                                    label_colors=[hex_color(i) for i in names])
        return View(self.title(image_id, info, rows, current["revision"]), canvas, annotator, current["revision"],
                    self.statuses(), box_ids, message)

    def current_title(self, image_id):
        """The open image's title as it is now (a model trained or activated meanwhile shows in it)."""
        if image_id is None:
            return gr.skip()
        try:
            current = self.wb.instances(int(image_id))
            return self.title(int(image_id), self.wb.image_info(int(image_id)), current["instances"],
                              current["revision"])
        except (WorkbenchError, OSError):
            return gr.skip()

    def title(self, image_id: int, info: dict, rows: list[dict], revision: int) -> str:
        active = self.wb.active_version_id()
        return (f"**Image {image_id}** · {isolated(info['file_name'])} · {info['width']}×{info['height']} · "
                f"{info['split']} · "
                f"**{self.wb.image_status(rows)}** · revision {revision} · "
                f"model: {'v%d' % active if active else 'none yet'}")

    def canvas(self, image_id, review_threshold, message: str = "", *, status: str = "saved", ack=None,
               created=None, current: dict | None = None, user: str | None = None) -> dict:
        """The review canvas's value for the image as it is now (app.canvas.canvas_value); ``current``: the
        image's Workbench.instances() when the caller has read them already; ``user``: whose lost versions
        it offers to recover."""
        threshold = None if review_threshold is None else float(review_threshold)
        if image_id is None:
            return canvas_value(image=None, image_url=None, revision=None, instances=[],
                                classes=self.wb.category_names(), review_threshold=threshold,
                                score_threshold=self.wb.score_threshold, message=message, status=status, ack=ack)
        image_id = int(image_id)
        current = self.wb.instances(image_id, threshold) if current is None else current
        return canvas_value(image=self.wb.image_info(image_id), image_url=file_url(self.wb.display_image(image_id)),
                            revision=current["revision"], instances=current["instances"],
                            classes=self.wb.category_names(), review_threshold=threshold,
                            score_threshold=self.wb.score_threshold, message=message, status=status, ack=ack,
                            created=created, lost=len(self.wb.editor.conflicts(image_id, user)), policies=current.get("policy"))

    def safe_view(self, image_id, review_threshold, message, user: str | None = None) -> View:
        try:
            return self.view(image_id, review_threshold, message, user)
        except (WorkbenchError, OSError) as exc:
            return self.view(None, review_threshold, error_text(exc))

    def open(self, image_id, review_threshold, message: str = "", auto_propose: bool = True,
             user: str | None = None) -> Opened:
        """Open an image (proposing first when the active model has not seen it)."""
        if image_id is None:
            return Opened.of(None, self.view(None, review_threshold, message))
        image_id = int(image_id)
        try:
            result = self.wb.propose_if_needed(image_id, user=user) if auto_propose else None
            if result is not None:
                message = (message + "\n\n" if message else "") + proposal_message(result, self.wb.score_threshold)
        except (WorkbenchError, OSError) as exc:
            message = (message + "\n\n" if message else "") + error_text(exc)
        return Opened.of(image_id, self.safe_view(image_id, review_threshold, message, user))

    def on_load(self, review_threshold, request: gr.Request) -> Opened:
        """The page loads: the image its link names (``?image=N``, which the canvas puts in the address of every
        image it opens) is opened again, as a gallery click would; without one, nothing is open."""
        link = (getattr(request, "query_params", None) or {}).get("image")
        if link is None:
            return self.open(None, review_threshold)
        try:
            image_id = wire.strict_id(link, "the image in the link")
            self.wb.image_info(image_id)
        except WorkbenchError as exc:
            return self.open(None, review_threshold, error_text(exc))
        return self.open(image_id, review_threshold, user=user_of(request))

    def act(self, image_id, review_threshold, action, success, user: str | None = None) -> View:
        """Run an edit; on any problem (a conflict included) show it and the image as it is now."""
        if image_id is None:
            return self.view(None, review_threshold, "⚠️ Open an image first.")
        try:
            result = action()
            message = success(result) if callable(success) else success
            return self.view(image_id, review_threshold, message, user)
        except (WorkbenchError, OSError, ValueError) as exc:
            return self.safe_view(image_id, review_threshold, error_text(exc), user)

    # ---- events of the image list -----------------------------------------------------
    def on_upload(self, files, split, review_threshold, request: gr.Request, progress=gr.Progress()):
        """Upload message, overview, gallery outputs, the first new image opened, the upload widget emptied."""
        text, first = "", None
        if files:
            try:
                result = self.wb.upload(files, names=[os.path.basename(getattr(f, "orig_name", None) or str(f))
                                                      for f in files], split=split,
                                        progress=progress_adapter(progress))
                text = result.summary().replace("\n", "  \n")
                first = (result.new_ids or result.image_ids or [None])[0]  # the first new photo, else the first
            except WorkbenchError as exc:
                text = error_text(exc)
        opened = self.open(first, review_threshold, user=user_of(request))  # proposes first: the counts include it
        # the widget is emptied: the next upload sends only its own files, not every earlier one again
        return (text, self.overview()[0], *self.gallery("all"), *opened, None)

    def on_select(self, id_list, review_threshold, evt: gr.SelectData, request: gr.Request) -> Opened:
        if evt.index is None or evt.index >= len(id_list):
            return self.open(None, review_threshold)
        return self.prefetch_after(self.open(id_list[evt.index], review_threshold, user=user_of(request)), id_list)

    def prefetch_after(self, opened: Opened, id_list) -> Opened:
        """The photos after the one opened, in the gallery's order, get their proposals in the background
        (services.prefetch): "done, next" then opens a photo whose proposals are stored."""
        ids = list(id_list or [])
        if opened.image_id is not None and opened.image_id in ids:
            self.wb.prefetch(ids[ids.index(opened.image_id) + 1:])
        return opened

    def neighbour(self, current, id_list, status, delta: int, order: str = "upload") -> int | None:
        """The image after (+1) or before (-1) ``current`` in the listed images (wrapping), None: none listed.
        With ``order`` "most_useful", the next one is the most useful unlabelled train photo (new or proposed)
        other than ``current`` (Workbench.list_images), while there is one."""
        if order == "most_useful" and delta > 0:
            rows = self.wb.list_images(status, limit=None, order="most_useful")
            useful = [r["id"] for r in rows if r["split"] == "train" and r["status"] in ("new", "proposed")
                      and r["id"] != current]
            if useful:
                return useful[0]
        if not id_list:
            id_list = [r["id"] for r in self.wb.list_images(status, limit=GALLERY_LIMIT)]
        if not id_list:
            return None
        if current in id_list:
            return id_list[(id_list.index(current) + delta) % len(id_list)]
        return id_list[0 if delta > 0 else -1]

    def step(self, delta: int):
        """The handler of Next (+1) / Previous (-1) through the listed images in the gallery's order (see
        :meth:`neighbour`): the image opened, and the gallery's highlight moved to it."""
        def go(current, id_list, status, review_threshold, order, request: gr.Request):
            target = self.neighbour(current, id_list, status, delta, order)
            if target is None:
                return (*self.open(None, review_threshold, "No images in this list."), gr.skip())
            return (*self.prefetch_after(self.open(target, review_threshold, user=user_of(request)), id_list),
                    self.highlighted(None, id_list, target))
        return go

    # ---- the gallery's order -----------------------------------------------------------------------
    def order_gallery(self, status, order):
        """The gallery in the chosen order; "most useful next" first runs the active model on up to
        ORDER_PROPOSE_BUDGET unlabelled photos it has not seen (their proposals are stored, ready to review)."""
        try:
            return self.gallery(status, order=order,
                                propose_missing=ORDER_PROPOSE_BUDGET if order == "most_useful" else 0)
        except WorkbenchError as exc:
            gr.Warning(str(exc))
            return self.gallery(status)

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

    # ---- review (the canvas) -------------------------------------------------------------------
    def on_review_setting(self, image_id, model_thresholds, slider):
        """The model's thresholds (ticked: each version's and class's, services.payoff) or the slider's override
        -> (the review setting, the slider (usable only as an override), the canvas)."""
        setting = None
        if not model_thresholds:
            try:
                setting = float(slider)
            except (TypeError, ValueError):  # the number box cleared or half typed: the setting stays as it was
                return gr.skip(), gr.skip(), gr.skip()
            if not 0.0 <= setting <= 1.0:
                return gr.skip(), gr.skip(), gr.skip()
        return setting, gr.Slider(interactive=not model_thresholds), self.canvas(image_id, setting)

    def on_canvas_save(self, review_threshold, status_filter, order, evt: gr.EventData, request: gr.Request) -> Saved:
        """A batch of the canvas's edits (services.editing) saved in order; the canvas gets the image's new
        state with the batch's number (``ack``) and the ids its new instances got."""
        data = evt._data if isinstance(getattr(evt, "_data", None), dict) else {}
        image_id, seq = data.get("image_id"), data.get("seq")
        try:
            image_id = None if image_id is None else wire.strict_id(image_id, "image_id")
        except WorkbenchError as exc:
            image_id, problem = None, exc
        else:
            problem = None
        if image_id is None:
            text = error_text(problem) if problem else "⚠️ Open an image first."
            return Saved(self.canvas(None, review_threshold, text, status="not saved", ack=seq), *[gr.skip()] * 6)
        try:
            before = self.wb.image_status(self.wb.instances(image_id)["instances"])
            result = self.wb.editor.apply_edits(image_id, data.get("ops"), data.get("revision"), user_of(request))
        except (WorkbenchError, OSError, ValueError, TypeError) as exc:
            return Saved(self.canvas(image_id, review_threshold, error_text(exc), status="not saved", ack=seq),
                         *[gr.skip()] * 6)
        except Exception as exc:  # noqa: BLE001 (the canvas must get an answer, or it waits for this batch forever)
            log.exception("the canvas's edits of image %s failed", image_id)
            return Saved(self.canvas(image_id, review_threshold, f"⚠️ Not saved: an internal error ({exc}); your "
                                     "last edits are not in the database. Reload the image.", status="not saved",
                                     ack=seq), *[gr.skip()] * 6)
        messages = [proposal_message(r, self.wb.score_threshold) for r in result.proposals]
        status = "saved"
        if result.error is not None:
            messages.append(error_text(result.error))
            status = "conflict" if isinstance(result.error, ConflictError) else "not saved"
        current = self.wb.instances(image_id)  # read once: the canvas and the title
        canvas = self.canvas(image_id, review_threshold, "\n".join(messages), status=status, ack=seq,
                             created=result.created, current=current, user=user_of(request))
        rows = current["instances"]
        title = self.title(image_id, self.wb.image_info(image_id), rows, current["revision"])
        summary = self.wb.summary()
        overview, classes = self.summary_line(summary), category_rows(summary)
        if self.wb.image_status(rows) == before:
            return Saved(canvas, title, overview, gr.skip(), gr.skip(), gr.skip(), classes)
        return Saved(canvas, title, overview, *self.gallery(status_filter, keep=image_id, selected=image_id,
                                                            order=order), classes)

    def on_visit(self, evt: gr.EventData, request: gr.Request) -> None:
        """The canvas's input times of a visit of an image (sent when it is left): its active time is recorded
        (never in the way of the person: a bad record is logged, not shown)."""
        data = evt._data if isinstance(getattr(evt, "_data", None), dict) else {}
        try:
            self.wb.record_visit(data.get("image_id"), data.get("times"), user_of(request))
        except (WorkbenchError, TypeError, ValueError) as exc:
            log.warning("a visit was not recorded: %s", exc)

    def on_done(self, id_list, status_filter, review_threshold, order, evt: gr.EventData, request: gr.Request):
        """"Done, next image": the proposals left are rejected, then the next image of the list opens (the
        image list follows)."""
        data = evt._data if isinstance(getattr(evt, "_data", None), dict) else {}
        try:
            image_id = None if data.get("image_id") is None else wire.strict_id(data["image_id"], "image_id")
            revision = wire.revision(data.get("revision"), "the revision")
        except WorkbenchError as exc:
            return (*self.open(None, review_threshold, error_text(exc)), *self.gallery(status_filter))
        if image_id is None:
            return (*self.open(None, review_threshold), *self.gallery(status_filter))
        try:
            self.wb.editor.finish_image(image_id, revision, user_of(request), review_threshold)
        except (WorkbenchError, OSError, ValueError) as exc:  # a conflict: stay, and show the image as it is
            return (*Opened.of(image_id, self.safe_view(image_id, review_threshold, error_text(exc),
                                                         user_of(request))),
                    *self.gallery(status_filter, keep=image_id, selected=image_id, order=order))
        items, ids = self.gallery_items(status_filter, keep=image_id, order=order)
        opened = self.prefetch_after(self.open(self.neighbour(image_id, ids, status_filter, +1, order),
                                               review_threshold, user=user_of(request)), ids)
        return (*opened, self.highlighted(items, ids, opened.image_id), ids, self.statuses(status_filter or "all"))

    # ---- draw ------------------------------------------------------------------------------
    def save_boxes(self, image_id, review_threshold, revision, value, box_only, box_ids,
                   request: gr.Request) -> View:
        """The Draw tab's boxes saved: new ones added, moved or re-classed ones changed, removed ones deleted
        (which annotation a box is: its colour, see display.instance_colors)."""
        def action():
            info = self.wb.image_info(int(image_id))
            drawn = [dict(box, id=(box_ids or {}).get(",".join(str(int(v)) for v in box.get("color") or ())))
                     for box in (value or {}).get("boxes") or []]
            return self.wb.editor.save_drawn_boxes(int(image_id), drawn, scale_for(info["height"], info["width"]),
                                            box_only=bool(box_only), seen_revision=revision, user=user_of(request))
        return self.act(image_id, review_threshold, action, lambda r: f"Boxes saved: {'; '.join(r[1])}.",
                        user_of(request))

    # ---- classes ---------------------------------------------------------------------------
    def class_outputs(self, message: str = "", keep=None) -> ClassView:
        names = self.wb.category_names()
        choices = [(f"{isolated(name)} (id {cid})", cid) for cid, name in names.items()]
        overview, categories, _ = self.overview()
        keep = keep if keep in names else None
        # a class added while boxes are drawn reaches the Draw tab at once (they can be labelled without a reload)
        annotator = image_annotator(label_list=list(names.values()), label_colors=[hex_color(i) for i in names])
        return ClassView(message, overview, categories, gr.Dropdown(choices=choices, value=keep),
                         gr.Dropdown(choices=choices, value=None), annotator)

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
        versions = self.wb.versions()
        rows = [[v.id, "●" if v.is_active else "", v.name, f"{v.created_at:%Y-%m-%d %H:%M}",
                 *v.metric_texts.values(), v.training_run_id or "", v.policy_text] for v in versions]
        choices = [(f"v{v.id} {v.name}" + (" (active)" if v.is_active else "")
                    + ("" if v.checkpoint else " (checkpoint removed by retention)"), v.id) for v in versions]
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
        status = "cancelling…" if state.cancelling else state.status
        text = f"**Training run {state.run_id}: {status}** · iteration {state.iteration}/{state.iterations}{loss}"
        if state.cancelling:
            text += " · the training process stops at its next step"
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
            self.wb.cancel_training(wire.strict_id(run_id, "the training run"))
        return self.run_outputs(run_id)

    def activate(self, version, run_id) -> RunView:
        try:
            version = _need(version, "a model version")
            self.wb.activate_version(version)
        except WorkbenchError as exc:
            return self.run_outputs(run_id)._replace(status=error_text(exc))
        return self.run_outputs(run_id)._replace(
            status=f"Model version {version} is active: proposals now come from it.")

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

