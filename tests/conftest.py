"""Shared fixtures: synthetic COCO data made in code, and the optional ../shared data."""

from __future__ import annotations

import contextlib
import io
import json
import os
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# no background proposals on the next photos (services.prefetch) unless a test asks for them: they would change
# the statuses and fates other tests check, at moments of their own
os.environ.setdefault("WORKBENCH_PREFETCH", "0")

SHARED = ROOT.parent / "shared"
COCO_SUBSET = SHARED / "data" / "coco_subset"
MOBILENET_WEIGHTS = SHARED / "weights" / "mobilenet_v2-b0353104.pth"


@pytest.fixture
def coco_subset() -> Path:
    if not (COCO_SUBSET / "train.json").is_file():
        pytest.skip(f"real COCO subset not found at {COCO_SUBSET} (only in the development checkout's ../shared)")
    return COCO_SUBSET


def _jpeg_bytes(array: np.ndarray, exif_orientation: int | None = None) -> bytes:
    image = Image.fromarray(array)
    buffer = io.BytesIO()
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.save(buffer, format="JPEG", quality=90, exif=exif)
    else:
        image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def make_synthetic_coco(folder: Path, n_images: int = 4, seed: int = 0) -> Path:
    """A small COCO dataset in ``folder``: JPEG images (one EXIF-rotated, one in a sub-folder),
    multi-part polygons, compressed and uncompressed RLE with holes, a crowd and box-only
    annotations. Returns the annotations file's path."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    (folder / "images" / "sub").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    categories = [{"id": 3, "name": "car", "supercategory": "vehicle"},
                  {"id": 7, "name": "ball", "supercategory": "thing"},
                  {"id": 12, "name": "sign", "supercategory": "thing"}]
    ann_id = 100
    for index in range(n_images):
        height, width = 48 + 8 * index, 64
        pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        name = f"sub/img_{index}.jpg" if index == 1 else f"img_{index}.jpg"
        orientation = 6 if index == 2 else None  # stored landscape, shown portrait
        stored = pixels if orientation is None else np.ascontiguousarray(np.rot90(pixels, 1))
        (folder / "images" / name).write_bytes(_jpeg_bytes(stored, orientation))
        if orientation in (5, 6, 7, 8):
            height, width = stored.shape[1], stored.shape[0]
        images.append({"id": index + 1, "file_name": name, "width": width, "height": height})
        # polygon object with two parts
        annotations.append({"id": ann_id, "image_id": index + 1, "category_id": 3, "iscrowd": 0,
                            "segmentation": [[2, 2, 20, 2, 20, 15, 2, 15], [25, 5, 35, 5, 30, 14]],
                            "bbox": [2, 2, 33, 13], "area": 0})
        ann_id += 1
        # compressed RLE with a hole
        ring = np.zeros((height, width), np.uint8)
        ring[20:40, 30:55] = 1
        ring[26:32, 38:46] = 0
        rle = mask_utils.encode(np.asfortranarray(ring))
        annotations.append({"id": ann_id, "image_id": index + 1, "category_id": 7, "iscrowd": 0,
                            "segmentation": {"size": [height, width], "counts": rle["counts"].decode()},
                            "bbox": [30, 20, 25, 20], "area": 0})
        ann_id += 1
        # box-only annotation of a class that never gets masks
        annotations.append({"id": ann_id, "image_id": index + 1, "category_id": 12, "iscrowd": 0,
                            "segmentation": [], "bbox": [5.5, 30.25, 12, 10], "area": 120})
        ann_id += 1
        if index == 0:  # an uncompressed-RLE crowd region
            crowd = np.zeros((height, width), np.uint8)
            crowd[40:46, 0:20] = 1
            flat = crowd.flatten(order="F")
            counts, value, run = [], 0, 0
            for pixel in flat:
                if pixel != value:
                    counts.append(run)
                    value, run = pixel, 0
                run += 1
            counts.append(run)
            annotations.append({"id": ann_id, "image_id": 1, "category_id": 3, "iscrowd": 1,
                                "segmentation": {"size": [height, width], "counts": [int(c) for c in counts]},
                                "bbox": [0, 40, 20, 6], "area": 120})
            ann_id += 1
    path = folder / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


@pytest.fixture
def synthetic_coco(tmp_path) -> Path:
    return make_synthetic_coco(tmp_path / "coco")


# ---------------------------------------------------------------- database backends
# Every test that uses `database` (or `database_url`) runs on SQLite and on PostgreSQL; a test
# (or module, through `pytestmark`) marked `@pytest.mark.backends("sqlite")` runs on those named only.
# The PostgreSQL runs need a server: its URL in WORKBENCH_TEST_POSTGRES_URL (a role that may
# CREATE DATABASE; `.ci/postgres start DIR` starts a throwaway one), otherwise they are skipped.

POSTGRES_URL_VARIABLE = "WORKBENCH_TEST_POSTGRES_URL"
BACKENDS = ("sqlite", "postgresql")


def pytest_configure(config):
    config.addinivalue_line("markers", "backends(*names): the database backends (sqlite, postgresql) that a "
                                       "test using the `database` fixture runs on; default: all")


def pytest_generate_tests(metafunc):
    if "db_backend" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("backends")
        metafunc.parametrize("db_backend", marker.args if marker else BACKENDS, indirect=True)


@pytest.fixture(scope="module")
def db_backend(request) -> str:
    """The database backend of this test: "sqlite" or "postgresql" (parametrised above)."""
    return getattr(request, "param", "sqlite")


@contextlib.contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new, empty database on the test server (its URL); dropped afterwards, connections or not."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    from db.engine import normalise_url

    server_url = os.environ.get(POSTGRES_URL_VARIABLE)
    if not server_url:
        pytest.skip(f"PostgreSQL test: no server given; set {POSTGRES_URL_VARIABLE}=postgresql://USER@HOST:PORT/DB "
                    f"(a role that may CREATE DATABASE), e.g. from `.ci/postgres start DIR`")
    server = make_url(normalise_url(server_url))
    name = f"workbench_test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def new_database_url(backend: str, data_dir: Path) -> Iterator[str]:
    """The URL of a new, empty database: SQLite (its file in ``data_dir``) or PostgreSQL."""
    if backend == "sqlite":
        from db.engine import default_url

        data_dir.mkdir(parents=True, exist_ok=True)
        yield default_url(data_dir)
    else:
        with fresh_postgres_database() as url:
            yield url


@pytest.fixture
def database_url(db_backend, tmp_path) -> Iterator[str]:
    """The URL of a new, empty database of this test's backend (SQLite: a file in tmp_path/data)."""
    with new_database_url(db_backend, tmp_path / "data") as url:
        yield url


@pytest.fixture
def database(tmp_path, database_url):
    """An open, migrated workbench database (data folder tmp_path/data) on this test's backend."""
    from db.engine import open_database

    db = open_database(tmp_path / "data", database_url)
    yield db
    db.close()
