"""COCO import and export on synthetic data made in code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from sqlalchemy import func, select

from coco_checks import ann_mask, coco_eval_against, load, mask_iou, paired_annotations
from db.coco_export import export_coco
from db.coco_import import import_coco
from db.errors import CocoImportError, WorkbenchError
from db.models import Annotation, Category, Image, Source

ROOT = Path(__file__).resolve().parents[1]


def counts(db) -> tuple[int, int, int]:
    with db.session() as session:
        return tuple(session.scalar(select(func.count()).select_from(model)) for model in (Image, Annotation, Category))


def stored_files(db) -> list[Path]:
    return sorted(p for p in (db.data_dir / "images").rglob("*") if p.is_file()) if (db.data_dir / "images").exists() else []


def test_import_reads_every_kind_of_annotation(database, synthetic_coco):
    report = import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    assert (report.images_added, report.annotations_added, report.categories_added) == (4, 13, 3)
    with database.session() as session:
        images = {i.file_name: i for i in session.scalars(select(Image))}
        assert set(images) == {"img_0.jpg", "sub/img_1.jpg", "img_2.jpg", "img_3.jpg"}
        # EXIF orientation 6: stored 64 wide, 64 high? the stored JPEG is (64 x 64+16) rotated
        rotated = images["img_2.jpg"]
        assert (rotated.width, rotated.height) == (64, 64)
        assert (images["img_3.jpg"].width, images["img_3.jpg"].height) == (64, 72)
        cats = {c.id: c.name for c in session.scalars(select(Category))}
        assert cats == {3: "car", 7: "ball", 12: "sign"}
        anns = session.scalars(select(Annotation)).all()
        assert sum(a.iscrowd for a in anns) == 1
        box_only = [a for a in anns if a.mask_rle is None]
        assert len(box_only) == 4 and all(a.category_id == 12 for a in box_only)
        assert all(a.source == Source.imported for a in anns)
        for a in anns:
            if a.mask_rle is not None:
                image = session.get(Image, a.image_id)
                rle = {"size": [image.height, image.width], "counts": a.mask_rle.encode()}
                assert a.area == mask_utils.area(rle) > 0
                assert a.bbox == list(mask_utils.toBbox(rle))
        for stored in session.scalars(select(Image.stored_path)):
            assert (database.data_dir / stored).is_file()


def test_importing_the_same_file_twice_adds_nothing(database, synthetic_coco):
    import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    before, files = counts(database), stored_files(database)
    report = import_coco(database, synthetic_coco, synthetic_coco.parent / "images", split="val")
    assert (report.images_added, report.annotations_added, report.categories_added) == (0, 0, 0)
    assert (report.images_existing, report.annotations_existing) == (4, 13)
    assert counts(database) == before
    assert stored_files(database) == files


def test_split_is_recorded(database, synthetic_coco):
    import_coco(database, synthetic_coco, synthetic_coco.parent / "images", split="val")
    with database.session() as session:
        assert {i.split.value for i in session.scalars(select(Image))} == {"val"}


def test_export_follows_the_coco_rules(database, synthetic_coco, tmp_path):
    import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    out = tmp_path / "export.json"
    report = export_coco(database, out)
    assert (report.images, report.annotations, report.box_only, report.crowd) == (4, 13, 4, 1)
    data = json.loads(out.read_text())
    coco = load(out)
    export_coco(database, tmp_path / "exact.json", mask_format="rle")
    exact_anns = {a["id"]: a for a in json.loads((tmp_path / "exact.json").read_text())["annotations"]}
    for a in exact_anns.values():
        if a["segmentation"]:
            a["segmentation"]["counts"] = a["segmentation"]["counts"].encode()
    for key in ("images", "annotations", "categories"):
        ids = [item["id"] for item in data[key]]
        assert all(isinstance(i, int) and i >= 1 for i in ids) and len(set(ids)) == len(ids)
    assert {c["name"]: c["has_masks"] for c in data["categories"]} == {"car": True, "ball": True, "sign": False}
    for ann in data["annotations"]:
        image = coco.imgs[ann["image_id"]]
        if ann["box_only"]:
            assert ann["segmentation"] == [] and ann["mask_source"] == "absent"
            assert ann["area"] == pytest.approx(ann["bbox"][2] * ann["bbox"][3])
            continue
        assert ann["mask_source"] == "imported"
        mask = ann_mask(coco, ann)
        assert mask.shape == (image["height"], image["width"])
        if ann["iscrowd"]:
            assert isinstance(ann["segmentation"], dict)
        else:  # polygons: flat lists of >= 3 points
            assert all(len(p) >= 6 and len(p) % 2 == 0 for p in ann["segmentation"])
        exact = exact_anns[ann["id"]]  # the same annotation, exported as exact RLE
        assert ann["area"] == exact["area"] == float(mask_utils.area(exact["segmentation"]))
        assert ann["bbox"] == exact["bbox"] == list(mask_utils.toBbox(exact["segmentation"]))
        assert mask_iou(mask, ann_mask(coco, exact)) > 0.9
    # ids are stable between exports
    again = tmp_path / "again.json"
    export_coco(database, again)
    data2 = json.loads(again.read_text())
    for key in ("images", "annotations", "categories"):
        assert [i["id"] for i in data[key]] == [i["id"] for i in data2[key]]


def test_rle_export_gives_back_identical_masks(database, synthetic_coco, tmp_path):
    import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    out = tmp_path / "export.json"
    export_coco(database, out, mask_format="rle")
    original, exported = load(synthetic_coco), load(out)
    pairs = paired_annotations(original, exported)
    assert len(pairs) == 13
    for oa, ea in pairs:
        assert ea["iscrowd"] == oa["iscrowd"]
        if oa["segmentation"]:
            np.testing.assert_array_equal(ann_mask(original, oa), ann_mask(exported, ea))
            assert ea["area"] == mask_utils.area(exported.annToRLE(ea))
        else:
            assert ea["segmentation"] == [] and ea["bbox"] == pytest.approx(oa["bbox"])
    assert coco_eval_against(synthetic_coco, out, "segm")[0] == pytest.approx(1.0)
    assert coco_eval_against(synthetic_coco, out, "bbox")[0] == pytest.approx(1.0)


def test_polygon_export_keeps_the_masks(database, synthetic_coco, tmp_path):
    import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    out = tmp_path / "export.json"
    export_coco(database, out, mask_format="polygon")
    original, exported = load(synthetic_coco), load(out)
    ious = [mask_iou(ann_mask(original, oa), ann_mask(exported, ea))
            for oa, ea in paired_annotations(original, exported) if oa["segmentation"]]
    assert len(ious) == 9
    assert np.mean(ious) >= 0.95
    # each image's ring loses its hole (COCO polygons cannot hold holes): IoU 0.9; the rest is exact
    assert sorted(ious)[4:] == [1.0] * 5 and all(0.9 <= iou < 0.91 for iou in sorted(ious)[:4])
    stats = coco_eval_against(synthetic_coco, out, "segm")
    assert stats[1] == pytest.approx(1.0) and stats[0] >= 0.9


def test_polygon_export_gives_back_the_imported_polygons(database, synthetic_coco, tmp_path):
    import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    export_coco(database, tmp_path / "export.json")
    original = json.loads(synthetic_coco.read_text())
    exported = json.loads((tmp_path / "export.json").read_text())
    originals = sorted(json.dumps(a["segmentation"]) for a in original["annotations"]
                       if isinstance(a["segmentation"], list) and a["segmentation"])
    polygons = sorted(json.dumps(a["segmentation"]) for a in exported["annotations"]
                      if a["category_id"] == 3 and not a["iscrowd"])
    assert originals == polygons and len(polygons) == 4


def test_failed_export_leaves_no_file(database, synthetic_coco, tmp_path):
    import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    out = tmp_path / "out" / "export.json"

    def broken_check(path):
        assert path.is_file() and path != out  # checked while still a temporary file
        raise WorkbenchError("simulated check failure")

    with pytest.raises(WorkbenchError):
        export_coco(database, out, validate=broken_check)
    assert list(out.parent.iterdir()) == []
    export_coco(database, out)
    assert [p.name for p in out.parent.iterdir()] == ["export.json"]


def test_large_export_in_worker_processes_equals_inline(database, synthetic_coco, tmp_path, monkeypatch):
    import db.coco_export as coco_export

    import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    export_coco(database, tmp_path / "inline.json")
    monkeypatch.setattr(coco_export, "PARALLEL_MIN_ANNOTATIONS", 1)
    monkeypatch.setattr(coco_export, "BATCH", 3)
    export_coco(database, tmp_path / "parallel.json")
    inline, parallel = (json.loads((tmp_path / name).read_text()) for name in ("inline.json", "parallel.json"))
    inline["info"].pop("date_created"), parallel["info"].pop("date_created")
    assert inline == parallel and len(parallel["annotations"]) == 13


# ---------------------------------------------------------------- bad input

def _mutate(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _first(data, key, **match):
    return next(item for item in data[key] if all(item.get(k) == v for k, v in match.items()))


BAD_INPUTS = {
    "missing image file": (lambda d: _first(d, "images", id=2).update(file_name="gone.jpg"), "gone.jpg"),
    "unknown image": (lambda d: d["annotations"][0].update(image_id=999), "image_id 999"),
    "unknown category": (lambda d: d["annotations"][1].update(category_id=55), "category_id 55"),
    "mask size differs": (lambda d: d["annotations"][1]["segmentation"].update(size=[10, 10]), "annotation 101"),
    "polygon with 2 points": (lambda d: d["annotations"][0].update(segmentation=[[1, 1, 5, 5]]), "at least 3"),
    "parent directory": (lambda d: _first(d, "images", id=3).update(file_name="../annotations.json"), "image 3"),
    "absolute path": (lambda d: _first(d, "images", id=3).update(file_name="/etc/passwd"), "/etc/passwd"),
    "uncompressed RLE of the wrong length": (
        lambda d: _first(d, "annotations", iscrowd=1)["segmentation"].update(counts=[5, 5]), "sum to 10"),
    "corrupt compressed RLE": (lambda d: d["annotations"][1]["segmentation"].update(counts="0a1"), "annotation 101"),
    # issue 16: pycocotools crashed the importer (SIGSEGV) on these, or stored what it cannot read back
    "box-only bbox with NaN": (lambda d: d["annotations"][0].update(segmentation=[], bbox=[float("nan"), 1, 5, 5]),
                               "needs 'bbox'"),
    "width as text": (lambda d: _first(d, "images", id=2).update(width="64"), "must be whole numbers, not '64'"),
    "20,001 categories": (lambda d: d["categories"].extend({"id": 1000 + k, "name": f"c{k}"} for k in range(19_998)),
                          "at most 20000 are supported"),
    "polygon far outside the image": (lambda d: d["annotations"][0].update(segmentation=[[0, 0, 1e9, 0, 1e9, 1e9]]),
                                      "further than one image size outside"),
    "polygon with NaN": (lambda d: d["annotations"][0].update(segmentation=[[0, 0, float("nan"), 0, 10, 10]]),
                         "not a finite number"),
    "compressed RLE with an over-long number": (
        lambda d: d["annotations"][1]["segmentation"].update(
            counts=chr(48 + (5 | 0x20)) + "0" + d["annotations"][1]["segmentation"]["counts"][1:]), "extra characters"),
    # limits of the database's columns (PostgreSQL enforces them, SQLite would not): refused on both
    "category id beyond 32 bits": (lambda d: d["categories"][0].update(id=2**31), "from 1 to 2147483647"),
    "category name too long": (lambda d: d["categories"][1].update(name="x" * 201),
                               "category 7: name longer than 200 characters"),
    "file name too long": (lambda d: _first(d, "images", id=2).update(file_name="a/" * 500 + "b.jpg"),
                           "image 2: file_name is longer than 1000"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_rejected_with_nothing_written(database, synthetic_coco, case):
    change, expected = BAD_INPUTS[case]
    _mutate(synthetic_coco, change)
    before = counts(database)
    with pytest.raises(CocoImportError) as error:
        import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    assert expected in str(error.value)
    assert "nothing was imported" in str(error.value)
    assert counts(database) == before
    assert stored_files(database) == []


def test_file_that_is_not_an_image_is_rejected(database, synthetic_coco):
    (synthetic_coco.parent / "images" / "img_3.jpg").write_text("this is not a JPEG")
    with pytest.raises(CocoImportError) as error:
        import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    assert "image 4" in str(error.value) and "not an image" in str(error.value)
    assert counts(database) == (0, 0, 0) and stored_files(database) == []


def test_truncated_image_is_rejected(database, synthetic_coco):
    path = synthetic_coco.parent / "images" / "img_0.jpg"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(CocoImportError) as error:
        import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    assert "image 1" in str(error.value)
    assert counts(database) == (0, 0, 0) and stored_files(database) == []


def test_link_out_of_the_images_folder_is_rejected(database, synthetic_coco, tmp_path):
    outside = tmp_path / "secret.jpg"
    outside.write_bytes((synthetic_coco.parent / "images" / "img_0.jpg").read_bytes())
    (synthetic_coco.parent / "images" / "link.jpg").symlink_to(outside)
    _mutate(synthetic_coco, lambda d: _first(d, "images", id=1).update(file_name="link.jpg"))
    with pytest.raises(CocoImportError, match="outside the images folder"):
        import_coco(database, synthetic_coco, synthetic_coco.parent / "images")


def test_invalid_json_names_the_line(database, synthetic_coco):
    synthetic_coco.write_text('{"images": [\n  {"id": 1,,}\n]}')
    with pytest.raises(CocoImportError, match="line 2"):
        import_coco(database, synthetic_coco, synthetic_coco.parent / "images")


def test_later_failure_removes_the_image_files_it_copied(database, synthetic_coco):
    # images are fine, the last annotation is bad: the copied images must be removed again
    _mutate(synthetic_coco, lambda d: d["annotations"][-1].update(category_id=99))
    with pytest.raises(CocoImportError):
        import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    assert stored_files(database) == [] and counts(database) == (0, 0, 0)


# ---------------------------------------------------------------- command line

def run_cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_help_lists_the_sub_commands(tmp_path):
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("serve", "import-coco", "export-coco", "train", "predict", "evaluate"):
        assert command in result.stdout
        sub = run_cli(command, "--help", cwd=tmp_path)
        assert sub.returncode == 0 and "--data-dir" in sub.stdout and "--db" in sub.stdout


def test_serve_is_the_default_sub_command():
    import launch

    args = launch.parse_args([])
    assert (args.command, args.host, args.port, str(args.data_dir), args.db) == (
        "serve", "127.0.0.1", 7860, "workbench_data", None)
    args = launch.parse_args(["--port", "8001", "--data-dir", "/tmp/x"])
    assert (args.command, args.port, str(args.data_dir)) == ("serve", 8001, "/tmp/x")
    args = launch.parse_args(["export-coco", "--out", "f.json", "--db", "sqlite:///a.db"])
    assert (args.command, args.mask_format, args.db) == ("export-coco", "polygon", "sqlite:///a.db")


def test_cli_import_export_and_bad_input(tmp_path, synthetic_coco):
    data_dir = tmp_path / "wb"
    ok = run_cli("import-coco", synthetic_coco, "--images", synthetic_coco.parent / "images", "--data-dir", data_dir,
                 cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "13 added" in ok.stdout
    out = tmp_path / "out.json"
    exported = run_cli("export-coco", "--out", out, "--mask-format", "rle", "--data-dir", data_dir, cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert len(json.loads(out.read_text())["annotations"]) == 13

    _mutate(synthetic_coco, lambda d: d["annotations"][0].update(segmentation=[[1, 1, 5, 5]]))
    bad = run_cli("import-coco", synthetic_coco, "--images", synthetic_coco.parent / "images", "--data-dir",
                  tmp_path / "wb2", cwd=tmp_path)
    assert bad.returncode != 0
    assert "annotation 100" in bad.stderr and "at least 3" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_cli_db_url_option(tmp_path, synthetic_coco):
    url = f"sqlite:///{tmp_path / 'elsewhere.sqlite3'}"
    result = run_cli("import-coco", synthetic_coco, "--images", synthetic_coco.parent / "images",
                     "--data-dir", tmp_path / "wb", "--db", url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "elsewhere.sqlite3").is_file()
    assert not (tmp_path / "wb" / "workbench.sqlite3").exists()


def test_import_matches_categories_by_name_and_renumbers_clashes(database, synthetic_coco):
    """Classes made in the UI first (ids 1, 2, ...), then a COCO file with other ids: the file's classes join
    the database's of the same name (up to case); a new name whose id is taken gets a new id; the mapping is
    said; annotations land in the right classes."""
    from db import categories
    from db.annotations import get_annotations
    from db.coco_import import import_coco
    from db.queries import category_names

    ball = categories.add_category(database, "Ball")  # id 1; the file's "ball" is 7
    tree = categories.add_category(database, "tree")  # id 2
    assert (ball, tree) == (1, 2)
    # the file says car=3, ball=7, sign=12; take id 3 in the database for another class first
    assert categories.add_category(database, "lamp") == 3
    report = import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    names = category_names(database)
    assert names == {1: "Ball", 2: "tree", 3: "lamp", 12: "sign", 13: "car"}
    assert report.categories_added == 2  # sign keeps 12, car gets 13; ball joins "Ball"
    assert "file category 7 'ball' -> category 1" in report.summary()
    assert "file category 3 'car' -> new category 13 (id 3 is 'lamp' in the database)" in report.summary()
    data = json.loads(synthetic_coco.read_text())
    file_names = {c["id"]: c["name"] for c in data["categories"]}
    expected = sorted({"car": 13, "ball": 1, "sign": 12}[file_names[a["category_id"]]] for a in data["annotations"])
    stored = sorted(r["category_id"] for i in range(1, 5) for r in get_annotations(database, i)[1])
    assert stored == expected
    again = import_coco(database, synthetic_coco, synthetic_coco.parent / "images")  # the same file again
    assert (again.annotations_added, again.categories_added) == (0, 0)


def test_deeply_nested_json_is_refused_with_a_message(database, tmp_path):
    """Issue 16, item 10: json's recursion limit used to end the import in a traceback."""
    path = tmp_path / "nested.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CocoImportError, match="nested too deeply"):
        import_coco(database, path, tmp_path)
