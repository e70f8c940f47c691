"""Editing the annotations of one image: save, review, undo, with conflict detection.

Every change of an image's annotations is one transaction that
1. bumps the image's revision only if it is still the revision the client saw
   (``UPDATE ... WHERE revision = :seen``): two people saving the same image cannot
   overwrite each other silently, the second gets :class:`ConflictError`;
2. writes the annotations as they were before into the journal (undo restores them,
   also after a restart); a save that lost a conflict is journalled as well, so both
   versions stay recoverable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
from sqlalchemy import delete, select, update

from db import fates, masks
from db.engine import Database
from db.errors import WorkbenchError
from db.models import Annotation, Category, Image, JournalEntry, ReviewState, Source


class ConflictError(WorkbenchError):
    def __init__(self, image_id: int, seen: int, current: int, journal_id: int):
        self.image_id, self.seen, self.current, self.journal_id = image_id, seen, current, journal_id
        super().__init__(f"image {image_id} was changed by someone else since you opened it (revision {seen}, now "
                         f"{current}); your version was kept in the journal (entry {journal_id}). "
                         "Reload the image, then re-apply your changes.")


@dataclass
class InstanceData:
    """One annotation as the UI and the API see it (plain values; mask as an (H, W) bool array)."""

    category_id: int
    box: tuple[float, float, float, float] | None = None  # x1, y1, x2, y2; derived from the mask when None
    mask: np.ndarray | None = None
    mask_rle: str | None = None  # used when mask is None: the mask already encoded (compressed RLE counts)
    source: str = "drawn"
    review_state: str = "accepted"
    score: float | None = None
    model_version_id: int | None = None
    iscrowd: bool = False
    id: int | None = None  # an existing annotation's id: it is updated, keeping its id
    tool: str | None = None  # a new instance made by hand: how (db.fates.TOOLS); recorded, not stored here
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: dict, **changes) -> "InstanceData":
        """A row of :func:`get_annotations` (its stored mask kept encoded), with ``changes`` applied;
        a changed ``mask`` replaces the stored one."""
        values = dict(category_id=row["category_id"], box=row["box"], mask_rle=row["mask_rle"],
                      source=row["source"], review_state=row["review_state"], score=row["score"],
                      model_version_id=row["model_version_id"], iscrowd=row["iscrowd"], id=row["id"])
        if "mask" in changes:
            values["mask_rle"] = None
        values.update(changes)
        return cls(**values)


_SNAPSHOT_FIELDS = ("id", "category_id", "bbox_x", "bbox_y", "bbox_w", "bbox_h", "mask_rle", "mask_polygons",
                    "area", "iscrowd", "source", "model_version_id", "score", "review_state", "created_by",
                    "updated_by")


def _snapshot(annotations: Iterable[Annotation]) -> list[dict]:
    out = []
    for ann in annotations:
        row = {name: getattr(ann, name) for name in _SNAPSHOT_FIELDS}
        row["source"], row["review_state"] = ann.source.value, ann.review_state.value
        out.append(row)
    return out


def _mask_counts(inst: InstanceData, image: Image) -> str | None:
    """The instance's mask as compressed RLE counts of the image's size (None: a box only)."""
    if inst.mask is not None:
        mask = np.asarray(inst.mask, dtype=bool)
        if mask.shape != (image.height, image.width):
            raise WorkbenchError(f"a mask of {mask.shape[1]}x{mask.shape[0]} does not fit image {image.id} "
                                 f"({image.width}x{image.height})")
        return masks.encode(mask)
    if inst.mask_rle is not None:  # already encoded (stored masks, the API's RLE masks): checked, not decoded
        try:
            masks.check_counts(inst.mask_rle, image.height, image.width)
        except ValueError as exc:
            raise WorkbenchError(f"a mask's RLE does not fit image {image.id} ({image.width}x{image.height}): "
                                 f"{exc}") from None
    return inst.mask_rle


def _columns(inst: InstanceData, image: Image, user: str | None) -> dict:
    counts = _mask_counts(inst, image)
    if counts is not None:
        x, y, w, h = masks.tight_box(counts, image.height, image.width)
        area = float(masks.area(counts, image.height, image.width))
        if area == 0:
            raise WorkbenchError("the mask is empty; paint the object or delete the annotation")
    else:
        if inst.box is None:
            raise WorkbenchError("an annotation needs a box or a mask")
        x1, y1, x2, y2 = (float(v) for v in inst.box)
        x1, y1 = max(0.0, min(x1, x2)), max(0.0, min(y1, y2))
        x2, y2 = min(float(image.width), max(inst.box[0], inst.box[2])), min(float(image.height), max(inst.box[1], inst.box[3]))
        if x2 - x1 < 1 or y2 - y1 < 1:
            raise WorkbenchError(f"box {inst.box} is empty or outside image {image.id}")
        x, y, w, h, area = x1, y1, x2 - x1, y2 - y1, (x2 - x1) * (y2 - y1)
    return {"category_id": int(inst.category_id), "bbox_x": x, "bbox_y": y, "bbox_w": w, "bbox_h": h,
            "mask_rle": counts, "mask_polygons": None, "area": area, "iscrowd": bool(inst.iscrowd),
            "source": Source(inst.source), "review_state": ReviewState(inst.review_state), "score": inst.score,
            "model_version_id": inst.model_version_id, "created_by": user, "updated_by": user}


_WHO = ("created_by", "updated_by")


def _bump(session, image_id: int, seen: int | None) -> Image | None:
    """Take the next revision of the image (``seen``: only if it still is that revision), or None.

    Its ``UPDATE`` locks the image until the transaction ends (PostgreSQL: the row; SQLite: the
    database), so a concurrent change of the same image waits for this one and then finds the new
    revision: callers read the image's annotations only after this, never before."""
    image = session.get(Image, image_id)
    if image is None:
        raise WorkbenchError(f"there is no image {image_id}")
    unchanged = [Image.revision == seen] if seen is not None else []
    result = session.execute(update(Image).where(Image.id == image_id, *unchanged)
                             .values(revision=Image.revision + 1).execution_options(synchronize_session=False))
    session.refresh(image)
    return image if result.rowcount == 1 else None


