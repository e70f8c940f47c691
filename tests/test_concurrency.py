"""Several people at once on one database (SQLite and PostgreSQL): saves of the same image, classes
added at the same moment, the same photo uploaded twice at once, the same COCO file imported twice
at once. Real threads, each with its own connection."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import insert, select, text

from db.annotations import ConflictError, InstanceData, conflict_versions, get_annotations, save_annotations
from db.categories import add_category
from db.coco_import import import_coco
from db.errors import CocoImportError
from db.models import Category, Image

PEOPLE = 4
ROOT = Path(__file__).resolve().parents[1]


def at_once(function, arguments: list) -> list:
    """Call ``function(argument)`` in one thread per argument, released together; returns each one's
    result or the exception it raised."""
    barrier = threading.Barrier(len(arguments))

    def call(argument):
        barrier.wait()
        try:
            return function(argument)
        except Exception as exc:  # noqa: BLE001 - the test looks at what each one got
            return exc

    with ThreadPoolExecutor(len(arguments)) as pool:
        return list(pool.map(call, arguments))


def test_saves_of_the_same_revision_at_once_all_merge_when_they_add_different_instances(database, synthetic_coco):
    """PEOPLE people draw a new instance each on one image, all from the same revision, at the same moment:
    every save goes in (instance-level merge), none is refused, every instance is there."""
    import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    image_id = 1
    seen, rows = get_annotations(database, image_id, decode_masks=False)
    with database.session() as session:
        height, width = session.get(Image, image_id).height, session.get(Image, image_id).width

    def save(person: int):
        mask = np.zeros((height, width), bool)
        mask[2:10 + person, 2:10] = True
        return save_annotations(database, image_id, [InstanceData.from_row(r) for r in rows]
                                + [InstanceData(category_id=7, mask=mask)], seen_revision=seen, user=f"person{person}")

    results = at_once(save, list(range(PEOPLE)))
    assert sorted(results) == list(range(seen + 1, seen + PEOPLE + 1)), results
    revision, now = get_annotations(database, image_id)
    assert revision == seen + PEOPLE and len(now) == len(rows) + PEOPLE
    assert sorted(r["created_by"] for r in now if r["created_by"]) == sorted(f"person{p}" for p in range(PEOPLE))
    assert all(conflict_versions(database, image_id, f"person{p}") == [] for p in range(PEOPLE))


def test_edits_of_the_same_instance_at_once_one_wins_the_others_are_kept(database, synthetic_coco):
    """PEOPLE people give the same instance another class at once, from the same revision: one save wins, the
    others are refused as conflicts on that instance and kept in the journal, each for its author."""
    import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    image_id = 1
    seen, rows = get_annotations(database, image_id, decode_masks=False)
    target = rows[0]["id"]
    with database.session() as session:
        height, width = session.get(Image, image_id).height, session.get(Image, image_id).width

    def save(person: int):  # each paints the instance's mask differently
        mask = np.zeros((height, width), bool)
        mask[2:10 + person, 2:10] = True
        data = [InstanceData.from_row(r, mask=mask) if r["id"] == target else InstanceData.from_row(r) for r in rows]
        return save_annotations(database, image_id, data, seen_revision=seen, user=f"person{person}")

    results = at_once(save, list(range(PEOPLE)))
    won = [p for p, r in enumerate(results) if isinstance(r, int)]
    lost = [r for r in results if isinstance(r, ConflictError)]
    assert len(won) == 1 and len(lost) == PEOPLE - 1, results
    assert all(error.instance_ids == [target] for error in lost)
    revision, now = get_annotations(database, image_id, decode_masks=False)
    painted = next(r for r in now if r["id"] == target)["box"]
    assert revision == seen + 1 and painted == (2, 2, 10, 10 + won[0])  # the winner's mask
    for person in range(PEOPLE):
        kept = conflict_versions(database, image_id, f"person{person}")
        assert len(kept) == (0 if person == won[0] else 1)


def test_classes_added_at_once_all_get_their_own_id(database):
    ids = at_once(lambda name: add_category(database, name), [f"class {n}" for n in range(PEOPLE)])
    assert sorted(ids) == list(range(1, PEOPLE + 1)), ids
    with database.session() as session:
        assert {c.id: c.name for c in session.scalars(select(Category))} == {i: f"class {n}" for n, i in
                                                                             enumerate(ids)}


@pytest.mark.backends("postgresql")  # the test sees another connection wait for a lock in pg_stat_activity
def test_the_same_photo_uploaded_twice_at_once_is_stored_once(database, tmp_path):
    from db.uploads import add_images

    from db.imagestore import ImageStore, probe
    from db.models import Split, utcnow

    photo = tmp_path / "photo.png"
    PILImage.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(photo)
    info = probe(photo.read_bytes(), photo.name)
    stored_path = ImageStore(database.data_dir).relative_path(info)
    # one person's upload of the photo is in its transaction (its row written, not committed yet) ...
    first = database.engine.connect()
    first_transaction = first.begin()
    first.execute(insert(Image).values(sha256=info.sha256, stored_path=stored_path, file_name=photo.name,
                                       width=info.width, height=info.height, split=Split.train, revision=0,
                                       created_at=utcnow()))
    # ... when another person uploads the same photo: it waits for the first, then finds that photo
    with ThreadPoolExecutor(1) as pool:
        second = pool.submit(add_images, database, [photo])
        deadline = time.monotonic() + 60
        while not _someone_waits_for_a_lock(database) and not second.done() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not second.done(), second.result()
        first_transaction.commit()
        result = second.result(timeout=60)
    first.close()
    with database.session() as session:
        only = session.scalars(select(Image)).one()
    assert (result.added, result.existing, result.image_ids, result.refused) == (0, 1, [only.id], [])
    assert (database.data_dir / only.stored_path).is_file()


def _someone_waits_for_a_lock(database) -> bool:
    with database.engine.connect() as connection:  # a new transaction: pg_stat_activity is read afresh
        return bool(connection.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )).scalar())


def test_the_same_coco_file_imported_twice_at_once(database, synthetic_coco):
    results = at_once(lambda _: import_coco(database, synthetic_coco, synthetic_coco.parent / "images"), [0, 1])
    reports = [r for r in results if not isinstance(r, Exception)]
    errors = [r for r in results if isinstance(r, Exception)]
    # both succeed one after the other (the second adds nothing), or the second is told to run again
    assert reports and all(isinstance(e, CocoImportError) and "run the import again" in str(e) for e in errors)
    assert sum(r.annotations_added for r in reports) == 13
    again = import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    assert (again.images_added, again.annotations_added) == (0, 0)
    with database.session() as session:
        for image in session.scalars(select(Image)):
            assert (database.data_dir / image.stored_path).is_file()
    assert database.integrity_ok()


def test_processes_opening_a_new_database_at_once_all_find_it_ready(tmp_path, database_url):
    """Servers and training processes that start together each run the migrations: one after the other
    (real processes: Alembic's migration context is one per process)."""
    import subprocess
    import sys

    from db.engine import open_database, schema_revision

    script = ("import sys; from db.engine import open_database, schema_revision; "
              "db = open_database(sys.argv[1], sys.argv[2]); print(schema_revision(db.engine))")
    processes = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "data"), database_url],
                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(PEOPLE)]
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0] * PEOPLE, [err for _, err in outputs]
    db = open_database(tmp_path / "data", database_url)
    assert {out.strip() for out, _ in outputs} == {schema_revision(db.engine)}
    db.close()


