"""Read-only views of the database for the UI and the command line."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import case, func, or_, select

from db.engine import Database
from db.models import Annotation, Category, Image, ModelVersion, ReviewState, RunStatus, TrainingRun


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


IMAGE_STATUSES = ("new", "proposed", "in review", "done")


def image_status(accepted: int, proposed: int, rejected: int) -> str:
    """new: nothing yet; proposed: only a model's proposals; in review: proposals left and some
    reviewed or drawn; done: every proposal reviewed (at least one annotation accepted or rejected)."""
    if proposed:
        return "in review" if accepted or rejected else "proposed"
    return "done" if accepted or rejected else "new"


def list_images(db: Database, limit: int | None = 1000, status: str | None = None) -> list[dict]:
    """Images (by id) with their accepted annotation count and review status; ``status`` filters."""
    if status is not None and status not in IMAGE_STATUSES:
        raise ValueError(f"status {status!r} is not one of {IMAGE_STATUSES}")
    state = Annotation.review_state
    with db.session() as session:
        rows = session.execute(
            select(Image.id, Image.file_name, Image.width, Image.height, Image.split,
                   func.count(Annotation.id).filter(state == ReviewState.accepted),
                   func.count(Annotation.id).filter(state == ReviewState.proposed),
                   func.count(Annotation.id).filter(state == ReviewState.rejected))
            .outerjoin(Annotation, Annotation.image_id == Image.id)
            .group_by(Image.id).order_by(Image.id)).all()
    out = []
    for r in rows:
        row_status = image_status(r[5], r[6], r[7])
        if status is not None and row_status != status:
            continue
        out.append({"id": r[0], "file_name": r[1], "width": r[2], "height": r[3], "split": r[4].value,
                    "annotations": r[5], "proposed": r[6], "rejected": r[7], "status": row_status})
        if limit is not None and len(out) >= limit:
            break
    return out


def status_counts(db: Database) -> dict[str, int]:
    """How many images have each review status (one aggregate query: cheap enough for every click)."""
    state = Annotation.review_state
    per_image = (select(func.count(Annotation.id).filter(state == ReviewState.accepted).label("a"),
                        func.count(Annotation.id).filter(state == ReviewState.proposed).label("p"),
                        func.count(Annotation.id).filter(state == ReviewState.rejected).label("r"))
                 .select_from(Image).outerjoin(Annotation, Annotation.image_id == Image.id)
                 .group_by(Image.id).subquery())
    reviewed = or_(per_image.c.a > 0, per_image.c.r > 0)
    status = case((per_image.c.p > 0, case((reviewed, "in review"), else_="proposed")),
                  (reviewed, "done"), else_="new")
    counts = dict.fromkeys(IMAGE_STATUSES, 0)
    with db.session() as session:
        for name, count in session.execute(select(status, func.count()).group_by(status)):
            counts[name] = count
    return counts


def reviewed_image_ids(db: Database) -> set[int]:
    """Images whose review is finished (status done): the 'reviewed only' export."""
    return {row["id"] for row in list_images(db, limit=None, status="done")}


def latest_run(db: Database, active_only: bool = False) -> int | None:
    """The newest training run's id (only a queued or running one with ``active_only``)."""
    query = select(TrainingRun.id).order_by(TrainingRun.id.desc()).limit(1)
    if active_only:
        query = query.where(TrainingRun.status.in_((RunStatus.queued, RunStatus.running)))
    with db.session() as session:
        return session.scalar(query)


def image_info(db: Database, image_id: int) -> dict:
    """One image's record (stored path, original name, size, split, revision)."""
    from db.errors import WorkbenchError

    with db.session() as session:
        image = session.get(Image, int(image_id))
        if image is None:
            raise WorkbenchError(f"there is no image {image_id}")
        return {"id": image.id, "file_name": image.file_name, "stored_path": image.stored_path, "width": image.width,
                "height": image.height, "split": image.split.value, "revision": image.revision}


def category_names(db: Database) -> dict[int, str]:
    with db.session() as session:
        return dict(session.execute(select(Category.id, Category.name).order_by(Category.id)).all())
