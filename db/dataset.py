"""Training records read from the database (plain Python and numpy: no torch here).

``partial_sup`` turns these records into the model's samples.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def training_index(db: Database, split: str = "train") -> tuple[list[int], list[tuple[int, str]]]:
    """Ids of the images of ``split`` that have accepted, non-crowd annotations, and the categories those
    annotations use (id, name), both sorted by id. Only ids: a dataset reads each image's annotations when
    it needs them (``image_record``), so its memory does not grow with the number of images.

    Accepted annotations are the imported and human-made ones, and model proposals that a person accepted."""
    objects = (Image.split == Split(split), Annotation.review_state == ReviewState.accepted,
               Annotation.iscrowd.is_(False))
    with db.session() as session:
        ids = list(session.scalars(select(Image.id).join(Annotation, Annotation.image_id == Image.id)
                                   .where(*objects).distinct().order_by(Image.id)))
        categories = session.execute(
            select(Category.id, Category.name).where(Category.id.in_(
                select(Annotation.category_id).join(Image, Image.id == Annotation.image_id).where(*objects)))
            .order_by(Category.id)).all()
    return ids, [(int(cid), str(name)) for cid, name in categories]


def image_record(db: Database, image_id: int) -> ImageRecord:
    """One image with its accepted annotations, crowd regions included (``iscrowd``: training ignores
    anchors and RoIs inside them instead of learning their pixels as background)."""
    with db.session() as session:
        image = session.execute(select(Image.stored_path, Image.width, Image.height)
                                .where(Image.id == int(image_id))).one_or_none()
        if image is None:
            from db.errors import WorkbenchError

            raise WorkbenchError(f"there is no image {image_id} (removed while training?)")
        rows = session.execute(
            select(Annotation.category_id, Annotation.bbox_x, Annotation.bbox_y, Annotation.bbox_w,
                   Annotation.bbox_h, Annotation.mask_rle, Annotation.iscrowd)
            .where(Annotation.image_id == int(image_id), Annotation.review_state == ReviewState.accepted)
            .order_by(Annotation.id)).all()
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