# ---- issue 23: nothing acknowledged is lost ---------------------------------------------------------------
def _drawn(database, image_id: int, y: int) -> InstanceData:
    """A new instance, told apart from the others by its top row ``y``."""
    with database.session() as session:
        image = session.get(Image, image_id)
        mask = np.zeros((image.height, image.width), bool)
    mask[y:y + 4, 40:50] = True
    return InstanceData(category_id=7, mask=mask)


def _journal_rows(database, image_id: int) -> list[dict]:
    from db.models import JournalEntry

    with database.session() as session:
        return [row for entry in session.scalars(select(JournalEntry).where(JournalEntry.image_id == image_id))
                for row in entry.snapshot]


def test_an_undo_sent_with_an_old_revision_does_not_erase_a_save_made_since(database, synthetic_coco):
    """Issue 23, finding 4: A edits (revision r1); B saves a new instance (r1 + 1, acknowledged); A's undo sent
    with r1 is a conflict, and B's instance stays, in the annotations and in the journal."""
    from db.annotations import undo

    import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    image_id = 1
    seen, rows = get_annotations(database, image_id, decode_masks=False)
    a_edit = save_annotations(database, image_id, [InstanceData.from_row(r) for r in rows[1:]],
                              seen_revision=seen, user="A")  # A deletes an instance on the canvas
    b_saved = threading.Event()
    barrier = threading.Barrier(2)

    def person(name: str):
        barrier.wait()
        if name == "B":  # B opened the image after A's edit and adds an instance
            revision, now = get_annotations(database, image_id, decode_masks=False)
            try:
                return save_annotations(database, image_id, [InstanceData.from_row(r) for r in now]
                                        + [_drawn(database, image_id, 30)], seen_revision=revision, user="B")
            finally:
                b_saved.set()
        assert b_saved.wait(60)
        return undo(database, image_id, seen_revision=a_edit, user="A")  # A's undo, sent with what A saw

    with ThreadPoolExecutor(2) as pool:
        undone, acknowledged = [pool.submit(person, name) for name in ("A", "B")]
    assert acknowledged.result() == a_edit + 1
    with pytest.raises(ConflictError):
        undone.result()
    revision, now = get_annotations(database, image_id)
    assert revision == acknowledged.result()
    assert any(r["mask"] is not None and r["mask"][30:34, 40:50].all() and r["created_by"] == "B" for r in now)
    # A reloads (sees B's save) and undoes it: B's instance leaves the annotations, not the journal
    undo(database, image_id, seen_revision=revision, user="A")
    _, after = get_annotations(database, image_id, decode_masks=False)
    assert len(after) == len(now) - 1 and all(r["created_by"] != "B" for r in after)
    assert any(row.get("created_by") == "B" and row.get("category_id") == 7 for row in _journal_rows(database, image_id))


