"""The browser workbench (Gradio): the page's layout and the wiring of its events, nothing else.

What each event does is in ``app.handlers`` (the headless endpoints in ``app.api``); both call the one
services facade, ``services.workbench.Workbench``.

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
import threading  # noqa: E402

import gradio as gr  # noqa: E402
from gradio_image_annotation import image_annotator  # noqa: E402

from starlette.middleware import Middleware  # noqa: E402

from app.api import Api, WorkbenchBlocks  # noqa: E402
from app.canvas import CSS as CANVAS_CSS, JS as CANVAS_JS, KEYS as CANVAS_KEYS, TEMPLATE as CANVAS_TEMPLATE  # noqa: E402
from app.guard import (HostCheck, LoginCheck, LoginRequired, LoginThrottle, OriginCheck,  # noqa: E402
                       RequestSizeLimit, allowed_names)
from app.display import CATEGORY_HEADERS, STATUS_FILTERS, VERSION_HEADERS  # noqa: E402
from app.handlers import HELP_COLUMNS, ORDER_CHOICES, Handlers  # noqa: E402
from services.users import server_auth  # noqa: E402
from services.workbench import (MAX_UPLOAD_BYTES, PRESETS, Workbench, WorkbenchError,  # noqa: E402
                                default_backbone_weights, limits_text, write_concurrency)

log = logging.getLogger(__name__)

# One queue for every event that writes (annotations, images, classes, model versions, training runs) or runs
# GrabCut or the model, in the page and in the API alike: at most $WORKBENCH_WRITE_CONCURRENCY of them run at
# once (services.limits), the others wait their turn in Gradio's queue. Reading events keep the default limit.
WRITES = "writes"

SHORTCUTS = [("→ or j", "next image", "next-image"), ("← or k", "previous image", "prev-image"),
             ("s or Ctrl+S", "save the drawn boxes (Draw tab)", "save-boxes")]

# Keys outside the canvas: next / previous image and the Draw tab's save; the review keys (a, r, d, Tab, 1-9,
# n, ...) go to the review canvas (app/canvas.js) wherever the focus is, except in a text field.
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
    if (t && t.closest && t.closest('input, textarea, select, [contenteditable="true"], .wb-canvas, .annotator-container')) return;
    if (event.altKey || event.metaKey) return;
    const key = event.key;
    let done = false;
    if (event.ctrlKey) { if (key === 's') done = click('save-boxes'); }
    else if (key === 'ArrowRight' || key === 'j') done = click('next-image');
    else if (key === 'ArrowLeft' || key === 'k') done = click('prev-image');
    else if (key === 's') done = click('save-boxes');
    else {
      // the review keys go to the canvas; Tab, Enter, Space and Delete on a button or tab keep their usual meaning
      const canvas = document.querySelector('#review-canvas canvas.wb-view');
      const onControl = t && t.closest && t.closest('button, a, [role="tab"], [role="button"]');
      const wanted = onControl ? key.length === 1 && key !== ' ' : key.length === 1 || ['Tab', 'Enter', 'Delete', 'Escape'].includes(key);
      if (wanted && visible(canvas)) {
        canvas.focus({preventScroll: true});
        canvas.dispatchEvent(new KeyboardEvent('keydown', {key, shiftKey: event.shiftKey, ctrlKey: event.ctrlKey, bubbles: true}));
        done = true;
      }
    }
    if (done) event.preventDefault();
  });
}
"""

CSS = """
#gallery { min-height: 200px; }
#gallery .caption-label { white-space: normal; font-size: 11px; }
#upload { min-height: 0; }
#upload .wrap { min-height: 60px; padding: 4px; }
.shortcut-table td { padding: 2px 8px; }
"""


def _shortcuts_markdown() -> str:
    rows = "\n".join(f"| `{key}` | {what} |" for key, what, _ in SHORTCUTS)
    canvas_rows = "\n".join(f"| `{key}` | {what} |" for key, what in CANVAS_KEYS)
    return ("Keys of the review canvas (wherever the focus is, except in a text field):\n\n| key | action |\n"
            "|---|---|\n" + canvas_rows + "\n\nOther keys (not while typing in a field):\n\n| key | action |\n"
            "|---|---|\n" + rows)