def get_annotations(db: Database, image_id: int, states: Iterable[str] | None = None, *,
                    decode_masks: bool = True) -> tuple[int, list[dict]]:
    """(revision, annotations as dicts) of one image: "mask_rle" (compressed RLE counts or None) and, with
    ``decode_masks``, "mask" decoded to an (H, W) bool array."""
    with db.session() as session:
        image = session.get(Image, image_id)
        if image is None:
            raise WorkbenchError(f"there is no image {image_id}")
        query = select(Annotation).where(Annotation.image_id == image_id).order_by(Annotation.id)
        if states is not None:
            query = query.where(Annotation.review_state.in_([ReviewState(s) for s in states]))
        rows = []
        for ann in session.scalars(query):
            rows.append({"id": ann.id, "category_id": ann.category_id,
                         "box": (ann.bbox_x, ann.bbox_y, ann.bbox_x + ann.bbox_w, ann.bbox_y + ann.bbox_h),
                         "mask_rle": ann.mask_rle,
                         "mask": (None if ann.mask_rle is None or not decode_masks
                                  else masks.decode(ann.mask_rle, image.height, image.width)),
                         "source": ann.source.value, "review_state": ann.review_state.value, "score": ann.score,
                         "model_version_id": ann.model_version_id, "iscrowd": ann.iscrowd,
                         "created_by": ann.created_by, "updated_by": ann.updated_by})
        return image.revision, rows


def save_annotations(db: Database, image_id: int, instances: list[InstanceData], *, seen_revision: int | None,
                     user: str | None = None, action: str = "save", proposing: bool = False) -> int:
    """Make ``instances`` the image's annotations (those with an ``id`` are updated in place,
    the others added, the rest deleted). Returns the new revision. ``proposing``: a model's new proposals
    replace its unreviewed ones (recorded as replaced, not rejected; see db.fates)."""
    conflict = None
    with db.session() as session:
        image = session.get(Image, image_id)
        if image is None:
            raise WorkbenchError(f"there is no image {image_id}")
        known = {c for c in session.scalars(select(Category.id))}
        for inst in instances:
            if inst.category_id not in known:
                raise WorkbenchError(f"category {inst.category_id} does not exist; add it first")
        columns = [_columns(inst, image, user) for inst in instances]
        if _bump(session, image_id, seen_revision) is None:
            entry = JournalEntry(image_id=image_id, revision=seen_revision, action="conflict", user=user,
                                 snapshot=[{**{k: (v.value if hasattr(v, "value") else v) for k, v in c.items()},
                                            "id": inst.id} for c, inst in zip(columns, instances)])
            session.add(entry)
            session.flush()
            conflict = ConflictError(image_id, seen_revision, image.revision, entry.id)
        else:
            current = session.scalars(select(Annotation).where(Annotation.image_id == image_id)).all()
            revision, added = _apply(session, image, instances, columns, current, _snapshot(current), action, user)
            fates.record_changes(session, image, added, action="propose" if proposing else "save", user=user)
    if conflict is not None:  # the losing version is committed to the journal; now tell the client
        raise conflict
    return revision


