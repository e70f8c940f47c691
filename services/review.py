"""The review canvas's edits: a batch of edits a person made in the browser, applied in order through the
workbench's revision-checked saves (each edit is one revision). Every edit of the batch is merged against the
revision the browser saw plus the batch's own edits before it (db.annotations.Seen): what others changed
meanwhile on other instances merges, a change of an instance someone else changed since is a conflict, which
stops the batch; the losing edit is kept in the journal as with any other save.

An edit is a dict with a ``kind``:
``review`` {ids, state}; ``delete`` {ids}; ``class`` {id, category_id}; ``accept_all`` {threshold};
``mask`` {id or temp_id, category_id, counts, tool} (compressed COCO RLE of the whole image; brush, eraser
or polygon); ``box`` {temp_id, category_id, box: [x1, y1, x2, y2]} (its mask: the model's, else GrabCut);
``refine`` {id, positive, negative} (clicks, (x, y) image pixels: this is the object / this is not; GrabCut
from the current mask, see Workbench.refine_with_clicks); ``undo`` (revision-checked like every edit);
``propose``; ``recover``.
New instances carry a negative ``temp_id`` chosen by the browser; the result maps them to the annotation ids
they got, and later edits of the same batch may name them by that temp id.

Every value of an edit is checked as the headless API checks it (services.wire: ids, boxes, points,
thresholds) before it is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from db.annotations import ConflictError, Seen, get_annotations
from db.errors import WorkbenchError
from services import wire
from services.proposals import MAX_BOXES

EDIT_KINDS = ("review", "delete", "class", "accept_all", "mask", "box", "refine", "undo", "propose", "recover",
              "keep_box")
TOOLS = ("brush", "eraser", "polygon")
MAX_EDITS = 500  # in one batch
COSTLY_KINDS = ("box", "refine", "propose", "keep_box")  # edits that run GrabCut or the model: at most MAX_BOXES in one batch


@dataclass
class EditsResult:
    revision: int | None                # the image's revision after the edits that were applied
    applied: int = 0                    # edits applied, in order
    created: dict[int, int] = field(default_factory=dict)  # temp id -> annotation id
    proposals: list = field(default_factory=list)          # services.proposals.ProposalResult of propose edits
    error: Exception | None = None      # why the batch stopped early (a ConflictError or WorkbenchError)


def _ids(image_id: int, db) -> set[int]:
    return {row["id"] for row in get_annotations(db, image_id, decode_masks=False)[1]}


def apply_edits(workbench, image_id: int, edits, seen_revision: int | None, user: str | None = None) -> EditsResult:
    """Apply ``edits`` (see the module's doc) to the image in order, starting from ``seen_revision``."""
    if not isinstance(edits, list) or len(edits) > MAX_EDITS:
        raise WorkbenchError(f"edits must be a list of at most {MAX_EDITS} objects")
    costly = sum(isinstance(edit, dict) and edit.get("kind") in COSTLY_KINDS for edit in edits)
    if costly > MAX_BOXES:  # refused before any is applied: each runs GrabCut or the model
        raise WorkbenchError(f"{costly} box, refine and propose edits in one batch: at most {MAX_BOXES} (each runs "
                             f"GrabCut or the model); send the others in the next batch")
    result = EditsResult(revision=seen_revision)
    seen = None if seen_revision is None else Seen(int(seen_revision))
    for index, edit in enumerate(edits):
        try:
            _apply_one(workbench, image_id, edit, index, result, user, seen)
        except (WorkbenchError, ValueError, OSError) as exc:
            result.error = exc
            if isinstance(exc, ConflictError):
                result.revision = exc.current
            break
        result.applied += 1
        if seen is not None and result.revision is not None:
            seen = seen.after(result.revision)  # the batch's own change: never a conflict with its next edits
    return result


def _apply_one(wb, image_id: int, edit, index: int, result: EditsResult, user: str | None,
               seen: Seen | None) -> None:
    if not isinstance(edit, dict) or edit.get("kind") not in EDIT_KINDS:
        raise WorkbenchError(f"edit {index} must be an object whose kind is one of {', '.join(EDIT_KINDS)}")
    kind, rev = edit["kind"], seen

    def annotation_id(value) -> int:  # an annotation id, or a temp id of an instance made earlier in the batch
        number = wire.temporary_or_strict_id(value, f"edit {index}: an instance id")
        if number < 0:
            if number not in result.created:
                raise WorkbenchError(f"edit {index}: instance {number} was never saved; draw it again")
            return result.created[number]
        return number

    # a new instance's temp id, checked before anything is saved
    temp = None if edit.get("temp_id") is None else wire.temporary_or_strict_id(edit["temp_id"],
                                                                                f"edit {index}: temp_id")

    def made(before: set[int]) -> None:  # the annotation a new-instance edit made gets its temp id's mapping
        new = sorted(_ids(image_id, wb.db) - before)
        if temp is not None and len(new) == 1:
            result.created[temp] = new[0]

    if kind == "review":
        if edit.get("state") not in ("accepted", "rejected", "proposed"):
            raise WorkbenchError(f"edit {index}: state must be accepted, rejected or proposed")
        ids = wire.listed(edit.get("ids"), f"edit {index}: ids", item="instance ids")
        result.revision = wb.review(image_id, [annotation_id(i) for i in ids], edit["state"], rev, user)
    elif kind == "delete":
        for value in wire.listed(edit.get("ids"), f"edit {index}: ids", item="instance ids"):
            result.revision = wb.delete_instance(image_id, annotation_id(value), rev, user)
            rev = rev.after(result.revision) if rev is not None else None
    elif kind == "class":
        result.revision = wb.set_category(image_id, annotation_id(edit.get("id")), edit.get("category_id"), rev, user)
    elif kind == "accept_all":
        threshold = edit.get("threshold", 0.0)  # None: the proposals the model's thresholds show
        threshold = None if threshold is None else wire.fraction(threshold, f"edit {index}: threshold")
        result.revision, _ = wb.accept_all(image_id, threshold, rev, user)
    elif kind == "mask":
        if edit.get("tool") not in TOOLS:
            raise WorkbenchError(f"edit {index}: tool must be one of {', '.join(TOOLS)}")
        counts = edit.get("counts")
        if not isinstance(counts, str) or not counts:
            raise WorkbenchError(f"edit {index}: counts must be a compressed COCO RLE string")
        target = None if edit.get("id") is None else annotation_id(edit["id"])
        before = _ids(image_id, wb.db)
        result.revision = wb.save_mask(image_id, target, edit.get("category_id"), None, rev, user,
                                       tool="polygon" if edit["tool"] == "polygon" else "brush", counts=counts)
        if target is None:
            made(before)
    elif kind == "box":  # checked and clipped to the image before the model or GrabCut sees it
        info = wb.image_info(image_id)
        box = wire.clipped_box(edit.get("box"), info["width"], info["height"], f"edit {index}: box")
        before = _ids(image_id, wb.db)
        category_id = wb.category_id(edit.get("category_id"))
        result.revision, sources = wb.add_boxes(image_id, [(category_id, box)], box_only=False, seen_revision=rev,
                                                user=user)
        made(before)
    elif kind == "refine":
        info = wb.image_info(image_id)
        positive, negative = (wire.points_in_image(edit.get(key), info["width"], info["height"], f"edit {index}: {key}")
                              for key in ("positive", "negative"))
        result.revision = wb.refine_with_clicks(image_id, annotation_id(edit.get("id")), positive, negative, rev,
                                                user)
    elif kind == "keep_box":
        result.revision = wb.keep_box(image_id, annotation_id(edit.get("id")), rev, user)
    elif kind == "undo":
        result.revision = wb.undo(image_id, rev, user)
    elif kind == "propose":
        proposed = wb.propose(image_id, seen_revision=rev, user=user)
        result.revision = proposed.revision
        result.proposals.append(proposed)
    elif kind == "recover":
        result.revision = wb.recover_conflict(image_id, rev, user)
