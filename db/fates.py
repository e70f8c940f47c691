"""What became of every model proposal and every instance a person added by hand, and the active time of
image visits: the figures of "Model help" (per model version, per class).

``record_changes`` runs inside the transaction of every change of an image's annotations (save, review,
undo): it adds a row for each new proposal or hand-made instance and brings the image's rows up to date
with the annotations as they are now. Fates follow the annotations, so an undo puts them back too: a
proposal accepted, deleted and restored by undo is accepted again; an instance whose addition was undone
has no row. Recording never fails a save: a problem is logged and the save goes on.
"""

from __future__ import annotations

import logging
import math
from typing import Iterable

import numpy as np
from sqlalchemy import select

from db import masks
from db.engine import Database
from db.errors import WorkbenchError, shown
from db.models import Annotation, Fate, Image, ImageVisit, InstanceFate, ModelVersion, ReviewState, Source, utcnow

log = logging.getLogger(__name__)

TOOLS = ("box", "polygon", "brush", "grabcut", "other")  # how a person made an instance by hand
IDLE_LIMIT_S = 60.0  # a gap between two events of a visit longer than this is idle time, not work
MAX_EVENTS = 100_000  # events of one visit

_LIVE = {Fate.proposed, Fate.accepted, Fate.edited, Fate.kept}  # the annotation should exist


def check_tool(tool: str | None) -> str | None:
    if tool is not None and tool not in TOOLS:
        raise WorkbenchError(f"tool must be one of {', '.join(TOOLS)}, not {shown(tool)}")
    return tool


def _active_version_id(session) -> int | None:
    return session.scalars(select(ModelVersion.id).where(ModelVersion.is_active.is_(True))).first()


def _proposal_fate(row: InstanceFate, ann: Annotation, image: Image) -> tuple[Fate, float | None]:
    if ann.review_state == ReviewState.proposed:
        return Fate.proposed, None
    if ann.review_state == ReviewState.rejected:
        return Fate.rejected, None
    if ann.mask_rle == row.proposed_mask and ann.category_id == row.category_id:
        return Fate.accepted, None
    if ann.mask_rle is None or row.proposed_mask is None:
        return Fate.edited, 0.0 if ann.mask_rle != row.proposed_mask else 1.0
    same = ann.mask_rle == row.proposed_mask
    return Fate.edited, 1.0 if same else masks.iou(row.proposed_mask, ann.mask_rle, image.height, image.width)


def _update(session, image: Image, *, action: str, user: str | None) -> None:
    current = {ann.id: ann for ann in session.scalars(select(Annotation).where(Annotation.image_id == image.id)
                                                      .execution_options(populate_existing=True))}
    for row in session.scalars(select(InstanceFate).where(InstanceFate.image_id == image.id)):
        ann = current.get(row.annotation_id)
        reopened = row.fate == Fate.hidden and ann is not None and ann.review_state != ReviewState.rejected
        if ann is not None and (row.fate in _LIVE or row.fate == Fate.rejected or reopened or action == "undo"):
            if row.kind == "proposal":
                fate, iou = _proposal_fate(row, ann, image)
            else:
                fate, iou = Fate.kept, None
            final = ann.category_id if fate in (Fate.accepted, Fate.edited, Fate.kept) else None
        elif ann is None and row.fate in _LIVE:
            if action == "undo":  # its addition was undone: it never happened
                session.delete(row)
                continue
            if row.kind == "hand" or row.fate in (Fate.accepted, Fate.edited):
                fate = Fate.deleted
            else:
                fate = Fate.replaced if action == "propose" else Fate.rejected
            iou, final = row.iou, row.final_category_id
        else:
            continue
        if (fate, iou, final) != (row.fate, row.iou, row.final_category_id):
            row.fate, row.iou, row.final_category_id = fate, iou, final
            row.decided_by, row.decided_at = user, utcnow()