def test_an_undo_and_a_save_at_once_lose_nothing(database, synthetic_coco):
    """Undo and a save of a new instance sent with the same revision at the same moment: B's instance is in the
    annotations either way; the undo went in or was refused, never half."""
    from db.annotations import undo

    import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    image_id = 2
    seen, rows = get_annotations(database, image_id, decode_masks=False)
    revision = save_annotations(database, image_id, [InstanceData.from_row(r) for r in rows[1:]], seen_revision=seen)

    def act(name: str):
        if name == "undo":
            return undo(database, image_id, seen_revision=revision, user="A")
        return save_annotations(database, image_id, [InstanceData.from_row(r) for r in rows[1:]]
                                + [_drawn(database, image_id, 30)], seen_revision=revision, user="B")

    results = at_once(act, ["undo", "save"])
    # the save adds another instance: it merges whichever lands first; the undo, sent with the revision before
    # the save, is refused when the save landed first (it would undo what its author never saw)
    assert isinstance(results[1], int) and isinstance(results[0], (int, ConflictError)), results
    revision, now = get_annotations(database, image_id, decode_masks=False)
    assert any(r["created_by"] == "B" for r in now) and revision == max(r for r in results if isinstance(r, int))
    assert (len(now) == len(rows) + 1) == isinstance(results[0], int)  # the undo brought rows[0] back


def _a_save_lands_meanwhile(monkeypatch, database, image_id: int, module) -> threading.Thread:
    """Person B's save of ``image_id`` (a new instance, acknowledged) lands right after the next read of the
    image's annotations through ``module.get_annotations``, while the reader computes: released by a barrier
    from inside that read."""
    real = module.get_annotations
    barrier = threading.Barrier(2, timeout=60)
    done = threading.Event()
    outcome: list = []

    def b_saves():
        barrier.wait()
        revision, now = get_annotations(database, image_id, decode_masks=False)
        outcome.append(save_annotations(database, image_id, [InstanceData.from_row(r) for r in now]
                                        + [_drawn(database, image_id, 36)], seen_revision=revision, user="B"))
        done.set()

    def read_then_wait(*args, **kwargs):
        result = real(*args, **kwargs)
        if not done.is_set():
            barrier.wait()
            assert done.wait(60)
        return result

    monkeypatch.setattr(module, "get_annotations", read_then_wait)
    thread = threading.Thread(target=b_saves, daemon=True)
    thread.start()
    thread.outcome = outcome
    return thread


def _proposal_ids(database, image_id: int) -> list[int]:
    seen, rows = get_annotations(database, image_id, decode_masks=False)
    proposals = [InstanceData(category_id=3, box=(2.0, 2.0 + 6 * k, 30.0, 6.0 + 6 * k), source="model",
                              review_state="proposed", score=0.9) for k in range(2)]
    save_annotations(database, image_id, [InstanceData.from_row(r) for r in rows] + proposals, seen_revision=seen)
    return [r["id"] for r in get_annotations(database, image_id, states=["proposed"], decode_masks=False)[1]]


