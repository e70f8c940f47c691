"""The database: migrations own the schema, SQLite is set up for concurrent use."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select, text

from db.engine import normalise_url, open_database, schema_revision
from db.models import Base, Category, Image


def test_migrations_match_the_models(database):
    with database.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata)
    assert diff == []
    assert schema_revision(database.engine) is not None
    tables = set(inspect(database.engine).get_table_names())
    assert {"categories", "images", "annotations", "model_versions", "training_runs", "alembic_version"} <= tables


def test_sqlite_is_set_up_for_concurrent_use(database):
    with database.engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert connection.execute(text("PRAGMA busy_timeout")).scalar() >= 5000
    assert database.integrity_ok()


def test_reopening_keeps_data_and_schema(tmp_path):
    db = open_database(tmp_path / "d")
    with db.session() as session:
        session.add(Category(id=5, name="cat"))
    revision = schema_revision(db.engine)
    db.close()
    db = open_database(tmp_path / "d")  # runs the migrations again: a no-op
    with db.session() as session:
        assert session.scalars(select(Category.name)).all() == ["cat"]
    assert schema_revision(db.engine) == revision
    db.close()


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


def test_upgrade_from_the_first_schema_keeps_the_data(tmp_path):
    from alembic import command
    from alembic.config import Config

    from db.engine import MIGRATIONS_DIR, make_engine

    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    engine = make_engine(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")  # a database made by the first release
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO categories (id, name, supercategory, created_at) "
                                "VALUES (4, 'dog', '', '2026-01-01')"))
        connection.execute(text("INSERT INTO images (id, sha256, stored_path, file_name, width, height, split, "
                                "revision, created_at) VALUES (1, 'ab', 'images/ab.jpg', 'a.jpg', 4, 3, 'train', 0, "
                                "'2026-01-01')"))
        connection.execute(text("INSERT INTO annotations (id, image_id, category_id, bbox_x, bbox_y, bbox_w, bbox_h, "
                                "mask_rle, area, iscrowd, source, review_state, created_at, updated_at) VALUES "
                                "(1, 1, 4, 0, 0, 2, 2, '0', 4, 0, 'imported', 'accepted', '2026-01-01', '2026-01-01')"))
    engine.dispose()
    db = open_database(tmp_path, url)  # upgrades to the newest schema
    from db.models import Annotation

    with db.session() as session:
        ann = session.get(Annotation, 1)
        assert (ann.category_id, ann.mask_rle, ann.mask_polygons, ann.area) == (4, "0", None, 4)
    with db.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []
    db.close()