def record_changes(session, image: Image, added: Iterable[tuple[Annotation, object]], *,
                   action: str, user: str | None) -> None:
    """In the transaction of a change of ``image``'s annotations, after it was flushed: rows for the ``added``
    annotations (each with the db.annotations.InstanceData it was made from: the tool a person used, None when
    not said, the mask a box started from, a proposal's own box) and every
    fate of the image brought up to date; new proposals get their rank by score among those added. ``action``: save, propose (unreviewed proposals that go are replaced, not rejected), review or undo.
    Never raises: the change itself matters more than its record."""
    try:
        with session.begin_nested(), session.no_autoflush:  # a savepoint: a failure here leaves the change whole
            version = None
            added = list(added)
            proposals = sorted((ann for ann, inst in added if ann.source == Source.model and inst.tool is None),
                               key=lambda ann: -(ann.score or 0.0))
            rank = {id(ann): place for place, ann in enumerate(proposals, start=1)}
            for ann, inst in added:
                tool, start = inst.tool, inst.start
                if id(ann) in rank:  # (a box's model mask comes with its tool)
                    session.add(InstanceFate(image_id=image.id, annotation_id=ann.id, kind="proposal",
                                             model_version_id=ann.model_version_id, category_id=ann.category_id,
                                             score=ann.score, proposed_mask=ann.mask_rle, fate=Fate.proposed,
                                             rank=rank[id(ann)], created_by=user,
                                             given_box=None if inst.box is None else [round(float(v), 2)
                                                                                        for v in inst.box]))
                elif tool is not None or ann.source in (Source.drawn, Source.grabcut):
                    version = _active_version_id(session) if version is None else version
                    how = tool or ("grabcut" if ann.source == Source.grabcut else "other")
                    session.add(InstanceFate(image_id=image.id, annotation_id=ann.id, kind="hand", tool=how,
                                             model_version_id=version or None, category_id=ann.category_id,
                                             final_category_id=ann.category_id, fate=Fate.kept, start=start,
                                             created_by=user, given_box=None if start is None or inst.box is None
                                             else [round(float(v), 2) for v in inst.box]))
            session.flush()
            _update(session, image, action=action, user=user)
    except Exception:  # noqa: BLE001 (logged; the save goes on without its record)
        log.exception("recording the fates of image %s failed (the change itself is saved)", image.id)


def record_done(session, image: Image, hidden: Iterable[int]) -> None:
    """The image is done: the ``hidden`` proposals (under their threshold, never drawn) get the fate hidden
    instead of rejected, and every proposal of the image gets ``match_iou``, its best mask IoU with the image's
    final labels (accepted annotations), and that label's class: what showing it was worth, the record
    services.payoff chooses thresholds from. Never raises (as record_changes)."""
    hidden = set(hidden)
    try:
        with session.begin_nested(), session.no_autoflush:
            labels = [ann for ann in session.scalars(select(Annotation).where(
                Annotation.image_id == image.id, Annotation.review_state == ReviewState.accepted))
                if ann.mask_rle is not None]
            for row in session.scalars(select(InstanceFate).where(InstanceFate.image_id == image.id,
                                                                  InstanceFate.kind == "proposal")):
                if row.annotation_id in hidden and row.fate == Fate.rejected:
                    row.fate = Fate.hidden
                if row.proposed_mask is None or row.fate in (Fate.replaced,):
                    continue
                overlaps = masks.ious([row.proposed_mask], [ann.mask_rle for ann in labels], image.height,
                                      image.width)[0]  # one call against every label
                best = int(np.argmax(overlaps)) if labels else None
                if best is None or overlaps[best] <= 0:
                    row.match_iou, row.match_category_id = 0.0, None
                else:
                    row.match_iou, row.match_category_id = round(float(overlaps[best]), 4), labels[best].category_id
    except Exception:  # noqa: BLE001 (logged; "done" goes on without the record)
        log.exception("recording what the proposals of image %s were worth failed", image.id)


def mark_done(db: Database, image_id: int) -> None:
    """An image done with no proposal left to close: its proposals' worth recorded (record_done)."""
    with db.session() as session:
        image = session.get(Image, image_id)
        if image is not None:
            record_done(session, image, ())


def add_clicks(db: Database, image_id: int, annotation_id: int, clicks: int) -> None:
    """Refine clicks spent on an instance (its newest fate row), for the choice of a box's mask start."""
    with db.session() as session:
        row = session.scalars(select(InstanceFate).where(InstanceFate.image_id == image_id,
                                                         InstanceFate.annotation_id == annotation_id)
                              .order_by(InstanceFate.id.desc())).first()
        if row is not None:
            row.clicks = (row.clicks or 0) + int(clicks)


