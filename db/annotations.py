"""Editing the annotations of one image: save, review, undo, with conflict detection.

Every change of an image's annotations (save, review, undo) is one transaction that
1. bumps the image's revision. A save or review that started from an older revision than the image has now
   (someone changed it meanwhile) is merged instance by instance, a three-way merge against the revision it
   started from (rebuilt from the journal): what it changed goes in where nobody else changed that instance
   since; a change to an instance someone else changed (or deleted) since is refused as a
   :class:`ConflictError` naming those instances, and nothing of the save is written but the refused versions
   of those instances, to the journal ("lost", recoverable by their author onto what they conflicted with).
   Undo applies only to the revision its caller saw;
2. journals what it replaced, as a diff: the annotations it deleted or modified, as they were, and
   the ids it added (an edit of one instance costs the journal that instance, not the whole image).
   Undo applies the newest entry backwards (also after a restart) and journals what it replaces in
   turn; a save that lost a conflict is journalled whole, so both versions stay recoverable. Nothing
   that was saved ever leaves the journal.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
from sqlalchemy import delete, select, update

from db import fates, masks
from db.checks import is_integer
from db.engine import Database
from db.errors import WorkbenchError
from db.models import Annotation, Category, Image, JournalEntry, ReviewState, Source


class ConflictError(WorkbenchError):
    def __init__(self, image_id: int, seen: int, current: int, journal_id: int | None,
                 instance_ids: list[int] | None = None):
        """``journal_id``: the journal entry that keeps the refused version (None: an undo, which changed nothing
        and is one key to do again); ``instance_ids``: the instances someone else changed since (None: the image
        as a whole, where no instance-level merge was possible)."""
        self.image_id, self.seen, self.current, self.journal_id = image_id, seen, current, journal_id
        self.instance_ids = instance_ids
        kept = (f"your version was kept (lost version {journal_id}: 'recover my lost version' puts it back)"
                if journal_id is not None else "nothing was changed")
        what = (f"instance{'s' if len(instance_ids) > 1 else ''} {', '.join(f'#{i}' for i in instance_ids)} of "
                f"image {image_id} {'were' if len(instance_ids) > 1 else 'was'}" if instance_ids
                else f"image {image_id} was")
        super().__init__(f"{what} changed by someone else since you opened it (revision {seen}, now {current}); "
                         f"{kept}. Reload the image to see their version.")


@dataclass(frozen=True)
class Seen:
    """The revision a client saw, and the revisions its own changes made since (a batch of edits saved one by
    one): the three-way merge keeps the client's own changes in the base it merges against, so a client never
    conflicts with itself, while what others changed since ``revision`` is still theirs."""

    revision: int
    own: frozenset[int] = frozenset()  # journal revisions (the revision before each change) of its own changes
    read: int | None = None  # a server-side read-compute-save: the revision the instances it saves were read at
    #                          (what the save changed is judged against that; who else changed what, against
    #                          ``revision``)

    def after(self, new_revision: int) -> "Seen":
        """The same client once its change made ``new_revision``."""
        return Seen(self.revision, self.own | {int(new_revision) - 1})

    def reading(self, revision: int) -> "Seen":
        """The same client, its save computed from the instances of ``revision``."""
        return Seen(self.revision, self.own, int(revision))

    def latest(self) -> int:
        """The newest revision the client knows all of: ``revision`` and its own changes right after it."""
        revision = self.revision
        while revision in self.own:
            revision += 1
        return revision


def _unpack(seen) -> tuple[int | None, int | None, frozenset[int], int | None]:
    """A seen revision (int, Seen or None) -> (the revision to check first: the newest the caller knows all of,
    the revision it saw, the revisions of its own changes, the revision its rows were read at)."""
    if isinstance(seen, Seen):
        return seen.latest(), seen.revision, seen.own, seen.read
    number = None if seen is None else int(seen)
    return number, number, frozenset(), None


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
    start: str | None = None  # a new instance made from a box: its first mask (grabcut, model, combined); recorded
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
_ENUMS = {"source": Source, "review_state": ReviewState}


def _plain(value):
    return value.value if isinstance(value, enum.Enum) else value


def _row(ann: Annotation) -> dict:
    """An annotation as a journal row: every field, as plain values."""
    return {name: _plain(getattr(ann, name)) for name in _SNAPSHOT_FIELDS}


def _stored(values: dict) -> dict:
    """Journal row values -> column values (the enums' names back to enums)."""
    return {name: (_ENUMS[name](value) if name in _ENUMS and value is not None else value)
            for name, value in values.items()}


def _set(ann: Annotation, values: dict) -> dict:
    """Give ``ann`` the column ``values``; -> its id and the fields that changed, as they were (a journal row)."""
    before = {"id": ann.id}
    for name, value in values.items():
        if getattr(ann, name) != value:
            before[name] = _plain(getattr(ann, name))
            setattr(ann, name, value)
    return before


def _journal(session, image: Image, action: str, user: str | None, replaced: list[dict], added: list[int]) -> None:
    """The diff of a change of ``image`` (its revision already bumped): the rows it deleted (whole) or modified
    (id and the changed fields, as they were), and the ids it added."""
    session.add(JournalEntry(image_id=image.id, revision=image.revision - 1, action=action, content="diff",
                             snapshot=replaced, added=sorted(added), user=user))


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
    ``decode_masks``, "mask" decoded to an (H, W) bool array.

    The rows are those of the revision returned: it is read before and after them, and the read is made again
    when a change landed in between (a save computed from rows newer than their revision would take another's
    change for its own in the three-way merge). After READ_ATTEMPTS tries the first revision is returned with
    the newer rows, as before merges: a save computed from them is then merged or refused, never written over a
    change."""
    for attempt in range(READ_ATTEMPTS):
        revision, rows = _read(db, image_id, states, decode_masks)
        if attempt == READ_ATTEMPTS - 1 or _revision(db, image_id) == revision:
            return revision, rows


READ_ATTEMPTS = 5


def _revision(db: Database, image_id: int) -> int | None:
    with db.session() as session:
        return session.scalar(select(Image.revision).where(Image.id == image_id))


def _read(db: Database, image_id: int, states: Iterable[str] | None, decode_masks: bool) -> tuple[int, list[dict]]:
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


def _require_revision(seen_revision, needs: str, then: str) -> None:
    """The revision a change starts from, which saves and undo require (db.checks.is_integer, from 0): else a
    WorkbenchError saying what ``needs`` it and what to do (``then``)."""
    if isinstance(seen_revision, Seen):
        seen_revision = seen_revision.revision
    if not is_integer(seen_revision) or seen_revision < 0:
        raise WorkbenchError(f"{needs} (seen_revision, a whole number from 0), not {seen_revision!r}: {then}")


def save_annotations(db: Database, image_id: int, instances: list[InstanceData], *, seen_revision: int,
                     user: str | None = None, action: str = "save", proposing: bool = False,
                     deletes: Iterable[int] = (), edits: Iterable[int] = (),
                     created: list[int] | None = None) -> int:
    """Make ``instances`` the image's annotations (those with an ``id`` are updated in place,
    the others added, the rest deleted). Returns the new revision. ``proposing``: a model's new proposals
    replace its unreviewed ones (recorded as replaced, not rejected; see db.fates).

    ``seen_revision``: the revision of the image that the caller's annotations were read at (required): when
    someone changed the image since, nothing is written but the caller's version, to the journal, and
    :class:`ConflictError` says so. A save without it would silently drop whatever was saved meanwhile
    (imports and scripts that own the image use :func:`save_annotations_unchecked`).

    ``deletes``: annotations the caller deletes by name (an instance it left out is otherwise deleted only if it
    was there at ``seen_revision``: one added since is someone else's, which the caller never saw). ``edits``:
    annotations the caller edits by name (a server-side edit of one instance): one someone else deleted since is
    a conflict even where the edit leaves it as the caller read it (else the edit would be acknowledged for an
    instance that is gone). ``created``:
    a list that gets the ids of the annotations this save added (the caller's new instances, in their order)."""
    _require_revision(seen_revision, f"a save of image {image_id} needs the revision its annotations were read "
                                     "at", "read the image first")
    return _save(db, image_id, instances, seen_revision, user=user, action=action, proposing=proposing,
                 deletes=set(deletes), edits=set(edits), created=created)


def save_annotations_unchecked(db: Database, image_id: int, instances: list[InstanceData], *,
                               user: str | None = None, action: str = "save") -> int:
    """:func:`save_annotations` without the revision check: only for imports and scripts that hold the image
    (nobody else edits it meanwhile), e.g. a benchmark setting up its data. Journalled like any save."""
    return _save(db, image_id, instances, None, user=user, action=action, proposing=False)


_CONTENT = ("category_id", "bbox_x", "bbox_y", "bbox_w", "bbox_h", "mask_rle", "iscrowd", "source",
            "model_version_id", "score", "review_state")  # what an instance is, for the merge (not who or when)


def _content(values: dict) -> tuple:
    return tuple(_plain(values.get(name)) for name in _CONTENT)


def _current(session, image_id: int) -> list[Annotation]:
    return list(session.scalars(select(Annotation).where(Annotation.image_id == image_id).order_by(Annotation.id)))


def _rows_at(session, image_id: int, seen: int, current: list[Annotation], now: int,
             own: frozenset[int] = frozenset()) -> dict[int, dict] | None:
    """The image's annotations at revision ``seen`` (journal rows by id) with the client's ``own`` changes since,
    rebuilt from ``current`` (those of revision ``now``) by applying the journal's other diffs since backwards;
    None when the journal does not hold every change since (one journalled before migration 0006, or a class
    merge or delete: not journalled per image)."""
    rows = {ann.id: _row(ann) for ann in current}
    entries = session.scalars(select(JournalEntry).where(
        JournalEntry.image_id == image_id, JournalEntry.revision >= seen, JournalEntry.action != "conflict")
        .order_by(JournalEntry.id.desc())).all()
    if sorted(entry.revision for entry in entries) != list(range(seen, now)):
        return None
    for entry in entries:  # newest first
        if entry.revision in own:
            continue
        if entry.content != "diff":
            return None
        for ann_id in entry.added or []:
            rows.pop(ann_id, None)
        for row in entry.snapshot or []:
            if all(name in row for name in _SNAPSHOT_FIELDS):  # deleted by the change: whole
                rows[row["id"]] = dict(row)
            elif row.get("id") in rows:  # modified by it: the fields it changed, as they were
                rows[row["id"]].update(row)
            else:
                return None
    return rows


@dataclass
class _Merged:
    instances: list[InstanceData]  # what to write (with their columns): the save's changes on top of the image now
    columns: list[dict]
    conflicts: list[int]           # instances the save changed that someone else changed (or deleted) since
    changes: list[dict]            # what the save changed, as journal rows ("id" None: new; a deletion: {"id",
    #                                "deleted"}; "conflict": one of ``conflicts``): a refused save's lost version


def _changed_since(known: dict[int, dict], now: dict[int, Annotation], ids) -> set[int]:
    """Of ``ids``, the instances someone changed, added or deleted between ``known`` and ``now``."""
    return {i for i in ids if (i in known) != (i in now)
            or (i in known and _content(known[i]) != _content(_row(now[i])))}


def _merge(base: dict[int, dict], current: list[Annotation], instances: list[InstanceData],
           columns: list[dict], deletes: set[int] = frozenset(), known: dict[int, dict] | None = None,
           edits: set[int] = frozenset()) -> _Merged:
    """Three-way merge of a save that started from ``base`` (the image's annotations at the revision it saw)
    with the image's annotations now: an instance the save left as it was (or made equal to what is there now)
    stays as it is now; one it changed or deleted takes its change, unless someone else changed or deleted it
    since (a conflict); instances it adds are added; instances others added since stay, unless the save
    ``deletes`` them by name (a conflict: it deletes what it cannot have seen); an instance the save ``edits`` by name
    that someone else deleted since is a conflict, changed by the save or not. ``known``: what the caller saw,
    when the instances were read later on the server (``base``): someone else's changes are those since ``known``."""
    now = {ann.id: ann for ann in current}
    known = base if known is None else known
    changed_since = _changed_since(known, now, known.keys() | now.keys())
    out = _Merged([], [], [], [])
    mentioned = set()

    def changed(values: dict, ann_id: int | None, conflict: bool = False) -> None:
        out.changes.append({**{k: _plain(v) for k, v in values.items()}, "id": ann_id, "conflict": conflict})

    def keep(ann: Annotation) -> None:  # as it is now (a pair that _apply leaves unchanged)
        out.instances.append(InstanceData(category_id=ann.category_id, id=ann.id))
        out.columns.append({name: getattr(ann, name) for name in _SNAPSHOT_FIELDS if name != "id"})

    for inst, values in zip(instances, columns):
        ann_id = inst.id
        if ann_id is None or (ann_id not in base and ann_id not in now):
            out.instances.append(inst)  # new
            out.columns.append(values)
            changed(values, None)
            continue
        mentioned.add(ann_id)
        mine = _content(values)
        as_now = ann_id in now and mine == _content(_row(now[ann_id]))
        if as_now or (ann_id in base and mine == _content(base[ann_id])):
            if ann_id in now:  # not changed by this save: as it is now (deleted by someone else: stays deleted)
                keep(now[ann_id])
            elif ann_id in edits:  # the instance this save edits is gone: tell its author, never "saved"
                changed(values, ann_id, conflict=True)
                out.conflicts.append(ann_id)
            continue
        changed(values, ann_id, conflict=ann_id in changed_since)
        if ann_id in changed_since:
            out.conflicts.append(ann_id)
            if ann_id in now:
                keep(now[ann_id])
            continue
        out.instances.append(inst)
        out.columns.append(values)
    for ann_id, ann in now.items():
        if ann_id in mentioned:
            continue
        deleted = ann_id in base or ann_id in deletes
        if deleted:
            out.changes.append({"id": ann_id, "deleted": True, "conflict": ann_id in changed_since})
        if deleted and ann_id not in changed_since:
            continue  # deleted by this save
        if deleted:  # deleted by this save, changed by someone else since
            out.conflicts.append(ann_id)
        keep(ann)  # added by someone else since (the save never saw it), or the conflict's
    out.conflicts.sort()
    return out


def _save(db: Database, image_id: int, instances: list[InstanceData], seen_revision: int | None, *,
          user: str | None, action: str, proposing: bool, recovered: int | None = None,
          deletes: set[int] = frozenset(), edits: set[int] = frozenset(),
          created: list[int] | None = None) -> int:
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
        seen, seen_revision, own, read = _unpack(seen_revision)
        if _bump(session, image_id, seen) is not None:
            current = _current(session, image_id)
        else:  # changed since the caller saw it: merge instance by instance, or refuse what conflicts
            attempt = session.begin_nested()
            image = _bump(session, image_id, None)  # holds the image while the merge reads it
            current = _current(session, image_id)
            known = _rows_at(session, image_id, seen_revision, current, image.revision - 1, own)
            base = known if read is None or known is None else _rows_at(session, image_id, read, current,
                                                                         image.revision - 1, own)
            merged = None if base is None else _merge(base, current, instances, columns, deletes, known, edits)
            if merged is None or merged.conflicts:
                attempt.rollback()
                image = session.get(Image, image_id)
                session.refresh(image)  # the revision as it is again (the bump was rolled back)
                lost = ([{**{k: _plain(v) for k, v in c.items()}, "id": inst.id} for c, inst in zip(columns, instances)]
                        if merged is None else merged.changes)
                entry = JournalEntry(image_id=image_id, revision=seen_revision, action="conflict",
                                     content="snapshot" if merged is None else "lost", user=user, snapshot=lost)
                session.add(entry)
                session.flush()
                conflict = ConflictError(image_id, seen_revision, image.revision, entry.id,
                                         None if merged is None else merged.conflicts)
            else:
                attempt.commit()
                instances, columns = merged.instances, merged.columns
        if conflict is None:
            revision, added = _apply(session, image, instances, columns, current, action, user)
            if created is not None:
                created.extend(ann.id for ann, _ in added)
            fates.record_changes(session, image, added, action="propose" if proposing else "save", user=user)
            if recovered is not None:  # a lost version put back: no longer offered
                session.get(JournalEntry, recovered).undone = True
    if conflict is not None:  # the losing version is committed to the journal; now tell the client
        raise conflict
    return revision


def _apply(session, image: Image, instances: list[InstanceData], columns: list[dict], current: list[Annotation],
           action: str, user: str | None) -> tuple[int, list[tuple[Annotation, InstanceData]]]:
    """Write the instances and journal the diff -> (the new revision, the added annotations, each with the
    InstanceData it was made from: its tool, mask start and the box it was given)."""
    image_id = image.id
    by_id = {ann.id: ann for ann in current}
    keep, added, modified = set(), [], []
    for inst, values in zip(instances, columns):
        ann = by_id.get(inst.id) if inst.id is not None else None
        if ann is None:
            added.append((Annotation(image_id=image_id, **values), inst))
            session.add(added[-1][0])
            continue
        keep.add(ann.id)
        if ann.mask_rle == values["mask_rle"]:
            values["mask_polygons"] = ann.mask_polygons  # unchanged mask keeps its polygons
        if all(getattr(ann, name) == value for name, value in values.items() if name not in _WHO):
            continue  # saved again unchanged: who made and who changed it stay as they are
        if ann.created_by is not None:
            values.pop("created_by")
        modified.append(_set(ann, values))
    gone = [ann for ann in current if ann.id not in keep]
    replaced = [_row(ann) for ann in gone] + modified
    if gone:
        session.execute(delete(Annotation).where(Annotation.id.in_([ann.id for ann in gone])))
    session.flush()  # the added annotations' ids
    _journal(session, image, action, user, replaced, [item[0].id for item in added])
    return image.revision, added


def set_review_state(db: Database, image_id: int, annotation_ids: Iterable[int], state: str, *,
                     seen_revision: int | None = None, user: str | None = None, hidden: Iterable[int] = (),
                     done: bool = False) -> int:
    """Accept or reject proposals (or reopen them): only the named annotations change. Returns the new
    revision. ``seen_revision``: the revision the caller saw (None: the image as it is now). ``done``: the image
    is done ("Done", db.fates.record_done): the ``hidden`` proposals (never drawn) get the fate hidden and every
    proposal of the image its best match with the final labels."""
    ids = list(annotation_ids)
    target = ReviewState(state)
    conflict = None
    seen, seen_revision, own, _ = _unpack(seen_revision)
    with db.session() as session:
        image = _bump(session, image_id, seen)
        if image is None:  # changed since the caller saw it: merged unless someone changed the named instances
            attempt = session.begin_nested()
            image = _bump(session, image_id, None)
            current = {ann.id: ann for ann in _current(session, image_id)}
            base = _rows_at(session, image_id, seen_revision, list(current.values()), image.revision - 1, own)
            clashes = None if base is None else sorted(_changed_since(base, current, set(ids)))
            if clashes is None or clashes:
                attempt.rollback()
                session.refresh(image)  # the revision as it is again (the bump was rolled back)
                entry = JournalEntry(image_id=image_id, revision=seen_revision, action="conflict", content="lost",
                                     user=user, snapshot=[{"id": i, "review_state": target.value,
                                                           "conflict": clashes is None or i in clashes}
                                                          for i in sorted(set(ids))])
                session.add(entry)
                session.flush()
                conflict = ConflictError(image_id, seen_revision, image.revision, entry.id, clashes or None)
            else:
                attempt.commit()
        if conflict is None:
            named = session.scalars(select(Annotation).where(Annotation.image_id == image_id, Annotation.id.in_(ids))
                                    .order_by(Annotation.id)).all() if ids else []
            changed = [before for before in (_set(ann, {"review_state": target, "updated_by": user})
                                             for ann in named) if len(before) > 1]
            _journal(session, image, "review", user, changed, [])
            session.flush()
            fates.record_changes(session, image, [], action="review", user=user)
            if done:
                fates.record_done(session, image, hidden)
            revision = image.revision
    if conflict is not None:  # the refused review is committed to the journal; now tell the client
        raise conflict
    return revision


def undo(db: Database, image_id: int, *, seen_revision: int, user: str | None = None) -> int:
    """Undo the newest change of the image that is not undone yet (a save or a review), if the image is still
    at ``seen_revision`` (the revision the caller saw; else :class:`ConflictError`, and nothing changes: a
    change saved meanwhile by someone else is never undone unseen). Returns the new revision.

    What the undo replaces is journalled in turn (action "undo"), so nothing saved ever leaves the journal."""
    _require_revision(seen_revision, f"an undo of image {image_id} needs the revision the image was seen at",
                      "reload the image")
    seen_revision = _unpack(seen_revision)[0]
    with db.session() as session:
        image = _bump(session, image_id, seen_revision)  # first: a concurrent change waits, then finds this one's
        if image is None:
            raise ConflictError(image_id, seen_revision, session.get(Image, image_id).revision, None)
        entry = session.scalars(select(JournalEntry).where(
            JournalEntry.image_id == image_id, JournalEntry.undone.is_(False),
            JournalEntry.action.in_(("save", "review"))).order_by(JournalEntry.id.desc()).limit(1)).first()
        if entry is None:
            raise WorkbenchError(f"nothing to undo on image {image_id}")
        current = {ann.id: ann for ann in session.scalars(select(Annotation).where(Annotation.image_id == image_id))}
        restore = entry.snapshot or []  # rows to put back: whole (deleted ones) or id + changed fields
        if entry.content == "snapshot":  # journalled before migration 0006: the whole image as it was
            remove = [ann_id for ann_id in current if ann_id not in {row.get("id") for row in restore}]
        else:
            remove = [ann_id for ann_id in entry.added or [] if ann_id in current]
        replaced = [_row(current[ann_id]) for ann_id in remove]
        if remove:
            session.execute(delete(Annotation).where(Annotation.id.in_(remove)))
        # an id that another annotation has now is restored under a new id (ids are not given again since
        # migration 0008; a database older than it may have given one again already)
        wanted = [row["id"] for row in restore if row.get("id") is not None and row["id"] not in current]
        taken = set(session.scalars(select(Annotation.id).where(Annotation.id.in_(wanted)))) if wanted else set()
        inserted, renamed = [], []
        for row in restore:
            values = _stored({name: value for name, value in row.items() if name in _SNAPSHOT_FIELDS})
            values["updated_by"] = user  # undoing is a change too
            ann = current.get(row.get("id"))
            if ann is not None and ann.id not in remove:
                values.pop("id", None)
                replaced.append(_set(ann, values))
            elif entry.content == "snapshot" or all(name in row for name in _SNAPSHOT_FIELDS):  # a whole row
                old_id = values.pop("id", None)
                if old_id is not None and old_id not in taken:
                    values["id"] = old_id
                inserted.append(Annotation(image_id=image_id, **values))
                session.add(inserted[-1])
                if old_id is not None and old_id in taken:
                    renamed.append((old_id, inserted[-1]))
            # else: a modified annotation that is gone now (its class was deleted): nothing to restore it to
        session.flush()
        if renamed:
            _rename_in_journal(session, image_id, {old: ann.id for old, ann in renamed})
        entry.undone = True
        _journal(session, image, "undo", user, replaced, [ann.id for ann in inserted])
        session.flush()
        fates.record_changes(session, image, [], action="undo", user=user)
        return image.revision


def _rename_in_journal(session, image_id: int, new_ids: dict[int, int]) -> None:
    """An annotation restored under a new id: the image's journal names it by that id from now on."""
    for entry in session.scalars(select(JournalEntry).where(JournalEntry.image_id == image_id)):
        if any(row.get("id") in new_ids for row in entry.snapshot or []):
            entry.snapshot = [dict(row, id=new_ids[row["id"]]) if row.get("id") in new_ids else row
                              for row in entry.snapshot]
        if any(ann_id in new_ids for ann_id in entry.added or []):
            entry.added = sorted(new_ids.get(ann_id, ann_id) for ann_id in entry.added)


def conflict_versions(db: Database, image_id: int, user: str | None = None) -> list[JournalEntry]:
    """The versions of ``user`` that lost a conflict on this image and were not recovered yet (newest first):
    nothing anyone saved is lost, and each person is offered only their own."""
    with db.session() as session:
        return list(session.scalars(select(JournalEntry).where(
            JournalEntry.image_id == image_id, JournalEntry.action == "conflict", JournalEntry.undone.is_(False),
            JournalEntry.user.is_(None) if user is None else JournalEntry.user == user)
            .order_by(JournalEntry.id.desc())))


def recover_lost(db: Database, image_id: int, *, seen_revision: int, user: str | None = None) -> int:
    """Put the caller's newest lost version of this image back: the changes its refused save or review made,
    onto the image as it is now (a deletion deletes, a review sets the state, a changed or new instance replaces
    the one there now or is added); every instance it did not change stays as it is now. A version lost before
    instance-level merges (the whole image as its save sent it) is the image's annotations again. The version is
    then no longer offered. Saved like any save from ``seen_revision`` (merged with what changed since; the
    instances its conflict was about must be as the caller saw them). -> the new revision."""
    _require_revision(seen_revision, f"recovering a lost version of image {image_id} needs the revision the image "
                                     "was seen at", "reload the image")
    entries = conflict_versions(db, image_id, user)
    if not entries:
        raise WorkbenchError("you have no lost version of this image to recover")
    entry = entries[0]
    read, rows = get_annotations(db, image_id, decode_masks=False)
    seen_revision = (seen_revision if isinstance(seen_revision, Seen) else Seen(int(seen_revision))).reading(read)
    current = {r["id"]: r for r in rows}
    if entry.content == "snapshot":  # the whole image, as the save that lost sent it
        data = [_lost_instance(row, current) for row in entry.snapshot]
    else:
        mine = {row["id"]: row for row in entry.snapshot if row.get("id") in current}
        data = []
        for ann_id, row in current.items():
            change = mine.get(ann_id)
            if change is None:
                data.append(InstanceData.from_row(row))
            elif not change.get("deleted"):
                data.append(_lost_instance(change, current) if all(k in change for k in _CONTENT) else
                            InstanceData.from_row(row, **{k: v for k, v in change.items()
                                                                  if k in ("review_state", "category_id")}))
        data += [_lost_instance(row, {}) for row in entry.snapshot  # new, or gone since: added
                 if row.get("id") not in current and not row.get("deleted") and all(k in row for k in _CONTENT)]
    return _save(db, image_id, data, seen_revision, user=user, action="save", proposing=False, recovered=entry.id)


def _lost_instance(row: dict, current: dict[int, dict]) -> InstanceData:
    """A journal row of a lost version as an instance to save (its id kept while that annotation exists)."""
    box = (row["bbox_x"], row["bbox_y"], row["bbox_x"] + row["bbox_w"], row["bbox_y"] + row["bbox_h"])
    return InstanceData(category_id=row["category_id"], box=box, mask_rle=row.get("mask_rle"), source=row["source"],
                        review_state=row["review_state"], score=row["score"], model_version_id=row["model_version_id"],
                        iscrowd=bool(row["iscrowd"]), id=row.get("id") if row.get("id") in current else None)
