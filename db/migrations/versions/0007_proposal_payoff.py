"""what a proposal would have been worth, hidden proposals, and how a box's mask started

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

Fates gain: the value "hidden" (a proposal under its threshold, never drawn); for proposals, once their image
is done, the best mask IoU with the final labels and that label's class, the proposal's rank in its image and
the model's own box (the annotation's box is its mask's);
for instances made from a box, the mask they started from and the refine clicks spent on them.
"""
from alembic import op
import sqlalchemy as sa

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

OLD_FATES = ('proposed', 'accepted', 'edited', 'rejected', 'deleted', 'replaced', 'kept')
NEW_FATES = OLD_FATES + ('hidden',)


def _fate_type(values):
    return sa.Enum(*values, name='fate', native_enum=False, create_constraint=True, length=16)


def _drop_fate_check() -> None:
    """PostgreSQL names the enum's CHECK constraint itself: find it and drop it (SQLite's batch copy does it)."""
    connection = op.get_bind()
    if connection.dialect.name == 'sqlite':
        return
    for check in sa.inspect(connection).get_check_constraints('instance_fates'):
        if "fate" in (check.get('sqltext') or '') and "'kept'" in (check.get('sqltext') or ''):
            op.drop_constraint(check['name'], 'instance_fates', type_='check')


def _set_fates(old, new) -> None:
    _drop_fate_check()
    if op.get_bind().dialect.name == 'sqlite':
        with op.batch_alter_table('instance_fates', schema=None) as batch_op:
            batch_op.alter_column('fate', existing_type=_fate_type(old), type_=_fate_type(new),
                                  existing_nullable=False)
    else:
        values = ", ".join(f"'{v}'" for v in new)
        op.create_check_constraint('fate', 'instance_fates', f"fate IN ({values})")


def upgrade() -> None:
    with op.batch_alter_table('instance_fates', schema=None) as batch_op:
        batch_op.add_column(sa.Column('match_iou', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('match_category_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('rank', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('given_box', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('start', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('clicks', sa.Integer(), server_default='0', nullable=False))
    _set_fates(OLD_FATES, NEW_FATES)


def downgrade() -> None:
    op.execute("UPDATE instance_fates SET fate = 'rejected' WHERE fate = 'hidden'")
    _set_fates(NEW_FATES, OLD_FATES)
    with op.batch_alter_table('instance_fates', schema=None) as batch_op:
        batch_op.drop_column('clicks')
        batch_op.drop_column('start')
        batch_op.drop_column('given_box')
        batch_op.drop_column('rank')
        batch_op.drop_column('match_category_id')
        batch_op.drop_column('match_iou')
