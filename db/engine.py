"""Database engine, sessions and migrations.

``open_database(data_dir, url)`` is the one way in: it makes the data folder, connects
(SQLite in the data folder by default, or any SQLAlchemy URL), brings the schema up to
the newest migration and returns a :class:`Database`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from sqlalchemy import Connection, Engine, and_, create_engine, event, exists, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DataError, DBAPIError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_FILE_NAME = "workbench.sqlite3"
BUSY_TIMEOUT_MS = 30_000
MIGRATION_LOCK_KEY = 0x776F726B62656E63  # PostgreSQL advisory lock taken while migrating ("workbenc")
# launch.py's --db defaults to this variable: training processes get their database's URL (and its
# password) there rather than in their command line, which `ps` shows every user
DB_URL_VARIABLE = "WORKBENCH_DB_URL"


def default_url(data_dir: Path) -> str:
    return f"sqlite:///{(Path(data_dir) / SQLITE_FILE_NAME).resolve()}"


def normalise_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here (SQLAlchemy's default driver is psycopg2)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets the UI read while a training process writes; foreign keys are off by default
    # in SQLite; the busy timeout makes concurrent writers wait instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str) -> Engine:
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def upgrade_schema(engine: Engine) -> None:
    """Apply every pending Alembic migration (a no-op when the schema is current)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        # Processes that open the database at once (servers, a training process) migrate one after
        # the other; the later ones then find the schema current. Held until this transaction ends.
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        elif connection.dialect.name == "sqlite":
            connection.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock now (waits up to the busy timeout)
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def schema_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def _reason(error: DBAPIError) -> str:
    """The first line of the database driver's message (without SQLAlchemy's statement and link)."""
    lines = str(error.orig if error.orig is not None else error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _orphan_count(connection: Connection) -> int:
    """Rows whose foreign key names a row that does not exist, over every foreign key of the schema."""
    from db.models import Base

    total = 0
    for table in Base.metadata.sorted_tables:
        for constraint in table.foreign_key_constraints:
            referred = constraint.referred_table.alias()
            columns = [element.parent for element in constraint.elements]
            match = and_(*(referred.c[element.column.name] == element.parent for element in constraint.elements))
            orphans = (select(func.count()).select_from(table)
                       .where(*(column.is_not(None) for column in columns))
                       .where(~exists().where(match)))
            total += connection.execute(orphans).scalar_one()
    return total


def _postgres_indexes_ok(connection: Connection) -> bool:
    from db.models import Base

    tables = [table.name for table in Base.metadata.sorted_tables]
    invalid = connection.execute(text(
        "SELECT count(*) FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid "
        "WHERE t.relname = ANY(:tables) AND t.relnamespace = current_schema()::regnamespace "
        "AND NOT (i.indisvalid AND i.indisready AND i.indislive)"), {"tables": tables}).scalar_one()
    if invalid:
        return False
    amcheck = connection.execute(text("SELECT count(*) FROM pg_extension WHERE extname = 'amcheck'")).scalar_one()
    if amcheck and connection.execute(text(
            "SELECT has_function_privilege('bt_index_check(regclass)', 'EXECUTE')")).scalar_one():
        try:
            connection.execute(text(
                "SELECT bt_index_check(i.indexrelid) FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid "
                "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam "
                "WHERE a.amname = 'btree' AND t.relname = ANY(:tables) "
                "AND t.relnamespace = current_schema()::regnamespace"), {"tables": tables}).all()
        except DBAPIError as error:  # class XX: data or index corrupted
            if not str(getattr(error.orig, "sqlstate", "") or "").startswith("XX"):
                raise
            connection.rollback()
            return False
    return True


@dataclass
class Database:
    """An open workbench database and its data folder (stored images, checkpoints)."""

    engine: Engine
    data_dir: Path
    sessions: sessionmaker[Session]

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose work is one transaction: committed on success, rolled back on error."""
        try:
            with self.sessions.begin() as session:
                yield session
        except DataError as exc:  # e.g. an id beyond 32 bits: PostgreSQL refuses it, SQLite would not
            from db.errors import WorkbenchError

            raise WorkbenchError(f"a value does not fit the database ({_reason(exc)}); check the ids and numbers "
                                 "given") from exc

    @property
    def url(self) -> str:
        """The URL to reach this database from another process (password included)."""
        return self.engine.url.render_as_string(hide_password=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def integrity_ok(self) -> bool:
        """Whether the stored data is intact: no row refers to a missing row (every foreign key of
        the schema is checked with a query), and the storage itself is sound (SQLite: ``PRAGMA
        integrity_check``; PostgreSQL: every index of the schema valid, and B-tree structure
        checked by ``bt_index_check`` where the ``amcheck`` extension is installed)."""
        with self.engine.connect() as connection:
            if self.dialect == "sqlite":
                if connection.execute(text("PRAGMA integrity_check")).scalar() != "ok":
                    return False
            elif self.dialect == "postgresql" and not _postgres_indexes_ok(connection):
                return False
            return _orphan_count(connection) == 0

    def close(self) -> None:
        self.engine.dispose()


def _connected_engine(url: str) -> Engine:
    """An engine for ``url`` that has connected once; a WorkbenchError saying what to do otherwise."""
    from db.errors import WorkbenchError

    try:
        shown = make_url(normalise_url(url)).render_as_string(hide_password=True)
    except ArgumentError:
        raise WorkbenchError(f"{url!r} is not a database URL; use postgresql://USER@HOST:PORT/DB "
                             "or sqlite:///PATH") from None
    try:
        engine = make_engine(url)
    except (NoSuchModuleError, ImportError) as exc:
        raise WorkbenchError(f"cannot use the database {shown}: {exc}; use postgresql://USER@HOST:PORT/DB "
                             "(psycopg 3 is in the project's pins: pip install -r requirements.txt) or sqlite:///PATH") from None
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        engine.dispose()
        hint = ("check that the server runs and accepts connections, and that the database and the role exist "
                "(on the server: `createuser USER` and `createdb -O USER DB`)"
                if engine.dialect.name == "postgresql" else "check the path and its permissions")
        raise WorkbenchError(f"cannot connect to the database {shown}: {_reason(exc)}; {hint}") from None
    return engine


def open_database(data_dir: str | Path, url: str | None = None, *, migrate: bool = True) -> Database:
    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    engine = _connected_engine(url or default_url(data_dir))
    if migrate:
        upgrade_schema(engine)
    return Database(engine=engine, data_dir=data_dir,
                    sessions=sessionmaker(engine, expire_on_commit=False))
