"""Predictions with a model version: COCO results files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from db import registry
from db.coco_export import write_json_atomic
from db.coco_import import Progress, _no_progress
from db.engine import Database
from db.errors import BadImageError, WorkbenchError
from db.imagestore import load_rgb
from mnc_core import Instance, Predictor
from partial_sup import maskx


def load_predictor(db: Database, checkpoint: str | Path | None = None, device: str | None = None) -> Predictor:
    path = Path(checkpoint) if checkpoint is not None else registry.active_checkpoint(db)
    if not path.is_file():
        raise WorkbenchError(f"checkpoint {path} does not exist")
    try:
        return maskx.load_predictor(path, device=device)
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
                  progress: Progress = _no_progress) -> str:
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
    return f"{len(results)} instances on {len(paths)} images written to {out}"
