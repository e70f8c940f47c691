"""Training records read from the database (plain Python and numpy: no torch here).

``partial_sup`` turns these records into the model's samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import select

from db.engine import Database
from db.models import Annotation, Category, Image, ReviewState, Split


@dataclass(frozen=True)
class InstanceRecord:
    category_id: int
    bbox: tuple[float, float, float, float]  # x, y, w, h
    mask_rle: str | None  # compressed COCO RLE counts of an image-sized mask, None for box-only
    iscrowd: bool = False  # a crowd region: an ignore region in training and evaluation


@dataclass(frozen=True)
class ImageRecord:
    image_id: int
    path: str  # absolute path of the stored image file
    width: int
    height: int
    instances: tuple[InstanceRecord, ...]


@dataclass(frozen=True, eq=False)
class TrainingSnapshot:
    """What a training run trains on, fixed when it starts, so that labelling goes on while it trains: the
    images, the classes (their order is the model's class indices), the accepted annotations by id, and the
    Mask^X set of each class. Read in one query (one consistent view of the database); ids only, so a
    dataset's memory grows by 8 bytes an annotation, not with the masks or the images.

    An annotation added later, or given a class the run does not know, is left out; one deleted or rejected
    since is left out too (``image_record`` reads the annotations as they are and keeps those of the snapshot)."""

    image_ids: list[int]  # images with accepted, non-crowd annotations, by id
    categories: list[tuple[int, str]]  # (id, name) of the classes those annotations use, by id
    annotation_ids: np.ndarray  # sorted int64: the accepted annotations of those images, crowd regions included
    sets: dict[int, str]  # class id -> "A" (at least one mask) or "B" (boxes only), as queries.category_sets
    most_instances: int = 0  # the most non-crowd annotations one image has (what a model must be able to output)
    category_ids: frozenset[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "category_ids", frozenset(c for c, _ in self.categories))

    def keeps(self, annotation_id: int, category_id: int, iscrowd: bool) -> bool:
        """Whether an annotation read now belongs to the run: in the snapshot, and (unless a crowd region, whose
        class training ignores) of one of its classes."""
        at = int(np.searchsorted(self.annotation_ids, annotation_id))
        known = at < len(self.annotation_ids) and int(self.annotation_ids[at]) == annotation_id
        return known and (iscrowd or category_id in self.category_ids)


def training_snapshot(db: Database, split: str = "train") -> TrainingSnapshot:
    """The :class:`TrainingSnapshot` of ``split`` now. Accepted annotations are the imported and human-made
    ones, and model proposals that a person accepted; images count when they have non-crowd ones."""
    query = (select(Annotation.id, Annotation.image_id, Annotation.category_id, Category.name, Annotation.iscrowd,
                    Annotation.mask_rle.is_not(None))
             .join(Image, Image.id == Annotation.image_id).join(Category, Category.id == Annotation.category_id)
             .where(Image.split == Split(split), Annotation.review_state == ReviewState.accepted)
             .order_by(Annotation.id).execution_options(yield_per=10_000))
    ids, image_of = [], []
    objects: set[int] = set()
    instances: dict[int, int] = {}
    names: dict[int, str] = {}
    has_mask: dict[int, bool] = {}
    with db.session() as session:
        for ann_id, image_id, category_id, name, iscrowd, masked in session.execute(query):
            ids.append(ann_id)
            image_of.append(image_id)
            if not iscrowd:
                objects.add(image_id)
                instances[image_id] = instances.get(image_id, 0) + 1
                names[category_id] = name
                has_mask[category_id] = has_mask.get(category_id, False) or bool(masked)
    keep = [i for i, image_id in enumerate(image_of) if image_id in objects]  # crowd regions of images with objects
    return TrainingSnapshot(image_ids=sorted(objects), categories=[(int(c), str(names[c])) for c in sorted(names)],
                            annotation_ids=np.array(sorted(ids[i] for i in keep), dtype=np.int64),
                            sets={c: "A" if has_mask[c] else "B" for c in sorted(names)},
                            most_instances=max(instances.values(), default=0))


def training_index(db: Database, split: str = "train") -> tuple[list[int], list[tuple[int, str]]]:
    """Ids of the images of ``split`` that have accepted, non-crowd annotations, and the categories those
    annotations use (id, name), both sorted by id (see :func:`training_snapshot`)."""
    snapshot = training_snapshot(db, split)
    return snapshot.image_ids, snapshot.categories


def image_record(db: Database, image_id: int, snapshot: TrainingSnapshot | None = None) -> ImageRecord:
    """One image with its accepted annotations, crowd regions included (``iscrowd``: training ignores
    anchors and RoIs inside them instead of learning their pixels as background); with ``snapshot``, only
    those that belong to it (:meth:`TrainingSnapshot.keeps`)."""
    with db.session() as session:
        image = session.execute(select(Image.stored_path, Image.width, Image.height)
                                .where(Image.id == int(image_id))).one_or_none()
        if image is None:
            from db.errors import WorkbenchError

            raise WorkbenchError(f"there is no image {image_id} (removed while training?)")
        rows = session.execute(
            select(Annotation.category_id, Annotation.bbox_x, Annotation.bbox_y, Annotation.bbox_w,
                   Annotation.bbox_h, Annotation.mask_rle, Annotation.iscrowd, Annotation.id)
            .where(Annotation.image_id == int(image_id), Annotation.review_state == ReviewState.accepted)
            .order_by(Annotation.id)).all()
    if snapshot is not None:
        rows = [row for row in rows if snapshot.keeps(row[7], row[0], bool(row[6]))]
    return ImageRecord(int(image_id), str(db.data_dir / image[0]), image[1], image[2],
                       tuple(InstanceRecord(row[0], (row[1], row[2], row[3], row[4]), row[5], bool(row[6]))
                             for row in rows))


def reviewed_records(db: Database, split: str = "val") -> list[ImageRecord]:
    """Images of ``split`` whose review is finished (``queries.reviewed_image_ids``: status done) with
    all their accepted annotations, crowd regions included (``iscrowd``): evaluation ground truth.

    An image whose proposals were all rejected is kept, with no instances (it has no objects)."""
    from db.queries import reviewed_image_ids

    reviewed = reviewed_image_ids(db)
    with db.session() as session:
        images = session.execute(
            select(Image.id, Image.stored_path, Image.width, Image.height)
            .where(Image.split == Split(split)).order_by(Image.id)).all()
        rows = session.execute(
            select(Annotation.image_id, Annotation.category_id, Annotation.bbox_x, Annotation.bbox_y,
                   Annotation.bbox_w, Annotation.bbox_h, Annotation.mask_rle, Annotation.iscrowd)
            .join(Image, Image.id == Annotation.image_id)
            .where(Image.split == Split(split), Annotation.review_state == ReviewState.accepted)
            .order_by(Annotation.image_id, Annotation.id)).all()
    grouped: dict[int, list[InstanceRecord]] = {}
    for row in rows:
        grouped.setdefault(row[0], []).append(
            InstanceRecord(row[1], (row[2], row[3], row[4], row[5]), row[6], bool(row[7])))
    return [ImageRecord(image_id, str(db.data_dir / path), width, height, tuple(grouped.get(image_id, ())))
            for image_id, path, width, height in images if image_id in reviewed]
