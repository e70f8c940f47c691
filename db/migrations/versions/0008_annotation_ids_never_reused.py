"""annotation ids are never given to another annotation

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06

SQLite gives the highest id again once its row is deleted (a plain INTEGER PRIMARY KEY), so an instance drawn
after a delete could take the id of one deleted on another image, and the fates, the journal and a client's
view name annotations by id. The annotations table becomes AUTOINCREMENT on SQLite (its counter only grows);
PostgreSQL's sequence never goes back already. Both counters start above every annotation id the database
knows: its rows, the fates' and the journal's (ids of deleted annotations an undo may bring back).
"""
import json

from alembic import op
import sqlalchemy as sa

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def _highest_known_id(connection) -> int:
    """The highest annotation id in the annotations, the fates and the journal's rows and added lists."""
    highest = max(connection.execute(sa.text("SELECT COALESCE(MAX(id), 0) FROM annotations")).scalar(),
                  connection.execute(sa.text("SELECT COALESCE(MAX(annotation_id), 0) FROM instance_fates")).scalar())
    for snapshot, added in connection.execute(sa.text("SELECT snapshot, added FROM annotation_journal")):
        rows = json.loads(snapshot) if isinstance(snapshot, str) else snapshot or []
        added = json.loads(added) if isinstance(added, str) else added or []
        ids = [row.get("id") for row in rows if isinstance(row, dict)] + list(added)
        highest = max([highest] + [int(i) for i in ids if isinstance(i, int)])
    return int(highest)


def upgrade() -> None:
    connection = op.get_bind()
    highest = _highest_known_id(connection)
    if connection.dialect.name == 'sqlite':
        with op.batch_alter_table('annotations', recreate='always',
                                  table_kwargs={'sqlite_autoincrement': True}) as batch_op:
            batch_op.alter_column('id', existing_type=sa.Integer(), autoincrement=True)
        if highest:
            # the counter of an AUTOINCREMENT table; the copy made it the highest id still there
            connection.execute(sa.text("DELETE FROM sqlite_sequence WHERE name = 'annotations'"))
            connection.execute(sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES ('annotations', :seq)"),
                               {"seq": highest})
    elif connection.dialect.name == 'postgresql' and highest:
        sequence = connection.execute(sa.text("SELECT pg_get_serial_sequence('annotations', 'id')")).scalar()
        last = connection.execute(sa.text(f"SELECT last_value FROM {sequence}")).scalar()
        connection.execute(sa.text("SELECT setval(:sequence, :value)"),
                           {"sequence": sequence, "value": max(int(last), highest)})


def downgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':
        with op.batch_alter_table('annotations', recreate='always',
                                  table_kwargs={'sqlite_autoincrement': False}) as batch_op:
            batch_op.alter_column('id', existing_type=sa.Integer(), autoincrement=True)
