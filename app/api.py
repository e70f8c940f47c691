"""The headless API (gradio_client, or HTTP under /gradio_api/): upload_images, propose, save_annotations,
retrain, export_coco, add_boxes, refine, record_visit, list_images, instances, model_help, overview, ...: the
methods of :class:`Api`, each declared in app.ui with ``gr.api`` (which reads its parameters and results from the
method's type hints; nothing of the page serves it). Each endpoint is one call of the services facade; its fields
are checked by services.wire (a type hint documents a field: Gradio hands the value over as the client sent it).

Every refusal reaches the client as gr.Error with a message that says what was wrong and what to send:
:func:`client_errors` for what an endpoint raises, :class:`WorkbenchBlocks` for what Gradio checks before an
endpoint runs (too few values, a value its input component cannot take, a file the client did not upload)."""

from __future__ import annotations

import functools
import inspect
import logging
from pathlib import Path
from typing import TypedDict

import gradio as gr
from gradio.data_classes import FileData
from gradio_client.utils import is_file_obj_with_meta, is_http_url_like

from app.display import CATEGORY_HEADERS, IMAGE_HEADERS
from app.handlers import Handlers, progress_adapter, user_of
from services import wire
from services.workbench import Workbench, WorkbenchError, shown

log = logging.getLogger(__name__)

# What each endpoint takes, as a refusal says it (README.md, "Headless API")
FIELDS = {
    "upload_images": 'files (a list of uploaded image files: handle_file(path)), split ("train" or "val")',
    "propose": "image_id (a whole number), score_threshold (a number from 0 to 1; null: the server's)",
    "save_annotations": "image_id (a whole number), instances (a list of instance objects, see README.md "
                        "\"Headless API\"), seen_revision (required: the revision from /instances or your last save)",
    "retrain": 'mode ("heads" or "full"), iterations and image_size (whole numbers; 0: the mode\'s preset), '
               'backbone_weights ("", "none" or a file in the data folder\'s weights/ folder)',
    "export_coco": 'mask_format ("polygon" or "rle"), images ("all" or "reviewed")',
    "add_boxes": 'image_id (a whole number), boxes ([{"category": id or name, "box": [x1, y1, x2, y2]}, ...] in '
                 "image pixels), seen_revision (required: the revision from /instances or your last save)",
    "refine": "image_id and ann_id (whole numbers), positive_points and negative_points ([[x, y], ...] in image "
              "pixels), seen_revision (required: the revision from /instances or your last save)",
    "record_visit": "image_id (a whole number), event_times (a list of at least 2 numbers, seconds)",
    "list_images": 'status ("all", "new", "proposed", "in review" or "done"), order ("upload" or "most_useful"), '
                   "propose_missing (a whole number)",
    "instances": "image_id (a whole number)",
    "model_help": "no values",
    "overview": "no values",
}


def _message(exc: BaseException) -> str:
    """The text of an exception's refusal ('' when it has none): gr.Error's message (its str() is a repr)."""
    text = exc.message if isinstance(exc, gr.Error) else str(exc)
    return str(text or "").strip()


def refusal(endpoint: str, exc: BaseException) -> str:
    """What a refused call of ``endpoint`` tells the client: never empty; a WorkbenchError's message as it is,
    anything else with what the endpoint takes."""
    text = _message(exc)
    if isinstance(exc, (WorkbenchError, gr.Error)) and text:
        return text
    if isinstance(exc, KeyError):
        text = f"the field {shown(exc.args[0] if exc.args else None)} is missing"
    elif not isinstance(exc, (ValueError, TypeError, OverflowError)) or not text:
        text = f"the values could not be used ({type(exc).__name__})"
    return f"/{endpoint}: {text}; it takes {FIELDS.get(endpoint, 'the values its documentation lists')}"


