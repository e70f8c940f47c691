"""Helpers of the app tests (no tests here): a tiny real model made once per test session."""

from __future__ import annotations

import contextlib

import shutil
import socket
from pathlib import Path

CATEGORIES = [(3, "car"), (7, "ball"), (12, "sign")]  # the categories of conftest.make_synthetic_coco


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_checkpoint(cache_dir: Path) -> Path:
    """A real MNC checkpoint of the synthetic COCO classes, trained for 1 iteration on 64 px images
    (made once and cached in ``cache_dir``: about 20 s on 2 cores)."""
    path = Path(cache_dir) / "tiny-mnc.pt"
    if path.is_file():
        return path
    import numpy as np

    from mnc_core import MNCConfig, Sample, save_checkpoint, train_model

    class Shapes:
        categories = CATEGORIES

        def __len__(self):
            return 2

        def __getitem__(self, index):
            image = np.full((64, 80, 3), 40, np.uint8)
            mask = np.zeros((3, 64, 80), bool)
            mask[0, 8:30, 8:40] = True
            mask[1, 35:60, 45:75] = True
            mask[2, 5:20, 50:70] = True
            image[mask[0]] = (220, 40, 40)
            image[mask[1]] = (40, 220, 40)
            image[mask[2]] = (40, 40, 220)
            boxes = np.array([[8, 8, 40, 30], [45, 35, 75, 60], [50, 5, 70, 20]], np.float32)
            return Sample(image=image, boxes=boxes, category_ids=np.array([3, 7, 12]), masks=mask,
                          has_mask=np.array([True, True, False]), image_id=index + 1)

    config = MNCConfig(min_size=64, max_size=96)
    model, _ = train_model(Shapes(), config, iterations=1, device="cpu", backbone_weights="none", lr=1e-3)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.pt")
    save_checkpoint(tmp, model, config, CATEGORIES)
    tmp.replace(path)
    return path


def register_tiny_model(db, cache_dir: Path) -> int:
    """Copy the tiny checkpoint into the database's models folder and make it the active version."""
    from db import registry

    target = registry.models_dir(db) / "tiny.pt"
    shutil.copyfile(tiny_checkpoint(cache_dir), target)
    return registry.register_version(db, target, name="tiny test model", config={}, metrics={"final_loss": 1.0})


@contextlib.contextmanager
def served_workbench(tmp_path_factory, db_backend: str, name: str, **launch_kwargs):
    """A workbench served on a free loopback port over the synthetic COCO set and a tiny registered model
    (database of ``db_backend``) -> {"url", "db", "root", "version"}; closed afterwards."""
    from app.ui import launch_app
    from conftest import make_synthetic_coco, new_database_url
    from db.coco_import import import_coco
    from db.engine import open_database

    root = tmp_path_factory.mktemp(name)
    coco = make_synthetic_coco(root / "coco")
    with new_database_url(db_backend, root / "data") as url:
        db = open_database(root / "data", url)
        import_coco(db, coco, coco.parent / "images")
        version = register_tiny_model(db, tmp_path_factory.getbasetemp())
        port = free_port()
        demo = launch_app(db, "127.0.0.1", port, block=False, score_threshold=0.0, **launch_kwargs)
        try:
            yield {"url": f"http://127.0.0.1:{port}/", "db": db, "root": root, "version": version}
        finally:
            demo.close()
            db.close()
