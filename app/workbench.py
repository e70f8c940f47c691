"""The workbench's actions, shared by the browser UI and the headless API (gradio_client).

Everything here calls services: ``db.*`` for images, annotations, classes, model versions
and exports; ``partial_sup.*`` for proposals, GrabCut and training; ``mnc_core`` through
the Predictor held by :class:`app.display.ModelCache`.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from app.display import ImageCache, ModelCache
from db import masks, queries, registry
from db.annotations import (ConflictError, InstanceData, conflict_versions, get_annotations, save_annotations,
                            set_review_state, undo)
from db.coco_export import MASK_FORMATS, export_coco
from db.engine import Database
from db.errors import WorkbenchError
from db.uploads import add_images
from partial_sup import service
from partial_sup.presets import PRESETS
from partial_sup.proposals import DEFAULT_MIN_SCORE, mask_for_box, propose



def _no_progress(iterable, total, description):
    return iterable


def default_backbone_weights() -> str | None:
    """WORKBENCH_BACKBONE_WEIGHTS: a .pth file, 'none', or unset (torchvision's ImageNet weights)."""
    return os.environ.get("WORKBENCH_BACKBONE_WEIGHTS") or None


def rle_counts(value, height: int, width: int) -> str | None:
    """The counts string of a compressed COCO RLE dict of the image's size, else None (decode it with mask_of).

    Compressed RLE is how the API hands masks out; taking it back as it is saves a decode and an encode
    per instance on every save (the counts are checked when stored)."""
    if (isinstance(value, dict) and isinstance(value.get("counts"), str)
            and list(value.get("size", [height, width])) == [height, width]):
        return value["counts"]
    return None


def mask_of(value, height: int, width: int) -> np.ndarray | None:
    """A mask given through the API: COCO RLE dict (compressed or not), polygons, or a 0/1 array."""
    if value is None or value == [] or value == {}:
        return None
    from pycocotools import mask as mask_utils

    if isinstance(value, dict):
        size = value.get("size", [height, width])
        if list(size) != [height, width]:
            raise WorkbenchError(f"a mask of size {size} does not fit the image ({height}x{width}, [height, width])")
        rle = value
        if isinstance(value.get("counts"), list):
            rle = mask_utils.frPyObjects(value, height, width)
        elif isinstance(value.get("counts"), str):
            rle = {"size": size, "counts": value["counts"].encode("ascii")}
        return mask_utils.decode(rle).astype(bool)
    array = np.asarray(value)
    if array.ndim == 2 and array.shape == (height, width):
        return array.astype(bool)
    if isinstance(value, list) and value and all(isinstance(p, list) for p in value):  # polygons
        rles = mask_utils.frPyObjects([list(map(float, p)) for p in value], height, width)
        return mask_utils.decode(mask_utils.merge(rles)).astype(bool)
    raise WorkbenchError("a mask must be a COCO RLE {'size', 'counts'}, a list of polygons or an HxW 0/1 array")


class Workbench:
    def __init__(self, db: Database, *, proposal_min_score: float | None = None, device: str | None = None):
        self.db = db
        self.images = ImageCache(db)
        env = os.environ.get("WORKBENCH_PROPOSAL_MIN_SCORE")
        self.min_score = (proposal_min_score if proposal_min_score is not None
                          else float(env) if env else DEFAULT_MIN_SCORE)
        self.models = ModelCache(db, device=device, threshold=self.min_score)
        self.device = device

    # ---- images -------------------------------------------------------------------
    def upload(self, files: list, *, names: list[str] | None = None, split: str = "train",
               progress=_no_progress):
        paths = [str(f) if isinstance(f, (str, os.PathLike)) else str(getattr(f, "path", None) or f.name)
                 for f in files or []]
        if not paths:
            raise WorkbenchError("no files: drop images on the upload area first")
        return add_images(self.db, paths, split=split, names=names, progress=progress)

    def rgb(self, image_id: int) -> tuple[dict, np.ndarray]:
        info = queries.image_info(self.db, image_id)
        return info, self.images.rgb(info["stored_path"])

    def thumbnail(self, row: dict) -> str:
        info = queries.image_info(self.db, row["id"])
        return self.images.thumbnail(row["id"], info["stored_path"], self.db.data_dir)

    # ---- proposals ------------------------------------------------------------------
    def propose(self, image_id: int, *, score_threshold: float | None = None, seen_revision: int | None = None,
                user: str | None = None):
        """Run the active model on the image and store its instances as proposals."""
        _, image = self.rgb(image_id)
        version_id, predictions = self.models.predictions(image_id, image)
        if version_id is None:
            raise WorkbenchError("no model is trained yet: draw boxes (GrabCut makes their masks) and train one "
                                 "in the Train tab")
        threshold = self.min_score if score_threshold is None else float(score_threshold)
        return propose(self.db, image_id, None, version_id, score_threshold=threshold, seen_revision=seen_revision,
                       instances=predictions, user=user)

    def set_min_score(self, value) -> float:
        """The lowest score of a stored proposal (the Train tab's setting; default WORKBENCH_PROPOSAL_MIN_SCORE
        or 0.05). Applies to the proposals made from now on."""
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise WorkbenchError(f"the minimum score must be a number between 0 and 1, not {value!r}") from None
        if not 0.0 <= value < 1.0:
            raise WorkbenchError(f"the minimum score must be between 0 and 1 (below 1), not {value}")
        self.min_score = value
        self.models.set_threshold(value)
        return value

    def should_propose(self, image_id: int) -> bool:
        """Opening an image proposes when the active model has not looked at it yet and it is not done."""
        version = registry.active_version(self.db)
        if version is None:
            return False
        _, rows = get_annotations(self.db, image_id, decode_masks=False)
        if any(r["model_version_id"] == version.id for r in rows):
            return False
        reviewed = any(r["review_state"] in ("accepted", "rejected") for r in rows)
        return not reviewed

    def instances(self, image_id: int) -> dict:
        revision, rows = get_annotations(self.db, image_id, decode_masks=False)
        info = queries.image_info(self.db, image_id)
        height, width = info["height"], info["width"]
        names = queries.category_names(self.db)
        return {"image_id": int(image_id), "revision": revision, "instances": [
            {"id": r["id"], "category_id": r["category_id"], "category": names.get(r["category_id"]),
             "score": r["score"], "box": [round(float(v), 2) for v in r["box"]],
             "mask": None if r["mask_rle"] is None else masks.rle_dict(r["mask_rle"], height, width),
             "review_state": r["review_state"], "source": r["source"], "model_version_id": r["model_version_id"],
             "iscrowd": bool(r["iscrowd"])} for r in rows]}

    # ---- editing ---------------------------------------------------------------------
    def category_id(self, value, names: dict[int, str] | None = None) -> int:
        """A class given by id, id text or name (any case); ``names`` (id -> name) saves a query per call."""
        names = queries.category_names(self.db) if names is None else names
        if isinstance(value, (int, float)) and not isinstance(value, bool) and int(value) in names:
            return int(value)
        text = str(value or "").strip()
        if text.isdigit() and int(text) in names:
            return int(text)
        by_name = {n.lower(): i for i, n in names.items()}
        if text.lower() in by_name:
            return by_name[text.lower()]
        raise WorkbenchError(f"there is no class {value!r}; add it in the Classes tab "
                             f"(classes: {', '.join(names.values()) or 'none yet'})")

    def save_json(self, image_id: int, instances: list[dict], seen_revision: int | None, user: str | None = None) -> int:
        """The API's save: ``instances`` become the image's annotations (those with an ``id`` keep it)."""
        if not isinstance(instances, list):
            raise WorkbenchError("instances must be a list of objects")
        info = queries.image_info(self.db, image_id)
        names = queries.category_names(self.db)
        data = []
        for index, item in enumerate(instances):
            if not isinstance(item, dict):
                raise WorkbenchError(f"instance {index} is not an object")
            category = item.get("category_id", item.get("category"))
            if category is None:
                raise WorkbenchError(f"instance {index} has neither 'category_id' nor 'category'")
            mask, counts = None, rle_counts(item.get("mask"), info["height"], info["width"])
            if counts is None:
                mask = mask_of(item.get("mask"), info["height"], info["width"])
            box = item.get("box")
            if box is None and item.get("bbox") is not None:
                x, y, w, h = item["bbox"]
                box = (x, y, x + w, y + h)
            data.append(InstanceData(
                category_id=self.category_id(category, names),
                box=None if box is None else tuple(float(v) for v in box), mask=mask, mask_rle=counts,
                source=item.get("source", "drawn"), review_state=item.get("review_state", "accepted"),
                score=item.get("score"), model_version_id=item.get("model_version_id"),
                iscrowd=bool(item.get("iscrowd", False)), id=item.get("id")))
        seen = None if seen_revision is None or seen_revision == "" else int(seen_revision)
        return save_annotations(self.db, image_id, data, seen_revision=seen, user=user)

    def review(self, image_id: int, ids: list[int], state: str, seen_revision: int | None,
               user: str | None = None) -> int:
        if not ids:
            raise WorkbenchError("select an instance first (click it on the image or pick it in the list)")
        return set_review_state(self.db, image_id, ids, state, seen_revision=seen_revision, user=user)

    def accept_all(self, image_id: int, threshold: float, seen_revision: int | None,
                   user: str | None = None) -> tuple[int, int]:
        _, rows = get_annotations(self.db, image_id, states=["proposed"], decode_masks=False)
        ids = [r["id"] for r in rows if (r["score"] or 0.0) >= threshold]
        if not ids:
            raise WorkbenchError(f"no proposals with a score of at least {threshold:.2f} to accept")
        return self.review(image_id, ids, "accepted", seen_revision, user), len(ids)

    def delete_instance(self, image_id: int, ann_id: int, seen_revision: int | None, user: str | None = None) -> int:
        _, rows = get_annotations(self.db, image_id, decode_masks=False)
        if not any(r["id"] == ann_id for r in rows):
            raise WorkbenchError(f"annotation {ann_id} is not on image {image_id} (anymore)")
        return save_annotations(self.db, image_id, [InstanceData.from_row(r) for r in rows if r["id"] != ann_id],
                                seen_revision=seen_revision, user=user)

    def undo(self, image_id: int, user: str | None = None) -> int:
        return undo(self.db, image_id, user=user)

    def add_boxes(self, image_id: int, boxes: list[tuple[int, tuple[float, float, float, float]]], *,
                  box_only: bool, seen_revision: int | None, user: str | None = None) -> tuple[int, list[str]]:
        """Boxes a person drew (category id, x1 y1 x2 y2 in image pixels) become accepted annotations,
        with the active model's mask for that box and class (box-only classes included, through the
        weight transfer) or, without a model that knows the class, GrabCut."""
        if not boxes:
            raise WorkbenchError("draw a box first (the 'Create box' tool), give it a class, then add it")
        _, image = self.rgb(image_id)
        _, rows = get_annotations(self.db, image_id, decode_masks=False)
        version_id = None if box_only else self.models.active()[0]
        new, sources = [], []
        for category_id, box in boxes:
            if box_only:
                new.append(InstanceData(category_id=category_id, box=box, mask=None, source="drawn"))
                sources.append("box only")
                continue
            mask, source = mask_for_box(image, box, category_id, self.models.masks_for_boxes)
            new.append(InstanceData(category_id=category_id, box=box, mask=mask, source=source,
                                    model_version_id=version_id if source == "model" else None))
            sources.append(f"{source} mask")
        revision = save_annotations(self.db, image_id, [InstanceData.from_row(r) for r in rows] + new,
                                    seen_revision=seen_revision, user=user)
        return revision, sources

    def save_mask(self, image_id: int, ann_id: int | None, category, mask: np.ndarray,
                  seen_revision: int | None, user: str | None = None) -> int:
        """A mask painted by a person replaces an annotation's mask (or makes a new annotation)."""
        if not mask.any():
            raise WorkbenchError("the mask is empty: paint the object with the brush first")
        _, rows = get_annotations(self.db, image_id, decode_masks=False)
        data = []
        found = False
        for row in rows:
            if ann_id is not None and row["id"] == ann_id:
                found = True
                data.append(InstanceData.from_row(row, mask=mask, box=None, source="drawn", review_state="accepted",
                                                  score=None, model_version_id=None))
            else:
                data.append(InstanceData.from_row(row))
        if not found:
            if ann_id is not None:
                raise WorkbenchError(f"annotation {ann_id} is gone from image {image_id}; reload the image")
            data.append(InstanceData(category_id=self.category_id(category), mask=mask, source="drawn"))
        return save_annotations(self.db, image_id, data, seen_revision=seen_revision, user=user)

    def conflicts(self, image_id: int) -> list:
        return conflict_versions(self.db, image_id)

    def recover_conflict(self, image_id: int, seen_revision: int | None, user: str | None = None) -> int:
        """Make the newest save that lost a conflict on this image its annotations again."""
        entries = conflict_versions(self.db, image_id)
        if not entries:
            raise WorkbenchError("there is no lost version of this image to recover")
        _, rows = get_annotations(self.db, image_id, decode_masks=False)
        current = {r["id"] for r in rows}
        data = []
        for row in entries[0].snapshot:
            box = (row["bbox_x"], row["bbox_y"], row["bbox_x"] + row["bbox_w"], row["bbox_y"] + row["bbox_h"])
            data.append(InstanceData(category_id=row["category_id"], box=box, mask_rle=row.get("mask_rle"),
                                     source=row["source"],
                                     review_state=row["review_state"], score=row["score"],
                                     model_version_id=row["model_version_id"], iscrowd=bool(row["iscrowd"]),
                                     id=row.get("id") if row.get("id") in current else None))
        return save_annotations(self.db, image_id, data, seen_revision=seen_revision, user=user)

    # ---- training -------------------------------------------------------------------
    def start_training(self, mode: str = "heads", iterations=None, image_size=None, backbone_weights=None) -> int:
        """Start a training run in its own process; iterations and image size empty or 0: the mode's preset
        (the training process picks the preset's iterations for the device it finds)."""
        mode = (mode or "heads").strip().lower()
        if mode not in PRESETS:
            raise WorkbenchError(f"training mode {mode!r} is not one of {', '.join(PRESETS)}")
        iterations = int(iterations) if iterations not in (None, "", 0) else None
        image_size = int(image_size) if image_size not in (None, "", 0) else None
        if (iterations is not None and iterations < 1) or (image_size is not None and image_size < 32):
            raise WorkbenchError("iterations must be at least 1 and the image size at least 32 pixels")
        running = queries.latest_run(self.db, active_only=True)
        if running is not None and not service.run_state(self.db, running).finished:
            raise WorkbenchError(f"training run {running} is still running: wait for it or cancel it first")
        weights = (str(backbone_weights).strip() or None) if backbone_weights else default_backbone_weights()
        return service.start_training(self.db, iterations=iterations, image_size=image_size,
                                      backbone_weights=weights, device=self.device, mode=mode)

    def training_estimate(self, mode: str = "heads", iterations=None, image_size=None) -> str:
        """How long a run will take, said before it starts: from the pace of this machine's last finished run
        of the mode when there is one, else from the preset's measured time on a 2-core CPU."""
        mode = (mode or "heads").strip().lower()
        if mode not in PRESETS:
            return ""
        preset = PRESETS[mode]
        on_gpu = service.training_device(self.device) == "cuda"
        iterations = int(iterations) if iterations not in (None, "", 0) else preset.iterations_on(
            "cuda" if on_gpu else "cpu")
        size = int(image_size) if image_size not in (None, "", 0) else preset.image_size
        pace = queries.last_training_pace(self.db, mode)
        if pace is not None:
            seconds, basis = pace * iterations, "at the pace of this machine's last run of this mode"
        elif on_gpu:
            return f"**{mode}**: {iterations} iterations at {size} px on the GPU (a few minutes)."
        else:
            seconds = preset.cpu_minutes * 60 * iterations / preset.iterations * (size / preset.image_size) ** 2
            basis = "as measured on a 2-core CPU; more cores are faster"
        minutes = max(1, round(seconds / 60))
        return f"**{mode}**: {iterations} iterations at {size} px: about **{minutes} min** ({basis})."

    def wait_for_run(self, run_id: int, on_progress=None, poll: float = 1.0) -> service.RunState:
        while True:
            state = service.run_state(self.db, run_id)
            if on_progress is not None:
                on_progress(state)
            if state.finished:
                return state
            time.sleep(poll)

    def version_info(self, version_id: int | None) -> dict | None:
        for v in registry.list_versions(self.db):
            if v.id == version_id:
                return {"version_id": v.id, "name": v.name, "metrics": v.metrics, "active": v.is_active,
                        "checkpoint": v.checkpoint_path, "created_at": v.created_at.isoformat()}
        return None

    # ---- export ---------------------------------------------------------------------
    def export(self, mask_format: str = "polygon", images: str = "all", progress=_no_progress):
        mask_format = (mask_format or "polygon").strip().lower()
        which = (images or "all").strip().lower()
        if which not in ("all", "reviewed"):
            raise WorkbenchError(f"images must be 'all' or 'reviewed', not {images!r}")
        if mask_format not in MASK_FORMATS:  # before it becomes part of a file name
            raise WorkbenchError(f"mask format {mask_format!r} is not one of {', '.join(MASK_FORMATS)}")
        ids = queries.reviewed_image_ids(self.db) if which == "reviewed" else None
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
        out = self.db.data_dir / "exports" / f"coco-{which}-{mask_format}-{stamp}.json"
        report = export_coco(self.db, out, mask_format=mask_format, progress=progress, image_ids=ids)
        return Path(out), report


__all__ = ["Workbench", "ConflictError", "PRESETS"]