WRITES = {  # each a read, then a computation, then a save of image 1 by Workbench (seen_revision: None)
    "add_boxes": lambda wb, ids: wb.editor.add_boxes(1, [(7, (4.0, 4.0, 30.0, 24.0))], box_only=False, seen_revision=None),
    "refine_with_clicks": lambda wb, ids: wb.editor.refine_with_clicks(1, ids[0], [[10, 10]], [[50, 40]], None),
    "save_mask": lambda wb, ids: wb.editor.save_mask(1, ids[0], None, np.eye(48, 64, dtype=bool), None),
    "set_category": lambda wb, ids: wb.editor.set_category(1, ids[0], 12, None),
    "delete_instance": lambda wb, ids: wb.editor.delete_instance(1, ids[0], None),
    "accept_all": lambda wb, ids: wb.editor.accept_all(1, 0.5, None),
    "finish_image": lambda wb, ids: wb.editor.finish_image(1, None),
    "save_drawn_boxes": lambda wb, ids: wb.editor.save_drawn_boxes(1, [{"xmin": 4, "ymin": 4, "xmax": 30, "ymax": 24,
                                                                  "label": "sign", "id": None}], 1.0, box_only=True,
                                                             seen_revision=None),
    "recover_conflict": lambda wb, ids: wb.editor.recover_conflict(1, None),
}


@pytest.mark.parametrize("write", list(WRITES))
def test_a_write_that_computes_merges_with_a_save_that_lands_meanwhile(database, synthetic_coco, monkeypatch,
                                                                        write):
    """Issue 23, finding 5: /add_boxes read the rows, ran GrabCut for seconds and saved with no revision check,
    dropping B's acknowledged save made meanwhile. Every read-compute-save write starts from the revision it read
    (the caller gave none); B's save of another instance lands meanwhile: both stand (issue 26: instance-level
    merge; before, the write was refused as a conflict)."""
    import db.annotations
    from services import editing
    from services.workbench import Workbench

    import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    wb = Workbench(database, device="cpu")
    ids = _proposal_ids(database, 1)
    if write == "recover_conflict":  # a lost version to recover: an edit of a proposal someone else edited first
        seen, rows = get_annotations(database, 1, decode_masks=False)
        wb.editor.set_category(1, ids[0], 12, seen)
        with pytest.raises(ConflictError):
            save_annotations(database, 1, [InstanceData.from_row(r, category_id=7) if r["id"] == ids[0]
                                           else InstanceData.from_row(r) for r in rows], seen_revision=seen)
    before = get_annotations(database, 1, decode_masks=False)[1]
    reads = db.annotations if write == "recover_conflict" else editing  # (recover_lost reads there)
    lands = _a_save_lands_meanwhile(monkeypatch, database, 1, reads)
    try:
        written = WRITES[write](wb, ids)
    finally:
        lands.join(60)
    assert lands.outcome, "B's save did not land"
    revision, now = get_annotations(database, 1)
    assert revision == lands.outcome[0] + 1 == (written[0] if isinstance(written, tuple) else
                                                written["revision"] if isinstance(written, dict) else written)
    assert any(r["mask"] is not None and r["mask"][36:40, 40:50].all() and r["created_by"] == "B" for r in now)
    assert [_content(r) for r in now if r["created_by"] != "B"] != [_content(r) for r in before]  # the write's too


def _content(row: dict) -> tuple:
    return row["id"], row["category_id"], row["box"], row["mask_rle"], row["review_state"]


@pytest.mark.parametrize("write", ["add_boxes", "refine_with_clicks", "set_category", "delete_instance"])
def test_a_write_sent_with_an_older_revision_than_it_read_is_merged_or_a_conflict(database, synthetic_coco, write):
    """The caller saw the image before two proposals were added: a new box merges; an edit of a proposal the
    caller never saw is a conflict on that instance, and nothing is written."""
    from services.workbench import Workbench

    import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    wb = Workbench(database, device="cpu")
    ids = _proposal_ids(database, 1)
    old = get_annotations(database, 1)[0] - 1  # what the caller saw: the image changed since
    calls = {"add_boxes": lambda: wb.editor.add_boxes(1, [(7, (4.0, 4.0, 30.0, 24.0))], box_only=False, seen_revision=old),
             "refine_with_clicks": lambda: wb.editor.refine_with_clicks(1, ids[0], [[10, 10]], [], old),
             "set_category": lambda: wb.editor.set_category(1, ids[0], 12, old),
             "delete_instance": lambda: wb.editor.delete_instance(1, ids[0], old)}
    if write == "add_boxes":
        before = len(get_annotations(database, 1)[1])
        assert calls[write]()[0] == old + 2
        assert len(get_annotations(database, 1)[1]) == before + 1
        return
    with pytest.raises(ConflictError) as error:
        calls[write]()
    assert error.value.instance_ids == [ids[0]]
    assert get_annotations(database, 1)[0] == old + 1  # nothing written


