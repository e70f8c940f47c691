"""The database: migrations own the schema, SQLite is set up for concurrent use."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, inspect, select, text

from db.engine import normalise_url, open_database, schema_revision
from db.models import Base, Category, Image


def test_migrations_match_the_models(database):
    with database.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata)
    assert diff == []
    assert schema_revision(database.engine) is not None
    tables = set(inspect(database.engine).get_table_names())
    assert {"categories", "images", "annotations", "model_versions", "training_runs", "alembic_version"} <= tables


@pytest.mark.backends("sqlite")
def test_sqlite_is_set_up_for_concurrent_use(database):
    with database.engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert connection.execute(text("PRAGMA busy_timeout")).scalar() >= 5000
    assert database.integrity_ok()


def test_reopening_keeps_data_and_schema(tmp_path, database_url):
    db = open_database(tmp_path / "d", database_url)
    with db.session() as session:
        session.add(Category(id=5, name="cat"))
    revision = schema_revision(db.engine)
    db.close()
    db = open_database(tmp_path / "d", database_url)  # runs the migrations again: a no-op
    with db.session() as session:
        assert session.scalars(select(Category.name)).all() == ["cat"]
    assert schema_revision(db.engine) == revision
    db.close()


def test_integrity_check_finds_rows_that_refer_to_missing_rows(database):
    from db.models import Annotation

    with database.session() as session:
        session.add(Category(id=4, name="dog"))
        session.add(Image(id=1, sha256="ab", stored_path="images/ab.jpg", file_name="a.jpg", width=4, height=3))
        session.flush()
        session.add(Annotation(image_id=1, category_id=4, bbox_x=0, bbox_y=0, bbox_w=1, bbox_h=1, area=1))
    if database.dialect == "postgresql":  # the amcheck extension's B-tree checks run too where it is installed
        with database.engine.begin() as connection:
            connection.execute(text("CREATE EXTENSION IF NOT EXISTS amcheck"))
    assert database.integrity_ok()
    # a broken reference, written past the foreign key checks (as a crash or a bad tool could leave it)
    with database.engine.begin() as connection:
        if database.dialect == "sqlite":
            connection.execute(text("PRAGMA foreign_keys=OFF"))
        else:
            connection.execute(text("SET LOCAL session_replication_role = replica"))  # no FK triggers
        connection.execute(text("DELETE FROM categories WHERE id = 4"))
        if database.dialect == "sqlite":
            connection.execute(text("PRAGMA foreign_keys=ON"))
    assert not database.integrity_ok()


def test_foreign_keys_are_enforced(database):
    import pytest
    from sqlalchemy.exc import IntegrityError

    from db.models import Annotation

    with pytest.raises(IntegrityError):
        with database.session() as session:
            session.add(Annotation(image_id=999, category_id=999, bbox_x=0, bbox_y=0, bbox_w=1, bbox_h=1, area=1))
    with database.session() as session:
        assert session.scalars(select(Image)).all() == []


def test_plain_postgresql_url_means_psycopg3():
    assert normalise_url("postgresql://u@h:5432/d") == "postgresql+psycopg://u@h:5432/d"
    assert normalise_url("sqlite:///x.db") == "sqlite:///x.db"


def _migrate(engine, revision: str, downgrade: bool = False) -> None:
    from alembic import command
    from alembic.config import Config

    from db.engine import MIGRATIONS_DIR

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        (command.downgrade if downgrade else command.upgrade)(config, revision)


def _dog_and_one_image(connection, old: MetaData, day, revision: int) -> int:
    """A class "dog" (id 4) and one 4x3 image, written into an older schema's tables -> the image's id."""
    connection.execute(old.tables["categories"].insert().values(id=4, name="dog", supercategory="", created_at=day))
    return connection.execute(old.tables["images"].insert().values(
        sha256="ab", stored_path="images/ab.jpg", file_name="a.jpg", width=4, height=3, split="train",
        revision=revision, created_at=day)).inserted_primary_key[0]


def test_upgrade_from_the_first_schema_keeps_the_data(tmp_path, database_url):
    from datetime import datetime, timezone

    from db.engine import make_engine
    from db.models import Annotation

    engine = make_engine(database_url)
    _migrate(engine, "0001")  # a database made by the first release
    old = MetaData()
    old.reflect(engine)
    day = datetime(2026, 1, 1, tzinfo=timezone.utc)
    with engine.begin() as connection:
        image_id = _dog_and_one_image(connection, old, day, revision=0)
        ann_id = connection.execute(old.tables["annotations"].insert().values(
            image_id=image_id, category_id=4, bbox_x=0, bbox_y=0, bbox_w=2, bbox_h=2, mask_rle="0", area=4,
            iscrowd=False, source="imported", review_state="accepted", created_at=day,
            updated_at=day)).inserted_primary_key[0]
        run_id = connection.execute(old.tables["training_runs"].insert().values(
            status="succeeded", mode="full", params={"lr": 0.01}, iteration=5, iterations=5, history=[[5, 1.5]],
            message="", cancel_requested=False, created_at=day)).inserted_primary_key[0]
    engine.dispose()
    db = open_database(tmp_path, database_url)  # upgrades to the newest schema
    with db.session() as session:
        ann = session.get(Annotation, ann_id)
        assert (ann.category_id, ann.mask_rle, ann.mask_polygons, ann.area, ann.iscrowd) == (4, "0", None, 4, False)
        assert ann.created_at == day
        # rows added after the upgrade get new ids
        image = Image(sha256="cd", stored_path="images/cd.jpg", file_name="c.jpg", width=4, height=3)
        session.add(image)
        session.flush()
        session.add(Annotation(image_id=image.id, category_id=4, bbox_x=0, bbox_y=0, bbox_w=1, bbox_h=1, area=1))
        session.flush()
    from db import registry

    run = registry.get_run(db, run_id)
    assert (run.params, run.history) == ({"lr": 0.01}, [[5, 1.5]])
    with db.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []
    assert db.integrity_ok()
    db.close()


def test_upgrade_to_journal_diffs_keeps_old_entries_undoable_and_one_run_active(tmp_path, database_url):
    """Migration 0006: the journal's entries written before stay whole-image snapshots (undo restores them);
    of two runs an older database has active (the race it allowed), the newest stays, the other is failed."""
    from datetime import datetime, timezone

    from db.annotations import get_annotations, undo
    from db.engine import make_engine
    from db.models import JournalEntry, RunStatus, TrainingRun

    engine = make_engine(database_url)
    _migrate(engine, "0005")
    old = MetaData()
    old.reflect(engine)
    day = datetime(2026, 1, 1, tzinfo=timezone.utc)
    row = dict(category_id=4, bbox_x=0.0, bbox_y=0.0, bbox_w=2.0, bbox_h=2.0, mask_rle=None, mask_polygons=None,
               area=4.0, iscrowd=False, source="imported", model_version_id=None, score=None,
               review_state="accepted", created_by=None, updated_by=None)
    with engine.begin() as connection:
        image_id = _dog_and_one_image(connection, old, day, revision=1)
        ann_id = connection.execute(old.tables["annotations"].insert().values(
            image_id=image_id, **{k: v for k, v in row.items() if k != "updated_by"}, created_at=day,
            updated_at=day)).inserted_primary_key[0]
        # the old journal: before revision 1's save the image had one more annotation (id 99) and this one
        connection.execute(old.tables["annotation_journal"].insert().values(
            image_id=image_id, revision=0, action="save", undone=False, created_at=day,
            snapshot=[dict(row, id=ann_id), dict(row, id=99, bbox_x=1.0)]))
        for status in ("running", "queued", "succeeded"):
            connection.execute(old.tables["training_runs"].insert().values(
                status=status, mode="heads", params={}, iteration=0, iterations=5, history=[], message="",
                cancel_requested=False, created_at=day))
    engine.dispose()
    db = open_database(tmp_path, database_url)
    with db.session() as session:
        assert session.scalars(select(JournalEntry.content)).all() == ["snapshot"]
        assert [(r.status, "one training run" in r.message) for r in session.scalars(
            select(TrainingRun).order_by(TrainingRun.id))] == [(RunStatus.failed, True), (RunStatus.queued, False),
                                                               (RunStatus.succeeded, False)]
    undo(db, image_id, seen_revision=1)
    assert sorted((r["id"], r["box"][0]) for r in get_annotations(db, image_id)[1]) == [(ann_id, 0.0), (99, 1.0)]
    with db.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    db.close()


def _annotation(image_id: int, x: float = 0.0):
    from db.models import Annotation

    return Annotation(image_id=image_id, category_id=4, bbox_x=x, bbox_y=0, bbox_w=1, bbox_h=1, area=1)


def test_annotation_ids_are_never_given_again(database):
    """Deleting the newest annotations of one image and drawing on another: the new ones get new ids (SQLite gave
    the deleted highest ids again before migration 0008; fates and the journal name annotations by id)."""
    from db.models import Annotation

    with database.session() as session:
        session.add(Category(id=4, name="dog"))
        session.add_all([Image(id=1, sha256="ab", stored_path="images/ab.jpg", file_name="a.jpg", width=4, height=3),
                         Image(id=2, sha256="cd", stored_path="images/cd.jpg", file_name="c.jpg", width=4, height=3)])
        session.flush()
        first = [_annotation(1, x) for x in range(3)]
        session.add_all(first)
        session.flush()
        first_ids = [a.id for a in first]
    with database.session() as session:
        session.execute(Annotation.__table__.delete().where(Annotation.id.in_(first_ids[1:])))
    with database.session() as session:
        later = [_annotation(2, x) for x in range(2)]
        session.add_all(later)
        session.flush()
        assert min(a.id for a in later) > max(first_ids)


def test_upgrade_to_ids_never_reused_starts_above_every_known_id(tmp_path, database_url):
    """Migration 0008: the id counter starts above the annotations', the fates' and the journal's ids (a deleted
    annotation an undo may bring back keeps its id to itself)."""
    from datetime import datetime, timezone

    from db.engine import make_engine
    from db.models import Annotation

    engine = make_engine(database_url)
    _migrate(engine, "0007")
    old = MetaData()
    old.reflect(engine)
    day = datetime(2026, 1, 1, tzinfo=timezone.utc)
    with engine.begin() as connection:
        image_id = _dog_and_one_image(connection, old, day, revision=2)
        connection.execute(old.tables["annotations"].insert().values(
            id=5, image_id=image_id, category_id=4, bbox_x=0, bbox_y=0, bbox_w=2, bbox_h=2, area=4, iscrowd=False,
            source="drawn", review_state="accepted", created_at=day, updated_at=day))
        connection.execute(old.tables["instance_fates"].insert().values(
            image_id=image_id, annotation_id=40, kind="hand", category_id=4, fate="deleted", clicks=0,
            created_at=day))
        connection.execute(old.tables["annotation_journal"].insert().values(
            image_id=image_id, revision=1, action="save", content="diff", undone=False, created_at=day,
            snapshot=[{"id": 60, "category_id": 4}], added=[5]))
    engine.dispose()
    db = open_database(tmp_path, database_url)
    with db.session() as session:
        assert session.get(Annotation, 5).bbox == [0, 0, 2, 2]
        new = _annotation(image_id)
        session.add(new)
        session.flush()
        assert new.id == 61
    with db.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    db.close()


def test_downgrade_to_the_first_schema_and_back(database):
    from db.models import Annotation

    with database.session() as session:
        session.add(Category(id=4, name="dog"))
        session.add(Image(id=1, sha256="ab", stored_path="images/ab.jpg", file_name="a.jpg", width=4, height=3))
        session.flush()
        session.add(Annotation(image_id=1, category_id=4, bbox_x=0, bbox_y=0, bbox_w=2, bbox_h=2, area=4,
                               mask_rle="0", mask_polygons="[[0, 0, 2, 0, 2, 2]]"))
    _migrate(database.engine, "0001", downgrade=True)
    assert schema_revision(database.engine) == "0001"
    tables = inspect(database.engine)
    assert "annotation_journal" not in tables.get_table_names()
    assert "mask_polygons" not in {column["name"] for column in tables.get_columns("annotations")}
    _migrate(database.engine, "head")
    with database.session() as session:
        ann = session.scalars(select(Annotation)).one()
        assert (ann.category_id, ann.mask_rle, ann.mask_polygons) == (4, "0", None)
    _migrate(database.engine, "base", downgrade=True)
    assert set(inspect(database.engine).get_table_names()) <= {"alembic_version"}


def test_a_database_that_cannot_be_reached_is_explained(tmp_path):
    from db.errors import WorkbenchError
    from test_app_helpers import free_port

    with pytest.raises(WorkbenchError, match=r"cannot connect to the database postgresql\+psycopg://me:\*\*\*@"
                                             r".*Connection refused.*check that the server runs"):
        open_database(tmp_path, f"postgresql://me:secret@127.0.0.1:{free_port()}/db")
    with pytest.raises(WorkbenchError, match="is not a database URL"):
        open_database(tmp_path, "workbench.db")


@pytest.mark.backends("postgresql")
def test_a_missing_postgresql_database_says_to_create_it(tmp_path, database_url):
    from sqlalchemy.engine import make_url

    from db.errors import WorkbenchError

    missing = make_url(database_url).set(database="no_such_database").render_as_string(hide_password=False)
    with pytest.raises(WorkbenchError, match=r'database "no_such_database" does not exist.*createdb'):
        open_database(tmp_path, missing)
