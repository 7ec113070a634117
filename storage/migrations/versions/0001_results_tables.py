"""The results tables of release 0.1.0 (odyssey_studies, odyssey_trials, odyssey_params, odyssey_epochs).

A database written by 0.1.0 has exactly these tables and no version table: `storage.schema_version`
counts it as this revision. Frozen: later changes are new revisions, never edits here.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_STATES = ("waiting", "running", "complete", "failed", "diverged")


def _utc() -> sa.types.TypeEngine:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "odyssey_studies",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("dataset", sa.String(64)),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
    )
    op.create_table(
        "odyssey_trials",
        sa.Column("study", sa.String(255), sa.ForeignKey("odyssey_studies.name", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("slot", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("trial_number", sa.Integer),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("dataset", sa.String(64)),
        sa.Column("variant", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, server_default="waiting"),
        sa.Column("diverged", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("best_valid", sa.Double),
        sa.Column("best_test", sa.Double),
        sa.Column("final_valid", sa.Double),
        sa.Column("final_test", sa.Double),
        sa.Column("best_epoch", sa.Integer),
        sa.Column("epochs", sa.Integer),
        sa.Column("seconds", sa.Double),
        sa.Column("n_params", sa.BigInteger),
        sa.Column("host", sa.String(255)),
        sa.Column("device", sa.String(64)),
        sa.Column("seed", sa.BigInteger),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("started_at", _utc()),
        sa.Column("finished_at", _utc()),
        sa.Column("error", sa.String(500)),
        sa.CheckConstraint(f"state IN ({', '.join(repr(s) for s in _STATES)})", name="odyssey_trials_state"),
    )
    op.create_index("odyssey_trials_study_state", "odyssey_trials", ["study", "state"])
    op.create_table(
        "odyssey_params",
        sa.Column("study", sa.String(255), primary_key=True),
        sa.Column("slot", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Double),
        sa.ForeignKeyConstraint(["study", "slot"], ["odyssey_trials.study", "odyssey_trials.slot"],
                                ondelete="CASCADE"),
    )
    op.create_table(
        "odyssey_epochs",
        sa.Column("study", sa.String(255), primary_key=True),
        sa.Column("slot", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("epoch", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("train_loss", sa.Double),
        sa.Column("valid_metric", sa.Double),
        sa.Column("test_metric", sa.Double),
        sa.Column("seconds", sa.Double),
        sa.ForeignKeyConstraint(["study", "slot"], ["odyssey_trials.study", "odyssey_trials.slot"],
                                ondelete="CASCADE"),
    )


def downgrade() -> None:
    for table in ("odyssey_epochs", "odyssey_params", "odyssey_trials", "odyssey_studies"):
        op.drop_table(table)