@pytest.mark.parametrize("write", ["set_category", "save_mask"])
def test_an_edit_that_ends_as_the_instance_is_of_one_deleted_meanwhile_is_a_conflict(database, synthetic_coco,
                                                                                    monkeypatch, write):
    """Found by bench_team.py (PostgreSQL, 5 labellers): A saw instance X as class 3 and gives it class 12; B had
    already given it 12 (A's server-side read sees that), and C deletes X while A's edit computes. A's save then
    changed nothing against what it read, so it was acknowledged, yet X is gone: A was told "saved" for an edit of
    an instance that no longer exists. An edit of a named instance someone deleted meanwhile is a conflict."""
    from services import editing
    from services.workbench import Workbench

    import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    wb = Workbench(database, device="cpu")
    ids = _proposal_ids(database, 1)
    target = ids[0]
    seen = get_annotations(database, 1)[0]  # what A saw
    wb.editor.set_category(1, target, 12, None, user="B")  # B: the class A is about to give
    mask = np.zeros((48, 64), bool)
    mask[5:20, 5:30] = True
    if write == "save_mask":  # B's mask is the one A paints
        wb.editor.save_mask(1, target, None, mask, None, user="B")
    real = editing.get_annotations
    deleted = []

    def read_then_c_deletes(*args, **kwargs):
        result = real(*args, **kwargs)
        if not deleted:
            deleted.append(None)  # (C's delete reads too)
            deleted[0] = wb.editor.delete_instance(1, target, None, user="C")
        return result

    monkeypatch.setattr(editing, "get_annotations", read_then_c_deletes)
    calls = {"set_category": lambda: wb.editor.set_category(1, target, 12, seen, user="A"),
             "save_mask": lambda: wb.editor.save_mask(1, target, None, mask, seen, user="A")}
    with pytest.raises(ConflictError) as error:
        calls[write]()
    assert deleted and error.value.instance_ids == [target]
    assert get_annotations(database, 1)[0] == deleted[0]  # nothing written after C's delete
    assert [entry.id for entry in conflict_versions(database, 1, "A")]  # A's lost version is journalled


def test_propose_merges_with_a_save_that_lands_meanwhile(database, synthetic_coco, monkeypatch):
    """A model's proposals replace its unreviewed ones, merged with a save of another instance made meanwhile."""
    from types import SimpleNamespace

    from db import registry
    from services import proposals

    import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    version = registry.register_version(database, database.data_dir / "models" / "fake.pt", name="fake", config={},
                                        metrics={})
    mask = np.zeros((48, 64), bool)
    mask[5:20, 5:20] = True
    predicted = [SimpleNamespace(category_id=3, score=0.9, box=(5.0, 5.0, 20.0, 20.0), mask=mask)]
    lands = _a_save_lands_meanwhile(monkeypatch, database, 1, proposals)
    try:
        result = proposals.propose(database, 1, None, version, instances=predicted)
    finally:
        lands.join(60)
    revision, now = get_annotations(database, 1, decode_masks=False)
    assert any(r["created_by"] == "B" for r in now)  # B's save and the proposals merge
    assert result.revision == revision == lands.outcome[0] + 1 and result.added == 1
    assert [r["model_version_id"] for r in now if r["review_state"] == "proposed"] == [version]


def test_two_training_runs_started_at_once_one_runs(database, monkeypatch):
    """Issue 23, finding 6: two /retrain calls at once both started a run. The database lets one run be queued
    or running (a unique index over the active runs): exactly one starts, the other is told which run to wait
    for. (The training process is not started: a stand-in with this process's pid, which is alive.)"""
    import os

    from db.errors import WorkbenchError
    from services import training
    from services.presets import TrainingSpec

    started = []

    class Process:
        def __init__(self, command, **kwargs):
            started.append(command)
            self.pid = os.getpid()

        def wait(self):  # what the server's reaper thread calls
            return 0

    monkeypatch.setattr(training.subprocess, "Popen", Process)
    spec = TrainingSpec(iterations=5, image_size=64, backbone_weights="none", device="cpu")
    results = at_once(lambda _: training.start_training(database, spec), [0, 1])
    runs = [r for r in results if isinstance(r, int)]
    refused = [r for r in results if isinstance(r, WorkbenchError)]
    assert len(runs) == 1 and len(refused) == 1 and len(started) == 1, results
    assert f"training run {runs[0]} is still" in str(refused[0]) and "cancel it" in str(refused[0])
    assert training.run_state(database, runs[0]).status == "queued"
    from db import registry

    registry.finish_run(database, runs[0], registry.RunStatus.cancelled)
    assert isinstance(training.start_training(database, spec), int)  # the slot is free again