def client_errors(endpoint):
    """Every refusal of ``endpoint`` reaches the client as gr.Error with a message (:func:`refusal`), never as
    a server error without one: too many or too few values, a WorkbenchError, and anything unforeseen (logged
    with its traceback)."""
    name = endpoint.__name__
    signature = inspect.signature(endpoint)

    @functools.wraps(endpoint)  # keeps the name and signature: gr.api reads the parameters (gr.Request too) from it
    def call(*args, **kwargs):
        try:
            signature.bind(*args, **kwargs)
        except TypeError:
            raise gr.Error(f"/{name} takes {FIELDS.get(name, 'other values')}; it got {len(args) - 1} "
                           "value(s)") from None
        try:
            return endpoint(*args, **kwargs)
        except (WorkbenchError, gr.Error, ValueError, TypeError, KeyError, OverflowError) as exc:
            raise gr.Error(refusal(name, exc)) from None
        except Exception as exc:  # noqa: BLE001 (a bug: the client still learns that, and what the call takes)
            log.exception("/%s failed", name)
            raise gr.Error(refusal(name, exc)) from None

    # the signature with its type hints evaluated: gr.api reads the results from the return annotation, which
    # `from __future__ import annotations` leaves a text (read as one value of any type)
    call.__signature__ = inspect.signature(endpoint, eval_str=True)
    return call


class WorkbenchBlocks(gr.Blocks):
    """gr.Blocks whose events refuse what Gradio checks before a function runs with a message too (Gradio
    answers those with {"error": null} unless show_error is on, which would show any internal error's text):
    too few values, a value its input component cannot take (e.g. a text for a number), a file path the client
    did not upload. The message names the endpoint and the fields it takes."""

    async def preprocess_data(self, block_fn, inputs, state, explicit_call=False):
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except gr.Error:
            raise
        except Exception as exc:  # noqa: BLE001 (ValueError, ComponentProcessingError, InvalidPathError, ...)
            name = getattr(block_fn, "api_name", None) or getattr(block_fn, "name", None) or "this event"
            labels = [getattr(block, "label", None) or type(block).__name__.lower() for block in block_fn.inputs]
            sent = len(inputs) if isinstance(inputs, (list, tuple)) else 0
            if sent < len(labels):
                text = f"it got {sent} value(s), not {len(labels)}"
            else:
                text = f"a value cannot be read ({type(exc).__name__}: {_first_line(exc)})"
            raise gr.Error(f"/{name}: {text}; it takes {FIELDS.get(name, ', '.join(labels) or 'no values')}") \
                from None


