"""Editing the category list: add, rename, merge, delete (each one transaction, clear errors).

Changing a category's annotations (merge, delete) bumps the revision of every image that
had some, so a person who opened one of those images before gets a conflict message
instead of silently writing back the old category.
"""

from __future__ import annotations

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from db.engine import Database
from db.errors import WorkbenchError
from db.models import Annotation, Category, Image, JournalEntry

MAX_NAME = 200
ADD_ATTEMPTS = 5


def _clean(name: str) -> str:
    name = " ".join(str(name or "").split())
    if not name:
        raise WorkbenchError("a class needs a name")
    if len(name) > MAX_NAME:
        raise WorkbenchError(f"a class name has at most {MAX_NAME} characters")
    if name == "_background_":
        raise WorkbenchError("'_background_' is reserved; choose another name")
    return name


def _get(session, category_id: int) -> Category:
    category = session.get(Category, int(category_id))
    if category is None:
        raise WorkbenchError(f"there is no class {category_id}")
    return category


def _check_unique(session, name: str, except_id: int | None = None) -> None:
    clash = session.scalars(select(Category).where(func.lower(Category.name) == name.lower())).first()
    if clash is not None and clash.id != except_id:
        raise WorkbenchError(f"a class named {clash.name!r} already exists (id {clash.id}); "
                             "choose another name or merge into it")


def _bump_images_of(session, category_id: int) -> int:
    image_ids = select(Annotation.image_id).where(Annotation.category_id == category_id).distinct()
    result = session.execute(update(Image).where(Image.id.in_(image_ids)).values(revision=Image.revision + 1)
                             .execution_options(synchronize_session=False))
    return result.rowcount or 0


def _rewrite_journal(session, category_id: int, target_id: int | None) -> None:
    """Keep undo working across a merge (snapshots name the target class instead) or a delete
    (the class's rows leave the snapshots): a snapshot never refers to a class that is gone."""
    for entry in session.scalars(select(JournalEntry)):
        rows = entry.snapshot or []
        if not any(int(row.get("category_id", -1)) == category_id for row in rows):
            continue
        if target_id is None:
            entry.snapshot = [row for row in rows if int(row.get("category_id", -1)) != category_id]
        else:
            entry.snapshot = [dict(row, category_id=target_id) if int(row.get("category_id", -1)) == category_id
                              else row for row in rows]


def add_category(db: Database, name: str, supercategory: str = "") -> int:
    """A new class; its id is one more than the largest (COCO ids are kept for imported ones).

    Two people adding a class at the same moment may both pick the same id: the one whose
    insert comes second fails on the primary key and tries again with the next id."""
    name = _clean(name)
    for attempt in range(ADD_ATTEMPTS):
        try:
            with db.session() as session:
                _check_unique(session, name)
                next_id = (session.scalar(select(func.max(Category.id))) or 0) + 1
                session.add(Category(id=next_id, name=name, supercategory=str(supercategory or "")))
            return next_id
        except IntegrityError:  # a class added meanwhile took the id (or the name: said by _check_unique)
            if attempt == ADD_ATTEMPTS - 1:
                raise WorkbenchError(f"could not add class {name!r}: others were adding classes at the same "
                                     "time; try again") from None
    raise AssertionError("unreachable")


def rename_category(db: Database, category_id: int, new_name: str) -> None:
    new_name = _clean(new_name)
    with db.session() as session:
        category = _get(session, category_id)
        _check_unique(session, new_name, except_id=category.id)
        category.name = new_name


def annotation_count(db: Database, category_id: int) -> int:
    with db.session() as session:
        _get(session, category_id)
        return session.scalar(select(func.count()).select_from(Annotation)
                              .where(Annotation.category_id == int(category_id))) or 0


def merge_categories(db: Database, source_id: int, target_id: int, *, user: str | None = None) -> int:
    """Move every annotation of ``source_id`` to ``target_id`` and remove ``source_id``.
    Returns the number of annotations moved."""
    if int(source_id) == int(target_id):
        raise WorkbenchError("choose two different classes to merge")
    with db.session() as session:
        _get(session, source_id)
        _get(session, target_id)
        _bump_images_of(session, int(source_id))
        moved = session.execute(update(Annotation).where(Annotation.category_id == int(source_id))
                                .values(category_id=int(target_id), updated_by=user).execution_options(synchronize_session=False))
        _rewrite_journal(session, int(source_id), int(target_id))
        session.execute(delete(Category).where(Category.id == int(source_id)))
        return moved.rowcount or 0


def delete_category(db: Database, category_id: int, *, delete_annotations: bool = False) -> int:
    """Remove a class. A class that still has annotations is only removed (with them) when
    ``delete_annotations`` is True (the UI's confirmation). Returns the annotations deleted."""
    with db.session() as session:
        category = _get(session, category_id)
        count = session.scalar(select(func.count()).select_from(Annotation)
                               .where(Annotation.category_id == category.id)) or 0
        if count and not delete_annotations:
            raise WorkbenchError(f"class {category.name!r} has {count} annotation(s): confirm deleting them too, "
                                 "or merge the class into another one to keep them")
        if count:
            _bump_images_of(session, category.id)
            session.execute(delete(Annotation).where(Annotation.category_id == category.id))
        _rewrite_journal(session, category.id, None)
        session.delete(category)
        return count

