"""Issue 23, second round: what one request may cost (boxes per call, GrabCut's pixels, the canvas's batches,
writing events at once) and what the data folder keeps (exports, checkpoints, what a `kill -9` leaves).
Every bound is asserted by a size or a count, never by a time."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image as PILImage

from db.annotations import get_annotations
from db.coco_import import import_coco
from db.errors import WorkbenchError
from test_grabcut import counting_grabcut

OLD = time.time() - 2 * 3600  # a file's time that the start-up cleanup counts as stale (STALE_SECONDS: 1 h)


@pytest.fixture
def db(database, synthetic_coco):
    import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    return database


# ---- boxes per call and GrabCut's pixels --------------------------------------------------------------------

def test_add_boxes_refuses_more_boxes_than_the_limit_and_names_it(db, monkeypatch):
    from services.workbench import MAX_BOXES, Workbench

    wb = Workbench(db)
    seen = counting_grabcut(monkeypatch)
    revision, _ = get_annotations(db, 1, decode_masks=False)
    boxes = [(7, (2.0 + k % 10, 2.0, 30.0 + k % 10, 30.0)) for k in range(MAX_BOXES + 1)]
    with pytest.raises(WorkbenchError, match=f"{MAX_BOXES + 1} boxes in one call: at most {MAX_BOXES} boxes"):
        wb.editor.add_boxes(1, boxes, box_only=False, seen_revision=revision)
    assert seen == [] and get_annotations(db, 1, decode_masks=False)[0] == revision  # nothing ran, nothing saved
    revision, sources = wb.editor.add_boxes(1, boxes[:MAX_BOXES], box_only=False, seen_revision=revision)
    assert sources == ["grabcut mask"] * MAX_BOXES and len(seen) == MAX_BOXES


def test_the_draw_tabs_save_counts_the_boxes_that_get_a_mask(db):
    from services.workbench import MAX_BOXES, Workbench

    wb = Workbench(db)
    revision, _ = get_annotations(db, 1, decode_masks=False)
    drawn = [{"xmin": 2 + k % 10, "ymin": 2, "xmax": 30 + k % 10, "ymax": 30, "label": "ball", "id": None}
             for k in range(MAX_BOXES + 1)]
    with pytest.raises(WorkbenchError, match=f"at most {MAX_BOXES} boxes get a mask in one call"):
        wb.editor.save_drawn_boxes(1, drawn, 1.0, box_only=False, seen_revision=revision)
    assert get_annotations(db, 1, decode_masks=False)[0] == revision
    _, said = wb.editor.save_drawn_boxes(1, drawn, 1.0, box_only=True, seen_revision=revision)  # no mask: no GrabCut
    assert sum(text == "ball added (box only)" for text in said) == MAX_BOXES + 1


def test_grabcut_on_a_large_photo_gets_at_most_max_pixels_per_box_and_per_refine(db, tmp_path, monkeypatch):
    from partial_sup.grabcut import MAX_PIXELS
    from services.workbench import Workbench

    height, width = 1200, 1600  # 1.9 Mpx: a box over most of it is 7x the budget
    pixels = np.random.default_rng(0).normal(60, 10, (height, width, 3)).clip(0, 255).astype(np.uint8)
    disc = np.zeros((height, width), np.uint8)
    cv2.circle(disc, (800, 600), 420, 1, -1)
    pixels[disc > 0] = (220, 40, 40)
    PILImage.fromarray(pixels).save(tmp_path / "large.png")
    wb = Workbench(db)
    image_id = wb.upload([tmp_path / "large.png"]).image_ids[0]
    seen = counting_grabcut(monkeypatch)
    boxes = [(7, (300.0, 120.0, 1300.0, 1080.0)), (7, (100.0, 50.0, 1500.0, 1150.0))]
    revision, sources = wb.editor.add_boxes(image_id, boxes, box_only=False, seen_revision=None)
    assert sources == ["grabcut mask", "grabcut mask"]
    assert len(seen) == 2 and max(seen) <= MAX_PIXELS
    _, rows = get_annotations(db, image_id)
    found = rows[0]["mask"]
    assert (found & (disc > 0)).sum() / (found | (disc > 0)).sum() > 0.9  # still the object
    wb.editor.refine_with_clicks(image_id, rows[0]["id"], [[1150, 600]], [[450, 230]], revision)
    assert len(seen) == 3 and seen[-1] <= MAX_PIXELS


def test_a_canvas_batch_with_too_many_grabcut_or_model_edits_is_refused_before_any_runs(db, monkeypatch):
    from services.workbench import MAX_BOXES, Workbench

    wb = Workbench(db)
    seen = counting_grabcut(monkeypatch)
    revision, _ = get_annotations(db, 1, decode_masks=False)
    boxes = [{"kind": "box", "temp_id": -1 - k, "category_id": 7, "box": [2 + k % 10, 2, 30 + k % 10, 30]}
             for k in range(MAX_BOXES)]
    too_many = [*boxes, {"kind": "review", "ids": [], "state": "accepted"}, {"kind": "propose"}]
    with pytest.raises(WorkbenchError, match=f"{MAX_BOXES + 1} box, refine and propose edits in one batch: at most "
                                             f"{MAX_BOXES}"):
        wb.editor.apply_edits(1, too_many, revision)
    assert seen == [] and get_annotations(db, 1, decode_masks=False)[0] == revision
    result = wb.editor.apply_edits(1, boxes, revision)  # exactly the limit: applied
    assert result.error is None and result.applied == MAX_BOXES and len(seen) == MAX_BOXES


def test_the_canvas_script_splits_batches_at_the_servers_limits():
    from app.canvas import JS
    from services.workbench import MAX_BOXES, MAX_EDITS

    assert f"const BATCH_LIMITS = {{edits: {MAX_EDITS}, costly: {MAX_BOXES}}};" in JS
    assert "const COSTLY_KINDS = ['box', 'refine', 'propose', 'keep_box'];" in JS


# ---- writing events: one bounded queue -------------------------------------------------------------------------

# the functions of the page and the API that write (annotations, images, classes, versions, runs) or run GrabCut
# or the model; a handler renamed or added without its place in the queue makes the test below fail
WRITING = {
    "on_upload", "on_select", "go", "order_gallery", "on_canvas_save", "on_visit", "on_done", "save_boxes",
    "add_class", "rename_class", "merge_class", "delete_class", "start_training", "cancel_training", "activate",
    "on_export", "upload_images", "propose", "save_annotations", "export_coco", "add_boxes", "refine",
    "record_visit", "list_images", "finish_image", "keep_box"}


def function_name(block_function) -> str:
    return getattr(block_function.fn, "__name__", "")


@pytest.mark.backends("sqlite")
def test_every_writing_event_goes_through_one_bounded_queue(database):
    from app.ui import WRITES, build_app

    demo = build_app(database, write_limit=3)
    config = {dependency["id"]: dependency for dependency in demo.config["dependencies"]}
    writing = [fn for fn in demo.fns.values() if function_name(fn) in WRITING]
    assert {function_name(fn) for fn in writing} == WRITING  # each one is wired
    assert len(writing) == len(WRITING) + 1  # Next and Previous: both `go`
    for fn in writing:
        assert config[fn._id]["queue"] is True, function_name(fn)
        assert (fn.concurrency_id, fn.concurrency_limit) == (WRITES, 3), function_name(fn)
    others = [fn for fn in demo.fns.values() if fn.concurrency_id == WRITES and fn not in writing]
    assert others == []  # reading events keep their own queues


@pytest.mark.backends("sqlite")
def test_no_more_writing_events_than_the_limit_run_at_once(tmp_path_factory, monkeypatch):
    """Canvas saves (the page's private event, as the browser sends it) and API saves at once, each held at a
    barrier of limit + 1: it opens only if more than the limit run together."""
    import httpx
    from gradio_client import Client

    from app.ui import launch_app
    from conftest import make_synthetic_coco
    from db.engine import open_database
    from test_app_helpers import free_port

    limit, each = 2, 3
    root = tmp_path_factory.mktemp("writes")
    db = open_database(root / "data")
    coco = make_synthetic_coco(root / "coco")
    import_coco(db, coco, coco.parent / "images")
    port = free_port()
    demo = launch_app(db, "127.0.0.1", port, block=False, write_limit=limit)
    url = f"http://127.0.0.1:{port}/"
    wb = demo.workbench
    lock, counts = threading.Lock(), {"now": 0, "most": 0, "calls": 0}
    barrier = threading.Barrier(limit + 1)

    def held(real):
        def call(*args, **kwargs):
            with lock:
                counts["now"] += 1
                counts["calls"] += 1
                counts["most"] = max(counts["most"], counts["now"])
            try:
                barrier.wait(timeout=5)
            except threading.BrokenBarrierError:  # never limit + 1 at once: the barrier breaks, they go on
                pass
            finally:
                with lock:
                    counts["now"] -= 1
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(wb.editor, "apply_edits", held(wb.editor.apply_edits))
    monkeypatch.setattr(wb.editor, "save_json", held(wb.editor.save_json))
    save_event = next(fn for fn in demo.fns.values() if function_name(fn) == "on_canvas_save")

    def canvas_save(k: int) -> None:
        session = uuid.uuid4().hex
        with httpx.Client(base_url=url, timeout=120) as http:
            http.post("gradio_api/queue/join", json={
                "fn_index": save_event._id, "trigger_id": save_event.targets[0][0], "session_hash": session,
                "data": [0.5, "all", "upload"], "event_data": {"image_id": 1, "revision": None, "seq": k, "ops": []},
            }).raise_for_status()
            with http.stream("GET", "gradio_api/queue/data", params={"session_hash": session}) as stream:
                for line in stream.iter_lines():
                    if "process_completed" in line:
                        return

    def api_save(k: int) -> None:
        image_id = 2 + k % 3
        revision = Client(url, verbose=False).predict(image_id, api_name="/instances")["revision"]
        Client(url, verbose=False).predict(image_id, [], revision, api_name="/save_annotations")

    try:
        threads = [threading.Thread(target=canvas_save, args=(k,)) for k in range(each)]
        threads += [threading.Thread(target=api_save, args=(k,)) for k in range(each)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert counts["calls"] == 2 * each  # every save ran ...
        assert counts["most"] == limit  # ... never more than the limit at once (and that many did run together)
    finally:
        demo.close()
        db.close()


def test_a_bad_limit_variable_is_refused_with_what_to_set(monkeypatch):
    from services.limits import keep_checkpoints, keep_exports, write_concurrency

    for variable, read in (("WORKBENCH_WRITE_CONCURRENCY", write_concurrency),
                           ("WORKBENCH_KEEP_EXPORTS", keep_exports)):
        monkeypatch.setenv(variable, "0")
        with pytest.raises(WorkbenchError, match=f"{variable} must be a whole number of at least 1, not '0'"):
            read()
    monkeypatch.setenv("WORKBENCH_KEEP_CHECKPOINTS", "three")
    with pytest.raises(WorkbenchError, match="WORKBENCH_KEEP_CHECKPOINTS must be a whole number of at least 0"):
        keep_checkpoints()
    monkeypatch.setenv("WORKBENCH_KEEP_CHECKPOINTS", "0")
    assert keep_checkpoints() == 0


# ---- exports: the newest kept, one copy each -------------------------------------------------------------------

def test_only_the_newest_exports_are_kept(db, monkeypatch):
    from services.workbench import Workbench

    wb = Workbench(db)
    folder = wb.exports_folder()
    (folder / "notes.json").write_text("{}")  # a person's file, and one named almost like an export: never touched
    (folder / "coco-all-polygon-mine.json").write_text("{}")
    monkeypatch.setenv("WORKBENCH_KEEP_EXPORTS", "3")
    made = [wb.export("polygon" if k % 2 else "rle", "all")[0] for k in range(5)]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [p.name for p in made[-3:]] + ["notes.json", "coco-all-polygon-mine.json"])
    monkeypatch.delenv("WORKBENCH_KEEP_EXPORTS")
    made += [wb.export()[0] for _ in range(4)]  # the default: 5
    assert sorted(p.name for p in folder.glob("coco-*-*-*.json") if p.name != "coco-all-polygon-mine.json") == sorted(
        p.name for p in made[-5:])


@pytest.mark.backends("sqlite")
def test_an_export_through_the_server_is_not_copied_into_gradios_cache(tmp_path_factory):
    from gradio.utils import get_upload_folder
    from gradio_client import Client

    from test_app_helpers import served_workbench

    with served_workbench(tmp_path_factory, "sqlite", "exports") as served:
        client = Client(served["url"], verbose=False, download_files=tmp_path_factory.mktemp("downloads"))
        downloaded = Path(client.predict("rle", "all", api_name="/export_coco"))
        exports = served["root"] / "data" / "exports"
        assert [p.name for p in exports.iterdir()] == [downloaded.name]  # the server's one copy
        assert json.loads(downloaded.read_text())["info"]["mask_format"] == "rle"
        assert list(Path(get_upload_folder()).rglob(downloaded.name)) == []  # no second copy in Gradio's cache


# ---- checkpoints: the active and the newest inactive ones ------------------------------------------------------

def register(db, name: str, *, activate: bool = True, content: bytes = b"weights") -> int:
    from db import registry

    path = registry.models_dir(db) / name
    path.write_bytes(content)
    return registry.register_version(db, path, name=name, config={}, metrics={}, activate=activate)


def test_old_inactive_checkpoints_go_their_versions_stay_and_say_so(database, monkeypatch):
    from db import registry
    from services import limits
    from services.workbench import Workbench

    shared = register(database, "shared.pt", activate=False)  # named by the active version too (below)
    versions = [shared] + [register(database, f"run{k:04d}.pt") for k in range(1, 6)]
    with database.session() as session:  # the active version uses the file of the oldest one
        from db.models import ModelVersion

        session.get(ModelVersion, versions[-1]).checkpoint_path = "models/shared.pt"
    (registry.models_dir(database) / "run0005.pt").unlink()
    (registry.models_dir(database) / "mine.pt").write_bytes(b"a person's file")
    monkeypatch.setenv("WORKBENCH_KEEP_CHECKPOINTS", "2")
    removed = limits.remove_old_checkpoints(database)
    assert sorted(p.name for p in removed) == ["run0001.pt", "run0002.pt"]  # shared.pt is the active one's
    assert sorted(p.name for p in registry.models_dir(database).iterdir()) == [
        "mine.pt", "run0003.pt", "run0004.pt", "shared.pt"]
    rows = {v.id: v.checkpoint_path for v in registry.list_versions(database)}
    assert len(rows) == 6 and [rows[v] for v in versions[:3]] == ["", "", ""]
    assert [rows[v] for v in versions[3:]] == ["models/run0003.pt", "models/run0004.pt", "models/shared.pt"]
    with pytest.raises(WorkbenchError, match=f"model version {versions[1]} has no checkpoint any more: its file "
                                             "was removed by the retention rule"):
        registry.activate_version(database, versions[1])
    assert registry.active_version(database).id == versions[-1]
    registry.activate_version(database, versions[3])  # one that kept its file
    from app.handlers import Handlers

    _, dropdown = Handlers(Workbench(database)).versions()
    assert sum(label.endswith("(checkpoint removed by retention)") for label, _ in dropdown.choices) == 3


@pytest.mark.backends("sqlite")  # training processes on PostgreSQL: tests/test_training_process.py
def test_a_training_run_removes_the_checkpoints_beyond_the_retention(database, synthetic_coco, monkeypatch):
    from db import registry
    from services.presets import TrainingSpec
    from services.training import train_from_database

    import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    old = [register(database, f"old{k}.pt") for k in range(3)]
    monkeypatch.setenv("WORKBENCH_KEEP_CHECKPOINTS", "1")
    result = train_from_database(database, TrainingSpec(mode="heads", iterations=1, image_size=64,
                                                        backbone_weights="none", device="cpu"))
    assert registry.active_version(database).id == result.version_id
    files = sorted(p.name for p in registry.models_dir(database).iterdir())
    assert files == sorted(["old2.pt", Path(result.checkpoint).name])  # the active one and the newest inactive
    assert [v.checkpoint_path for v in registry.list_versions(database) if v.id in old] == ["", "", "models/old2.pt"]


# ---- what a kill -9 leaves, removed at start ------------------------------------------------------------------

def leftovers(db) -> dict[str, list[Path]]:
    """Files a killed export, training run, import and upload leave (old), beside young ones and a person's."""
    from db import registry
    from db.imagestore import ImageStore, ImageInfo

    store = ImageStore(db.data_dir)
    exports = db.data_dir / "exports"
    exports.mkdir(exist_ok=True)
    orphans = []
    for k in range(3):
        sha = f"{k:02x}" + "7" * 62
        orphans.append(db.data_dir / store.put(b"jpeg bytes %d" % k, ImageInfo(sha, 8, 8, ".jpg"))[0])
    young_orphan = db.data_dir / store.put(b"young", ImageInfo("ee" + "1" * 62, 8, 8, ".png"))[0]
    stale = [exports / ".coco-all-polygon-20250101-000000-000000.json.k2j3l4.tmp",
             registry.models_dir(db) / ".tmp-run0007-20250101-000000.pt.ab12cd",
             orphans[0].parent / f".{orphans[0].name}.x1y2.tmp"]
    young = [exports / ".coco-all-rle-20250101-000000-000001.json.abcdef.tmp", young_orphan]
    mine = [exports / "my.tmp", exports / "notes.json", db.data_dir / "images" / "readme.txt",
            orphans[0].parent / "holiday.jpg", registry.models_dir(db) / "tmp-mine.pt"]
    link = orphans[0].parent / (orphans[0].parent.name + "9" * 62 + ".jpg")  # a link named like a stored image
    for path in stale + young + mine:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    link.symlink_to(mine[2])
    for path in stale + orphans + mine:
        os.utime(path, (OLD, OLD))
    os.utime(link, (OLD, OLD), follow_symlinks=False)
    return {"stale": stale, "orphans": orphans, "young": young, "mine": mine + [link]}


def test_the_start_up_cleanup_removes_exactly_what_killed_processes_left(db):
    from db import queries
    from services.workbench import Workbench

    left = leftovers(db)
    referenced = [db.data_dir / row["stored_path"] for row in
                  (queries.image_info(db, r["id"]) for r in queries.list_images(db, limit=None))]
    for path in referenced:
        os.utime(path, (OLD, OLD))  # as old as the orphans: kept because a row has them
    cleanup = Workbench(db).clean_up_leftovers()
    assert sorted(cleanup.temp_files) == sorted(p.relative_to(db.data_dir).as_posix() for p in left["stale"])
    assert sorted(cleanup.orphan_images) == sorted(p.relative_to(db.data_dir).as_posix() for p in left["orphans"])
    assert not any(p.exists() for p in left["stale"] + left["orphans"])
    assert all(p.exists() or p.is_symlink() for p in left["young"] + left["mine"] + referenced)
    assert len(referenced) == 4 and "3 unfinished temporary file(s) and 3 image file(s)" in cleanup.summary()


def test_image_files_stay_while_another_process_is_storing_images(db):
    from db.imagestore import ImageStore
    from services.workbench import Workbench

    left = leftovers(db)
    with ImageStore(db.data_dir).storing():  # an import or upload in progress (any process)
        cleanup = Workbench(db).clean_up_leftovers()
    assert cleanup.orphan_images == [] and all(p.exists() for p in left["orphans"])
    assert "an import or upload is storing images" in cleanup.summary()
    assert not any(p.exists() for p in left["stale"])  # temporary files are still removed
    assert sorted(Workbench(db).clean_up_leftovers().orphan_images) == sorted(
        p.relative_to(db.data_dir).as_posix() for p in left["orphans"])


@pytest.mark.backends("sqlite")
def test_serve_cleans_up_before_it_serves(tmp_path, synthetic_coco):
    from db.engine import open_database
    from test_serve import start_server

    data_dir = tmp_path / "wb"
    db = open_database(data_dir)
    import_coco(db, synthetic_coco, synthetic_coco.parent / "images")
    left = leftovers(db)
    db.close()
    process, _ = start_server(data_dir)
    try:
        assert not any(p.exists() for p in left["stale"] + left["orphans"])
        assert all(p.exists() or p.is_symlink() for p in left["young"] + left["mine"])
    finally:
        process.terminate()
        process.wait(timeout=30)
    output = process.stdout.read()
    assert ("start-up cleanup: 3 unfinished temporary file(s) and 3 image file(s) that no image refers to "
            "removed") in output
    assert "limits: at most 4 writing events at once" in output
