"""Datasets that feed mnc_core: the workbench database, and a COCO file with its images."""

from __future__ import annotations

from functools import partial

import numpy as np

from db import masks
from db.dataset import ImageRecord, training_records
from db.engine import Database
from db.errors import WorkbenchError
from db.imagestore import load_rgb
from mnc_core import Sample


def record_to_sample(record: ImageRecord, image: np.ndarray | None = None) -> Sample:
    image = load_rgb(record.path) if image is None else image
    height, width = image.shape[:2]
    if (height, width) != (record.height, record.width):
        raise WorkbenchError(f"image {record.image_id}: the file is {width}x{height} but the database says "
                             f"{record.width}x{record.height}")
    return Sample.from_instances(image, [
        (inst.bbox, inst.category_id,
         None if inst.mask_rle is None else partial(masks.decode, inst.mask_rle, height, width))
        for inst in record.instances], record.image_id)


class DatabaseDataset:
    """The accepted annotations of one split of the database (mnc_core's InstanceDataset).

    Decoded images are cached in memory (uint8) because training revisits them every epoch.
    """

    def __init__(self, db: Database, split: str = "train", cache_images: bool = True):
        self.records, self.categories = training_records(db, split)
        if not self.records:
            raise WorkbenchError(f"the {split} split has no accepted annotations to train on: import a COCO file "
                                 "(`launch.py import-coco`) or annotate images first")
        self._cache: dict[int, np.ndarray] | None = {} if cache_images else None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        image = None
        if self._cache is not None:
            image = self._cache.get(index)
            if image is None:
                image = self._cache[index] = load_rgb(record.path)
        return record_to_sample(record, image)
