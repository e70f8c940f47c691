"""Read-only views of the database for the UI and the command line."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import case, func, or_, select

from db.engine import Database
from db.models import Annotation, Category, Image, ModelVersion, ReviewState, RunStatus, Source, Split, TrainingRun


@dataclass
class CategoryStats:
    """A category's accepted, non-crowd annotations in the train split (what training uses)."""

    id: int
    name: str
    boxes: int  # accepted train-split annotations without a mask (box-only)
    masks: int  # accepted train-split annotations with a mask

    @property
    def category_set(self) -> str | None:
        """The Mask^X set: "A" (at least one mask), "B" (boxes only), None (no train annotations: unused)."""
        return "A" if self.masks else "B" if self.boxes else None


def _train_counts(session) -> list[tuple[int, str, int, int]]:
    """(id, name, box-only, with mask) counts of accepted, non-crowd train-split annotations per category."""
    train = (select(Annotation.category_id, Annotation.mask_rle).join(Image, Image.id == Annotation.image_id)
             .where(Image.split == Split.train, Annotation.review_state == ReviewState.accepted,
                    Annotation.iscrowd.is_(False))
             .subquery())
    return [tuple(row) for row in session.execute(
        select(Category.id, Category.name,
               func.count(train.c.category_id).filter(train.c.mask_rle.is_(None)),
               func.count(train.c.category_id).filter(train.c.mask_rle.is_not(None)))
        .outerjoin(train, train.c.category_id == Category.id)
        .group_by(Category.id, Category.name).order_by(Category.id)).all()]


def category_sets(db: Database) -> dict[int, str]:
    """Mask^X sets derived from the data: category id -> "A" (at least one accepted mask annotation
    in the train split) or "B" (accepted train annotations, all box-only). Categories without
    accepted train annotations are left out; crowd regions and proposals do not count (training
    has no objects in them either, see ``db.dataset.training_index``)."""
    with db.session() as session:
        stats = [CategoryStats(*row) for row in _train_counts(session)]
    return {c.id: c.category_set for c in stats if c.category_set is not None}


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
    """Image and annotation counts; per category the train-split counts and its set (A / B / unused)."""
    with db.session() as session:
        split_counts = dict(session.execute(select(Image.split, func.count()).group_by(Image.split)).all())
        rows = _train_counts(session)
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


def proposal_scores(db: Database, version_id: int) -> dict[int, list[float]]:
    """image id -> the scores of the model version's proposals stored on it (reviewed ones included)."""
    with db.session() as session:
        rows = session.execute(select(Annotation.image_id, Annotation.score).where(
            Annotation.model_version_id == version_id, Annotation.source == Source.model,
            Annotation.score.is_not(None)).order_by(Annotation.image_id, Annotation.id)).all()
    out: dict[int, list[float]] = {}
    for image_id, score in rows:
        out.setdefault(image_id, []).append(float(score))
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


def last_training_pace(db: Database, mode: str) -> tuple[float, int | None] | None:
    """(seconds per iteration, its short side in pixels or None where the run did not record it) of the newest
    succeeded training run of ``mode`` (from its progress history, which records [iteration, loss, seconds]), or
    None when there is none."""
    with db.session() as session:
        runs = session.scalars(select(TrainingRun).where(TrainingRun.mode == mode,
                                                         TrainingRun.status == RunStatus.succeeded)
                               .order_by(TrainingRun.id.desc()).limit(5)).all()
        for run in runs:
            timed = [h for h in run.history or [] if len(h) > 2 and h[0] > 0 and h[2] is not None]
            if timed:
                size = (run.params or {}).get("image_size")
                return float(timed[-1][2]) / float(timed[-1][0]), (int(size) if isinstance(size, int) and size > 0
                                                                   else None)
    return None


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
