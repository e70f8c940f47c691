"""ORM schema of the annotation database (SQLAlchemy 2, typed ``Mapped[...]``).

The schema is owned by the Alembic migrations in ``db/migrations``; a test checks that
these models and the migration head describe the same tables.
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UtcDateTime(TypeDecorator):
    """A point in time, read back as an aware UTC datetime on every backend (SQLite stores no
    time zone and gives naive ones back; PostgreSQL gives them in the session's time zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(timezone.utc)
        return value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UtcDateTime}


class Split(str, enum.Enum):
    train = "train"
    val = "val"


class Source(str, enum.Enum):
    """Where an annotation came from."""

    imported = "imported"  # read from a COCO file
    drawn = "drawn"  # drawn or corrected by a person
    grabcut = "grabcut"  # mask made by GrabCut inside a person's box
    model = "model"  # proposed by a model version (see Annotation.model_version_id)


class ReviewState(str, enum.Enum):
    proposed = "proposed"
    accepted = "accepted"
    rejected = "rejected"


class Fate(str, enum.Enum):
    """What became of a model proposal or of an instance a person added by hand (``InstanceFate``)."""

    proposed = "proposed"  # a proposal not reviewed yet
    accepted = "accepted"  # a proposal accepted unchanged
    edited = "edited"  # a proposal accepted with another mask or class
    rejected = "rejected"  # a proposal rejected (or deleted before it was accepted)
    deleted = "deleted"  # accepted (or added by hand), deleted later
    replaced = "replaced"  # a proposal never reviewed, replaced by a newer model's proposals
    kept = "kept"  # an instance added by hand that is still there
    hidden = "hidden"  # a proposal under its version's and class's threshold: stored, never drawn, closed on "done"


