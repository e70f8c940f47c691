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

from db.annotations import ConflictError, Seen
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


@dataclass
class _Edit:
    """One edit of a batch as its handler gets it: the workbench, the image, the edit, its place in the batch,
    the batch's result so far, the user and the revision the edit starts from (db.annotations.Seen)."""
    wb: object
    image_id: int
    edit: dict
    index: int
    result: EditsResult
    user: str | None
    seen: Seen | None

    def annotation_id(self, value) -> int:
        """An annotation id, or the temp id of an instance made earlier in the batch."""
        number = wire.temporary_or_strict_id(value, f"edit {self.index}: an instance id")
        if number < 0:
            if number not in self.result.created:
                raise WorkbenchError(f"edit {self.index}: instance {number} was never saved; draw it again")
            return self.result.created[number]
        return number

    def ids(self) -> list[int]:
        return [self.annotation_id(i) for i in wire.listed(self.edit.get("ids"), f"edit {self.index}: ids",
                                                            item="instance ids")]

    def temp_id(self) -> int | None:
        """A new instance's temp id, checked before anything is saved."""
        value = self.edit.get("temp_id")
        return None if value is None else wire.temporary_or_strict_id(value, f"edit {self.index}: temp_id")

    def made(self, temp: int | None, created: list[int]) -> None:
        """The annotation a new-instance edit made (the save says its id) answers to its temp id."""
        if temp is not None and len(created) == 1:
            self.result.created[temp] = created[0]


def _review(e: _Edit) -> None:
    if e.edit.get("state") not in ("accepted", "rejected", "proposed"):
        raise WorkbenchError(f"edit {e.index}: state must be accepted, rejected or proposed")
    e.result.revision = e.wb.review(e.image_id, e.ids(), e.edit["state"], e.seen, e.user)


def _delete(e: _Edit) -> None:
    seen = e.seen
    for ann_id in e.ids():
        e.result.revision = e.wb.delete_instance(e.image_id, ann_id, seen, e.user)
        seen = seen.after(e.result.revision) if seen is not None else None


def _class(e: _Edit) -> None:
    e.result.revision = e.wb.set_category(e.image_id, e.annotation_id(e.edit.get("id")), e.edit.get("category_id"),
                                          e.seen, e.user)


def _accept_all(e: _Edit) -> None:
    threshold = e.edit.get("threshold", 0.0)  # None: the proposals the model's thresholds show
    threshold = None if threshold is None else wire.fraction(threshold, f"edit {e.index}: threshold")
    e.result.revision, _ = e.wb.accept_all(e.image_id, threshold, e.seen, e.user)


def _mask(e: _Edit) -> None:
    if e.edit.get("tool") not in TOOLS:
        raise WorkbenchError(f"edit {e.index}: tool must be one of {', '.join(TOOLS)}")
    counts = e.edit.get("counts")
    if not isinstance(counts, str) or not counts:
        raise WorkbenchError(f"edit {e.index}: counts must be a compressed COCO RLE string")
    temp = e.temp_id()
    target = None if e.edit.get("id") is None else e.annotation_id(e.edit["id"])
    created: list[int] = []
    e.result.revision = e.wb.save_mask(e.image_id, target, e.edit.get("category_id"), None, e.seen, e.user,
                                       tool="polygon" if e.edit["tool"] == "polygon" else "brush", counts=counts,
                                       created=created)
    if target is None:
        e.made(temp, created)


def _box(e: _Edit) -> None:  # checked and clipped to the image before the model or GrabCut sees it
    temp = e.temp_id()
    info = e.wb.image_info(e.image_id)
    box = wire.clipped_box(e.edit.get("box"), info["width"], info["height"], f"edit {e.index}: box")
    category_id = e.wb.category_id(e.edit.get("category_id"))
    created: list[int] = []
    e.result.revision, _ = e.wb.add_boxes(e.image_id, [(category_id, box)], box_only=False, seen_revision=e.seen,
                                          user=e.user, created=created)
    e.made(temp, created)


def _refine(e: _Edit) -> None:
    info = e.wb.image_info(e.image_id)
    positive, negative = (wire.points_in_image(e.edit.get(key), info["width"], info["height"],
                                               f"edit {e.index}: {key}") for key in ("positive", "negative"))
    e.result.revision = e.wb.refine_with_clicks(e.image_id, e.annotation_id(e.edit.get("id")), positive, negative,
                                                e.seen, e.user)


def _keep_box(e: _Edit) -> None:
    e.result.revision = e.wb.keep_box(e.image_id, e.annotation_id(e.edit.get("id")), e.seen, e.user)


def _undo(e: _Edit) -> None:
    e.result.revision = e.wb.undo(e.image_id, e.seen, e.user)


def _propose(e: _Edit) -> None:
    proposed = e.wb.propose(e.image_id, seen_revision=e.seen, user=e.user)
    e.result.revision = proposed.revision
    e.result.proposals.append(proposed)


def _recover(e: _Edit) -> None:
    e.result.revision = e.wb.recover_conflict(e.image_id, e.seen, e.user)


EDIT_HANDLERS = {"review": _review, "delete": _delete, "class": _class, "accept_all": _accept_all, "mask": _mask,
                 "box": _box, "refine": _refine, "undo": _undo, "propose": _propose, "recover": _recover,
                 "keep_box": _keep_box}  # an edit's kind -> what applies it
assert set(EDIT_HANDLERS) == set(EDIT_KINDS)


def _apply_one(wb, image_id: int, edit, index: int, result: EditsResult, user: str | None,
               seen: Seen | None) -> None:
    if not isinstance(edit, dict) or edit.get("kind") not in EDIT_HANDLERS:
        raise WorkbenchError(f"edit {index} must be an object whose kind is one of {', '.join(EDIT_KINDS)}")
    EDIT_HANDLERS[edit["kind"]](_Edit(wb, image_id, edit, index, result, user, seen))
