"""what became of each proposal and hand-made instance; active time per image visit

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""
from alembic import op
import sqlalchemy as sa

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

FATES = ('proposed', 'accepted', 'edited', 'rejected', 'deleted', 'replaced', 'kept')


def upgrade() -> None:
    op.create_table('instance_fates',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('annotation_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('tool', sa.String(length=16), nullable=True),
    sa.Column('model_version_id', sa.Integer(), nullable=True),
    sa.Column('category_id', sa.Integer(), nullable=False),
    sa.Column('final_category_id', sa.Integer(), nullable=True),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('proposed_mask', sa.Text(), nullable=True),
    sa.Column('fate', sa.Enum(*FATES, name='fate', native_enum=False, create_constraint=True, length=16),
              nullable=False),
    sa.Column('iou', sa.Float(), nullable=True),
    sa.Column('created_by', sa.String(length=200), nullable=True),
    sa.Column('decided_by', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('instance_fates', schema=None) as batch_op:
        batch_op.create_index('ix_fates_image', ['image_id', 'annotation_id'], unique=False)
        batch_op.create_index('ix_fates_version', ['model_version_id'], unique=False)
    op.create_table('image_visits',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=True),
    sa.Column('user', sa.String(length=200), nullable=True),
    sa.Column('events', sa.Integer(), nullable=False),
    sa.Column('active_seconds', sa.Float(), nullable=False),
    sa.Column('idle_seconds', sa.Float(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('image_visits', schema=None) as batch_op:
        batch_op.create_index('ix_visits_version', ['model_version_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('image_visits', schema=None) as batch_op:
        batch_op.drop_index('ix_visits_version')
    op.drop_table('image_visits')
    with op.batch_alter_table('instance_fates', schema=None) as batch_op:
        batch_op.drop_index('ix_fates_version')
        batch_op.drop_index('ix_fates_image')
    op.drop_table('instance_fates')
