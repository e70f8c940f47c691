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
from db.annotations import ConflictError, get_annotations
from db.coco_export import MASK_FORMATS, export_coco
from db.engine import Database
from db.errors import WorkbenchError, isolated, shown
from db.models import ReviewState, Source
from db.progress import Progress, no_progress
from db.uploads import MAX_UPLOAD_BYTES, add_images
from services import payoff, training, wire
from services.editing import MAX_EDITS, Editor
from services.images import ImageCache
from services.limits import describe as limits_text, keep_exports, write_concurrency
from services.model_help import model_help
from services.models import ModelCache, device_description, inference_device
from services.presets import PRESETS, TrainingSpec
from services.prefetch import Prefetcher, ahead_from_environment
from services.scissors import MAX_POINTS as SCISSORS_MAX_POINTS, snap_path
from services.singleflight import SingleFlight
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


def _mode_name(mode):
    """A training mode from a client: empty -> "heads", a text stripped and in lower case; anything else as it
    came (TrainingSpec refuses it with the modes there are)."""
    if mode is None or mode == "":
        return "heads"
    return mode.strip().lower() if isinstance(mode, str) else mode


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
        self.editor = Editor(db, rgb=self.rgb, models=self.models, shown_proposals=self.shown_proposals,
                             propose=self.propose)  # every annotation edit (services.editing)

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

    # ---- visits and tools (the edits themselves: self.editor, services.editing) -------------
    def record_visit(self, image_id: int, event_times: list[float], user: str | None = None) -> dict:
        """A person's visit of an image, from the client's event times in seconds (open, every edit or key,
        ..., done; any origin, e.g. performance.now() / 1000): active time is the sum of the gaps between
        consecutive events, gaps over 60 s left out as idle. -> {"image_id", "active_seconds", "idle_seconds",
        "events"}."""
        return fates.record_visit(self.db, wire.strict_id(image_id, "image_id"), event_times, user=user)

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
        """How long a run will take, said before it starts: from this machine's measured pace, i.e. its last
        finished run of the mode (seconds per iteration, scaled by the pixels of the image size asked for). Before
        any run of the mode has finished here, no time is announced: the run's progress shows the time left from
        the pace of its first iterations."""
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
        said = f"**{mode}**: {iterations} iterations at {size} px"
        pace = queries.last_training_pace(self.db, mode)
        if pace is None:
            return (f"{said}. No {mode} run has finished on this machine yet: once it runs, its progress shows the "
                    "time left from the pace of its first iterations.")
        seconds_per_iteration, run_size = pace
        seconds = seconds_per_iteration * iterations * ((size / run_size) ** 2 if run_size else 1.0)
        minutes = max(1, round(seconds / 60))
        return f"{said}: about **{minutes} min** (at the pace of this machine's last {mode} run)."

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
