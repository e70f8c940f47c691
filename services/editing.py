"""Every annotation edit, in one place: the :class:`Editor` the facade (services.workbench.Workbench) builds and
hands out as ``workbench.editor``. The API's saves, the Draw tab's boxes, the review canvas's batches and the
server's read-compute-saves (delete, class, mask, refine, keep box, accept all, done, recover) all go through it,
each one revision-checked save (db.annotations.save_annotations / set_review_state).

What an edit starts from is one type, :data:`SeenRevision`: a client's revision (an int from the API or the page;
None: the image as it is now) or, inside a batch of the canvas's edits, a db.annotations.Seen that also knows the
batch's own changes. :func:`as_seen` turns either into a Seen once; a read-compute-save then merges against the
revision its rows were read at (:func:`_write_revision`): others' changes since the client looked are merged, or a
conflict where they touched the instance it edits, and a save landing while this one computes is merged, never
written over.

The review canvas's batch (:func:`apply_edits`): edits a person made in the browser, applied in order, each one
revision, dispatched by kind through :data:`EDIT_HANDLERS`. Every edit of the batch is merged against the revision
the browser saw plus the batch's own edits before it: what others changed meanwhile on other instances merges, a
change of an instance someone else changed since is a conflict, which stops the batch; the losing edit is kept in
the journal as with any other save.

An edit is a dict with a ``kind``:
``review`` {ids, state}; ``delete`` {ids}; ``class`` {id, category_id}; ``accept_all`` {threshold};
``mask`` {id or temp_id, category_id, counts, tool} (compressed COCO RLE of the whole image; brush, eraser
or polygon); ``box`` {temp_id, category_id, box: [x1, y1, x2, y2]} (its mask: the model's, else GrabCut);
``refine`` {id, positive, negative} (clicks, (x, y) image pixels: this is the object / this is not; GrabCut
from the current mask, see Editor.refine_with_clicks); ``keep_box`` {id}; ``undo`` (revision-checked like every
edit); ``propose``; ``recover``.
New instances carry a negative ``temp_id`` chosen by the browser; the result maps them to the annotation ids
they got, and later edits of the same batch may name them by that temp id. Every save says the ids it created.

Every value of an edit is checked as the headless API checks it (services.wire: ids, boxes, points,
thresholds) before it is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Union

import numpy as np

from db import fates, masks, queries, registry
from db.annotations import (ConflictError, InstanceData, Seen, conflict_versions, get_annotations, recover_lost,
                            save_annotations, set_review_state, undo)
from db.errors import WorkbenchError, isolated, shown
from db.models import ReviewState, Source
from partial_sup.grabcut import refine_mask
from services import box_masks, wire
from services.proposals import MAX_BOXES

SOURCES = tuple(source.value for source in Source)
REVIEW_STATES = tuple(state.value for state in ReviewState)
EDIT_KINDS = ("review", "delete", "class", "accept_all", "mask", "box", "refine", "undo", "propose", "recover",
              "keep_box")
TOOLS = ("brush", "eraser", "polygon")
MAX_EDITS = 500  # in one batch
COSTLY_KINDS = ("box", "refine", "propose", "keep_box")  # edits that run GrabCut or the model: at most MAX_BOXES in one batch

SeenRevision = Union[Seen, int, None]  # what an edit starts from (module doc)


def as_seen(value: SeenRevision) -> Seen | None:
    """What an edit starts from, as one type: a batch's Seen as it is; a client's revision checked
    (services.wire.revision: None, "" or negative: the image as it is now -> None)."""
    if isinstance(value, Seen):
        return value
    number = wire.revision(value)
    return None if number is None else Seen(number)


def _write_revision(seen_revision: SeenRevision, read: int) -> Seen | int:
    """The revision a read-compute-save is saved against: what the client saw, with the revision ``read`` its
    rows were read at (others' changes since the client looked are merged, or a conflict where they touched the
    instance it edits); without a client revision, ``read`` itself (a save that lands while this one computes is
    merged, never written over)."""
    seen = as_seen(seen_revision)
    return read if seen is None else seen.reading(read)


def mask_of(value, height: int, width: int) -> tuple[np.ndarray | None, str | None]:
    """A mask given through the API -> (mask, None), (None, compressed counts) or (None, None) for none: COCO
    RLE (compressed or not), polygons or an HxW 0/1 array, checked (db.masks.counts_from_segmentation) before
    anything decodes it. Compressed RLE, how the API hands masks out, is taken back as it is (no decode and
    encode per instance on every save)."""
    if value is None or value == [] or value == {}:
        return None, None
    if not isinstance(value, dict):
        try:
            array = np.asarray(value)
        except (ValueError, TypeError):  # ragged: polygons
            array = None
        if array is not None and array.ndim == 2 and array.shape == (height, width):
            if array.dtype.kind not in "biu" or not np.isin(array, (0, 1)).all():
                raise WorkbenchError("a mask given as an HxW array must hold only 0 and 1")
            return array.astype(bool), None
        if not (isinstance(value, list) and all(isinstance(part, list) for part in value)):
            raise WorkbenchError("a mask must be a COCO RLE {'size', 'counts'}, a list of polygons or an HxW 0/1 "
                                 "array")
    compressed = isinstance(value, dict) and isinstance(value.get("counts"), str)
    if compressed:
        value = {"size": [height, width], **value}  # the API's own output may leave out the image's size
    try:
        counts = masks.counts_from_segmentation(value, height, width)
    except ValueError as exc:
        raise WorkbenchError(f"a mask: {exc}") from None
    return (None, counts) if compressed else (masks.decode(counts, height, width), None)


def instance_from_json(item, index: int, height: int, width: int, category_of, versions: set[int]) -> InstanceData:
    """One instance of the API's save, checked field by field (services.wire): category (a class id or name),
    box [x1, y1, x2, y2] or bbox [x, y, w, h] (wire.box_in_image: finite, positive size, at most one image size
    outside the image; kept as sent), mask (db.masks.counts_from_segmentation), score (finite, 0..1), iscrowd
    (true/false or 0/1), id and model_version_id (wire.strict_id; a version that exists), source and
    review_state (their names)."""
    where = f"instance {index}"
    if not isinstance(item, dict):
        raise WorkbenchError(f"{where} is not an object")
    category = item.get("category_id", item.get("category"))
    if category is None:
        raise WorkbenchError(f"{where} has neither 'category_id' nor 'category'")
    if isinstance(category, float) or isinstance(category, bool):
        raise WorkbenchError(f"{where}: the class must be a class id (a whole number) or a name, not {category!r}")
    box = item.get("box")
    if box is None and item.get("bbox") is not None:
        bbox = item["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4):
            raise WorkbenchError(f"{where}: 'bbox' must be [x, y, width, height], not {shown(bbox)}")
        x, y, w, h = (wire.finite_number(v, f"{where}: a bbox value") for v in bbox)
        box = wire.box_in_image([x, y, x + w, y + h], width, height, f"{where}: 'bbox' as [x1, y1, x2, y2]")
    elif box is not None:
        box = wire.box_in_image(box, width, height, f"{where}: 'box'")
    mask, counts = mask_of(item.get("mask"), height, width)
    score = item.get("score")
    if score is not None:
        score = wire.fraction(score, f"{where}: 'score'")
    iscrowd = item.get("iscrowd", False)
    if iscrowd not in (True, False, 0, 1) or isinstance(iscrowd, float):
        raise WorkbenchError(f"{where}: 'iscrowd' must be true/false or 0/1, not {shown(iscrowd)}")
    ann_id = item.get("id")
    ann_id = None if ann_id is None else wire.strict_id(ann_id, f"{where}: 'id'", text=False)
    version = item.get("model_version_id")
    version = None if version is None else wire.strict_id(version, f"{where}: 'model_version_id'", text=False)
    if version is not None and version not in versions:
        raise WorkbenchError(f"{where}: there is no model version {version}")
    source, state = item.get("source", "drawn"), item.get("review_state", "accepted")
    if source not in SOURCES:
        raise WorkbenchError(f"{where}: 'source' must be one of {', '.join(SOURCES)}, not {shown(source)}")
    if state not in REVIEW_STATES:
        raise WorkbenchError(f"{where}: 'review_state' must be one of {', '.join(REVIEW_STATES)}, "
                             f"not {shown(state)}")
    return InstanceData(category_id=category_of(category), box=box, mask=mask, mask_rle=counts, source=source,
                        review_state=state, score=score, model_version_id=version, iscrowd=bool(iscrowd), id=ann_id)


def _check_box_count(count: int, where: str) -> None:
    """At most MAX_BOXES boxes get a mask in one call (each costs a GrabCut or a model run)."""
    if count > MAX_BOXES:
        raise WorkbenchError(f"{count} boxes {where}: at most {MAX_BOXES} boxes get a mask in one call; send the "
                             f"others in further calls of at most {MAX_BOXES}")




def _box_tool(changes: dict) -> str:
    """The tool of a box a person drew: "grabcut" when GrabCut alone made its mask, else "box"."""
    return "grabcut" if changes.get("start") == "grabcut" else "box"


@dataclass
class EditsResult:
    revision: int | None                # the image's revision after the edits that were applied
    applied: int = 0                    # edits applied, in order
    created: dict[int, int] = field(default_factory=dict)  # temp id -> annotation id
    proposals: list = field(default_factory=list)          # services.proposals.ProposalResult of propose edits
    error: Exception | None = None      # why the batch stopped early (a ConflictError or WorkbenchError)


def apply_edits(editor: "Editor", image_id: int, edits, seen_revision: int | None,
                user: str | None = None) -> EditsResult:
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
            _apply_one(editor, image_id, edit, index, result, user, seen)
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
    """One edit of a batch as its handler gets it: the editor, the image, the edit, its place in the batch,
    the batch's result so far, the user and the revision the edit starts from (db.annotations.Seen)."""
    editor: "Editor"
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
    e.result.revision = e.editor.review(e.image_id, e.ids(), e.edit["state"], e.seen, e.user)


