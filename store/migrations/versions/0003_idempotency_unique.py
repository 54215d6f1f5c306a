"""Idempotency keys are unique per tenant, so two concurrent POSTs with one key make one job.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_jobs_idempotency_key", table_name="jobs")
    op.create_index("ux_jobs_tenant_idempotency_key", "jobs", ["tenant", "idempotency_key"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_jobs_tenant_idempotency_key", table_name="jobs")
    op.create_index("ix_jobs_idempotency_key", "jobs", ["idempotency_key"])
