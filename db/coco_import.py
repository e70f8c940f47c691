"""Import a COCO instances file and its images, as one transaction.

Everything is checked before anything is written to the database; image files copied
into the store by a failed import are removed again, so a failed import leaves nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Iterable

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from db import masks
from db.checks import MAX_ID, clipped_box, is_integer, is_number
from db.engine import Database
from db.errors import BadImageError, CocoImportError, WorkbenchError, shown
from db.housekeeping import referenced_paths
from db.imagestore import ImageStore, probe
from db.models import Annotation, Category, Image, ReviewState, Source, Split
from db.progress import Progress, no_progress

@dataclass
class ImportReport:
    images_added: int = 0
    images_existing: int = 0
    annotations_added: int = 0
    annotations_existing: int = 0
    categories_added: int = 0
    warnings: list[str] = field(default_factory=list)
    category_mapping: list[str] = field(default_factory=list)  # file categories stored under another id

    def summary(self) -> str:
        text = (f"images: {self.images_added} added, {self.images_existing} already there; "
                f"annotations: {self.annotations_added} added, {self.annotations_existing} already there; "
                f"categories: {self.categories_added} added")
        if self.category_mapping:
            text += "\ncategories matched by name or renumbered:\n  " + "\n  ".join(self.category_mapping)
        return text


@dataclass
class _ImageEntry:
    coco_id: int
    file_name: str
    sha256: str
    width: int
    height: int
    stored_path: str


MAX_CATEGORIES = 20_000  # the largest tested: 3,000 (benchmarks/README.md, "Thousands of classes")
_MAX_LENGTH = {"name": Category.__table__.c.name.type.length,
               "supercategory": Category.__table__.c.supercategory.type.length,
               "file_name": Image.__table__.c.file_name.type.length}


def safe_relative_path(file_name: Any) -> PurePosixPath | None:
    """The file name as a path inside the images folder, or None if it would leave it."""
    if not isinstance(file_name, str) or not file_name.strip():
        return None
    if "\x00" in file_name:
        return None
    posix = PurePosixPath(file_name.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(file_name).drive or ".." in posix.parts:
        return None
    return posix


def _load_json(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CocoImportError(str(path), ["the annotations file does not exist; check the path"]) from None
    except UnicodeDecodeError:
        raise CocoImportError(str(path), ["the file is not UTF-8 text; is it really a COCO JSON file?"]) from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise CocoImportError(str(path), ["the JSON is nested too deeply for a COCO file; is it really a COCO "
                                          "instances file?"]) from None
    except json.JSONDecodeError as exc:
        raise CocoImportError(str(path), [f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}; "
                                          "fix the file (a JSON validator shows where)"]) from None
    if not isinstance(data, dict):
        raise CocoImportError(str(path), ["the top level is not a JSON object with 'images', 'annotations' and 'categories'"])
    problems = [f"'{key}' is missing or not a list; a COCO instances file has 'images', 'annotations' and 'categories' lists"
                for key in ("images", "annotations", "categories") if not isinstance(data.get(key), list)]
    if problems:
        raise CocoImportError(str(path), problems)
    return data


def _check_categories(data: dict, existing: dict[int, Category], problems: list[str]) -> dict[int, dict]:
    """The file's categories by file id, each with the database id it is stored under ("db_id") and whether it
    is new. Categories are matched by name: a name the database has (exactly, else the one name equal up to
    case and spaces) maps to that category whatever its id (classes made in the UI first, then a COCO file);
    a new name keeps the file's id when the database does not use it, else gets the next free id. ``note``
    says what happened where the id changes."""
    by_id: dict[int, dict] = {}
    names: dict[str, int] = {}
    existing_names = {c.name: c.id for c in existing.values()}
    if len(data["categories"]) > MAX_CATEGORIES:
        problems.append(f"the file has {len(data['categories'])} categories; at most {MAX_CATEGORIES} are supported "
                        "(every save and prediction grows with them); split the dataset")
        return by_id
    for index, cat in enumerate(data["categories"]):
        where = f"categories[{index}]"
        if not isinstance(cat, dict) or not is_integer(cat.get("id")) or not 1 <= cat["id"] <= MAX_ID:
            problems.append(f"{where}: 'id' must be an integer from 1 to {MAX_ID}")
            continue
        name = cat.get("name")
        where = f"category {cat['id']}"
        if not isinstance(name, str) or not name.strip():
            problems.append(f"{where}: 'name' must be a non-empty string")
            continue
        too_long = [key for key in ("name", "supercategory") if len(str(cat.get(key) or "")) > _MAX_LENGTH[key]]
        if too_long:
            problems.append(f"{where}: " + " and ".join(f"{key} longer than {_MAX_LENGTH[key]} characters"
                                                        for key in too_long) + "; shorten it in the file")
            continue
        if cat["id"] in by_id:
            problems.append(f"{where}: the id appears twice in the file; give each category its own id")
            continue
        if name in names:
            problems.append(f"{where}: name {name!r} is also used by category {names[name]}; names must be unique")
            continue
        by_id[cat["id"]] = dict(cat)
        names[name] = cat["id"]
    # by name first; then new names keep their file id where it is free; the rest get ids above all of those
    taken = set(existing)
    folded: dict[str, list[int]] = {}
    for category in existing.values():
        folded.setdefault(category.name.strip().casefold(), []).append(category.id)
    for file_id, cat in by_id.items():
        same = existing_names.get(cat["name"])
        if same is None and len(folded.get(cat["name"].strip().casefold(), [])) == 1:
            same = folded[cat["name"].strip().casefold()][0]  # "Person" in the UI, "person" in the file
        if same is not None:
            cat.update(db_id=same, new=False)
            if cat["db_id"] != file_id:
                cat["note"] = (f"file category {file_id} {cat['name']!r} -> category {cat['db_id']} "
                               "(the database's class of that name)")
    for file_id, cat in by_id.items():
        if "db_id" not in cat and file_id not in taken:
            cat.update(db_id=file_id, new=True)
            taken.add(file_id)
    next_id = max(taken | set(by_id), default=0) + 1
    for file_id, cat in by_id.items():
        if "db_id" not in cat:
            cat.update(db_id=next_id, new=True,
                       note=f"file category {file_id} {cat['name']!r} -> new category {next_id} (id {file_id} "
                            f"is {existing[file_id].name!r} in the database)")
            next_id += 1
    if next_id - 1 > MAX_ID:
        problems.append(f"renumbering the file's categories would need ids above {MAX_ID}; renumber them in the file")
    return by_id


def _check_images(data: dict, images_dir: Path, store: ImageStore, problems: list[str],
                  written: list[Path], progress: Progress) -> dict[int, _ImageEntry]:
    root = images_dir.resolve()
    entries: dict[int, _ImageEntry] = {}
    items = data["images"]
    for index, img in enumerate(progress(items, len(items), "images")):
        if not isinstance(img, dict) or not is_integer(img.get("id")):
            problems.append(f"images[{index}]: 'id' must be an integer")
            continue
        where = f"image {img['id']}"
        if img["id"] in entries:
            problems.append(f"{where}: the id appears twice in the file")
            continue
        relative = safe_relative_path(img.get("file_name"))
        if relative is None:
            problems.append(f"{where}: file_name {img.get('file_name')!r} is not a relative path inside the images "
                            "folder (absolute paths and '..' are refused); use the path relative to --images")
            continue
        if len(str(relative)) > _MAX_LENGTH["file_name"]:
            problems.append(f"{where}: file_name is longer than {_MAX_LENGTH['file_name']} characters")
            continue
        path = root.joinpath(*relative.parts)
        if not path.resolve().is_relative_to(root):
            problems.append(f"{where}: file_name {img['file_name']!r} leads outside the images folder (through a link); "
                            "copy the image into the folder")
            continue
        if not path.is_file():
            problems.append(f"{where}: image file {str(path)!r} does not exist; check --images or the file_name")
            continue
        data_bytes = path.read_bytes()
        try:
            info = probe(data_bytes, f"{where} ({img['file_name']})")
        except BadImageError as exc:
            problems.append(str(exc))
            continue
        declared = (img.get("width"), img.get("height"))
        if declared != (None, None) and not all(is_integer(v) for v in declared):
            problems.append(f"{where}: 'width' and 'height' must be whole numbers, not {shown(declared[0], 60)} and "
                            f"{shown(declared[1], 60)}")
            continue
        if declared != (None, None) and declared != (info.width, info.height):
            problems.append(f"{where}: the file says {declared[0]}x{declared[1]} but {img['file_name']} is "
                            f"{info.width}x{info.height} (after EXIF orientation); fix width/height in the file")
            continue
        if problems:
            continue  # the import will fail: do not copy more files
        stored_path, created = store.put(data_bytes, info)
        if created:
            written.append(store.data_dir / stored_path)
        entries[img["id"]] = _ImageEntry(img["id"], str(relative), info.sha256, info.width, info.height, stored_path)
    return entries


def _segmentation_counts(seg: Any, where: str, height: int, width: int, problems: list[str]) -> str | None | bool:
    """RLE counts of the annotation's mask, None for box-only, False when invalid (the problem noted)."""
    try:
        return masks.counts_from_segmentation(seg, height, width)
    except ValueError as exc:
        problems.append(f"{where}: {exc}; fix or remove the annotation")
        return False