def _delete(e: _Edit) -> None:
    seen = e.seen
    for ann_id in e.ids():
        e.result.revision = e.editor.delete_instance(e.image_id, ann_id, seen, e.user)
        seen = seen.after(e.result.revision) if seen is not None else None


def _class(e: _Edit) -> None:
    e.result.revision = e.editor.set_category(e.image_id, e.annotation_id(e.edit.get("id")), e.edit.get("category_id"),
                                          e.seen, e.user)


def _accept_all(e: _Edit) -> None:
    threshold = e.edit.get("threshold", 0.0)  # None: the proposals the model's thresholds show
    threshold = None if threshold is None else wire.fraction(threshold, f"edit {e.index}: threshold")
    e.result.revision, _ = e.editor.accept_all(e.image_id, threshold, e.seen, e.user)


def _mask(e: _Edit) -> None:
    if e.edit.get("tool") not in TOOLS:
        raise WorkbenchError(f"edit {e.index}: tool must be one of {', '.join(TOOLS)}")
    counts = e.edit.get("counts")
    if not isinstance(counts, str) or not counts:
        raise WorkbenchError(f"edit {e.index}: counts must be a compressed COCO RLE string")
    temp = e.temp_id()
    target = None if e.edit.get("id") is None else e.annotation_id(e.edit["id"])
    created: list[int] = []
    e.result.revision = e.editor.save_mask(e.image_id, target, e.edit.get("category_id"), None, e.seen, e.user,
                                       tool="polygon" if e.edit["tool"] == "polygon" else "brush", counts=counts,
                                       created=created)
    if target is None:
        e.made(temp, created)