class RunStatus(str, enum.Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    # Stored as plain strings with a CHECK constraint: portable across SQLite and PostgreSQL.
    return Enum(cls, name=name, native_enum=False, create_constraint=True, length=16,
                values_callable=lambda members: [m.value for m in members])


class Category(Base):
    __tablename__ = "categories"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    supercategory: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Image(Base):
    __tablename__ = "images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    stored_path: Mapped[str] = mapped_column(String(300))  # relative to the data folder
    file_name: Mapped[str] = mapped_column(String(1000))  # original (relative) name, used in exports
    width: Mapped[int] = mapped_column(Integer)  # after EXIF orientation
    height: Mapped[int] = mapped_column(Integer)
    split: Mapped[Split] = mapped_column(_enum(Split, "split"), default=Split.train)
    # Bumped on every change of the image's annotations (optimistic concurrency for the UI).
    revision: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    annotations: Mapped[list["Annotation"]] = relationship(
        back_populates="image", cascade="all, delete-orphan", passive_deletes=True)


class ModelVersion(Base):
    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    checkpoint_path: Mapped[str] = mapped_column(String(1000))  # relative to the data folder
    is_active: Mapped[bool] = mapped_column(Boolean, default=False)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    training_run_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("training_runs.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


ACTIVE_RUN = "status IN ('queued', 'running')"  # a run that holds its slot (uq_training_runs_one_active)


class TrainingRun(Base):
    __tablename__ = "training_runs"
    # One queued or running run per slot, enforced by the database (two people starting a run at once: the
    # second insert fails), on SQLite and PostgreSQL alike: a unique index over the active runs only.
    __table_args__ = (Index("uq_training_runs_one_active", "slot", unique=True,
                            sqlite_where=text(ACTIVE_RUN), postgresql_where=text(ACTIVE_RUN)),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The training slot the run takes: every run takes "default" (the machine's one training process at a time)
    slot: Mapped[str] = mapped_column(String(32), default="default", server_default="default")
    status: Mapped[RunStatus] = mapped_column(_enum(RunStatus, "run_status"), default=RunStatus.queued)
    mode: Mapped[str] = mapped_column(String(32), default="full")
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    iteration: Mapped[int] = mapped_column(Integer, default=0)
    iterations: Mapped[int] = mapped_column(Integer, default=0)
    loss: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    history: Mapped[list[Any]] = mapped_column(JSON, default=list)  # [[iteration, loss], ...]
    message: Mapped[str] = mapped_column(Text, default="")
    pid: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    started_at: Mapped[Optional[datetime]] = mapped_column(nullable=True)
    finished_at: Mapped[Optional[datetime]] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Annotation(Base):
    __tablename__ = "annotations"
    __table_args__ = (
        UniqueConstraint("image_id", "fingerprint", name="uq_annotation_image_fingerprint"),
        Index("ix_annotations_image_state", "image_id", "review_state"),
        Index("ix_annotations_category", "category_id"),
        # ids only grow (SQLite would give a deleted highest id again): fates, the journal and clients name
        # annotations by id (migration 0008; PostgreSQL's sequence never goes back)
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    category_id: Mapped[int] = mapped_column(ForeignKey("categories.id", ondelete="RESTRICT"))
    # Box [x, y, w, h] in pixels; for masks it is the tight box of the mask.
    bbox_x: Mapped[float] = mapped_column(Float)
    bbox_y: Mapped[float] = mapped_column(Float)
    bbox_w: Mapped[float] = mapped_column(Float)
    bbox_h: Mapped[float] = mapped_column(Float)
    # Compressed COCO RLE counts (a str) of a mask of the image's size; None for box-only.
    mask_rle: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    # The mask as COCO polygons (JSON), when it was made from polygons (e.g. imported ones):
    # exported as they are instead of being traced again. Always set together with mask_rle.
    mask_polygons: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    area: Mapped[float] = mapped_column(Float)  # mask pixels, or w * h for box-only
    iscrowd: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[Source] = mapped_column(_enum(Source, "source"), default=Source.imported)
    model_version_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"), nullable=True)
    score: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    review_state: Mapped[ReviewState] = mapped_column(
        _enum(ReviewState, "review_state"), default=ReviewState.accepted)
    # Content fingerprint of imported annotations: importing the same file twice adds nothing.
    fingerprint: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    created_by: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)  # the user who made it
    updated_by: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)  # the user who changed it last
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    image: Mapped[Image] = relationship(back_populates="annotations")
    category: Mapped[Category] = relationship()

    @property
    def bbox(self) -> list[float]:
        return [self.bbox_x, self.bbox_y, self.bbox_w, self.bbox_h]


class JournalEntry(Base):
    """What a change of an image's annotations replaced: undo restores it (and survives a restart); a save that
    lost a conflict is kept here too, so nothing is lost.

    ``content`` "diff" (save, review, undo): ``snapshot`` holds only the annotations the change deleted (whole
    rows) or modified (their id and the fields it changed, as they were), ``added`` the ids it added. ``content``
    "snapshot": ``snapshot`` holds a whole version of the image: a save that lost a conflict (what its client
    sent), or a change journalled before migration 0006 (the image's annotations before it)."""

    __tablename__ = "annotation_journal"
    __table_args__ = (Index("ix_journal_image", "image_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    revision: Mapped[int] = mapped_column(Integer)  # the image's revision before the change
    action: Mapped[str] = mapped_column(String(32))  # save, review, undo, conflict
    # diff or snapshot (set by every writer; the server default is what entries older than migration 0006 are)
    content: Mapped[str] = mapped_column(String(16), server_default="snapshot")
    snapshot: Mapped[list[Any]] = mapped_column(JSON)  # annotations as plain dicts (see content)
    added: Mapped[Optional[list[Any]]] = mapped_column(JSON, nullable=True)  # diff: the ids the change added
    undone: Mapped[bool] = mapped_column(Boolean, default=False)
    user: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class InstanceFate(Base):
    """One model proposal, or one instance a person added by hand, and what became of it (the "Model help"
    figures). Kept up to date in the transaction of every change of the image's annotations."""

    __tablename__ = "instance_fates"
    __table_args__ = (Index("ix_fates_image", "image_id", "annotation_id"),
                      Index("ix_fates_version", "model_version_id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    annotation_id: Mapped[int] = mapped_column(Integer)  # no foreign key: the annotation may be deleted
    kind: Mapped[str] = mapped_column(String(16))  # "proposal" or "hand"
    tool: Mapped[Optional[str]] = mapped_column(String(16), nullable=True)  # hand: box, polygon, brush, grabcut, other
    # the proposal's model version; for a hand-made instance the version that was active then (None: no model)
    model_version_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"), nullable=True)
    category_id: Mapped[int] = mapped_column(Integer)  # the class it was made with
    final_category_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)  # the class it has now
    score: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    proposed_mask: Mapped[Optional[str]] = mapped_column(Text, nullable=True)  # the proposal's mask (RLE counts)
    fate: Mapped[Fate] = mapped_column(_enum(Fate, "fate"))
    iou: Mapped[Optional[float]] = mapped_column(Float, nullable=True)  # edited: proposed vs final mask
    # a proposal, once its image is done: its best mask IoU with the image's final labels and that label's class
    # (what showing it would have been worth, shown or hidden: services.payoff learns the thresholds from it)
    match_iou: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    match_category_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    rank: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)  # a proposal's place in its image by score
    given_box: Mapped[Optional[list]] = mapped_column(JSON, nullable=True)  # the box it was made from (x1, y1,
    # x2, y2): the model's for a proposal, the one drawn for a box; the annotation's own box is its mask's
    start: Mapped[Optional[str]] = mapped_column(String(16), nullable=True)  # a box's first mask: grabcut, model,
    # combined (services.box_masks)
    clicks: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # refine clicks spent on it
    created_by: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)
    decided_by: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    decided_at: Mapped[Optional[datetime]] = mapped_column(nullable=True)


class ImageVisit(Base):
    """A person's visit of an image (open ... done) with its active time: the gaps between the client's
    events, those over the idle limit left out."""

    __tablename__ = "image_visits"
    __table_args__ = (Index("ix_visits_version", "model_version_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    model_version_id: Mapped[Optional[int]] = mapped_column(  # the version active during the visit
        ForeignKey("model_versions.id", ondelete="SET NULL"), nullable=True)
    user: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)
    events: Mapped[int] = mapped_column(Integer)
    active_seconds: Mapped[float] = mapped_column(Float)
    idle_seconds: Mapped[float] = mapped_column(Float)  # gaps over the limit, left out
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
