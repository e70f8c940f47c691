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


def test_saves_of_the_same_revision_at_once_one_wins_the_others_are_kept(database, synthetic_coco):
    import_coco(database, synthetic_coco, synthetic_coco.parent / "images")
    image_id = 1
    seen, _ = get_annotations(database, image_id)
    with database.session() as session:
        height, width = session.get(Image, image_id).height, session.get(Image, image_id).width

    def save(person: int):
        mask = np.zeros((height, width), bool)
        mask[2:10 + person, 2:10] = True
        return save_annotations(database, image_id, [InstanceData(category_id=7, mask=mask)], seen_revision=seen,
                                user=f"person{person}")

    results = at_once(save, list(range(PEOPLE)))
    won = [r for r in results if isinstance(r, int)]
    lost = [r for r in results if isinstance(r, ConflictError)]
    assert won == [seen + 1] and len(lost) == PEOPLE - 1, results
    revision, rows = get_annotations(database, image_id)
    assert revision == seen + 1 and len(rows) == 1
    winner = rows[0]["mask"].sum() // 8 - 8  # the rows painted tell who won
    kept = conflict_versions(database, image_id)
    assert sorted(entry.user for entry in kept) == sorted(f"person{p}" for p in range(PEOPLE) if p != winner)


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