def _box(e: _Edit) -> None:  # checked and clipped to the image before the model or GrabCut sees it
    temp = e.temp_id()
    info = queries.image_info(e.editor.db, e.image_id)
    box = wire.clipped_box(e.edit.get("box"), info["width"], info["height"], f"edit {e.index}: box")
    category_id = e.editor.category_id(e.edit.get("category_id"))
    created: list[int] = []
    e.result.revision, _ = e.editor.add_boxes(e.image_id, [(category_id, box)], box_only=False, seen_revision=e.seen,
                                          user=e.user, created=created)
    e.made(temp, created)


def _refine(e: _Edit) -> None:
    info = queries.image_info(e.editor.db, e.image_id)
    positive, negative = (wire.points_in_image(e.edit.get(key), info["width"], info["height"],
                                               f"edit {e.index}: {key}") for key in ("positive", "negative"))
    e.result.revision = e.editor.refine_with_clicks(e.image_id, e.annotation_id(e.edit.get("id")), positive, negative,
                                                e.seen, e.user)


def _keep_box(e: _Edit) -> None:
    e.result.revision = e.editor.keep_box(e.image_id, e.annotation_id(e.edit.get("id")), e.seen, e.user)


def _undo(e: _Edit) -> None:
    e.result.revision = e.editor.undo(e.image_id, e.seen, e.user)


def _propose(e: _Edit) -> None:
    proposed = e.editor.propose(e.image_id, seen_revision=e.seen, user=e.user)
    e.result.revision = proposed.revision
    e.result.proposals.append(proposed)


def _recover(e: _Edit) -> None:
    e.result.revision = e.editor.recover_conflict(e.image_id, e.seen, e.user)


