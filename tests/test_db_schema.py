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