def given_box(db: Database, image_id: int, annotation_id: int) -> list[float] | None:
    """The box an instance was made from (x1, y1, x2, y2): the model's for a proposal, the one a person drew for a
    box (its annotation's box is its mask's); None if unknown."""
    with db.session() as session:
        return session.scalars(select(InstanceFate.given_box).where(
            InstanceFate.image_id == image_id, InstanceFate.annotation_id == annotation_id)
            .order_by(InstanceFate.id.desc())).first()


def proposal_records(db: Database, version_id: int) -> list[dict]:
    """The version's proposals whose image is done: score, rank, category, match_iou, match_category_id."""
    with db.session() as session:
        return [{"image_id": r.image_id, "score": r.score or 0.0, "rank": r.rank, "category_id": r.category_id,
                 "match_iou": r.match_iou, "match_category_id": r.match_category_id}
                for r in session.scalars(select(InstanceFate).where(
                    InstanceFate.model_version_id == version_id, InstanceFate.kind == "proposal",
                    InstanceFate.match_iou.is_not(None)).order_by(InstanceFate.id))]


def box_start_records(db: Database, version_id: int | None) -> list[dict]:
    """Instances made from a box while ``version_id`` was active and still kept: class, start, clicks."""
    with db.session() as session:
        return [{"category_id": r.final_category_id or r.category_id, "start": r.start, "clicks": r.clicks or 0}
                for r in session.scalars(select(InstanceFate).where(
                    InstanceFate.model_version_id == version_id, InstanceFate.kind == "hand",
                    InstanceFate.fate == Fate.kept, InstanceFate.start.is_not(None)))]


# ---- active time -------------------------------------------------------------------------------------------
def active_time(event_times: list[float], idle_limit: float = IDLE_LIMIT_S) -> tuple[float, float]:
    """(active, idle) seconds of a visit with these event times (seconds, any origin): the gaps between
    consecutive events, those longer than ``idle_limit`` counted as idle."""
    times = sorted(event_times)
    gaps = [b - a for a, b in zip(times, times[1:])]
    return sum(g for g in gaps if g <= idle_limit), sum(g for g in gaps if g > idle_limit)


def record_visit(db: Database, image_id: int, event_times: list, *, user: str | None = None) -> dict:
    """Store a visit of an image (client event times in seconds, open ... done) -> its active and idle seconds."""
    if not isinstance(event_times, (list, tuple)) or len(event_times) < 2:
        raise WorkbenchError("send the visit's event times as a list of at least 2 numbers (seconds: open ... done)")
    if len(event_times) > MAX_EVENTS:
        raise WorkbenchError(f"a visit has at most {MAX_EVENTS} events, not {len(event_times)}; send it in parts")
    times = []
    for value in event_times:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise WorkbenchError(f"event times must be finite numbers (seconds), not {shown(value)}")
        times.append(float(value))
    active, idle = active_time(times)
    with db.session() as session:
        if session.get(Image, image_id) is None:
            raise WorkbenchError(f"there is no image {image_id}")
        session.add(ImageVisit(image_id=image_id, model_version_id=_active_version_id(session), user=user,
                               events=len(times), active_seconds=active, idle_seconds=idle))
    return {"image_id": image_id, "active_seconds": active, "idle_seconds": idle, "events": len(times)}


# ---- read back ---------------------------------------------------------------------------------------------
def fate_rows(db: Database) -> list[dict]:
    """Every recorded proposal and hand-made instance as plain dicts."""
    with db.session() as session:
        return [{"image_id": r.image_id, "annotation_id": r.annotation_id, "kind": r.kind, "tool": r.tool,
                 "model_version_id": r.model_version_id, "category_id": r.category_id,
                 "final_category_id": r.final_category_id, "score": r.score, "fate": r.fate.value, "iou": r.iou,
                 "match_iou": r.match_iou, "rank": r.rank, "start": r.start, "clicks": r.clicks}
                for r in session.scalars(select(InstanceFate).order_by(InstanceFate.id))]


def visit_rows(db: Database) -> list[dict]:
    with db.session() as session:
        return [{"image_id": v.image_id, "model_version_id": v.model_version_id, "user": v.user, "events": v.events,
                 "active_seconds": v.active_seconds, "idle_seconds": v.idle_seconds}
                for v in session.scalars(select(ImageVisit).order_by(ImageVisit.id))]