def _apply(session, image: Image, instances: list[InstanceData], columns: list[dict], current: list[Annotation],
           before: list[dict], action: str, user: str | None) -> tuple[int, list[tuple[Annotation, str | None]]]:
    """-> (the new revision, the added annotations with the tool each was made with)."""
    image_id = image.id
    session.add(JournalEntry(image_id=image_id, revision=image.revision - 1, action=action, snapshot=before,
                             user=user))
    by_id = {ann.id: ann for ann in current}
    keep, added = set(), []
    for inst, values in zip(instances, columns):
        ann = by_id.get(inst.id) if inst.id is not None else None
        if ann is None:
            added.append((Annotation(image_id=image_id, **values), inst.tool))
            session.add(added[-1][0])
        else:
            keep.add(ann.id)
            if ann.mask_rle == values["mask_rle"]:
                values["mask_polygons"] = ann.mask_polygons  # unchanged mask keeps its polygons
            if all(getattr(ann, name) == value for name, value in values.items() if name not in _WHO):
                continue  # saved again unchanged: who made and who changed it stay as they are
            for name, value in values.items():
                if name == "created_by" and ann.created_by is not None:
                    continue
                setattr(ann, name, value)
    gone = [ann_id for ann_id in by_id if ann_id not in keep]
    if gone:
        session.execute(delete(Annotation).where(Annotation.id.in_(gone)))
    session.flush()  # the added annotations' ids
    return image.revision, added


def set_review_state(db: Database, image_id: int, annotation_ids: Iterable[int], state: str, *,
                     seen_revision: int | None = None, user: str | None = None) -> int:
    """Accept or reject proposals (or reopen them). Returns the new revision."""
    ids = list(annotation_ids)
    with db.session() as session:
        image = _bump(session, image_id, seen_revision)
        if image is None:  # nothing of this client's was lost: a review is one click to redo
            raise ConflictError(image_id, seen_revision, session.get(Image, image_id).revision, 0)
        before = _snapshot(session.scalars(select(Annotation).where(Annotation.image_id == image_id)))
        session.add(JournalEntry(image_id=image_id, revision=image.revision - 1, action="review", snapshot=before,
                                 user=user))
        session.execute(update(Annotation).where(Annotation.image_id == image_id, Annotation.id.in_(ids))
                        .values(review_state=ReviewState(state), updated_by=user))
        fates.record_changes(session, image, [], action="review", user=user)
        return image.revision


def undo(db: Database, image_id: int, *, user: str | None = None) -> int:
    """Restore the annotations as they were before the last change that is not undone yet."""
    with db.session() as session:
        image = _bump(session, image_id, None)  # first: a concurrent undo waits, then finds this one's result
        entry = session.scalars(select(JournalEntry).where(
            JournalEntry.image_id == image_id, JournalEntry.undone.is_(False),
            JournalEntry.action.in_(("save", "review"))).order_by(JournalEntry.id.desc()).limit(1)).first()
        if entry is None:
            raise WorkbenchError(f"nothing to undo on image {image_id}")
        session.execute(delete(Annotation).where(Annotation.image_id == image_id))
        # an id of the snapshot that another image's annotation has now (SQLite reuses the highest id after a
        # delete) is restored under a new id
        wanted = [row["id"] for row in entry.snapshot if row.get("id") is not None]
        taken = set(session.scalars(select(Annotation.id).where(Annotation.id.in_(wanted)))) if wanted else set()
        for row in entry.snapshot:
            values = dict(row)
            if values.get("id") in taken:
                values.pop("id")
            values["source"], values["review_state"] = Source(values["source"]), ReviewState(values["review_state"])
            values["updated_by"] = user  # undoing is a change too
            session.add(Annotation(image_id=image_id, **values))
        entry.undone = True
        session.flush()
        fates.record_changes(session, image, [], action="undo", user=user)
        return image.revision


def conflict_versions(db: Database, image_id: int) -> list[JournalEntry]:
    """Saves that lost a conflict on this image (newest first): nothing anyone saved is lost."""
    with db.session() as session:
        return list(session.scalars(select(JournalEntry).where(
            JournalEntry.image_id == image_id, JournalEntry.action == "conflict").order_by(JournalEntry.id.desc())))


def lost_instances(db: Database, image_id: int) -> list[InstanceData]:
    """The annotations of the newest save that lost a conflict on this image, ready to be saved again
    (those whose annotation still exists keep its id)."""
    entries = conflict_versions(db, image_id)
    if not entries:
        raise WorkbenchError("there is no lost version of this image to recover")
    _, rows = get_annotations(db, image_id, decode_masks=False)
    current = {r["id"] for r in rows}
    data = []
    for row in entries[0].snapshot:
        box = (row["bbox_x"], row["bbox_y"], row["bbox_x"] + row["bbox_w"], row["bbox_y"] + row["bbox_h"])
        data.append(InstanceData(category_id=row["category_id"], box=box, mask_rle=row.get("mask_rle"),
                                 source=row["source"], review_state=row["review_state"], score=row["score"],
                                 model_version_id=row["model_version_id"], iscrowd=bool(row["iscrowd"]),
                                 id=row.get("id") if row.get("id") in current else None))
    return data