EDIT_HANDLERS = {"review": _review, "delete": _delete, "class": _class, "accept_all": _accept_all, "mask": _mask,
                 "box": _box, "refine": _refine, "undo": _undo, "propose": _propose, "recover": _recover,
                 "keep_box": _keep_box}  # an edit's kind -> what applies it
assert set(EDIT_HANDLERS) == set(EDIT_KINDS)


def _apply_one(editor: "Editor", image_id: int, edit, index: int, result: EditsResult, user: str | None,
               seen: Seen | None) -> None:
    if not isinstance(edit, dict) or edit.get("kind") not in EDIT_HANDLERS:
        raise WorkbenchError(f"edit {index} must be an object whose kind is one of {', '.join(EDIT_KINDS)}")
    EDIT_HANDLERS[edit["kind"]](_Edit(editor, image_id, edit, index, result, user, seen))


class Editor:
    """Every annotation edit (module doc). Built by the facade with what edits need of it: the database, the
    photos' pixels (``rgb``: image id -> (info, HxWx3 uint8)), the model in memory (``models``: its masks for
    drawn boxes), which proposals a person is shown (``shown_proposals``: accept all and done act on those) and
    the facade's proposal run (``propose``: the canvas's "propose again")."""

    def __init__(self, db, *, rgb: Callable, models, shown_proposals: Callable, propose: Callable) -> None:
        self.db = db
        self.rgb = rgb
        self.models = models
        self.shown_proposals = shown_proposals
        self.propose = propose

    def category_id(self, value, names: dict[int, str] | None = None) -> int:
        """A class given by id, id text or name (any case); ``names`` (id -> name) saves a query per call."""
        names = queries.category_names(self.db) if names is None else names
        if isinstance(value, (int, str)) and not isinstance(value, bool):
            try:
                number = wire.strict_id(value, "a class id")  # 3 or "3"; not 3.0, True, "٣" or "1_0"
            except WorkbenchError:
                number = None  # perhaps a name; else said below with the classes there are
            if number in names:
                return number
        if isinstance(value, str):
            by_name = {n.lower(): i for i, n in names.items()}
            if value.strip().lower() in by_name:
                return by_name[value.strip().lower()]
        known = ", ".join(isolated(name) for name in list(names.values())[:20]) + (
            f" and {len(names) - 20} more" if len(names) > 20 else "")
        raise WorkbenchError(f"there is no class {shown(value, 60)}; add it in the Classes tab "
                             f"(classes: {known or 'none yet'})")

    def save_json(self, image_id: int, instances: list[dict], seen_revision: int | None, user: str | None = None,
                  tool: str | None = None) -> int:
        """The API's save: ``instances`` become the image's annotations (those with an ``id`` keep it).
        Every field is checked strictly (no silent casts): see :func:`instance_from_json`. ``tool`` (box,
        polygon, brush, grabcut, other): how a person made the new instances, recorded for "Model help"; an
        instance's own "tool" field says it for that one."""
        fates.check_tool(tool)
        if not isinstance(instances, list):
            raise WorkbenchError("instances must be a list of objects")
        info = queries.image_info(self.db, image_id)
        names = queries.category_names(self.db)
        versions = {v.id for v in registry.list_versions(self.db)}
        data = [instance_from_json(item, index, info["height"], info["width"],
                                   lambda value: self.category_id(value, names), versions)
                for index, item in enumerate(instances)]
        for item, inst in zip(instances, data):
            inst.tool = fates.check_tool(item.get("tool", tool))
        ids = [d.id for d in data if d.id is not None]
        if len(ids) != len(set(ids)):
            raise WorkbenchError(f"annotation id {next(i for i in ids if ids.count(i) > 1)} appears twice; each "
                                 "instance once")
        seen = wire.required_revision(seen_revision)
        return save_annotations(self.db, image_id, data, seen_revision=seen, user=user)

    def review(self, image_id: int, ids: list[int], state: str, seen_revision: SeenRevision,
               user: str | None = None) -> int:
        """Accept, reject or reopen the named instances (``seen_revision`` None: the image as it is now; only the
        named instances change)."""
        if not ids:
            raise WorkbenchError("select an instance first (click it on the image or pick it in the list)")
        return set_review_state(self.db, image_id, ids, state, seen_revision=seen_revision, user=user)

    def accept_all(self, image_id: int, review_threshold: float | None, seen_revision: SeenRevision,
                   user: str | None = None) -> tuple[int, int]:
        """Accept every proposal a person is shown: scoring at least ``review_threshold``, or with None those the
        model's policy shows (services.payoff) -> (revision, how many)."""
        revision, rows = get_annotations(self.db, image_id, states=["proposed"], decode_masks=False)
        shown, _ = self.shown_proposals(rows, review_threshold)
        ids = [r["id"] for r in rows if r["id"] in shown]
        if not ids:
            raise WorkbenchError("no proposals shown to accept" if review_threshold is None else
                                 f"no proposals with a score of at least {float(review_threshold):.2f} to accept")
        return self.review(image_id, ids, "accepted", _write_revision(seen_revision, revision), user), len(ids)

    def delete_instance(self, image_id: int, ann_id: int, seen_revision: SeenRevision, user: str | None = None) -> int:
        revision, rows = get_annotations(self.db, image_id, decode_masks=False)
        if not any(r["id"] == ann_id for r in rows):
            raise WorkbenchError(f"annotation {ann_id} is not on image {image_id} (anymore)")
        return save_annotations(self.db, image_id, [InstanceData.from_row(r) for r in rows if r["id"] != ann_id],
                                seen_revision=_write_revision(seen_revision, revision), user=user, deletes=[ann_id])

    def undo(self, image_id: int, seen_revision: SeenRevision, user: str | None = None) -> int:
        """Undo the image's newest change that is not undone yet, if the image is still at ``seen_revision``
        (the revision the person sees; otherwise a ConflictError: what someone else saved meanwhile is never
        undone unseen). What the undo replaces stays in the journal."""
        if seen_revision is None:
            raise WorkbenchError(f"undo needs the revision of the image you see: {wire.REVISION_NEEDED}")
        return undo(self.db, image_id, seen_revision=as_seen(seen_revision), user=user)

    def save_drawn_boxes(self, image_id: int, drawn: list[dict], scale: float, *, box_only: bool,
                         seen_revision: SeenRevision, user: str | None = None) -> tuple[int, list[str]]:
        """The Draw tab's boxes become the image's accepted annotations. ``drawn``: {"xmin", "ymin", "xmax",
        "ymax", "label", "id"} in the pixels of the image shown at ``scale``; label a class name or id; id the
        accepted annotation the box was drawn from (None for a new box). A new box is added as
        :meth:`add_boxes` says; a box moved or resized gets a new mask for its new box (the model's, else
        GrabCut; none when ``box_only`` or when it had none); a box whose class changed keeps its mask; an
        accepted annotation whose box is gone is deleted. Boxes are checked and clipped to the image
        (services.wire.clipped_box). -> (revision, what happened, one text per change)."""
        revision, rows = get_annotations(self.db, image_id, decode_masks=False)
        info = queries.image_info(self.db, image_id)
        by_id = {r["id"]: r for r in rows}
        names = queries.category_names(self.db)
        kept, changed, new = set(), {}, []
        for index, box in enumerate(wire.listed(drawn, "the drawn boxes", item="boxes")):
            what = f"drawn box {index + 1}"
            if not isinstance(box, dict):
                raise WorkbenchError(f"{what} is not a box; draw it again")
            if not box.get("label"):
                raise WorkbenchError("a drawn box has no class: click it and choose its class "
                                     "(add classes in the Classes tab)")
            category_id = self.category_id(box["label"], names)
            on_screen = [wire.finite_number(box.get(key), f"{what}: {key}") for key in ("xmin", "ymin", "xmax", "ymax")]

            def full():  # a new or moved box in image pixels, checked and clipped (an untouched one stays as it is)
                return wire.clipped_box([v / scale for v in on_screen], info["width"], info["height"], what)

            row = by_id.get(box.get("id"))
            if row is None or row["review_state"] != "accepted":
                new.append((category_id, full()))
                continue
            kept.add(row["id"])
            moved = any(abs(a * scale - b) > 1.0 for a, b in zip(row["box"], on_screen))  # beyond a shown pixel
            if moved or category_id != row["category_id"]:
                changed[row["id"]] = (category_id, full() if moved else None)
        removed = {r["id"] for r in rows if r["review_state"] == "accepted"} - kept
        if not new and not changed and not removed:
            raise WorkbenchError("nothing to save: draw a box with 'Create box' (and choose its class), move or "
                                 "delete one first")
        remasked = sum(box is not None and by_id[ann_id]["mask_rle"] is not None
                       for ann_id, (_, box) in changed.items())  # moved boxes with a mask get a new one
        if not box_only:
            _check_box_count(len(new) + remasked, "new or moved in one save")
        needs_masks = bool(new) or any(box is not None for _, box in changed.values())
        masked = self._box_masks(image_id, box_only) if needs_masks else None  # no image or model for deletions

        data, said = [], []
        for row in rows:
            if row["id"] in removed:
                said.append(f"#{row['id']} deleted")
                continue
            if row["id"] not in changed:
                data.append(InstanceData.from_row(row))
                continue
            category_id, box = changed[row["id"]]
            if box is None:  # the class alone changed: the mask stays
                data.append(InstanceData.from_row(row, category_id=category_id))
                said.append(f"#{row['id']} now {isolated(names[category_id])}")
            elif row["mask_rle"] is None:
                data.append(InstanceData.from_row(row, category_id=category_id, box=box))
                said.append(f"#{row['id']} moved (box only)")
            else:
                changes, how = masked(category_id, box)
                data.append(InstanceData.from_row(row, category_id=category_id, box=box, **changes))
                said.append(f"#{row['id']} moved ({how})")
        for category_id, box in new:
            changes, how = masked(category_id, box)
            data.append(InstanceData(category_id=category_id, box=box, tool=_box_tool(changes), **changes))
            said.append(f"{isolated(names[category_id])} added ({how})")
        revision = save_annotations(self.db, image_id, data, seen_revision=_write_revision(seen_revision, revision),
                                    user=user, edits=list(changed))
        return revision, said

    def add_boxes(self, image_id: int, boxes: list[tuple[int, tuple[float, float, float, float]]], *,
                  box_only: bool, seen_revision: SeenRevision, user: str | None = None,
                  created: list[int] | None = None) -> tuple[int, list[str]]:
        """Boxes a person drew (category id, x1 y1 x2 y2 in image pixels) become accepted annotations,
        with the active model's mask for that box and class (box-only classes included, through the
        weight transfer) or, without a model that knows the class, GrabCut. Each box is checked before any of
        them reaches the model (services.wire.clipped_box: finite, x1 < x2 and y1 < y2, at most one image size
        outside the image and overlapping it) and stored clipped to the image."""
        if not boxes:
            raise WorkbenchError("draw a box first (the 'Create box' tool), give it a class, then add it")
        _check_box_count(len(boxes), "in one call")
        info = queries.image_info(self.db, image_id)
        boxes = [(category_id, wire.clipped_box(box, info["width"], info["height"], f"box {index}"))
                 for index, (category_id, box) in enumerate(wire.listed(boxes, "boxes", item="boxes"))]
        masked = self._box_masks(image_id, box_only)
        revision, rows = get_annotations(self.db, image_id, decode_masks=False)
        new, sources = [], []
        for category_id, box in boxes:
            changes, how = masked(category_id, box)
            new.append(InstanceData(category_id=category_id, box=box, tool=_box_tool(changes), **changes))
            sources.append(how)
        revision = save_annotations(self.db, image_id, [InstanceData.from_row(r) for r in rows] + new,
                                    seen_revision=_write_revision(seen_revision, revision), user=user,
                                    created=created)
        return revision, sources

    def _box_masks(self, image_id: int, box_only: bool):
        """masked(category_id, box) -> (InstanceData fields, description) of a box a person drew on the image:
        a mask from the class's chosen start (services.box_masks: GrabCut, the active model's mask for that box
        and class, or GrabCut started from the model's soft mask; "... mask"), or no mask with ``box_only``
        ("box only")."""
        image = None if box_only else self.rgb(image_id)[1]
        version_id = None if box_only else self.models.active()[0]

        def masked(category_id: int, box) -> tuple[dict, str]:
            if box_only:
                return dict(mask=None, source="drawn", model_version_id=None, score=None), "box only"
            start = self.box_start(category_id)
            mask, used = box_masks.mask_for_box(image, box, category_id, self.models.masks_for_boxes, start)
            source = "model" if used == "model" else "grabcut"
            return (dict(mask=mask, source=source, model_version_id=version_id if used != "grabcut" else None,
                         score=None, start=used), f"{used} mask")

        return masked

    def box_start(self, category_id: int) -> str:
        """The mask start a box of this class gets (services.box_masks.choose_start): from the clicks the
        instances made from boxes needed while the active version was active, else from its val measurement."""
        version = registry.active_version(self.db)
        if version is None:
            return "grabcut"
        return box_masks.choose_start(fates.box_start_records(self.db, version.id),
                                      (version.metrics or {}).get("box_start"), int(category_id), model_knows=True)

    def keep_box(self, image_id: int, ann_id: int, seen_revision: SeenRevision, user: str | None = None) -> int:
        """Keep a proposal's box, not its mask: it becomes an accepted instance with the same id, class and box,
        its mask made again from the box as for a box a person drew (the class's start, services.box_masks);
        its fate is "edited". Instead of reject and redraw. -> the new revision."""
        ann_id = wire.strict_id(ann_id, "ann_id")
        revision, rows = get_annotations(self.db, image_id, decode_masks=False)
        row = next((r for r in rows if r["id"] == ann_id), None)
        if row is None:
            raise WorkbenchError(f"instance #{ann_id} is gone from image {image_id}; reload the image")
        if row["review_state"] != "proposed":
            raise WorkbenchError(f"instance #{ann_id} is not a proposal (it is {row['review_state']}): keep the box "
                                 "of a proposal; refine an instance with clicks instead")
        info = queries.image_info(self.db, image_id)
        model_box = fates.given_box(self.db, image_id, ann_id) or list(row["box"])  # the model's box, not its mask's
        box = wire.clipped_box(model_box, info["width"], info["height"], "the proposal's box")
        changes, _ = self._box_masks(image_id, box_only=False)(row["category_id"], box)
        changes.pop("start", None)
        changes.pop("model_version_id", None)  # it stays the proposal's version (its fate: edited)
        return self._save_one(image_id, rows, revision, ann_id, seen_revision, user, **changes, box=box,
                              review_state="accepted")

    def save_mask(self, image_id: int, ann_id: int | None, category, mask: np.ndarray | None,
                  seen_revision: SeenRevision, user: str | None = None, tool: str = "brush", *,
                  counts: str | None = None, created: list[int] | None = None) -> int:
        """A mask painted by a person replaces an annotation's mask (or makes a new annotation of ``category``,
        recorded as made with ``tool``: brush, polygon, grabcut, box or other): ``mask`` an (H, W) bool array,
        or ``counts`` the compressed COCO RLE of the image's size (the review canvas encodes its masks in the
        browser; checked before it is stored)."""
        fates.check_tool(tool)
        if counts is None and (mask is None or not mask.any()):
            raise WorkbenchError("the mask is empty: paint the object with the brush first")
        drawn = dict(mask=mask) if counts is None else dict(mask_rle=counts)
        revision, rows = get_annotations(self.db, image_id, decode_masks=False)
        if ann_id is not None:
            if not any(r["id"] == ann_id for r in rows):
                raise WorkbenchError(f"annotation {ann_id} is gone from image {image_id}; reload the image")
            return self._save_one(image_id, rows, revision, ann_id, seen_revision, user, **drawn, box=None,
                                  source="drawn", review_state="accepted", score=None, model_version_id=None)
        data = [InstanceData.from_row(r) for r in rows]
        data.append(InstanceData(category_id=self.category_id(category), **drawn, source="drawn", tool=tool))
        return save_annotations(self.db, image_id, data, seen_revision=_write_revision(seen_revision, revision),
                                user=user, created=created)

    def refine_with_clicks(self, image_id: int, ann_id: int, positive_points, negative_points,
                           seen_revision: SeenRevision, user: str | None = None) -> int:
        """Correct an instance's mask with clicks: ``positive_points`` "this is object", ``negative_points``
        "this is not", each a list of (x, y) in the image's full-resolution pixels. GrabCut starts from the
        current mask (a box-only instance: its box) inside the box it was made from (the box drawn, the model's box
        of a proposal; grown only to take in positive clicks), or, for a painted or imported mask, inside its own
        box enlarged a little, the clicked pixels (small disks) as hard labels (partial_sup.grabcut.refine_mask); no model needed. The instance becomes an
        accepted GrabCut mask (a proposal refined this way counts as edited). -> the new revision."""
        info = queries.image_info(self.db, image_id)
        height, width = info["height"], info["width"]
        positive = wire.points_in_image(positive_points, width, height, "positive_points")
        negative = wire.points_in_image(negative_points, width, height, "negative_points")
        if not positive and not negative:
            raise WorkbenchError("click the instance first: a left click on what is object, a right click on what "
                                 "is not")
        ann_id = wire.strict_id(ann_id, "ann_id")
        revision, rows = get_annotations(self.db, image_id, decode_masks=False)  # the rows the save starts from
        row = next((r for r in rows if r["id"] == ann_id), None)
        if row is None:
            raise WorkbenchError(f"instance #{ann_id} is gone from image {image_id}; reload the image")
        mask = None if row["mask_rle"] is None else masks.decode(row["mask_rle"], height, width)
        if mask is None:
            x1, y1, x2, y2 = (int(round(v)) for v in row["box"])
            mask = np.zeros((height, width), bool)
            mask[max(0, y1):y2, max(0, x1):x2] = True
        given = fates.given_box(self.db, image_id, ann_id)  # the box drawn, or the model's: the limit (a mask
        # painted or imported has none: its own box grown a little, partial_sup.grabcut.refine_mask)
        limit = None if given is None else [min(given[0], row["box"][0]), min(given[1], row["box"][1]),
                                            max(given[2], row["box"][2]), max(given[3], row["box"][3])]
        refined = refine_mask(self.rgb(image_id)[1], mask, positive, negative, limit_box=limit)
        if not refined.any():
            raise WorkbenchError("the clicks leave nothing of the instance; click on the object (left click) "
                                 "or delete the instance")
        revision = self._save_one(image_id, rows, revision, ann_id, seen_revision, user, mask=refined, box=None,
                                  source="grabcut", review_state="accepted", score=None, model_version_id=None)
        fates.add_clicks(self.db, image_id, ann_id, len(positive) + len(negative))
        return revision

    def set_category(self, image_id: int, ann_id: int, category, seen_revision: SeenRevision,
                     user: str | None = None) -> int:
        """Give an instance another class (a proposal given a class by a person is accepted)."""
        category_id = self.category_id(category)
        revision, rows = get_annotations(self.db, image_id, decode_masks=False)
        if not any(r["id"] == ann_id for r in rows):
            raise WorkbenchError(f"annotation {ann_id} is gone from image {image_id}; reload the image")
        return self._save_one(image_id, rows, revision, ann_id, seen_revision, user, category_id=category_id,
                              review_state="accepted")

    def _save_one(self, image_id: int, rows: list[dict], read: int, ann_id: int, seen_revision: SeenRevision,
                  user: str | None, **changes) -> int:
        """The edit of one named instance (class, keep box, refine, a mask painted over it): ``rows`` (read at
        revision ``read``) saved with ``changes`` on ``ann_id``, merged with what others saved since; a conflict
        where someone else changed that instance since, or deleted it (``edits``)."""
        data = [InstanceData.from_row(r, **changes) if r["id"] == ann_id else InstanceData.from_row(r) for r in rows]
        return save_annotations(self.db, image_id, data, seen_revision=_write_revision(seen_revision, read),
                                user=user, edits=[ann_id])

    def apply_edits(self, image_id: int, edits, seen_revision: int | None, user: str | None = None):
        """The review canvas's batch of edits, in order (apply_edits, EDIT_HANDLERS) -> EditsResult."""
        return apply_edits(self, wire.strict_id(image_id, "image_id"), edits,
                           wire.revision(seen_revision, "the revision"), user)

    def finish_image(self, image_id: int, seen_revision: SeenRevision, user: str | None = None,
                     review_threshold=None) -> dict:
        """"Done" with an image: the proposals nobody accepted are rejected (the image counts as done); those a
        person was never shown (``review_threshold`` None: the model's policy; else under that threshold) get the
        fate hidden, not rejected, and every proposal of the image is scored against the final labels
        (db.fates.record_done: the record that chooses the thresholds). -> {"revision", "rejected", "hidden"}."""
        revision, rows = get_annotations(self.db, image_id, decode_masks=False)
        proposed = [r for r in rows if r["review_state"] == "proposed"]
        shown, _ = self.shown_proposals(proposed, review_threshold)
        hidden = [r["id"] for r in proposed if r["id"] not in shown]
        if proposed:
            revision = set_review_state(self.db, image_id, [r["id"] for r in proposed], "rejected",
                                        seen_revision=_write_revision(seen_revision, revision), user=user,
                                        hidden=hidden, done=True)
        else:
            _write_revision(seen_revision, revision)
            fates.mark_done(self.db, image_id)
        return {"revision": revision, "rejected": len(proposed) - len(hidden), "hidden": len(hidden)}

    def conflicts(self, image_id: int, user: str | None = None) -> list[int]:
        """The lost versions of ``user`` on this image not recovered yet (journal entry ids, newest first): edits
        refused because someone else changed the same instances first."""
        return [entry.id for entry in conflict_versions(self.db, image_id, user)]

    def recover_conflict(self, image_id: int, seen_revision: SeenRevision, user: str | None = None) -> int:
        """Put the caller's newest lost version back onto the instances it conflicted with (db.annotations.
        recover_lost); ``seen_revision`` None: the image as it is now."""
        revision = get_annotations(self.db, image_id, decode_masks=False)[0]
        return recover_lost(self.db, image_id, seen_revision=_write_revision(seen_revision, revision), user=user)
