"""The one facade the app calls: every action of the browser UI and the headless API (gradio_client).

It orchestrates: ``db.*`` for images, annotations, classes, model versions and exports (all SQL
lives there); ``services.proposals`` / ``services.training`` / ``services.models`` for proposals,
training runs and the model in memory. It hands out plain values (dicts, dataclasses, numpy
arrays), never ORM rows or tensors.

One name per concept: ``score_threshold`` is the lowest score of an instance that the model keeps
and the workbench stores as a proposal (setting: WORKBENCH_SCORE_THRESHOLD, the Train tab);
``review_threshold`` is the lowest score the Review tab draws and "Accept all" accepts.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from db import categories, fates, housekeeping, masks, queries, registry
from db.annotations import (ConflictError, InstanceData, Seen, conflict_versions, get_annotations, recover_lost,
                            save_annotations, set_review_state, undo)
from db.coco_export import MASK_FORMATS, export_coco
from db.engine import Database
from db.errors import WorkbenchError, isolated, shown
from db.models import ReviewState, Source
from db.progress import Progress, no_progress
from db.uploads import MAX_UPLOAD_BYTES, add_images
from services import box_masks, payoff, review, training, wire
from services.images import ImageCache
from services.limits import describe as limits_text, keep_exports, write_concurrency
from services.model_help import model_help
from services.models import ModelCache, device_description, inference_device
from services.presets import PRESETS, TrainingSpec
from services.prefetch import Prefetcher, ahead_from_environment
from services.review import MAX_EDITS
from services.scissors import MAX_POINTS as SCISSORS_MAX_POINTS, snap_path
from services.singleflight import SingleFlight
from partial_sup.grabcut import refine_mask
from services.proposals import (DEFAULT_SCORE_THRESHOLD, LOW_CONFIDENCE_TOP, MAX_BOXES, propose,
                                uncertainty)
from services.versions import VERSION_METRIC_COLUMNS, version_metrics

SCORE_THRESHOLD_VARIABLE = "WORKBENCH_SCORE_THRESHOLD"
ORDERS = ("upload", "most_useful")  # the gallery's orders (Workbench.list_images)
SOURCES = tuple(source.value for source in Source)
REVIEW_STATES = tuple(state.value for state in ReviewState)
RunState = training.RunState
MAX_ITERATIONS = 10_000_000  # of a training run started from the page or the API
MAX_IMAGE_SIZE = 8192  # a training run's short side in pixels


@dataclass(frozen=True)
class VersionInfo:
    """A model version as the UI and the API show it."""
    id: int
    name: str
    is_active: bool
    created_at: datetime
    metrics: dict
    metric_texts: dict[str, str]  # header -> text (services.versions.VERSION_METRIC_COLUMNS)
    policy_text: str  # whether its proposals pay: threshold, cap, precision, saving (services.payoff.describe)
    checkpoint: str
    training_run_id: int | None


def default_backbone_weights() -> str | None:
    """WORKBENCH_BACKBONE_WEIGHTS: a .pth file, 'none', or unset (torchvision's ImageNet weights)."""
    return os.environ.get("WORKBENCH_BACKBONE_WEIGHTS") or None


def mask_of(value, height: int, width: int) -> tuple[np.ndarray | None, str | None]:
    """A mask given through the API -> (mask, None), (None, compressed counts) or (None, None) for none: COCO
    RLE (compressed or not), polygons or an HxW 0/1 array, checked (db.masks.counts_from_segmentation) before
    anything decodes it. Compressed RLE, how the API hands masks out, is taken back as it is (no decode and
    encode per instance on every save)."""
    if value is None or value == [] or value == {}:
        return None, None
    if not isinstance(value, dict):
        try:
            array = np.asarray(value)
        except (ValueError, TypeError):  # ragged: polygons
            array = None
        if array is not None and array.ndim == 2 and array.shape == (height, width):
            if array.dtype.kind not in "biu" or not np.isin(array, (0, 1)).all():
                raise WorkbenchError("a mask given as an HxW array must hold only 0 and 1")
            return array.astype(bool), None
        if not (isinstance(value, list) and all(isinstance(part, list) for part in value)):
            raise WorkbenchError("a mask must be a COCO RLE {'size', 'counts'}, a list of polygons or an HxW 0/1 "
                                 "array")
    compressed = isinstance(value, dict) and isinstance(value.get("counts"), str)
    if compressed:
        value = {"size": [height, width], **value}  # the API's own output may leave out the image's size
    try:
        counts = masks.counts_from_segmentation(value, height, width)
    except ValueError as exc:
        raise WorkbenchError(f"a mask: {exc}") from None
    return (None, counts) if compressed else (masks.decode(counts, height, width), None)


def instance_from_json(item, index: int, height: int, width: int, category_of, versions: set[int]) -> InstanceData:
    """One instance of the API's save, checked field by field (services.wire): category (a class id or name),
    box [x1, y1, x2, y2] or bbox [x, y, w, h] (wire.box_in_image: finite, positive size, at most one image size
    outside the image; kept as sent), mask (db.masks.counts_from_segmentation), score (finite, 0..1), iscrowd
    (true/false or 0/1), id and model_version_id (wire.strict_id; a version that exists), source and
    review_state (their names)."""
    where = f"instance {index}"
    if not isinstance(item, dict):
        raise WorkbenchError(f"{where} is not an object")
    category = item.get("category_id", item.get("category"))
    if category is None:
        raise WorkbenchError(f"{where} has neither 'category_id' nor 'category'")
    if isinstance(category, float) or isinstance(category, bool):
        raise WorkbenchError(f"{where}: the class must be a class id (a whole number) or a name, not {category!r}")
    box = item.get("box")
    if box is None and item.get("bbox") is not None:
        bbox = item["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4):
            raise WorkbenchError(f"{where}: 'bbox' must be [x, y, width, height], not {shown(bbox)}")
        x, y, w, h = (wire.finite_number(v, f"{where}: a bbox value") for v in bbox)
        box = wire.box_in_image([x, y, x + w, y + h], width, height, f"{where}: 'bbox' as [x1, y1, x2, y2]")
    elif box is not None:
        box = wire.box_in_image(box, width, height, f"{where}: 'box'")
    mask, counts = mask_of(item.get("mask"), height, width)
    score = item.get("score")
    if score is not None:
        score = wire.fraction(score, f"{where}: 'score'")
    iscrowd = item.get("iscrowd", False)
    if iscrowd not in (True, False, 0, 1) or isinstance(iscrowd, float):
        raise WorkbenchError(f"{where}: 'iscrowd' must be true/false or 0/1, not {shown(iscrowd)}")
    ann_id = item.get("id")
    ann_id = None if ann_id is None else wire.strict_id(ann_id, f"{where}: 'id'", text=False)
    version = item.get("model_version_id")
    version = None if version is None else wire.strict_id(version, f"{where}: 'model_version_id'", text=False)
    if version is not None and version not in versions:
        raise WorkbenchError(f"{where}: there is no model version {version}")
    source, state = item.get("source", "drawn"), item.get("review_state", "accepted")
    if source not in SOURCES:
        raise WorkbenchError(f"{where}: 'source' must be one of {', '.join(SOURCES)}, not {shown(source)}")
    if state not in REVIEW_STATES:
        raise WorkbenchError(f"{where}: 'review_state' must be one of {', '.join(REVIEW_STATES)}, "
                             f"not {shown(state)}")
    return InstanceData(category_id=category_of(category), box=box, mask=mask, mask_rle=counts, source=source,
                        review_state=state, score=score, model_version_id=version, iscrowd=bool(iscrowd), id=ann_id)


def _check_box_count(count: int, where: str) -> None:
    """At most MAX_BOXES boxes get a mask in one call (each costs a GrabCut or a model run)."""
    if count > MAX_BOXES:
        raise WorkbenchError(f"{count} boxes {where}: at most {MAX_BOXES} boxes get a mask in one call; send the "
                             f"others in further calls of at most {MAX_BOXES}")


def _write_revision(seen_revision, revision: int) -> int:
    """The revision a read-compute-save starts from: the caller's, when given (what it saw), with the revision
    of the rows the save was computed from (db.annotations.Seen: others' changes since the caller looked are
    merged, or a conflict where they touched the instance it edits), else the one read with the rows (a save
    that lands while this one computes is merged, never written over)."""
    if isinstance(seen_revision, Seen):  # a batch of the canvas's edits (services.review)
        return seen_revision.reading(revision)
    seen = wire.revision(seen_revision)
    return revision if seen is None else Seen(seen, read=revision)


def _mode_name(mode):
    """A training mode from a client: empty -> "heads", a text stripped and in lower case; anything else as it
    came (TrainingSpec refuses it with the modes there are)."""
    if mode is None or mode == "":
        return "heads"
    return mode.strip().lower() if isinstance(mode, str) else mode


def _box_tool(changes: dict) -> str:
    """The tool of a box a person drew: "grabcut" when GrabCut alone made its mask, else "box"."""
    return "grabcut" if changes.get("start") == "grabcut" else "box"


class Workbench:
    def __init__(self, db: Database, *, score_threshold: float | None = None, device: str | None = None):
        """score_threshold: the lowest score of a stored proposal (None: $WORKBENCH_SCORE_THRESHOLD, else 0.05);
        device: where the model runs and trains (None or "auto": the GPU when there is one)."""
        self.db = db
        self.images = ImageCache(db)
        env = os.environ.get(SCORE_THRESHOLD_VARIABLE)
        self.score_threshold = (score_threshold if score_threshold is not None
                                else float(env) if env else DEFAULT_SCORE_THRESHOLD)
        self.device = inference_device(device)  # "auto" / None: the GPU when there is one
        self.models = ModelCache(db, device=self.device, score_threshold=self.score_threshold)
        self.cost_model = payoff.CostModel()  # seconds per action the proposal thresholds are chosen for
        self.prefetcher = Prefetcher(self._prefetch_one, lambda image_id: self.should_propose(image_id, wait=False),
                                     ahead_from_environment())
        self.flights = SingleFlight()  # identical concurrent proposal runs on a photo run once

    def device_text(self) -> str:
        """Where the model runs, as people read it (e.g. "GPU (NVIDIA H200)", "CPU (2 threads)")."""
        return device_description(self.device)

    # ---- the data as the page lists it -----------------------------------------------
    def summary(self) -> queries.Summary:
        return queries.summary(self.db)

    def status_counts(self) -> dict[str, int]:
        return queries.status_counts(self.db)

    def list_images(self, status: str | None = None, limit: int | None = 1000, order: str = "upload",
                    propose_missing: int = 0) -> list[dict]:
        """Images with their counts and review status; ``status`` None or "all": every image. ``order``:
        "upload" (by id) or "most_useful": the unlabelled train photos (new or proposed) whose active-model
        proposals are least certain first (services.proposals.uncertainty of the stored proposals, each row's
        "uncertainty"), then those without proposals of the active model, then the rest by id.
        ``propose_missing``: with "most_useful", run the model (and store its proposals) on at most this many
        unlabelled train photos that have none of the active model's yet, first by id."""
        if order not in ORDERS:
            raise WorkbenchError(f"order must be one of {', '.join(ORDERS)}, not {shown(order)}")
        if status not in (None, "all", *queries.IMAGE_STATUSES):
            raise WorkbenchError(f"status must be one of all, {', '.join(queries.IMAGE_STATUSES)}, not {shown(status)}")
        budget = wire.count(propose_missing, "propose_missing", wire.MAX_LISTED)
        status = None if status in (None, "all") else status
        if order == "upload":
            return queries.list_images(self.db, limit=limit, status=status)
        rows = queries.list_images(self.db, limit=None)
        version = self.active_version_id()
        scores = queries.proposal_scores(self.db, version) if version is not None else {}
        unlabelled = [r for r in rows if r["split"] == "train" and r["status"] in ("new", "proposed")]
        missing = [r["id"] for r in unlabelled if r["id"] not in scores][:budget]
        if version is not None and missing:
            for image_id in missing:
                self.propose_if_needed(image_id)
            rows = queries.list_images(self.db, limit=None)
            scores = queries.proposal_scores(self.db, version)
            unlabelled = [r for r in rows if r["split"] == "train" and r["status"] in ("new", "proposed")]
        ranked = {r["id"]: uncertainty(scores[r["id"]]) for r in unlabelled if r["id"] in scores}
        first = sorted(ranked, key=lambda image_id: (-ranked[image_id], image_id))
        position = {image_id: index for index, image_id in enumerate(first)}
        unscored = {r["id"] for r in unlabelled} - set(ranked)
        out = sorted(rows, key=lambda r: (position.get(r["id"], len(position) + (r["id"] not in unscored)), r["id"]))
        out = [dict(r, uncertainty=ranked.get(r["id"])) for r in out if status is None or r["status"] == status]
        return out if limit is None else out[:limit]

    def image_info(self, image_id: int) -> dict:
        return queries.image_info(self.db, image_id)

    def category_names(self) -> dict[int, str]:
        return queries.category_names(self.db)

    def annotations(self, image_id: int, states: list[str] | None = None) -> tuple[int, list[dict]]:
        """(revision, rows) of an image's annotations, masks decoded (see db.annotations.get_annotations)."""
        return get_annotations(self.db, image_id, states=states)

    def annotation(self, image_id: int, ann_id: int) -> dict:
        ann_id = wire.strict_id(ann_id, "ann_id")
        rows = {r["id"]: r for r in self.annotations(image_id)[1]}
        if ann_id not in rows:
            raise WorkbenchError(f"instance #{ann_id} is gone from image {image_id}; reload the image")
        return rows[ann_id]

    @staticmethod
    def image_status(rows: list[dict]) -> str:
        """new / proposed / in review / done of an image with these annotation rows."""
        return queries.image_status(sum(r["review_state"] == "accepted" for r in rows),
                                    sum(r["review_state"] == "proposed" for r in rows),
                                    sum(r["review_state"] == "rejected" for r in rows))

    # ---- images -------------------------------------------------------------------
    def upload(self, files: list, *, names: list[str] | None = None, split: str = "train",
               progress=no_progress):
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

    def display_image(self, image_id: int) -> str:
        """The path of the image as the review canvas shows it (upright, long side at most
        services.images.DISPLAY_SIDE; masks stay at the original's full resolution)."""
        info = queries.image_info(self.db, image_id)
        return self.images.display(image_id, info["stored_path"], self.db.data_dir)

    # ---- proposals ------------------------------------------------------------------
    def propose(self, image_id: int, *, score_threshold: float | None = None, seen_revision: int | None = None,
                user: str | None = None):
        """Run the active model on the image and store its instances as proposals (after a background run on the
        same photo, services.prefetch, has finished: its proposals are then replaced, never raced)."""
        image_id = wire.strict_id(image_id, "image_id")
        self.prefetcher.wait(image_id)
        key = ("propose", image_id, str(score_threshold), seen_revision)  # the same request twice: one run
        return self.flights.run(key, lambda: self._propose(image_id, score_threshold=score_threshold,
                                                           seen_revision=seen_revision, user=user))

    def propose_if_needed(self, image_id, *, user: str | None = None):
        """Opening a photo: propose when the active model has not looked at it yet and it is not done
        (should_propose), else None. Concurrent calls for one photo (two tabs, an event sent twice) run once and
        share the result: a second run would lose its save to the first and leave a phantom conflict."""
        image_id = wire.strict_id(image_id, "image_id")
        return self.flights.run(("open", image_id), lambda: self.propose(image_id, user=user)
                                if self.should_propose(image_id) else None)

    def _propose(self, image_id: int, *, score_threshold: float | None = None, seen_revision: int | None = None,
                 user: str | None = None):
        _, image = self.rgb(image_id)
        version_id, predictions = self.models.predictions(image_id, image)
        if version_id is None:
            raise WorkbenchError("no model is trained yet: draw boxes (GrabCut makes their masks) and train one "
                                 "in the Train tab")
        threshold = (self.score_threshold if score_threshold is None or score_threshold == ""
                     else wire.fraction(score_threshold, "score_threshold"))
        return propose(self.db, image_id, None, version_id, score_threshold=threshold, seen_revision=seen_revision,
                       instances=predictions, user=user)

    def prefetch(self, image_ids) -> list[int]:
        """Propose in the background on the next photos a person will open (in their order), so that they open
        with their proposals at once; the first WORKBENCH_PREFETCH (default 2) of ``image_ids``. -> those queued."""
        ids = [wire.strict_id(i, "image_ids") for i in wire.listed(image_ids, "image_ids", item="image ids")]
        self.prefetcher.ahead(ids)
        return ids[:self.prefetcher.ahead_count]

    def _prefetch_one(self, image_id: int) -> None:
        self._propose(image_id)

    def close(self) -> None:
        """Stop the background work (the server shuts down)."""
        self.prefetcher.stop()

    def set_score_threshold(self, value) -> float:
        """The lowest score of a stored proposal (the Train tab's setting; default $WORKBENCH_SCORE_THRESHOLD
        or 0.05). Applies to the proposals made from now on."""
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise WorkbenchError(f"the score threshold must be a number between 0 and 1, not {value!r}") from None
        if not 0.0 <= value < 1.0:
            raise WorkbenchError(f"the score threshold must be between 0 and 1 (below 1), not {value}")
        self.score_threshold = value
        self.models.set_score_threshold(value)
        return value

    def should_propose(self, image_id: int, wait: bool = True) -> bool:
        """Opening an image proposes when the active model has not looked at it yet and it is not done. ``wait``:
        first let a background run on this photo finish (services.prefetch), so that it is not proposed twice."""
        if wait:
            self.prefetcher.wait(int(image_id))
        version = registry.active_version(self.db)
        if version is None:
            return False
        _, rows = get_annotations(self.db, image_id, decode_masks=False)
        if any(r["model_version_id"] == version.id for r in rows):
            return False
        reviewed = any(r["review_state"] in ("accepted", "rejected") for r in rows)
        return not reviewed

    def instances(self, image_id: int, review_threshold=None) -> dict:
        """The image's instances (masks as COCO RLE) and revision. A proposal's "shown": whether a person is shown
        it: with ``review_threshold`` None, its version's and class's policy (services.payoff: a threshold and a
        cap per photo; "policy" per class); else the threshold given (the review slider's override)."""
        revision, rows = get_annotations(self.db, image_id, decode_masks=False)
        info = queries.image_info(self.db, image_id)
        height, width = info["height"], info["width"]
        names = queries.category_names(self.db)
        shown, policies = self.shown_proposals(rows, review_threshold)
        return {"image_id": int(image_id), "revision": revision, "instances": [
            {"id": r["id"], "category_id": r["category_id"], "category": names.get(r["category_id"]),
             "score": r["score"], "box": [round(float(v), 2) for v in r["box"]],
             "mask": None if r["mask_rle"] is None else masks.rle_dict(r["mask_rle"], height, width),
             "review_state": r["review_state"], "source": r["source"], "model_version_id": r["model_version_id"],
             "iscrowd": bool(r["iscrowd"]), **({"shown": r["id"] in shown} if r["review_state"] == "proposed" else {})}
            for r in rows], "policy": policies}

    # ---- proposals that pay (services.payoff) ---------------------------------------------
    def proposal_policy(self, version_id: int) -> dict:
        """{category_id: Policy, "all": Policy} of a model version: from the photos done with it (db.fates: shown
        and hidden proposals, against the final labels) once that record is large enough, else from its val
        photos at the end of training (the version's metrics), else none (proposals hidden)."""
        version = next((v for v in registry.list_versions(self.db) if v.id == version_id), None)
        val = (version.metrics or {}).get("proposal_policy", {}) if version is not None else {}
        records = [(r["category_id"], payoff.Record(score=r["score"], rank=r["rank"], match_iou=r["match_iou"],
                                                    right_class=r["match_category_id"] == r["category_id"],
                                                    photo=r["image_id"]))
                   for r in fates.proposal_records(self.db, version_id)]
        from_record = payoff.policies(records, self.cost_model)

        def policy(key) -> payoff.Policy:
            mine = from_record.get(key, from_record["all"])
            if mine.source != "none":
                return mine
            stored = val.get(str(key)) or val.get("all")
            return payoff.Policy.from_dict(stored) if stored else payoff.NO_RECORD

        keys = set(from_record) | {int(k) for k in val if k != "all"}
        return {key: policy(key) for key in keys | {"all"}}

    def shown_proposals(self, rows: list[dict], review_threshold=None) -> tuple[set[int], dict]:
        """(ids of the proposals a person is shown, {version: {class: policy dict}}) for one photo's rows."""
        proposed = [r for r in rows if r["review_state"] == "proposed"]
        if review_threshold is not None:
            threshold = wire.fraction(review_threshold, "review_threshold")
            return {r["id"] for r in proposed if (r["score"] or 0.0) >= threshold}, {}
        shown, described = set(), {}
        for version_id in {r["model_version_id"] for r in proposed}:
            mine = [r for r in proposed if r["model_version_id"] == version_id]
            if version_id is None:  # proposals saved through the API without a version: shown
                shown.update(r["id"] for r in mine)
                continue
            policies = self.proposal_policy(version_id)
            shown |= payoff.shown_ids(mine, lambda cid: policies.get(cid, policies["all"]))
            described[str(version_id)] = {str(k): p.as_dict() for k, p in policies.items()}
        return shown, described

    # ---- editing ---------------------------------------------------------------------
    def category_id(self, value, names: dict[int, str] | None = None) -> int:
        """A class given by id, id text or name (any case); ``names`` (id -> name) saves a query per call."""
        names = queries.category_names(self.db) if names is None else names
        if isinstance(value, (int, str)) and not isinstance(value, bool):
            try:
                number = wire.strict_id(value, "a class id")  # 3 or "3"; not 3.0, True, "٣" or "1_0"
            except WorkbenchError:
                number = None  # perhaps a name; else said below with the classes there are
            if number in names:
                return number
        if isinstance(value, str):
            by_name = {n.lower(): i for i, n in names.items()}
            if value.strip().lower() in by_name:
                return by_name[value.strip().lower()]
        known = ", ".join(isolated(name) for name in list(names.values())[:20]) + (
            f" and {len(names) - 20} more" if len(names) > 20 else "")
        raise WorkbenchError(f"there is no class {shown(value, 60)}; add it in the Classes tab "
                             f"(classes: {known or 'none yet'})")

    def save_json(self, image_id: int, instances: list[dict], seen_revision: int | None, user: str | None = None,
                  tool: str | None = None) -> int:
        """The API's save: ``instances`` become the image's annotations (those with an ``id`` keep it).
        Every field is checked strictly (no silent casts): see :func:`instance_from_json`. ``tool`` (box,
        polygon, brush, grabcut, other): how a person made the new instances, recorded for "Model help"; an
        instance's own "tool" field says it for that one."""
        fates.check_tool(tool)
        if not isinstance(instances, list):
            raise WorkbenchError("instances must be a list of objects")
        info = queries.image_info(self.db, image_id)
        names = queries.category_names(self.db)
        versions = {v.id for v in registry.list_versions(self.db)}
        data = [instance_from_json(item, index, info["height"], info["width"],
                                   lambda value: self.category_id(value, names), versions)
                for index, item in enumerate(instances)]
        for item, inst in zip(instances, data):
            inst.tool = fates.check_tool(item.get("tool", tool))
        ids = [d.id for d in data if d.id is not None]
        if len(ids) != len(set(ids)):
            raise WorkbenchError(f"annotation id {next(i for i in ids if ids.count(i) > 1)} appears twice; each "
                                 "instance once")
        seen = wire.required_revision(seen_revision)
        return save_annotations(self.db, image_id, data, seen_revision=seen, user=user)

    def review(self, image_id: int, ids: list[int], state: str, seen_revision: int | None,
               user: str | None = None) -> int:
        """Accept, reject or reopen the named instances (``seen_revision`` None: the image as it is now; only the
        named instances change)."""
        if not ids:
            raise WorkbenchError("select an instance first (click it on the image or pick it in the list)")
        return set_review_state(self.db, image_id, ids, state, seen_revision=seen_revision, user=user)

    def accept_all(self, image_id: int, review_threshold: float | None, seen_revision: int | None,
                   user: str | None = None) -> tuple[int, int]:
        """Accept every proposal a person is shown: scoring at least ``review_threshold``, or with None those the
        model's policy shows (services.payoff) -> (revision, how many)."""
        revision, rows = get_annotations(self.db, image_id, states=["proposed"], decode_masks=False)
        shown, _ = self.shown_proposals(rows, review_threshold)
        ids = [r["id"] for r in rows if r["id"] in shown]
        if not ids:
            raise WorkbenchError("no proposals shown to accept" if review_threshold is None else
                                 f"no proposals with a score of at least {float(review_threshold):.2f} to accept")
        return self.review(image_id, ids, "accepted", _write_revision(seen_revision, revision), user), len(ids)

    def delete_instance(self, image_id: int, ann_id: int, seen_revision: int | None, user: str | None = None) -> int:
        revision, rows = get_annotations(self.db, image_id, decode_masks=False)
        if not any(r["id"] == ann_id for r in rows):
            raise WorkbenchError(f"annotation {ann_id} is not on image {image_id} (anymore)")
        return save_annotations(self.db, image_id, [InstanceData.from_row(r) for r in rows if r["id"] != ann_id],
                                seen_revision=_write_revision(seen_revision, revision), user=user, deletes=[ann_id])

    def undo(self, image_id: int, seen_revision: int, user: str | None = None) -> int:
        """Undo the image's newest change that is not undone yet, if the image is still at ``seen_revision``
        (the revision the person sees; otherwise a ConflictError: what someone else saved meanwhile is never
        undone unseen). What the undo replaces stays in the journal."""
        if seen_revision is None:
            raise WorkbenchError(f"undo needs the revision of the image you see: {wire.REVISION_NEEDED}")
        seen = seen_revision if isinstance(seen_revision, Seen) else wire.required_revision(seen_revision)
        return undo(self.db, image_id, seen_revision=seen, user=user)

    def record_visit(self, image_id: int, event_times: list[float], user: str | None = None) -> dict:
        """A person's visit of an image, from the client's event times in seconds (open, every edit or key,
        ..., done; any origin, e.g. performance.now() / 1000): active time is the sum of the gaps between
        consecutive events, gaps over 60 s left out as idle. -> {"image_id", "active_seconds", "idle_seconds",
        "events"}."""
        return fates.record_visit(self.db, wire.strict_id(image_id, "image_id"), event_times, user=user)

    def save_drawn_boxes(self, image_id: int, drawn: list[dict], scale: float, *, box_only: bool,
                         seen_revision: int | None, user: str | None = None) -> tuple[int, list[str]]:
        """The Draw tab's boxes become the image's accepted annotations. ``drawn``: {"xmin", "ymin", "xmax",
        "ymax", "label", "id"} in the pixels of the image shown at ``scale``; label a class name or id; id the
        accepted annotation the box was drawn from (None for a new box). A new box is added as
        :meth:`add_boxes` says; a box moved or resized gets a new mask for its new box (the model's, else
        GrabCut; none when ``box_only`` or when it had none); a box whose class changed keeps its mask; an
        accepted annotation whose box is gone is deleted. Boxes are checked and clipped to the image
        (services.wire.clipped_box). -> (revision, what happened, one text per change)."""
        revision, rows = get_annotations(self.db, image_id, decode_masks=False)
        info = queries.image_info(self.db, image_id)
        by_id = {r["id"]: r for r in rows}
        names = queries.category_names(self.db)
        kept, changed, new = set(), {}, []
        for index, box in enumerate(wire.listed(drawn, "the drawn boxes", item="boxes")):
            what = f"drawn box {index + 1}"
            if not isinstance(box, dict):
                raise WorkbenchError(f"{what} is not a box; draw it again")
            if not box.get("label"):
                raise WorkbenchError("a drawn box has no class: click it and choose its class "
                                     "(add classes in the Classes tab)")
            category_id = self.category_id(box["label"], names)
            on_screen = [wire.finite_number(box.get(key), f"{what}: {key}") for key in ("xmin", "ymin", "xmax", "ymax")]

            def full():  # a new or moved box in image pixels, checked and clipped (an untouched one stays as it is)
                return wire.clipped_box([v / scale for v in on_screen], info["width"], info["height"], what)

            row = by_id.get(box.get("id"))
            if row is None or row["review_state"] != "accepted":
                new.append((category_id, full()))
                continue
            kept.add(row["id"])
            moved = any(abs(a * scale - b) > 1.0 for a, b in zip(row["box"], on_screen))  # beyond a shown pixel
            if moved or category_id != row["category_id"]:
                changed[row["id"]] = (category_id, full() if moved else None)
        removed = {r["id"] for r in rows if r["review_state"] == "accepted"} - kept
        if not new and not changed and not removed:
            raise WorkbenchError("nothing to save: draw a box with 'Create box' (and choose its class), move or "
                                 "delete one first")
        remasked = sum(box is not None and by_id[ann_id]["mask_rle"] is not None
                       for ann_id, (_, box) in changed.items())  # moved boxes with a mask get a new one
        if not box_only:
            _check_box_count(len(new) + remasked, "new or moved in one save")
        needs_masks = bool(new) or any(box is not None for _, box in changed.values())
        masked = self._box_masks(image_id, box_only) if needs_masks else None  # no image or model for deletions

        data, said = [], []
        for row in rows:
            if row["id"] in removed:
                said.append(f"#{row['id']} deleted")
                continue
            if row["id"] not in changed:
                data.append(InstanceData.from_row(row))
                continue
            category_id, box = changed[row["id"]]
            if box is None:  # the class alone changed: the mask stays
                data.append(InstanceData.from_row(row, category_id=category_id))
                said.append(f"#{row['id']} now {isolated(names[category_id])}")
            elif row["mask_rle"] is None:
                data.append(InstanceData.from_row(row, category_id=category_id, box=box))
                said.append(f"#{row['id']} moved (box only)")
            else:
                changes, how = masked(category_id, box)
                data.append(InstanceData.from_row(row, category_id=category_id, box=box, **changes))
                said.append(f"#{row['id']} moved ({how})")
        for category_id, box in new:
            changes, how = masked(category_id, box)
            data.append(InstanceData(category_id=category_id, box=box, tool=_box_tool(changes), **changes))
            said.append(f"{isolated(names[category_id])} added ({how})")
        revision = save_annotations(self.db, image_id, data, seen_revision=_write_revision(seen_revision, revision),
                                    user=user)
        return revision, said

    def add_boxes(self, image_id: int, boxes: list[tuple[int, tuple[float, float, float, float]]], *,
                  box_only: bool, seen_revision: int | None, user: str | None = None,
                  created: list[int] | None = None) -> tuple[int, list[str]]:
        """Boxes a person drew (category id, x1 y1 x2 y2 in image pixels) become accepted annotations,
        with the active model's mask for that box and class (box-only classes included, through the
        weight transfer) or, without a model that knows the class, GrabCut. Each box is checked before any of
        them reaches the model (services.wire.clipped_box: finite, x1 < x2 and y1 < y2, at most one image size
        outside the image and overlapping it) and stored clipped to the image."""
        if not boxes:
            raise WorkbenchError("draw a box first (the 'Create box' tool), give it a class, then add it")
        _check_box_count(len(boxes), "in one call")
        info = queries.image_info(self.db, image_id)
        boxes = [(category_id, wire.clipped_box(box, info["width"], info["height"], f"box {index}"))
                 for index, (category_id, box) in enumerate(wire.listed(boxes, "boxes", item="boxes"))]
        masked = self._box_masks(image_id, box_only)
        revision, rows = get_annotations(self.db, image_id, decode_masks=False)
        new, sources = [], []
        for category_id, box in boxes:
            changes, how = masked(category_id, box)
            new.append(InstanceData(category_id=category_id, box=box, tool=_box_tool(changes), **changes))
            sources.append(how)
        revision = save_annotations(self.db, image_id, [InstanceData.from_row(r) for r in rows] + new,
                                    seen_revision=_write_revision(seen_revision, revision), user=user,
                                    created=created)
        return revision, sources

    def _box_masks(self, image_id: int, box_only: bool):
        """masked(category_id, box) -> (InstanceData fields, description) of a box a person drew on the image:
        a mask from the class's chosen start (services.box_masks: GrabCut, the active model's mask for that box
        and class, or GrabCut started from the model's soft mask; "... mask"), or no mask with ``box_only``
        ("box only")."""
        image = None if box_only else self.rgb(image_id)[1]
        version_id = None if box_only else self.models.active()[0]

        def masked(category_id: int, box) -> tuple[dict, str]:
            if box_only:
                return dict(mask=None, source="drawn", model_version_id=None, score=None), "box only"
            start = self.box_start(category_id)
            mask, used = box_masks.mask_for_box(image, box, category_id, self.models.masks_for_boxes, start)
            source = "model" if used == "model" else "grabcut"
            return (dict(mask=mask, source=source, model_version_id=version_id if used != "grabcut" else None,
                         score=None, start=used), f"{used} mask")

        return masked

    def box_start(self, category_id: int) -> str:
        """The mask start a box of this class gets (services.box_masks.choose_start): from the clicks the
        instances made from boxes needed while the active version was active, else from its val measurement."""
        version = registry.active_version(self.db)
        if version is None:
            return "grabcut"
        return box_masks.choose_start(fates.box_start_records(self.db, version.id),
                                      (version.metrics or {}).get("box_start"), int(category_id), model_knows=True)

    def keep_box(self, image_id: int, ann_id: int, seen_revision: int | None, user: str | None = None) -> int:
        """Keep a proposal's box, not its mask: it becomes an accepted instance with the same id, class and box,
        its mask made again from the box as for a box a person drew (the class's start, services.box_masks);
        its fate is "edited". Instead of reject and redraw. -> the new revision."""
        ann_id = wire.strict_id(ann_id, "ann_id")
        revision, rows = get_annotations(self.db, image_id, decode_masks=False)
        row = next((r for r in rows if r["id"] == ann_id), None)
        if row is None:
            raise WorkbenchError(f"instance #{ann_id} is gone from image {image_id}; reload the image")
        if row["review_state"] != "proposed":
            raise WorkbenchError(f"instance #{ann_id} is not a proposal (it is {row['review_state']}): keep the box "
                                 "of a proposal; refine an instance with clicks instead")
        info = queries.image_info(self.db, image_id)
        model_box = fates.given_box(self.db, image_id, ann_id) or list(row["box"])  # the model's box, not its mask's
        box = wire.clipped_box(model_box, info["width"], info["height"], "the proposal's box")
        changes, _ = self._box_masks(image_id, box_only=False)(row["category_id"], box)
        changes.pop("start", None)
        changes.pop("model_version_id", None)  # it stays the proposal's version (its fate: edited)
        data = [InstanceData.from_row(r, **changes, box=box, review_state="accepted") if r["id"] == ann_id
                else InstanceData.from_row(r) for r in rows]
        return save_annotations(self.db, image_id, data, seen_revision=_write_revision(seen_revision, revision),
                                user=user)

    def save_mask(self, image_id: int, ann_id: int | None, category, mask: np.ndarray | None,
                  seen_revision: int | None, user: str | None = None, tool: str = "brush", *,
                  counts: str | None = None, created: list[int] | None = None) -> int:
        """A mask painted by a person replaces an annotation's mask (or makes a new annotation of ``category``,
        recorded as made with ``tool``: brush, polygon, grabcut, box or other): ``mask`` an (H, W) bool array,
        or ``counts`` the compressed COCO RLE of the image's size (the review canvas encodes its masks in the
        browser; checked before it is stored)."""
        fates.check_tool(tool)
        if counts is None and (mask is None or not mask.any()):
            raise WorkbenchError("the mask is empty: paint the object with the brush first")
        drawn = dict(mask=mask) if counts is None else dict(mask_rle=counts)
        revision, rows = get_annotations(self.db, image_id, decode_masks=False)
        data = []
        found = False
        for row in rows:
            if ann_id is not None and row["id"] == ann_id:
                found = True
                data.append(InstanceData.from_row(row, **drawn, box=None, source="drawn", review_state="accepted",
                                                  score=None, model_version_id=None))
            else:
                data.append(InstanceData.from_row(row))
        if not found:
            if ann_id is not None:
                raise WorkbenchError(f"annotation {ann_id} is gone from image {image_id}; reload the image")
            data.append(InstanceData(category_id=self.category_id(category), **drawn, source="drawn", tool=tool))
        return save_annotations(self.db, image_id, data, seen_revision=_write_revision(seen_revision, revision),
                                user=user, created=created)

    def refine_with_clicks(self, image_id: int, ann_id: int, positive_points, negative_points,
                           seen_revision: int | None, user: str | None = None) -> int:
        """Correct an instance's mask with clicks: ``positive_points`` "this is object", ``negative_points``
        "this is not", each a list of (x, y) in the image's full-resolution pixels. GrabCut starts from the
        current mask (a box-only instance: its box) inside the box it was made from (the box drawn, the model's box
        of a proposal; grown only to take in positive clicks), or, for a painted or imported mask, inside its own
        box enlarged a little, the clicked pixels (small disks) as hard labels (partial_sup.grabcut.refine_mask); no model needed. The instance becomes an
        accepted GrabCut mask (a proposal refined this way counts as edited). -> the new revision."""
        info = queries.image_info(self.db, image_id)
        height, width = info["height"], info["width"]
        positive = wire.points_in_image(positive_points, width, height, "positive_points")
        negative = wire.points_in_image(negative_points, width, height, "negative_points")
        if not positive and not negative:
            raise WorkbenchError("click the instance first: a left click on what is object, a right click on what "
                                 "is not")
        ann_id = wire.strict_id(ann_id, "ann_id")
        revision, rows = get_annotations(self.db, image_id, decode_masks=False)  # the rows the save starts from
        row = next((r for r in rows if r["id"] == ann_id), None)
        if row is None:
            raise WorkbenchError(f"instance #{ann_id} is gone from image {image_id}; reload the image")
        mask = None if row["mask_rle"] is None else masks.decode(row["mask_rle"], height, width)
        if mask is None:
            x1, y1, x2, y2 = (int(round(v)) for v in row["box"])
            mask = np.zeros((height, width), bool)
            mask[max(0, y1):y2, max(0, x1):x2] = True
        given = fates.given_box(self.db, image_id, ann_id)  # the box drawn, or the model's: the limit (a mask
        # painted or imported has none: its own box grown a little, partial_sup.grabcut.refine_mask)
        limit = None if given is None else [min(given[0], row["box"][0]), min(given[1], row["box"][1]),
                                            max(given[2], row["box"][2]), max(given[3], row["box"][3])]
        refined = refine_mask(self.rgb(image_id)[1], mask, positive, negative, limit_box=limit)
        if not refined.any():
            raise WorkbenchError("the clicks leave nothing of the instance; click on the object (left click) "
                                 "or delete the instance")
        data = [InstanceData.from_row(r, mask=refined, box=None, source="grabcut", review_state="accepted",
                                      score=None, model_version_id=None) if r["id"] == row["id"]
                else InstanceData.from_row(r) for r in rows]
        revision = save_annotations(self.db, image_id, data, seen_revision=_write_revision(seen_revision, revision),
                                    user=user)
        fates.add_clicks(self.db, image_id, ann_id, len(positive) + len(negative))
        return revision

    def scissors_path(self, image_id, points, closed=False) -> dict:
        """The intelligent scissors' path through clicked points ([[x, y], ...] image pixels, 2 to
        SCISSORS_MAX_POINTS): each segment between consecutive clicks follows the image's edges (OpenCV's
        IntelligentScissorsMB); ``closed``: joined back to the first click too. Saving the polygon is a mask
        save like the polygon tool's. -> {"image_id", "path": [[x, y], ...]}."""
        image_id = wire.strict_id(image_id, "image_id")
        info = queries.image_info(self.db, image_id)
        clicked = wire.points_in_image(points, info["width"], info["height"], "points")
        if not 2 <= len(clicked) <= SCISSORS_MAX_POINTS:
            raise WorkbenchError(f"send 2 to {SCISSORS_MAX_POINTS} points for the scissors, not {len(clicked)}")
        if not isinstance(closed, bool):
            raise WorkbenchError(f"closed must be true or false, not {shown(closed)}")
        path = snap_path(self.rgb(image_id)[1], clicked + ([clicked[0]] if closed else []))
        if closed:
            path = path[:-1]  # the first click again
        return {"image_id": image_id, "path": [[round(float(x), 2), round(float(y), 2)] for x, y in path]}

    def set_category(self, image_id: int, ann_id: int, category, seen_revision: int | None,
                     user: str | None = None) -> int:
        """Give an instance another class (a proposal given a class by a person is accepted)."""
        category_id = self.category_id(category)
        revision, rows = get_annotations(self.db, image_id, decode_masks=False)
        if not any(r["id"] == ann_id for r in rows):
            raise WorkbenchError(f"annotation {ann_id} is gone from image {image_id}; reload the image")
        data = [InstanceData.from_row(r, category_id=category_id, review_state="accepted") if r["id"] == ann_id
                else InstanceData.from_row(r) for r in rows]
        return save_annotations(self.db, image_id, data, seen_revision=_write_revision(seen_revision, revision),
                                user=user)

    def apply_edits(self, image_id: int, edits, seen_revision: int | None, user: str | None = None):
        """The review canvas's batch of edits, in order (services.review.apply_edits) -> EditsResult."""
        return review.apply_edits(self, wire.strict_id(image_id, "image_id"), edits,
                                  wire.revision(seen_revision, "the revision"), user)

    def finish_image(self, image_id: int, seen_revision: int | None, user: str | None = None,
                     review_threshold=None) -> dict:
        """"Done" with an image: the proposals nobody accepted are rejected (the image counts as done); those a
        person was never shown (``review_threshold`` None: the model's policy; else under that threshold) get the
        fate hidden, not rejected, and every proposal of the image is scored against the final labels
        (db.fates.record_done: the record that chooses the thresholds). -> {"revision", "rejected", "hidden"}."""
        revision, rows = get_annotations(self.db, image_id, decode_masks=False)
        proposed = [r for r in rows if r["review_state"] == "proposed"]
        shown, _ = self.shown_proposals(proposed, review_threshold)
        hidden = [r["id"] for r in proposed if r["id"] not in shown]
        if proposed:
            revision = set_review_state(self.db, image_id, [r["id"] for r in proposed], "rejected",
                                        seen_revision=_write_revision(seen_revision, revision), user=user,
                                        hidden=hidden, done=True)
        else:
            _write_revision(seen_revision, revision)
            fates.mark_done(self.db, image_id)
        return {"revision": revision, "rejected": len(proposed) - len(hidden), "hidden": len(hidden)}

    def conflicts(self, image_id: int, user: str | None = None) -> list[int]:
        """The lost versions of ``user`` on this image not recovered yet (journal entry ids, newest first): edits
        refused because someone else changed the same instances first."""
        return [entry.id for entry in conflict_versions(self.db, image_id, user)]

    def recover_conflict(self, image_id: int, seen_revision: int | None, user: str | None = None) -> int:
        """Put the caller's newest lost version back onto the instances it conflicted with (db.annotations.
        recover_lost); ``seen_revision`` None: the image as it is now."""
        revision = get_annotations(self.db, image_id, decode_masks=False)[0]
        return recover_lost(self.db, image_id, seen_revision=_write_revision(seen_revision, revision), user=user)

    # ---- training -------------------------------------------------------------------
    def start_training(self, mode: str = "heads", iterations=None, image_size=None, backbone_weights=None) -> int:
        """Start a training run in its own process; iterations and image size empty or 0: the mode's preset
        (the training process picks the preset's iterations for the device it finds). ``backbone_weights``
        from a client: empty (the server's default), "none", or a file in ``<data dir>/weights/``
        (services.wire.backbone_weights)."""
        mode = _mode_name(mode)
        iterations = wire.count(iterations, "iterations", MAX_ITERATIONS) or None
        image_size = wire.count(image_size, "image_size", MAX_IMAGE_SIZE) or None
        weights = wire.backbone_weights(backbone_weights, self.db.data_dir, default_backbone_weights())
        spec = TrainingSpec(mode=mode, iterations=iterations, image_size=image_size, backbone_weights=weights,
                            device=self.device, low_priority=True)
        return training.start_training(self.db, spec)  # one run at a time: refused while another is active

    def cancel_training(self, run_id: int) -> None:
        training.cancel_training(self.db, run_id)

    def run_state(self, run_id: int) -> RunState:
        return training.run_state(self.db, run_id)

    def latest_run(self, active_only: bool = False) -> int | None:
        return queries.latest_run(self.db, active_only=active_only)

    def training_estimate(self, mode: str = "heads", iterations=None, image_size=None) -> str:
        """How long a run will take, said before it starts: from the pace of this machine's last finished run
        of the mode when there is one, else from the preset's measured time on a 2-core CPU."""
        mode = _mode_name(mode)
        try:
            iterations = wire.count(iterations, "iterations", MAX_ITERATIONS)
            size = wire.count(image_size, "image_size", MAX_IMAGE_SIZE)
        except WorkbenchError:
            return ""  # start_training says what is wrong
        if not isinstance(mode, str) or mode not in PRESETS:
            return ""
        preset = PRESETS[mode]
        on_gpu = self.device.startswith("cuda")  # where this workbench's runs train
        iterations = iterations or preset.iterations_on("cuda" if on_gpu else "cpu")
        size = size or preset.image_size
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

    def wait_for_run(self, run_id: int, on_progress=None, poll: float = 1.0) -> RunState:
        while True:
            state = training.run_state(self.db, run_id)
            if on_progress is not None:
                on_progress(state)
            if state.finished:
                return state
            time.sleep(poll)

    # ---- model versions ----------------------------------------------------------------
    def versions(self) -> list[VersionInfo]:
        return [VersionInfo(id=v.id, name=v.name, is_active=v.is_active, created_at=v.created_at,
                            metrics=dict(v.metrics or {}), metric_texts=version_metrics(v.metrics),
                            policy_text=self.policy_text(v.id),
                            checkpoint=v.checkpoint_path, training_run_id=v.training_run_id)
                for v in registry.list_versions(self.db)]

    def policy_text(self, version_id: int) -> str:
        """Whether a version's proposals pay, overall and per class (the versions table)."""
        policies = self.proposal_policy(version_id)
        names = queries.category_names(self.db)
        text = payoff.describe(policies["all"])
        per_class = [f"{names.get(k, k)}: {payoff.describe(p)}" for k, p in sorted(
            ((k, p) for k, p in policies.items() if k != "all"), key=lambda item: str(item[0]))
            if p != policies["all"]]
        return "; ".join([text, *per_class])

    def active_version_id(self) -> int | None:
        version = registry.active_version(self.db)
        return None if version is None else version.id

    def model_help(self) -> dict[str, list[dict]]:
        """How much each model version helped (services.model_help): {"versions": [...], "classes": [...]},
        each row a dict of services.model_help.COLUMNS plus "version_id"."""
        names = {v.id: f"v{v.id} {v.name}".strip() for v in registry.list_versions(self.db)}
        return model_help(self.db, queries.category_names(self.db), names)

    def activate_version(self, version_id: int) -> None:
        registry.activate_version(self.db, wire.strict_id(version_id, "the model version"))
        self.prefetcher.clear()

    def version_info(self, version_id: int | None) -> dict | None:
        for v in self.versions():
            if v.id == version_id:
                return {"version_id": v.id, "name": v.name, "metrics": v.metrics, "active": v.is_active,
                        "checkpoint": v.checkpoint, "created_at": v.created_at.isoformat()}
        return None

    # ---- classes ---------------------------------------------------------------------
    def add_category(self, name: str) -> int:
        return categories.add_category(self.db, name)

    def rename_category(self, category_id: int, name: str) -> None:
        categories.rename_category(self.db, wire.strict_id(category_id, "the class id"), name)

    def merge_categories(self, source_id: int, target_id: int, user: str | None = None) -> int:
        return categories.merge_categories(self.db, wire.strict_id(source_id, "the class id"),
                                           wire.strict_id(target_id, "the class id to merge into"), user=user)

    def delete_category(self, category_id: int, delete_annotations: bool = False) -> int:
        return categories.delete_category(self.db, wire.strict_id(category_id, "the class id"),
                                          delete_annotations=delete_annotations)

    # ---- export and files ------------------------------------------------------------
    def clean_up_leftovers(self) -> housekeeping.Cleanup:
        """What a killed process left in the data folder (unfinished temporary files of exports, checkpoints and
        images; image files without an image row), removed: for a server about to serve (db.housekeeping)."""
        return housekeeping.clean_start(self.db)

    def exports_folder(self) -> Path:
        """Where exports are written (served to the page as they are, never copied: app.ui)."""
        folder = self.db.data_dir / "exports"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def served_folders(self) -> list[str]:
        """The only folders whose files the server hands out (exports, thumbnails, display copies): not the database,
        the stored images or the checkpoints."""
        folders = [self.db.data_dir / "exports", self.db.data_dir / "thumbs", self.db.data_dir / "display"]
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
        return [str(folder) for folder in folders]

    def export(self, mask_format: str = "polygon", images: str = "all", progress: Progress = no_progress):
        """A COCO file of all or the reviewed images in exports/ -> (its path, db.coco_export.ExportReport);
        then only the newest $WORKBENCH_KEEP_EXPORTS exports (default 5) stay there (services.limits)."""
        if not isinstance(mask_format or "", str) or not isinstance(images or "", str):
            raise WorkbenchError(f"mask_format must be one of {', '.join(MASK_FORMATS)} and images 'all' or "
                                 f"'reviewed', not {shown(mask_format)} and {shown(images)}")
        mask_format = (mask_format or "polygon").strip().lower()
        which = (images or "all").strip().lower()
        if which not in ("all", "reviewed"):
            raise WorkbenchError(f"images must be 'all' or 'reviewed', not {images!r}")
        if mask_format not in MASK_FORMATS:  # before it becomes part of a file name
            raise WorkbenchError(f"mask format {mask_format!r} is not one of {', '.join(MASK_FORMATS)}")
        keep = keep_exports()  # a bad $WORKBENCH_KEEP_EXPORTS stops before the work
        ids = queries.reviewed_image_ids(self.db) if which == "reviewed" else None
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
        out = self.exports_folder() / f"coco-{which}-{mask_format}-{stamp}.json"  # db.housekeeping.EXPORT_NAME
        report = export_coco(self.db, out, mask_format=mask_format, progress=progress, image_ids=ids)
        housekeeping.prune_exports(out.parent, keep)  # the retention rule: the newest exports stay
        return Path(out), report


__all__ = ["Workbench", "WorkbenchError", "shown", "isolated", "ConflictError", "PRESETS", "MAX_UPLOAD_BYTES",
           "MAX_BOXES", "MAX_EDITS", "VERSION_METRIC_COLUMNS", "LOW_CONFIDENCE_TOP", "RunState", "VersionInfo",
           "default_backbone_weights", "limits_text", "write_concurrency"]
