"""The headless API (gradio_client, or HTTP under /gradio_api/): upload_images, propose, save_annotations,
retrain, export_coco, add_boxes, refine, record_visit, list_images, instances, model_help (and overview, bound
in app.ui). Each endpoint is one call of the services facade;
errors reach the client as gr.Error with the facade's message."""

from __future__ import annotations

import functools

import gradio as gr

from app.handlers import progress_adapter, user_of
from services.workbench import Workbench, WorkbenchError, shown


def client_errors(endpoint):
    """Bad input and refused actions reach the client as gr.Error with the message (not a server error)."""
    @functools.wraps(endpoint)  # keeps the signature: Gradio reads gr.Request / gr.Progress parameters from it
    def call(*args, **kwargs):
        try:
            return endpoint(*args, **kwargs)
        except (WorkbenchError, TypeError, ValueError, KeyError) as exc:
            raise gr.Error(str(exc)) from None

    return call


def whole_number(value, what: str) -> int:
    """An id or revision from a client: a whole number (also as a float 3.0 or a text "3"), else a clear error."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise WorkbenchError(f"{what} must be a whole number, not {shown(value)}") from None
    if not number.is_integer():
        raise WorkbenchError(f"{what} must be a whole number, not {shown(value)}")
    return int(number)


def seen_revision_of(value) -> int:
    """The revision a client read the image at, which a write that replaces the image's annotations requires:
    missing or negative (the old -1, "no check") is refused, since such a save would overwrite whatever someone
    else saved meanwhile."""
    if value is None or value == "":
        raise WorkbenchError("seen_revision is missing: send the image's revision from /instances (or /propose), "
                             "or the saved_revision of your last save of the image")
    seen = whole_number(value, "seen_revision")
    if seen < 0:
        raise WorkbenchError(f"seen_revision {seen} (no check) is no longer accepted: it overwrote other people's "
                             "saves. Send the image's revision from /instances (or /propose), or the saved_revision "
                             "of your last save of the image")
    return seen


class Api:
    def __init__(self, workbench: Workbench):
        self.wb = workbench

    @client_errors
    def upload_images(self, files, split, progress=gr.Progress()):
        """Add image files; returns their image ids (existing images keep theirs) and refusals."""
        result = self.wb.upload(files, split=split or "train", progress=progress_adapter(progress))
        return {"image_ids": result.image_ids, "added": result.added, "existing": result.existing,
                "refused": result.refused}

    @client_errors
    def propose(self, image_id, score_threshold, request: gr.Request):
        """Run the active model on an image, store its instances as proposals; returns the image's instances."""
        image_id = whole_number(image_id, "image_id")
        result = self.wb.propose(image_id, score_threshold=score_threshold, user=user_of(request))
        out = self.wb.instances(image_id)
        out.update(added=result.added, replaced=result.replaced, saved_revision=result.revision,
                   low_confidence=result.low_confidence, model_version_id=self.wb.active_version_id())
        return out

    @client_errors
    def save_annotations(self, image_id, instances, seen_revision, request: gr.Request):
        """Make the instances the image's annotations; returns the annotations as they are now, their
        revision, and the revision this save made (saved_revision: another save may follow at once)."""
        image_id = whole_number(image_id, "image_id")
        seen = seen_revision_of(seen_revision)
        saved = self.wb.save_json(image_id, instances if instances is not None else [], seen, user=user_of(request))
        return {**self.wb.instances(image_id), "saved_revision": saved}

    @client_errors
    def retrain(self, mode, iterations, image_size, backbone_weights, progress=gr.Progress()):
        """Train a new model version (its own process) and wait for it; returns the version and its metrics."""
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
    def export_coco(self, mask_format, images, progress=gr.Progress()):
        """Export COCO (mask_format polygon|rle, images all|reviewed); returns the file."""
        path, _ = self.wb.export(mask_format, images, progress=progress_adapter(progress))
        return str(path)

    @client_errors
    def add_boxes(self, image_id, boxes, seen_revision, request: gr.Request):
        """Boxes a person drew ([{"category": id or name, "box": [x1, y1, x2, y2]}, ...]) become accepted
        instances with the active model's mask for the box, else GrabCut's; returns the image's instances, how
        each mask was made (masks) and the revision this save made."""
        image_id = whole_number(image_id, "image_id")
        seen = seen_revision_of(seen_revision)
        if not isinstance(boxes, list) or not all(isinstance(b, dict) and "box" in b for b in boxes):
            raise WorkbenchError('boxes must be a list of {"category": id or name, "box": [x1, y1, x2, y2]}')
        parsed = []
        for index, item in enumerate(boxes):
            box = item["box"]
            if not (isinstance(box, list) and len(box) == 4):
                raise WorkbenchError(f"box {index}: 'box' must be [x1, y1, x2, y2]")
            parsed.append((self.wb.category_id(item.get("category", item.get("category_id"))),
                           tuple(float(v) for v in box)))
        saved, how = self.wb.add_boxes(image_id, parsed, box_only=False, seen_revision=seen, user=user_of(request))
        return {**self.wb.instances(image_id), "saved_revision": saved, "masks": how}

    @client_errors
    def refine(self, image_id, ann_id, positive_points, negative_points, seen_revision, request: gr.Request):
        """Correct an instance's mask with clicks ([[x, y], ...] in full-resolution pixels: positive "this is
        object", negative "this is not"; GrabCut with the clicks as hard labels); returns the image's instances
        and the revision this save made."""
        image_id = whole_number(image_id, "image_id")
        seen = seen_revision_of(seen_revision)
        saved = self.wb.refine_with_clicks(image_id, whole_number(ann_id, "ann_id"), positive_points,
                                           negative_points, seen, user=user_of(request))
        return {**self.wb.instances(image_id), "saved_revision": saved}

    @client_errors
    def record_visit(self, image_id, event_times, request: gr.Request):
        """A visit of an image: the client's event times in seconds (open ... done); active time leaves gaps
        over 60 s out. Returns the active and idle seconds."""
        return self.wb.record_visit(whole_number(image_id, "image_id"), event_times, user=user_of(request))

    @client_errors
    def list_images(self, status, order, propose_missing):
        """Images with their status; order "upload" or "most_useful" (the active model's least certain
        unlabelled train photos first; propose_missing: run the model on at most this many that it has not
        seen yet)."""
        missing = 0 if propose_missing in (None, "") else whole_number(propose_missing, "propose_missing")
        rows = self.wb.list_images(status or "all", limit=None, order=order or "upload", propose_missing=missing)
        return {"images": rows}

    @client_errors
    def instances(self, image_id):
        """An image's instances as they are now, with their revision (the same shape as propose returns)."""
        return self.wb.instances(whole_number(image_id, "image_id"))

    @client_errors
    def model_help(self):
        """How much each model version helped: per version and per version and class (services.model_help)."""
        return self.wb.model_help()