def _fingerprint(category_id: int, iscrowd: bool, counts: str | None, bbox: list[float]) -> str:
    key = f"{category_id}|{int(iscrowd)}|{counts if counts is not None else ','.join(f'{v:.2f}' for v in bbox)}"
    return hashlib.sha1(key.encode()).hexdigest()


def _check_annotations(data: dict, images: dict[int, _ImageEntry], categories: dict[int, dict],
                       problems: list[str], warnings: list[str], progress: Progress) -> list[dict]:
    rows: list[dict] = []
    seen_ids: set[int] = set()
    items = data["annotations"]
    for index, ann in enumerate(progress(items, len(items), "annotations")):
        if not isinstance(ann, dict) or not is_integer(ann.get("id")):
            problems.append(f"annotations[{index}]: 'id' must be an integer")
            continue
        where = f"annotation {ann['id']}"
        if ann["id"] in seen_ids:
            problems.append(f"{where}: the id appears twice in the file")
            continue
        seen_ids.add(ann["id"])
        if not is_integer(ann.get("image_id")) or not is_integer(ann.get("category_id")):  # 1.0 and true would match 1
            problems.append(f"{where}: 'image_id' and 'category_id' must be integers, not "
                            f"{shown(ann.get('image_id'))} and {shown(ann.get('category_id'))}")
            continue
        image = images.get(ann.get("image_id"))
        if image is None:
            if not any(isinstance(i, dict) and i.get("id") == ann.get("image_id") for i in data["images"]):
                problems.append(f"{where}: image_id {ann.get('image_id')!r} is not in the file's 'images'; "
                                "add the image or remove the annotation")
            continue  # otherwise the image itself was reported
        if ann.get("category_id") not in categories:
            problems.append(f"{where}: category_id {ann.get('category_id')!r} is not in the file's 'categories'; "
                            "add the category or remove the annotation")
            continue
        iscrowd = ann.get("iscrowd", 0)
        if iscrowd not in (0, 1, True, False):
            problems.append(f"{where}: 'iscrowd' must be 0 or 1")
            continue
        segmentation = ann.get("segmentation")
        counts = _segmentation_counts(segmentation, where, image.height, image.width, problems)
        if counts is False:
            continue
        polygons = json.dumps(segmentation, separators=(",", ":")) if counts and isinstance(segmentation, list) else None
        if counts is None:
            bbox = ann.get("bbox")
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(is_number(v) for v in bbox)):
                problems.append(f"{where}: a box-only annotation (empty segmentation) needs 'bbox' [x, y, w, h]")
                continue
            x, y, w, h = bbox  # not float() first: an int beyond a float's range is refused below, not raised
            try:  # the API's rule of boxes (db.checks): finite, positive size, overlapping the image; clipped to it
                x, y, x2, y2 = clipped_box([x, y, x + w, y + h], image.width, image.height,
                                             "the box [x, y, x + w, y + h]")
            except WorkbenchError as exc:
                problems.append(f"{where}: a box-only annotation (empty segmentation) needs 'bbox' [x, y, w, h] of "
                                f"the image: {exc}")
                continue
            bbox = [x, y, x2 - x, y2 - y]
            area = bbox[2] * bbox[3]
        else:
            bbox = masks.tight_box(counts, image.height, image.width)
            area = float(masks.area(counts, image.height, image.width))
            if area == 0:
                warnings.append(f"{where}: its mask is empty (a degenerate polygon?); kept as an empty mask")
        category_id = categories[ann["category_id"]]["db_id"]
        rows.append({
            "image_sha": image.sha256, "category_id": category_id,
            "bbox_x": bbox[0], "bbox_y": bbox[1], "bbox_w": bbox[2], "bbox_h": bbox[3],
            "mask_rle": counts, "mask_polygons": polygons, "area": area, "iscrowd": bool(iscrowd),
            "fingerprint": _fingerprint(category_id, bool(iscrowd), counts, bbox),
        })
    return rows


