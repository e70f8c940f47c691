"""journal entries as diffs; one queued or running training run at a time

Revision ID: 0006
Revises: 0005
Create Date: 2027-01-12

The journal's entries written from now on hold only what a change replaced ("diff": the annotations it
deleted or modified, as they were, and the ids it added); the entries already there are whole-image
snapshots and stay readable as such ("snapshot", the server default). Training runs get a slot and a
unique index over the queued and running ones, so two runs cannot be active at once; of the runs that
an older database has active, all but the newest are marked failed first (the index could not be made).
"""
from alembic import op
import sqlalchemy as sa

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

ACTIVE_RUN = "status IN ('queued', 'running')"


def upgrade() -> None:
    with op.batch_alter_table('annotation_journal', schema=None) as batch_op:
        batch_op.add_column(sa.Column('content', sa.String(length=16), server_default='snapshot', nullable=False))
        batch_op.add_column(sa.Column('added', sa.JSON(), nullable=True))
    runs = sa.table('training_runs', sa.column('id', sa.Integer), sa.column('status', sa.String),
                    sa.column('message', sa.Text), sa.column('finished_at', sa.DateTime(timezone=True)))
    active = sa.text(ACTIVE_RUN)
    connection = op.get_bind()
    newest = connection.execute(sa.select(sa.func.max(runs.c.id)).where(active)).scalar()
    if newest is not None:
        connection.execute(runs.update().where(active, runs.c.id != newest).values(
            status='failed', message='stopped waiting: only one training run may be queued or running at a time',
            finished_at=sa.func.current_timestamp()))
    with op.batch_alter_table('training_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('slot', sa.String(length=32), server_default='default', nullable=False))
    op.create_index('uq_training_runs_one_active', 'training_runs', ['slot'], unique=True,
                    sqlite_where=sa.text(ACTIVE_RUN), postgresql_where=sa.text(ACTIVE_RUN))


def downgrade() -> None:
    op.drop_index('uq_training_runs_one_active', table_name='training_runs')
    with op.batch_alter_table('training_runs', schema=None) as batch_op:
        batch_op.drop_column('slot')
    with op.batch_alter_table('annotation_journal', schema=None) as batch_op:
        batch_op.drop_column('added')
        batch_op.drop_column('content')