def _first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's text, cut to ``limit`` characters (Gradio's own texts echo the input)."""
    text = (_message(exc) or type(exc).__name__).splitlines()[0]
    return text if len(text) <= limit else text[:limit] + "..."


def uploaded_paths(files) -> list[str]:
    """The server paths of the files a client uploaded (gradio_client's handle_file(path)): FileData objects,
    which Gradio checks before the endpoint runs (uploaded by a client, else refused: WorkbenchBlocks) and moves
    into its cache; any other value (a text, a path without FileData's "meta") is refused, never read."""
    if files is None:
        return []
    if not isinstance(files, list) or not all(is_file_obj_with_meta(item) and not is_http_url_like(item["path"])
                                              for item in files):
        raise ValueError("a value cannot be read (files must be a list of uploaded files: handle_file(path))")
    return [item["path"] for item in files]


class Table(TypedDict):
    """A table as the page's gr.Dataframe sends it (the type /overview's view_api shows)."""
    headers: list[str]
    data: list[list]
    metadata: dict | None


def _table(headers: list[str], rows: list[list]) -> Table:
    return {"headers": list(headers), "data": rows, "metadata": None}


class Api:
    """The endpoints (app.ui declares each with gr.api: its parameters, defaults and results are read from the
    type hints below; gr.Request is Gradio's, never the client's; progress goes to gradio_client's job.status())."""

    def __init__(self, workbench: Workbench):
        self.wb = workbench

    @client_errors
    def upload_images(self, files: list[FileData], split: str = "train") -> dict:
        """Add image files; returns their image ids (existing images keep theirs) and refusals."""
        paths = uploaded_paths(files)
        result = self.wb.upload(paths, split=split or "train", progress=progress_adapter(gr.Progress()))
        return {"image_ids": result.image_ids, "added": result.added, "existing": result.existing,
                "refused": result.refused}

    @client_errors
    def propose(self, image_id: int, score_threshold: float | None = None,
                request: gr.Request | None = None) -> dict:
        """Run the active model on an image, store its instances as proposals; returns the image's instances."""
        image_id = wire.strict_id(image_id, "image_id")
        result = self.wb.propose(image_id, score_threshold=score_threshold, user=user_of(request))
        out = self.wb.instances(image_id)
        out.update(added=result.added, replaced=result.replaced, saved_revision=result.revision,
                   low_confidence=result.low_confidence, model_version_id=self.wb.active_version_id())
        return out

    @client_errors
    def save_annotations(self, image_id: int, instances: list[dict], seen_revision: int,
                         request: gr.Request | None = None) -> dict:
        """Make the instances the image's annotations; returns the annotations as they are now, their
        revision, and the revision this save made (saved_revision: another save may follow at once)."""
        image_id = wire.strict_id(image_id, "image_id")
        seen = wire.required_revision(seen_revision)
        saved = self.wb.editor.save_json(image_id, instances if instances is not None else [], seen, user=user_of(request))
        return {**self.wb.instances(image_id), "saved_revision": saved}

    @client_errors
    def retrain(self, mode: str = "heads", iterations: int = 0, image_size: int = 0,
                backbone_weights: str = "") -> dict:
        """Train a new model version (its own process) and wait for it; returns the version and its metrics."""
        progress = gr.Progress()  # the job's progress in gradio_client (job.status().progress_data)
        run = self.wb.start_training(mode, iterations, image_size, backbone_weights)
        progress(0.0, desc=f"training run {run}")

        def report(state):
            if state.iterations:
                progress((state.iteration, state.iterations), desc=f"training run {run}", unit="iterations")

        state = self.wb.wait_for_run(run, report)
        if state.status != "succeeded":
            raise gr.Error(f"training run {run} {state.status}: {state.message}")
        return {"run_id": run, "status": state.status, "iterations": state.iterations, "loss": state.loss,
                "history": state.history, **(self.wb.version_info(state.version_id) or {})}

    @client_errors
    def export_coco(self, mask_format: str = "polygon", images: str = "all") -> FileData:
        """Export COCO (mask_format polygon|rle, images all|reviewed); returns the file (gradio_client downloads
        it and returns its local path; HTTP clients get its url)."""
        path, _ = self.wb.export(mask_format, images, progress=progress_adapter(gr.Progress()))
        # as gr.File sends a file: handed out from the exports folder, a static path (app.ui), not copied
        path = Path(path)
        return FileData(path=str(path), orig_name=path.name, size=path.stat().st_size).model_dump()

    @client_errors
    def add_boxes(self, image_id: int, boxes: list[dict], seen_revision: int,
                  request: gr.Request | None = None) -> dict:
        """Boxes a person drew ([{"category": id or name, "box": [x1, y1, x2, y2]}, ...]) become accepted
        instances with the active model's mask for the box, else GrabCut's; returns the image's instances, how
        each mask was made (masks) and the revision this save made. Each box is checked (services.wire.clipped_box)
        before any reaches the model."""
        image_id = wire.strict_id(image_id, "image_id")
        seen = wire.required_revision(seen_revision)
        items = wire.listed(boxes, "boxes", item='{"category": id or name, "box": [x1, y1, x2, y2]} objects')
        if not all(isinstance(item, dict) and "box" in item for item in items):
            raise WorkbenchError('boxes must be a list of {"category": id or name, "box": [x1, y1, x2, y2]}')
        parsed = [(self.wb.editor.category_id(item.get("category", item.get("category_id"))), item["box"]) for item in items]
        saved, how = self.wb.editor.add_boxes(image_id, parsed, box_only=False, seen_revision=seen, user=user_of(request))
        return {**self.wb.instances(image_id), "saved_revision": saved, "masks": how}

    @client_errors
    def refine(self, image_id: int, ann_id: int, positive_points: list[list[float]],
               negative_points: list[list[float]], seen_revision: int, request: gr.Request | None = None) -> dict:
        """Correct an instance's mask with clicks ([[x, y], ...] in full-resolution pixels: positive "this is
        object", negative "this is not"; GrabCut with the clicks as hard labels); returns the image's instances
        and the revision this save made."""
        image_id = wire.strict_id(image_id, "image_id")
        seen = wire.required_revision(seen_revision)
        saved = self.wb.editor.refine_with_clicks(image_id, wire.strict_id(ann_id, "ann_id"), positive_points,
                                           negative_points, seen, user=user_of(request))
        return {**self.wb.instances(image_id), "saved_revision": saved}

    @client_errors
    def record_visit(self, image_id: int, event_times: list[float], request: gr.Request | None = None) -> dict:
        """A visit of an image: the client's event times in seconds (open ... done); active time leaves gaps
        over 60 s out. Returns the active and idle seconds."""
        return self.wb.record_visit(wire.strict_id(image_id, "image_id"), event_times, user=user_of(request))

    @client_errors
    def list_images(self, status: str = "all", order: str = "upload", propose_missing: int = 0) -> dict:
        """Images with their status; order "upload" or "most_useful" (the active model's least certain
        unlabelled train photos first; propose_missing: run the model on at most this many that it has not
        seen yet)."""
        rows = self.wb.list_images(status or "all", limit=None, order=order or "upload",
                                   propose_missing=propose_missing)
        return {"images": rows}

    @client_errors
    def instances(self, image_id: int) -> dict:
        """An image's instances as they are now, with their revision (the same shape as propose returns)."""
        return self.wb.instances(wire.strict_id(image_id, "image_id"))

    @client_errors
    def keep_box(self, image_id: int, ann_id: int, seen_revision: int, request: gr.Request | None = None) -> dict:
        """Keep a proposal's box, not its mask: it becomes an accepted instance with its class and box and a
        mask made again from the box (as for a drawn box); returns the image's instances and the revision this
        save made."""
        image_id = wire.strict_id(image_id, "image_id")
        saved = self.wb.editor.keep_box(image_id, wire.strict_id(ann_id, "ann_id"), wire.required_revision(seen_revision),
                                 user=user_of(request))
        return {**self.wb.instances(image_id), "saved_revision": saved}

    @client_errors
    def scissors_path(self, image_id: int, points: list[list[float]]) -> dict:
        """Intelligent scissors: the path through clicked points ([[x, y], ...] image pixels), each segment
        following the image's edges; returns {"image_id", "path"} (save it as a polygon mask)."""
        return self.wb.scissors_path(image_id, points)

    @client_errors
    def prefetch(self, image_ids: list[int]) -> dict:
        """Propose in the background on the photos you will open next (in your order; the first
        WORKBENCH_PREFETCH of them, default 2): they open with their proposals stored. Returns those queued."""
        return {"queued": self.wb.prefetch(image_ids)}

    @client_errors
    def finish_image(self, image_id: int, seen_revision: int, request: gr.Request | None = None) -> dict:
        """"Done" with an image, as the review canvas's Done: the proposals left are rejected, those the model's
        thresholds hid are closed as hidden (never charged), and what each proposal was worth is recorded.
        Returns {"revision", "rejected", "hidden"}."""
        return self.wb.editor.finish_image(wire.strict_id(image_id, "image_id"), wire.required_revision(seen_revision),
                                    user_of(request))

    @client_errors
    def model_help(self) -> dict:
        """How much each model version helped: per version and per version and class (services.model_help)."""
        return self.wb.model_help()

    @client_errors
    def overview(self) -> tuple[str, Table, Table]:
        """The summary line, the per-class table and the image table (each {"headers", "data", "metadata"}, as
        the page's tables)."""
        summary, classes, images = Handlers(self.wb).overview()
        return summary, _table(CATEGORY_HEADERS, classes), _table(IMAGE_HEADERS, images)