def import_coco(db: Database, annotations_path: str | Path, images_dir: str | Path, *,
                split: str = "train", progress: Progress = no_progress) -> ImportReport:
    """Import a COCO instances file; raises :class:`CocoImportError` and writes nothing on bad input."""
    annotations_path, images_dir = Path(annotations_path), Path(images_dir)
    source = str(annotations_path)
    if split not in (Split.train.value, Split.val.value):
        raise CocoImportError(source, [f"split {split!r} is neither 'train' nor 'val'"])
    if not images_dir.is_dir():
        raise CocoImportError(source, [f"images folder {str(images_dir)!r} does not exist"])
    data = _load_json(annotations_path)
    store = ImageStore(db.data_dir)
    problems: list[str] = []
    written: list[Path] = []
    report = ImportReport()
    with store.storing():  # files stored before their rows commit: the start-up cleanup must not take them
        try:
            with db.session() as session:
                existing = {c.id: c for c in session.scalars(select(Category))}
                categories = _check_categories(data, existing, problems)
                images = _check_images(data, images_dir, store, problems, written, progress)
                rows = _check_annotations(data, images, categories, problems, report.warnings, progress)
                if problems:
                    raise CocoImportError(source, problems)

                for cat in categories.values():
                    if cat["new"]:
                        session.add(Category(id=cat["db_id"], name=cat["name"],
                                             supercategory=str(cat.get("supercategory") or "")))
                        report.categories_added += 1
                    if "note" in cat:
                        report.category_mapping.append(cat["note"])
                session.flush()

                shas = {entry.sha256 for entry in images.values()}
                image_ids: dict[str, int] = {}
                for chunk in _chunks(sorted(shas), 500):
                    image_ids.update(session.execute(
                        select(Image.sha256, Image.id).where(Image.sha256.in_(chunk))).all())
                report.images_existing = len(image_ids)
                new_images = {}
                for entry in images.values():
                    if entry.sha256 not in image_ids and entry.sha256 not in new_images:
                        new_images[entry.sha256] = Image(sha256=entry.sha256, stored_path=entry.stored_path,
                                                         file_name=entry.file_name, width=entry.width,
                                                         height=entry.height, split=Split(split))
                session.add_all(new_images.values())
                session.flush()
                image_ids.update({sha: image.id for sha, image in new_images.items()})
                report.images_added = len(new_images)

                existing_prints: set[tuple[int, str]] = set()
                for chunk in _chunks(sorted(image_ids.values()), 500):
                    existing_prints.update(session.execute(select(Annotation.image_id, Annotation.fingerprint)
                                                           .where(Annotation.image_id.in_(chunk))).all())
                to_insert = []
                for row in rows:
                    key = (image_ids[row["image_sha"]], row["fingerprint"])
                    if key in existing_prints:
                        report.annotations_existing += 1
                        continue
                    existing_prints.add(key)
                    row = dict(row, image_id=key[0], source=Source.imported, review_state=ReviewState.accepted)
                    del row["image_sha"]
                    to_insert.append(row)
                for chunk in _chunks(to_insert, 5000):
                    session.execute(insert(Annotation), chunk)
                report.annotations_added = len(to_insert)
        except IntegrityError:  # a concurrent import or upload committed some of the same images or classes first
            _remove_unreferenced(db, written)
            raise CocoImportError(source, ["someone else added some of these images or classes at the same time; "
                                           "run the import again (what is already there is skipped)"]) from None
        except BaseException:
            _remove_unreferenced(db, written)
            raise
    return report


def _remove_unreferenced(db: Database, written: list[Path]) -> None:
    """Remove the image files that a failed import copied, except those that an image row refers to
    (the same bytes, added meanwhile by someone else). When the database cannot be asked, keep them all:
    a stray file is harmless, a missing one is not."""
    if not written:
        return
    relative = {str(path.relative_to(db.data_dir)): path for path in written}
    try:
        referenced = referenced_paths(db, relative)
    except Exception:
        return
    for stored_path, path in relative.items():
        if stored_path not in referenced:
            path.unlink(missing_ok=True)


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
