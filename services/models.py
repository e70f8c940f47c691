"""The model in use: one Predictor for the active model version (reloaded when it changes), inference on
images of any size (downscaled for the model, masks at full size), and COCO results files."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from db import registry
from db.coco_export import write_json_atomic
from db.progress import Progress, no_progress
from db.engine import Database
from db.errors import BadImageError, WorkbenchError
from db.imagestore import load_rgb
from mnc_core import Instance, Predictor
from partial_sup.maskx import predictor_from_file
from services.images import downscale, scale_for, upscale_mask
from services.proposals import LOW_CONFIDENCE_FLOOR, LOW_CONFIDENCE_TOP


def inference_device(device: str | None = None) -> str:
    """The device the model runs on: ``device`` None or "auto": "cuda" when a GPU is visible, else "cpu";
    "cpu", "cuda" or "cuda:N" as asked, refused with a clear message when that GPU is not there."""
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        wanted = torch.device(device)
    except RuntimeError:
        raise WorkbenchError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N") from None
    if wanted.type == "cuda":
        if not torch.cuda.is_available():
            raise WorkbenchError(f"device {device}: no CUDA GPU is visible to this process; use auto or cpu")
        if wanted.index is not None and wanted.index >= torch.cuda.device_count():
            raise WorkbenchError(f"device {device}: this machine has {torch.cuda.device_count()} GPU(s)")
    elif wanted.type != "cpu":
        raise WorkbenchError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N")
    return str(wanted)


def device_description(device: str) -> str:
    """What people read: "GPU (NVIDIA H200)" or "CPU (2 threads)"."""
    import torch

    if device.startswith("cuda"):
        return f"GPU ({torch.cuda.get_device_name(torch.device(device))})"
    return f"CPU ({torch.get_num_threads()} threads)"


def load_predictor(db: Database, checkpoint: str | Path | None = None, device: str | None = None) -> Predictor:
    path = Path(checkpoint) if checkpoint is not None else registry.active_checkpoint(db)
    if not path.is_file():
        raise WorkbenchError(f"checkpoint {path} does not exist")
    try:
        return predictor_from_file(path, device=inference_device(device))
    except (ValueError, RuntimeError) as exc:
        raise WorkbenchError(f"checkpoint {path} cannot be loaded: {exc}") from None


def instance_to_result(instance: Instance, image_id: int) -> dict:
    rle = mask_utils.encode(np.asfortranarray(instance.mask.astype(np.uint8)))
    x1, y1, x2, y2 = (float(v) for v in instance.box)
    return {"image_id": image_id, "category_id": int(instance.category_id), "score": round(float(instance.score), 5),
            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
            "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}}


def read_image(path: Path) -> np.ndarray:
    try:
        return load_rgb(path)
    except FileNotFoundError:
        raise WorkbenchError(f"image {path} does not exist") from None
    except OSError as exc:
        raise BadImageError(f"{path}: not a readable image ({exc})") from None


def predict_files(db: Database, images: list[Path], out: Path, *, checkpoint: Path | None = None,
                  device: str | None = None, score_threshold: float | None = None,
                  progress: Progress = no_progress) -> str:
    """COCO results (RLE masks) for image files; image ids number the files 1..N in the given order,
    and each result carries the file's name relative to the files' common folder."""
    predictor = load_predictor(db, checkpoint, device)
    paths = [Path(p) for p in images]
    common = Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))
    results = []
    for image_id, path in enumerate(progress(paths, len(paths), "images"), start=1):
        file_name = str(path.resolve().relative_to(common))
        for instance in predictor(read_image(path), score_threshold=score_threshold):
            results.append(dict(instance_to_result(instance, image_id), file_name=file_name))
    write_json_atomic(results, Path(out))
    return (f"{len(results)} instances on {len(paths)} images written to {out} "
            f"(model on {device_description(str(predictor.device))})")


PREDICT_MAX_SIDE = 1600  # larger images are downscaled before the model sees them (it resizes to <= 1000 anyway)
FULL_MASK_BUDGET = 1_500_000_000  # bytes of full-size masks one image's proposals may take at once


class ScaledInstance:
    """A prediction made on a downscaled image, in the original image's pixels (the mask is
    upscaled when it is read, so that only the masks in use are full-size)."""

    def __init__(self, instance, scale: float, shape: tuple[int, int]):
        self.category_id, self.score = instance.category_id, instance.score
        self.box = tuple(float(v) / scale for v in instance.box)
        self._small, self._shape = instance.mask, shape

    @property
    def mask(self) -> np.ndarray:
        return upscale_mask(np.asarray(self._small, bool), self._shape)


def predict_scaled(predictor, image: np.ndarray, score_threshold: float, max_side: int = PREDICT_MAX_SIDE) -> list:
    """The predictor's instances on an image of any size: large images are downscaled for the
    model, and only as many instances are kept as full-size masks fit in FULL_MASK_BUDGET."""
    height, width = image.shape[:2]
    scale = scale_for(height, width, max_side)
    if scale >= 1.0:
        return predictor(image, score_threshold=score_threshold)
    small = predictor(downscale(image, scale), score_threshold=score_threshold)
    keep = max(5, FULL_MASK_BUDGET // (height * width))
    return [ScaledInstance(inst, scale, (height, width)) for inst in small[:keep]]


class ModelCache:
    """One Predictor for the active model version, reloaded when the active version changes;
    predictions of the last few images are kept (proposals and masks for drawn boxes reuse them)."""

    def __init__(self, db: Database, device: str | None = None, keep: int = 4, score_threshold: float = 0.0):
        """score_threshold: the lowest score any caller keeps (the workbench's, for stored proposals): candidates
        below it are dropped by the model itself, which then skips their final (Mask^X) masks. When no
        instance of an image reaches it, the model runs again down to LOW_CONFIDENCE_FLOOR and its best
        LOW_CONFIDENCE_TOP guesses are returned (see services.proposals)."""
        self.score_threshold = float(score_threshold)
        self.db = db
        self.device = device
        self.keep = keep
        self._lock = threading.RLock()
        self._version_id: int | None = None
        self._predictor = None
        self._predictions: OrderedDict[tuple[int, int], list] = OrderedDict()

    def set_score_threshold(self, score_threshold: float) -> None:
        """A new lowest score to keep: predictions made at the old one are dropped."""
        with self._lock:
            self.score_threshold = float(score_threshold)
            self._predictions.clear()

    def active(self):
        """(version id, Predictor) of the active model version, or (None, None) when there is none."""
        version = registry.active_version(self.db)
        if version is None:
            return None, None
        with self._lock:
            if self._version_id != version.id or self._predictor is None:
                self._predictor = load_predictor(self.db, registry.checkpoint_path(self.db, version), self.device)
                self._version_id = version.id
                self._predictions.clear()
            return self._version_id, self._predictor

    def masks_for_boxes(self, image: np.ndarray, boxes: list, category_ids: list[int],
                        soft: bool = False) -> list[np.ndarray] | None:
        """The active model's masks for exactly these boxes and classes (None without a model; large
        images are downscaled for the model and the masks upscaled back). Raises ValueError for a
        class the model does not know. ``soft``: probabilities (float32, full resolution) instead."""
        _, predictor = self.active()
        if predictor is None:
            return None
        height, width = image.shape[:2]
        scale = scale_for(height, width, PREDICT_MAX_SIDE)
        if scale >= 1.0:
            return predictor.masks_for_boxes(image, boxes, category_ids, soft=soft)
        small_boxes = [tuple(float(v) * scale for v in box) for box in boxes]
        small = predictor.masks_for_boxes(downscale(image, scale), small_boxes, category_ids, soft=soft)
        if soft:
            import cv2

            return [cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR) for m in small]
        return [upscale_mask(m, (height, width)) for m in small]

    def predictions(self, image_id: int, image: np.ndarray) -> tuple[int | None, list]:
        version_id, predictor = self.active()
        if predictor is None:
            return None, []
        key = (version_id, int(image_id))
        with self._lock:
            if key in self._predictions:
                self._predictions.move_to_end(key)
                return version_id, self._predictions[key]
            result = predict_scaled(predictor, image, self.score_threshold)
            if not result and self.score_threshold > LOW_CONFIDENCE_FLOOR:  # a young model: its best guesses
                result = predict_scaled(predictor, image, LOW_CONFIDENCE_FLOOR)[:LOW_CONFIDENCE_TOP]
            self._predictions[key] = result
            while len(self._predictions) > self.keep:
                self._predictions.popitem(last=False)
            return version_id, result
