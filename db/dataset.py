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
    iscrowd: bool = False  # a crowd region (only in ``reviewed_records``: training leaves them out)


@dataclass(frozen=True)
class ImageRecord:
    image_id: int
    path: str  # absolute path of the stored image file
    width: int
    height: int
    instances: tuple[InstanceRecord, ...]


def training_records(db: Database, split: str = "train") -> tuple[list[ImageRecord], list[tuple[int, str]]]:
    """Images of ``split`` that have accepted, non-crowd annotations, and the categories they use.

    Accepted annotations are the imported and human-made ones, and model proposals that a
    person accepted; crowd regions are left out (they are neither positives nor negatives).
    """
    with db.session() as session:
        rows = session.execute(
            select(Image.id, Image.stored_path, Image.width, Image.height, Annotation.category_id,
                   Annotation.bbox_x, Annotation.bbox_y, Annotation.bbox_w, Annotation.bbox_h, Annotation.mask_rle)
            .join(Annotation, Annotation.image_id == Image.id)
            .where(Image.split == Split(split), Annotation.review_state == ReviewState.accepted,
                   Annotation.iscrowd.is_(False))
            .order_by(Image.id, Annotation.id)).all()
        names = dict(session.execute(select(Category.id, Category.name)).all())
    grouped: dict[int, list] = {}
    meta: dict[int, tuple] = {}
    for row in rows:
        meta[row[0]] = (str(db.data_dir / row[1]), row[2], row[3])
        grouped.setdefault(row[0], []).append(InstanceRecord(row[4], (row[5], row[6], row[7], row[8]), row[9]))
    records = [ImageRecord(image_id, *meta[image_id], tuple(instances)) for image_id, instances in grouped.items()]
    used = sorted({inst.category_id for record in records for inst in record.instances})
    return records, [(cid, names[cid]) for cid in used]


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