def build_app(db, *, score_threshold: float | None = None, device: str | None = None,
              write_limit: int | None = None) -> gr.Blocks:
    """The page for an open database (db.engine.open_database); ``score_threshold``: the lowest score of a
    stored proposal (None: $WORKBENCH_SCORE_THRESHOLD or 0.05); ``write_limit``: how many writing events run at
    once (None: $WORKBENCH_WRITE_CONCURRENCY or 4; see WRITES)."""
    wb = Workbench(db, score_threshold=score_threshold, device=device)
    # exports are handed out from their folder as they are: not copied into Gradio's cache (one copy per export;
    # services.limits' retention then bounds them)
    gr.set_static_paths([wb.exports_folder()])
    writes = dict(queue=True, concurrency_id=WRITES,
                  concurrency_limit=write_concurrency() if write_limit is None else int(write_limit))
    ui, api = Handlers(wb), Api(wb)
    with WorkbenchBlocks(title="Instance segmentation workbench") as demo:
        image_id = gr.State(None)
        revision = gr.State(None)
        ids = gr.State([])
        box_ids = gr.State({})  # the Draw tab's box colours -> annotation ids
        run_id = gr.State(None)

        with gr.Row(equal_height=False):
            gr.Markdown("### Instance segmentation workbench", elem_id="app-title")
            overview = gr.Markdown(elem_id="overview")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=230):
                upload = gr.File(label="Drop images here", file_count="multiple", file_types=["image"],
                                 elem_id="upload", height=90)
                with gr.Row():
                    split = gr.Dropdown(["train", "val"], value="train", label="Add to split", min_width=80)
                    status_filter = gr.Dropdown(choices=STATUS_FILTERS, value="all", label="Show", interactive=True,
                                                elem_id="status-filter", min_width=120)
                upload_msg = gr.Markdown(elem_id="upload-message")
                order = gr.Dropdown(choices=ORDER_CHOICES, value="upload", label="Order", elem_id="gallery-order",
                                    interactive=True)
                gallery = gr.Gallery(label="Images", columns=2, height="calc(100vh - 470px)", allow_preview=False,
                                     elem_id="gallery", object_fit="contain")
                with gr.Row():
                    prev_btn = gr.Button("◀ Previous", elem_id="prev-image", size="sm", min_width=60)
                    next_btn = gr.Button("Next ▶", elem_id="next-image", size="sm", min_width=60)
                    refresh = gr.Button("Refresh", size="sm", min_width=60, elem_id="refresh")
            with gr.Column(scale=5):
                with gr.Row(equal_height=True):
                    title = gr.Markdown("Upload images or pick one in the gallery.", elem_id="image-title")
                    model_thresholds = gr.Checkbox(value=True, label="Model's thresholds", elem_id="model-thresholds",
                                                   scale=0, min_width=150,
                                                   info="show only the proposals that pay (per version and class)")
                    review_slider = gr.Slider(0.0, 1.0, value=0.5, step=0.01, label="Review threshold (override)",
                                              elem_id="threshold", scale=0, min_width=220, interactive=False)
                    review_threshold = gr.State(None)  # None: the model's thresholds; else the slider's override
                with gr.Tabs():
                    with gr.Tab("Review", id="review"):
                        canvas = gr.HTML(value=None, html_template=CANVAS_TEMPLATE, css_template=CANVAS_CSS,
                                         js_on_load=CANVAS_JS, elem_id="review-canvas",
                                         server_functions=[_scissors_function(wb)])  # the scissors' paths
                    with gr.Tab("Draw boxes", id="draw"):
                        gr.Markdown("Boxes of the image's accepted instances: move or resize one (it gets a new "
                                    "mask), change its class, delete it, or draw new ones (*Create box*), then "
                                    "**Save boxes**. Tick *box only* to keep a class box-supervised (no mask). "
                                    "Masks: draw on the Review canvas (box, polygon, brush).")
                        draw_message = gr.Markdown(elem_id="draw-message")
                        annotator = image_annotator(label_list=[], label_colors=[], image_type="numpy",
                                                    sources=[], show_clear_button=False, elem_id="annotator",
                                                    height=560)
                        with gr.Row():
                            box_only = gr.Checkbox(label="box only (no mask)", value=False, elem_id="box-only")
                            save_boxes_btn = gr.Button("Save boxes (s)", elem_id="save-boxes", variant="primary")
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
                            score_threshold = gr.Number(value=wb.score_threshold, minimum=0.0, maximum=0.99,
                                                        step=0.01, label="Score threshold of stored proposals",
                                                        elem_id="score-threshold",
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
                    with gr.Tab("Model help", id="help") as help_tab:
                        help_note = gr.Markdown(elem_id="help-note")
                        with gr.Row():
                            help_plot = gr.LinePlot(x="version", y="value", color="figure", title="Share of final "
                                                    "instances, IoU of edited proposals", height=260,
                                                    x_title="model version (0: none yet)", elem_id="help-plot")
                            help_seconds = gr.LinePlot(x="version", y="seconds per instance", height=260,
                                                       title="Active seconds per final instance",
                                                       x_title="model version (0: none yet)", elem_id="help-seconds")
                        help_versions = gr.Dataframe(headers=list(HELP_COLUMNS), interactive=False,
                                                     label="Per model version", elem_id="help-versions")
                        help_classes = gr.Dataframe(headers=list(HELP_COLUMNS), interactive=False,
                                                    label="Per version and class", elem_id="help-classes")
                        help_refresh = gr.Button("Refresh", size="sm", elem_id="help-refresh")
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

        view_outputs = [title, canvas, annotator, revision, status_filter, box_ids, draw_message]  # handlers.View
        open_outputs = [image_id, *view_outputs]  # the fields of handlers.Opened
        gallery_outputs = [gallery, ids, status_filter]
        class_outputs = [class_msg, overview, categories, class_pick, merge_target, annotator]  # ClassView
        run_outputs = [train_status, train_bar, loss_plot, versions, version_pick, timer, run_id]  # handlers.RunView
        # UI events are private (not API endpoints); Gradio still names them after their functions, so the
        # handlers' names differ from the headless API's (propose, export_coco, ...)
        private = dict(api_visibility="private")

        def edits(event):
            """After an edit, the gallery's captions (each image's status) follow without a Refresh."""
            return event.then(lambda status, order_by, current: ui.gallery(status, keep=current, selected=current,
                                                                           order=order_by),
                              [status_filter, order, image_id], gallery_outputs, show_progress="hidden", **private)

        def opened(event):
            """After opening an image (which may have proposed on it), its gallery caption and the counts follow."""
            return event.then(lambda status, order_by, current: (*ui.gallery(status, keep=current, selected=current,
                                                                             order=order_by), ui.summary_line()),
                              [status_filter, order, image_id], [*gallery_outputs, overview], show_progress="hidden",
                              **private)

        # ---- overview (the `overview` API, with the image table too, is api.overview) -----------------------
        demo.load(lambda: ui.overview(with_images=False), outputs=[overview, categories], **private)
        demo.load(lambda: ui.gallery("all"), outputs=gallery_outputs, **private)
        demo.load(lambda: ui.class_outputs()[3:], outputs=class_outputs[3:], **private)
        demo.load(ui.active_run_outputs, outputs=run_outputs, **private)
        demo.load(ui.on_load, [review_threshold], open_outputs, **private)  # ?image=N: the image of the link
        refresh.click(ui.refresh_all, [status_filter, order], [overview, categories, *gallery_outputs], **private)

        # ---- images ----------------------------------------------------------------------
        # opening an image proposes when the active model has not seen it: selecting, Next and Previous write
        upload.upload(ui.on_upload, [upload, split, review_threshold],
                      [upload_msg, overview, *gallery_outputs, *open_outputs, upload], **private, **writes)
        status_filter.input(lambda status, order_by, current: ui.gallery(status, selected=current, order=order_by),
                            [status_filter, order, image_id], gallery_outputs, **private)
        order.input(ui.order_gallery, [status_filter, order], gallery_outputs, **private, **writes)
        opened(gallery.select(ui.on_select, [ids, review_threshold], open_outputs, **private, **writes))
        opened(next_btn.click(ui.step(+1), [image_id, ids, status_filter, review_threshold, order],
                              [*open_outputs, gallery], **private, **writes))
        opened(prev_btn.click(ui.step(-1), [image_id, ids, status_filter, review_threshold, order],
                              [*open_outputs, gallery], **private, **writes))

        # ---- review: the canvas edits in the browser and saves in the background ----------------
        for control in (review_slider, model_thresholds):
            control.change(ui.on_review_setting, [image_id, model_thresholds, review_slider],
                           [review_threshold, review_slider, canvas], trigger_mode="always_last",
                           show_progress="hidden", **private)
        canvas.save(ui.on_canvas_save, [review_threshold, status_filter, order],
                    [canvas, title, overview, *gallery_outputs, categories],
                    trigger_mode="multiple", show_progress="hidden", **private, **writes)
        canvas.visit(ui.on_visit, None, None, trigger_mode="multiple", show_progress="hidden", **private, **writes)
        canvas.done(ui.on_done, [ids, status_filter, review_threshold, order], [*open_outputs, *gallery_outputs],
                    trigger_mode="once", show_progress="hidden", **private, **writes)

        # ---- draw boxes ------------------------------------------------------------------------
        edits(save_boxes_btn.click(ui.save_boxes, [image_id, review_threshold, revision, annotator, box_only,
                                                   box_ids], view_outputs, **private, **writes))

        # ---- classes ---------------------------------------------------------------------
        # a class added, renamed or deleted reaches the canvas's class list at once
        for event in (add_class_btn.click(ui.add_class, [class_name], class_outputs, **private, **writes),
                      rename_btn.click(ui.rename_class, [class_pick, class_name], class_outputs, **private, **writes),
                      merge_btn.click(ui.merge_class, [class_pick, merge_target], class_outputs, **private, **writes),
                      delete_class_btn.click(ui.delete_class, [class_pick, confirm_delete], class_outputs,
                                             **private, **writes)
                      .then(lambda: False, None, [confirm_delete], show_progress="hidden", **private)):
            # (the delete's confirmation is unticked after every delete: the next one asks again)
            event.then(ui.canvas, [image_id, review_threshold], [canvas], show_progress="hidden", **private)

        # ---- train -------------------------------------------------------------------------
        estimate_inputs = [mode, iterations, image_size]
        train_btn.click(ui.start_training, [mode, iterations, image_size, weights], run_outputs, **private,
                        **writes).then(
            wb.training_estimate, estimate_inputs, [train_estimate], **private)
        for setting in (mode, iterations, image_size):
            setting.change(wb.training_estimate, estimate_inputs, [train_estimate], **private)
        score_threshold.input(ui.set_score_threshold, [score_threshold], [score_threshold], **private)
        timer.tick(ui.run_outputs, [run_id], run_outputs, show_progress="hidden", **private).then(
            wb.training_estimate, estimate_inputs, [train_estimate], show_progress="hidden", **private).then(
            ui.summary_line, None, [overview], show_progress="hidden", **private).then(  # a new active model
            ui.current_title, [image_id], [title], show_progress="hidden", **private)  # shows (title said "none yet")
        cancel_btn.click(ui.cancel_training, [run_id], run_outputs, **private, **writes)
        activate_btn.click(ui.activate, [version_pick, run_id], run_outputs, **private, **writes).then(
            ui.summary_line, None, [overview], show_progress="hidden", **private).then(
            ui.current_title, [image_id], [title], show_progress="hidden", **private)

        # ---- model help ------------------------------------------------------------------------
        help_outputs = [help_note, help_plot, help_seconds, help_versions, help_classes]
        help_tab.select(ui.show_model_help, None, help_outputs, **private)
        help_refresh.click(ui.show_model_help, None, help_outputs, **private)

        # ---- export ----------------------------------------------------------------------------
        export_btn.click(ui.on_export, [mask_format, which], [export_summary, export_file], **private, **writes)

        # ---- the headless API: gr.api endpoints (app.api.Api: parameters, defaults and results from the type
        # hints; nothing of the page serves them). The writing endpoints share the page's queue: WRITES.
        gr.api(api.upload_images, api_name="upload_images", **writes)
        gr.api(api.propose, api_name="propose", **writes)
        gr.api(api.save_annotations, api_name="save_annotations", **writes)
        # retrain waits (minutes) for the training process it starts: in WRITES it would hold a place all that time
        # (a second run is refused while one runs)
        gr.api(api.retrain, api_name="retrain")
        gr.api(api.export_coco, api_name="export_coco", **writes)
        gr.api(api.add_boxes, api_name="add_boxes", **writes)
        gr.api(api.refine, api_name="refine", **writes)
        gr.api(api.record_visit, api_name="record_visit", **writes)
        gr.api(api.list_images, api_name="list_images", **writes)  # propose_missing runs the model
        gr.api(api.model_help, api_name="model_help")
        gr.api(api.instances, api_name="instances")
        gr.api(api.overview, api_name="overview")
        gr.api(api.finish_image, api_name="finish_image", **writes)
        gr.api(api.keep_box, api_name="keep_box", **writes)
        gr.api(api.scissors_path, api_name="scissors_path")
        gr.api(api.prefetch, api_name="prefetch")
    demo.workbench, demo.ui = wb, ui  # for tests and scripts
    return demo


def _scissors_function(workbench: Workbench):
    """The canvas's server function for the intelligent scissors (gr.HTML server_functions: a plain function of
    one value, the page's arguments as a list: [image_id, points] or [image_id, points, closed])."""
    def scissors_path(arguments):
        try:
            if not isinstance(arguments, list) or len(arguments) not in (2, 3):
                raise WorkbenchError("the scissors take [image_id, points] or [image_id, points, closed]")
            return workbench.scissors_path(*arguments)
        except WorkbenchError as exc:
            raise gr.Error(str(exc)) from None

    return scissors_path


def _preload_model(workbench: Workbench) -> None:
    try:
        workbench.models.active()  # torch and the active model load while the page opens
    except Exception as exc:  # noqa: BLE001 (shown again, with its message, when a proposal is asked for)
        log.warning("the active model could not be loaded: %s", exc)


MAX_REQUEST_BYTES = 64 * 2**20  # a request's body, uploads aside (--max-request-mb)


def launch_app(db, host: str = "127.0.0.1", port: int = 7860, *, block: bool = True, auth=None,
               max_file_size: int = MAX_UPLOAD_BYTES, max_request_bytes: int = MAX_REQUEST_BYTES,
               demo: gr.Blocks | None = None, **build_kwargs):
    """``db``: an open database (db.engine.open_database); ``auth``: the users file (services.users.UsersFile)
    whose users must log in (app.guard.LoginRequired, LoginThrottle, LoginCheck); without it only requests
    addressed to a loopback name or ``host`` are answered (app.guard.HostCheck); either way a browser's changes
    must come from the server's own pages (app.guard.OriginCheck); ``max_file_size``: bytes; larger uploads
    are refused by the server before any handler sees them; ``max_request_bytes``: the same for any other
    request's body (app.guard.RequestSizeLimit)."""
    demo = demo if demo is not None else build_app(db, **build_kwargs)
    threading.Thread(target=_preload_model, args=(demo.workbench,), daemon=True).start()
    demo.queue(default_concurrency_limit=4)
    middleware = [Middleware(RequestSizeLimit, max_bytes=max_request_bytes)]
    if auth is None:
        middleware.append(Middleware(HostCheck, names=allowed_names(host)))
    middleware.append(Middleware(OriginCheck))
    if auth is not None:
        middleware += [Middleware(LoginRequired, users=auth), Middleware(LoginThrottle)]
    demo.launch(server_name=host, server_port=port, share=False, inbrowser=False, js=KEYBOARD_JS, css=CSS,
                allowed_paths=demo.workbench.served_folders(), max_file_size=max_file_size,
                auth=LoginCheck(auth).check if auth is not None else None,
                prevent_thread_lock=not block, quiet=not block, app_kwargs={"middleware": middleware})
    return demo


def serve(db, host: str = "127.0.0.1", port: int = 7860, *, auth_file=None,
          max_file_size: int = MAX_UPLOAD_BYTES, max_request_bytes: int = MAX_REQUEST_BYTES,
          device: str | None = None) -> None:
    """Refuses a non-loopback ``host`` without a users file (see services.users.server_auth); ``device``:
    where the model runs (None or "auto": the GPU when there is one)."""
    auth = server_auth(host, auth_file)
    logins = f", logins from {auth_file} ({len(auth.users)} users)" if auth else ""
    limits = limits_text()  # a bad limit variable stops the start here
    demo = build_app(db, device=device)
    # before serving: what killed processes left (db.housekeeping: only the workbench's own files, old enough that
    # no other process on this data folder can still be writing them, no image file while one is storing images)
    cleanup = demo.workbench.clean_up_leftovers()
    print(f"workbench on http://{host}:{port} (data in {db.data_dir}{logins}; model on "
          f"{demo.workbench.device_text()})\nlimits: {limits}\nstart-up cleanup: {cleanup.summary()}", flush=True)
    launch_app(db, host, port, block=True, auth=auth, max_file_size=max_file_size,
               max_request_bytes=max_request_bytes, demo=demo)
