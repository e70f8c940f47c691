"""The workbench database as a dataset that feeds mnc_core (its InstanceDataset)."""

from __future__ import annotations

import os
from functools import partial

import numpy as np

from db import masks
from db.dataset import ImageRecord, TrainingSnapshot, image_record, training_snapshot
from db.engine import Database, open_database
from db.errors import WorkbenchError
from db.imagestore import load_rgb
from mnc_core import Sample
from mnc_core.cache import ByteBoundedLRU

DEFAULT_IMAGE_CACHE_BYTES = 256 * 2**20  # decoded images kept per process (training revisits them every epoch)


def record_to_sample(record: ImageRecord, image: np.ndarray | None = None) -> Sample:
    image = load_rgb(record.path) if image is None else image
    height, width = image.shape[:2]
    if (height, width) != (record.height, record.width):
        raise WorkbenchError(f"image {record.image_id}: the file is {width}x{height} but the database says "
                             f"{record.width}x{record.height}")
    return Sample.from_instances(image, [
        (inst.bbox, inst.category_id,
         None if inst.mask_rle is None else partial(masks.decode, inst.mask_rle, height, width), inst.iscrowd)
        for inst in record.instances], record.image_id)


class DatabaseDataset:
    """The accepted annotations of one split of the database (mnc_core's InstanceDataset), as they were when
    it was made: a :class:`~db.dataset.TrainingSnapshot` fixes the images, the classes and the annotations
    (by id), so that people can go on labelling, add classes included, while a run trains on it.

    It holds only ids; each item reads its image's annotations from the database when asked, keeping
    those of the snapshot, through a connection of the process that asks (a DataLoader worker opens its
    own: connections must not cross a fork; it gets the same snapshot with the dataset), and decodes the
    image file. Decoded images are kept in a
    least-recently-used cache of at most ``cache_bytes`` per process, so memory stays flat whatever
    the number of images. Crowd regions come with their image as regions to ignore."""

    def __init__(self, db: Database, split: str = "train", cache_bytes: int = DEFAULT_IMAGE_CACHE_BYTES):
        self.snapshot: TrainingSnapshot = training_snapshot(db, split)
        self.image_ids, self.categories = self.snapshot.image_ids, self.snapshot.categories
        if not self.image_ids:
            raise WorkbenchError(f"the {split} split has no accepted annotations to train on: import a COCO file "
                                 "(`launch.py import-coco`) or annotate images first")
        self.split = split
        self._url, self._data_dir = db.url, db.data_dir
        self._db, self._pid = db, os.getpid()
        self._images: ByteBoundedLRU[np.ndarray] = ByteBoundedLRU(cache_bytes)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getstate__(self) -> dict:  # a worker started by spawn gets no open database
        return dict(self.__dict__, _db=None, _pid=None)

    def database(self) -> Database:
        """This process's connection to the database (opened on first use in a new process)."""
        if self._pid != os.getpid() or self._db is None:
            if self._db is not None:  # inherited through fork: leave the parent's connections alone
                self._db.engine.dispose(close=False)
            self._db, self._pid = open_database(self._data_dir, self._url, migrate=False), os.getpid()
            self._images = ByteBoundedLRU(self._images.max_bytes)
        return self._db

    def __getitem__(self, index: int) -> Sample:
        record = image_record(self.database(), self.image_ids[index], self.snapshot)
        image = self._images.get(record.path)
        if image is None:
            image = load_rgb(record.path)
            self._images.put(record.path, image)
        return record_to_sample(record, image)
