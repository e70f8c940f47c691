"""annotation journal

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 13:17:12.284561
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('annotation_journal',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('snapshot', sa.JSON(), nullable=False),
    sa.Column('undone', sa.Boolean(), nullable=False),
    sa.Column('user', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('annotation_journal', schema=None) as batch_op:
        batch_op.create_index('ix_journal_image', ['image_id', 'id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('annotation_journal', schema=None) as batch_op:
        batch_op.drop_index('ix_journal_image')

    op.drop_table('annotation_journal')
