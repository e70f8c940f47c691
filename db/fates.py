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
        if ann is not None and (row.fate in _LIVE or row.fate == Fate.rejected or action == "undo"):
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


def record_changes(session, image: Image, added: Iterable[tuple[Annotation, str | None]], *, action: str,
                   user: str | None) -> None:
    """In the transaction of a change of ``image``'s annotations, after it was flushed: rows for the ``added``
    annotations (with the tool a person used, None when not said) and every fate of the image brought up to
    date. ``action``: save, propose (unreviewed proposals that go are replaced, not rejected), review or undo.
    Never raises: the change itself matters more than its record."""
    try:
        with session.begin_nested(), session.no_autoflush:  # a savepoint: a failure here leaves the change whole
            version = None
            for ann, tool in added:
                if ann.source == Source.model and tool is None:  # (a box's model mask comes with its tool)
                    session.add(InstanceFate(image_id=image.id, annotation_id=ann.id, kind="proposal",
                                             model_version_id=ann.model_version_id, category_id=ann.category_id,
                                             score=ann.score, proposed_mask=ann.mask_rle, fate=Fate.proposed,
                                             created_by=user))
                elif tool is not None or ann.source in (Source.drawn, Source.grabcut):
                    version = _active_version_id(session) if version is None else version
                    how = tool or ("grabcut" if ann.source == Source.grabcut else "other")
                    session.add(InstanceFate(image_id=image.id, annotation_id=ann.id, kind="hand", tool=how,
                                             model_version_id=version or None, category_id=ann.category_id,
                                             final_category_id=ann.category_id, fate=Fate.kept, created_by=user))
            session.flush()
            _update(session, image, action=action, user=user)
    except Exception:  # noqa: BLE001 (logged; the save goes on without its record)
        log.exception("recording the fates of image %s failed (the change itself is saved)", image.id)


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
                 "final_category_id": r.final_category_id, "score": r.score, "fate": r.fate.value, "iou": r.iou}
                for r in session.scalars(select(InstanceFate).order_by(InstanceFate.id))]


def visit_rows(db: Database) -> list[dict]:
    with db.session() as session:
        return [{"image_id": v.image_id, "model_version_id": v.model_version_id, "user": v.user, "events": v.events,
                 "active_seconds": v.active_seconds, "idle_seconds": v.idle_seconds}
                for v in session.scalars(select(ImageVisit).order_by(ImageVisit.id))]
