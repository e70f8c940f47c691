"""Read-only views of the database for the UI and the command line."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select

from db.engine import Database
from db.models import Annotation, Category, Image, ModelVersion, ReviewState


@dataclass
class CategoryStats:
    id: int
    name: str
    boxes: int  # accepted annotations without a mask
    masks: int  # accepted annotations with a mask

    @property
    def supervision(self) -> str:
        return "mask" if self.masks else "box-only"


@dataclass
class Summary:
    images: int
    train_images: int
    val_images: int
    annotations: int
    proposed: int
    categories: list[CategoryStats]
    active_model: str | None


def summary(db: Database) -> Summary:
    accepted = Annotation.review_state == ReviewState.accepted
    with db.session() as session:
        split_counts = dict(session.execute(select(Image.split, func.count()).group_by(Image.split)).all())
        rows = session.execute(
            select(Category.id, Category.name,
                   func.count(Annotation.id).filter(accepted, Annotation.mask_rle.is_(None)),
                   func.count(Annotation.id).filter(accepted, Annotation.mask_rle.is_not(None)))
            .outerjoin(Annotation, Annotation.category_id == Category.id)
            .group_by(Category.id, Category.name).order_by(Category.id)).all()
        states = dict(session.execute(select(Annotation.review_state, func.count()).group_by(Annotation.review_state)).all())
        active = session.scalars(select(ModelVersion).where(ModelVersion.is_active.is_(True))).first()
    train = sum(v for k, v in split_counts.items() if k.value == "train")
    val = sum(v for k, v in split_counts.items() if k.value == "val")
    return Summary(images=train + val, train_images=train, val_images=val,
                   annotations=states.get(ReviewState.accepted, 0), proposed=states.get(ReviewState.proposed, 0),
                   categories=[CategoryStats(*row) for row in rows],
                   active_model=f"v{active.id} {active.name}".strip() if active else None)


def list_images(db: Database, limit: int = 1000) -> list[dict]:
    accepted = Annotation.review_state == ReviewState.accepted
    with db.session() as session:
        rows = session.execute(
            select(Image.id, Image.file_name, Image.width, Image.height, Image.split,
                   func.count(Annotation.id).filter(accepted))
            .outerjoin(Annotation, Annotation.image_id == Image.id)
            .group_by(Image.id).order_by(Image.id).limit(limit)).all()
    return [{"id": r[0], "file_name": r[1], "width": r[2], "height": r[3], "split": r[4].value, "annotations": r[5]}
            for r in rows]
