"""The SQL job store: the source of truth for datasets, jobs and fan-out units.

SQLAlchemy 2 on any URL (SQLite in WAL mode by default, PostgreSQL in the distributed
mode). Every state change that two processes could race on is a single conditional
``UPDATE ... WHERE`` whose row count says who won, so a redelivered task, a reaper and a
cancel request never both believe they own a job.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Index,
    Integer,
    String,
    Text,
    create_engine,
    delete,
    event,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from contracts.records import ACTIVE_STATES, TERMINAL_STATES

DEFAULT_TENANT = "default"


class ActiveJobLimit(Exception):
    """The tenant already has ``active`` queued or running jobs, at the ``limit``."""

    def __init__(self, active: int, limit: int) -> None:
        super().__init__(f"{active} active jobs, the limit is {limit}")
        self.active = active
        self.limit = limit


def utcnow() -> datetime:
    """Naive UTC (SQLite keeps no zone); :func:`as_utc` adds it back on the way out."""
    return datetime.now(UTC).replace(tzinfo=None)


def as_utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=UTC)


def new_job_id() -> str:
    return "job_" + secrets.token_hex(12)


class Base(DeclarativeBase):
    pass


class DatasetRow(Base):
    __tablename__ = "datasets"
    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(120), primary_key=True, default=DEFAULT_TENANT)
    sha256: Mapped[str] = mapped_column(String(64))
    format: Mapped[str] = mapped_column(String(16))
    filename: Mapped[str | None] = mapped_column(String(255), nullable=True)
    n_train: Mapped[int] = mapped_column(Integer)
    n_test: Mapped[int] = mapped_column(Integer)
    n_classes: Mapped[int] = mapped_column(Integer)
    input_shape: Mapped[str] = mapped_column(Text)  # JSON list
    size_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # JSON object: descriptive fields without a column of their own (feature/class names,
    # class counts, warnings, preprocessing, lineage). Merged into the record on the way out.
    meta: Mapped[str | None] = mapped_column(Text, nullable=True)


DATASET_COLUMNS = frozenset(
    {"id", "sha256", "format", "filename", "n_train", "n_test", "n_classes", "input_shape", "size_bytes"}
)


class JobRow(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(120), index=True, default=DEFAULT_TENANT)
    kind: Mapped[str] = mapped_column(String(40), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True, default="queued")
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    request: Mapped[str] = mapped_column(Text)  # JSON of the validated request
    fingerprint: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    reducing: Mapped[bool] = mapped_column(Boolean, default=False)
    summary: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    artifacts: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON list of names

    __table_args__ = (Index("ux_jobs_tenant_idempotency_key", "tenant", "idempotency_key", unique=True),)


JOBS = JobRow.__table__


class UnitRow(Base):
    """One unit of a fan-out job; ``key`` is its content key in the unit cache."""

    __tablename__ = "units"
    job_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    key: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending|running|done
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class ApiKeyRow(Base):
    """An API key: only the SHA-256 of its secret is stored (keys are 256-bit random, so a
    fast hash is enough; the secret is shown once, at creation)."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(120), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


KEY_PREFIX = "isk_"
MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(engine: Engine, url: str, revision: str = "head") -> None:
    """Bring the schema to ``revision`` under a lock, so that an API and workers starting
    together never race (SQLite: a lock file beside the database; PostgreSQL: an
    advisory lock). A newer version opens an older data dir by upgrading it here."""
    from alembic import command

    cfg = alembic_config(url)
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        lock_path = Path(str(engine.url.database) + ".migrate.lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                with engine.begin() as conn:
                    cfg.attributes["connection"] = conn
                    command.upgrade(cfg, revision)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(727400131)")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    # WAL lets the API read while a worker writes; busy_timeout waits instead of erroring.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # A pool as large as the API's thread pool: opening a SQLite connection (and its
        # PRAGMAs) per request would cost more than the query.
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=40,
            max_overflow=10,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    return engine


class JobStore:
    """All SQL access. Methods open short transactions; rows come back as plain dicts."""

    def __init__(self, url: str, *, migrate_schema: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if migrate_schema:
            migrate(self.engine, url)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as s:
            yield s

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(select(1))

    def dispose(self) -> None:
        self.engine.dispose()

    # ---------------------------------------------------------------- datasets
    def add_dataset(self, record: dict[str, Any], tenant: str = DEFAULT_TENANT) -> dict[str, Any]:
        """Insert, or return the existing row for the same content id (uploads dedupe)."""
        with self.session() as s:
            row = s.get(DatasetRow, (record["id"], tenant))
            if row is None:
                columns = {key: value for key, value in record.items() if key in DATASET_COLUMNS}
                meta = {key: value for key, value in record.items() if key not in DATASET_COLUMNS}
                row = DatasetRow(
                    **{**columns, "input_shape": json.dumps(list(record["input_shape"]))},
                    meta=json.dumps(meta) if meta else None,
                    tenant=tenant,
                )
                s.add(row)
                s.flush()
            return _dataset_dict(row)

    def get_dataset(self, dataset_id: str, tenant: str = DEFAULT_TENANT) -> dict[str, Any] | None:
        with self.session() as s:
            row = s.get(DatasetRow, (dataset_id, tenant))
            return None if row is None else _dataset_dict(row)

    def dataset_in_use(self, dataset_id: str, tenant: str) -> bool:
        """Whether a queued or running job of the tenant reads this dataset."""
        # Requests are stored as sorted-key JSON; dataset ids are "ds_" + hex, so the
        # serialized reference is an exact, unambiguous substring.
        needle = f'%"dataset": "{dataset_id}"%'
        with self.session() as s:
            return (
                s.scalar(
                    select(func.count())
                    .select_from(JobRow)
                    .where(
                        JobRow.tenant == tenant,
                        JobRow.state.in_(ACTIVE_STATES),
                        JobRow.request.like(needle),
                    )
                )
                or 0
            ) > 0

    def delete_dataset(self, dataset_id: str, tenant: str) -> int:
        """Remove the tenant's row; returns how many rows (any tenant) still name the same
        content, so the caller removes the shared file only when that is 0."""
        with self.session() as s:
            s.execute(delete(DatasetRow).where(DatasetRow.id == dataset_id, DatasetRow.tenant == tenant))
            return int(
                s.scalar(select(func.count()).select_from(DatasetRow).where(DatasetRow.id == dataset_id)) or 0
            )

    def stored_dataset_bytes(self, tenant: str) -> int:
        with self.session() as s:
            return int(
                s.scalar(
                    select(func.coalesce(func.sum(DatasetRow.size_bytes), 0)).where(
                        DatasetRow.tenant == tenant
                    )
                )
                or 0
            )

    def expired_datasets(self, older_than: timedelta) -> list[tuple[str, str]]:
        """(id, tenant) of datasets created before now - older_than."""
        cutoff = utcnow() - older_than
        with self.session() as s:
            return [
                (r.id, r.tenant) for r in s.scalars(select(DatasetRow).where(DatasetRow.created_at < cutoff))
            ]

    def list_datasets(
        self, *, tenant: str = DEFAULT_TENANT, limit: int = 50, before: tuple[datetime, str] | None = None
    ) -> list[dict[str, Any]]:
        """Newest first; ``before`` = (created_at, id) of the last row of the previous page."""
        q = select(DatasetRow).where(DatasetRow.tenant == tenant)
        if before is not None:
            ts, did = before
            q = q.where(
                or_(DatasetRow.created_at < ts, (DatasetRow.created_at == ts) & (DatasetRow.id < did))
            )
        q = q.order_by(DatasetRow.created_at.desc(), DatasetRow.id.desc()).limit(limit)
        with self.session() as s:
            return [_dataset_dict(r) for r in s.scalars(q)]

    # ---------------------------------------------------------------- api keys
    def create_key(self, tenant: str) -> tuple[str, str]:
        """Returns (key id, the full key). The full key is not stored and not shown again."""
        key_id = "key_" + secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        with self.session() as s:
            s.add(ApiKeyRow(id=key_id, tenant=tenant, secret_hash=_hash_secret(secret), created_at=utcnow()))
        return key_id, f"{KEY_PREFIX}{key_id.removeprefix('key_')}.{secret}"

    def list_keys(self) -> list[dict[str, Any]]:
        with self.session() as s:
            rows = s.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at))
            return [
                {
                    "id": r.id,
                    "tenant": r.tenant,
                    "created_at": as_utc(r.created_at),
                    "revoked_at": as_utc(r.revoked_at),
                    "last_used_at": as_utc(r.last_used_at),
                }
                for r in rows
            ]

    def revoke_key(self, key_id: str) -> bool:
        with self.session() as s:
            res = s.execute(
                update(ApiKeyRow)
                .where(ApiKeyRow.id == key_id, ApiKeyRow.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]

    def resolve_key(self, key: str) -> tuple[str, str] | None:
        """(key id, tenant) for a valid, unrevoked key; None otherwise."""
        if not key.startswith(KEY_PREFIX) or "." not in key or len(key) > 200:
            return None
        short_id, _, secret = key[len(KEY_PREFIX) :].partition(".")
        key_id = "key_" + short_id
        with self.session() as s:
            row = s.get(ApiKeyRow, key_id)
            # Compare even when the id is unknown, so timing does not reveal which ids exist.
            expected = row.secret_hash if row is not None else "0" * 64
            ok = hmac.compare_digest(expected, _hash_secret(secret))
            if row is None or not ok or row.revoked_at is not None:
                return None
            return row.id, row.tenant

    # -------------------------------------------------------------------- jobs
    def create_job(
        self,
        *,
        kind: str,
        request: dict[str, Any],
        fingerprint: str,
        tenant: str = DEFAULT_TENANT,
        name: str | None = None,
        idempotency_key: str | None = None,
        max_active: int | None = None,
    ) -> dict[str, Any]:
        """Insert a queued job. With an ``idempotency_key`` already used by this tenant,
        returns that job instead (the unique index settles concurrent requests).

        With ``max_active``, the tenant's count of queued and running jobs is checked in
        the same transaction as the insert, so concurrent submissions cannot overshoot it:
        raises :class:`ActiveJobLimit` when the new job would exceed the limit."""
        try:
            return {
                **self._insert_job(kind, request, fingerprint, tenant, name, idempotency_key, max_active),
                "created": True,
            }
        except IntegrityError:
            if idempotency_key is None:
                raise
            existing = self.find_by_idempotency_key(idempotency_key, tenant)
            if existing is None:
                raise
            return {**existing, "created": False}

    def _insert_job(
        self,
        kind: str,
        request: dict[str, Any],
        fingerprint: str,
        tenant: str,
        name: str | None,
        idempotency_key: str | None,
        max_active: int | None = None,
    ) -> dict[str, Any]:
        with self.session() as s:
            if max_active is not None and s.get_bind().dialect.name == "postgresql":
                # READ COMMITTED would let two transactions each count the other's row as
                # absent: serialize a tenant's submissions on a transaction-scoped lock.
                s.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:t, 0))"), {"t": tenant})
            row = JobRow(
                id=new_job_id(),
                tenant=tenant,
                kind=kind,
                state="queued",
                name=name,
                request=json.dumps(request, sort_keys=True),
                fingerprint=fingerprint,
                idempotency_key=idempotency_key,
                created_at=utcnow(),
            )
            s.add(row)
            s.flush()
            if max_active is not None:
                # On SQLite the flushed insert holds the database's write lock until commit,
                # so this count sees every other committed submission and none can slip in.
                active = self._count_active(s, tenant)
                if active > max_active:
                    raise ActiveJobLimit(active - 1, max_active)
            return _job_dict(row)

    def find_by_idempotency_key(self, key: str, tenant: str = DEFAULT_TENANT) -> dict[str, Any] | None:
        with self.session() as s:
            row = s.scalars(
                select(JobRow).where(JobRow.idempotency_key == key, JobRow.tenant == tenant)
            ).first()
            return None if row is None else _job_dict(row)

    def get_job(self, job_id: str, tenant: str | None = None) -> dict[str, Any] | None:
        # The hot path of status polling: a Core SELECT on a pooled connection, no ORM
        # identity map or unit of work (several times cheaper per call).
        query = select(JOBS).where(JOBS.c.id == job_id)
        if tenant is not None:
            query = query.where(JOBS.c.tenant == tenant)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else _job_dict(row)  # type: ignore[arg-type]

    def list_jobs(
        self,
        *,
        tenant: str | None = DEFAULT_TENANT,
        state: str | None = None,
        kind: str | None = None,
        limit: int = 50,
        before: tuple[datetime, str] | None = None,
    ) -> list[dict[str, Any]]:
        """Newest first; ``before`` = (created_at, id) of the last row of the previous page."""
        q = select(JobRow)
        if tenant is not None:
            q = q.where(JobRow.tenant == tenant)
        if state:
            q = q.where(JobRow.state == state)
        if kind:
            q = q.where(JobRow.kind == kind)
        if before is not None:
            ts, jid = before
            q = q.where(or_(JobRow.created_at < ts, (JobRow.created_at == ts) & (JobRow.id < jid)))
        q = q.order_by(JobRow.created_at.desc(), JobRow.id.desc()).limit(limit)
        with self.session() as s:
            return [_job_dict(r) for r in s.scalars(q)]

    def count_active(self, tenant: str) -> int:
        with self.session() as s:
            return self._count_active(s, tenant)

    @staticmethod
    def _count_active(s: Session, tenant: str) -> int:
        return int(
            s.scalar(
                select(func.count())
                .select_from(JobRow)
                .where(JobRow.tenant == tenant, JobRow.state.in_(ACTIVE_STATES))
            )
            or 0
        )

    def claim_job(self, job_id: str, worker: str, *, stale_after: float) -> bool:
        """Take a queued job, or a running one whose heartbeat stopped. True if we own it."""
        now = utcnow()
        stale = now - timedelta(seconds=stale_after)
        with self.session() as s:
            res = s.execute(
                update(JobRow)
                .where(
                    JobRow.id == job_id,
                    or_(
                        JobRow.state == "queued",
                        (JobRow.state == "running")
                        & or_(JobRow.heartbeat_at.is_(None), JobRow.heartbeat_at < stale),
                    ),
                    JobRow.cancel_requested.is_(False),
                )
                .values(
                    state="running",
                    started_at=func.coalesce(JobRow.started_at, now),
                    heartbeat_at=now,
                    worker=worker,
                    attempts=JobRow.attempts + 1,
                )
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]

    def heartbeat(self, job_id: str, worker: str) -> bool:
        """Refresh the heartbeat of a job this worker owns. Returns True when the worker
        should stop: a cancel was requested, or the job is no longer its to run (the
        reaper handed it to another worker)."""
        with self.session() as s:
            res = s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.state == "running", JobRow.worker == worker)
                .values(heartbeat_at=utcnow())
            )
            row = s.get(JobRow, job_id)
            owned = bool(res.rowcount)  # type: ignore[attr-defined]
            return (not owned) or bool(row is not None and row.cancel_requested)

    def set_progress(self, job_id: str, done: int, total: int) -> None:
        with self.session() as s:
            s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.state == "running")
                .values(progress_done=int(done), progress_total=int(total), heartbeat_at=utcnow())
            )

    def finish(
        self,
        job_id: str,
        state: str,
        *,
        summary: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        artifacts: list[str] | None = None,
        worker: str | None = None,
    ) -> bool:
        """Move a non-terminal job to a terminal state; False if it was already terminal
        (or, with ``worker``, if that worker no longer owns the running job)."""
        assert state in TERMINAL_STATES
        values: dict[str, Any] = {"state": state, "finished_at": utcnow()}
        if summary is not None:
            values["summary"] = json.dumps(summary)
        if error is not None:
            values["error"] = json.dumps(error)
        if artifacts is not None:
            values["artifacts"] = json.dumps(artifacts)
        if state == "succeeded":
            values["progress_done"] = JobRow.progress_total
        where = [JobRow.id == job_id, JobRow.state.in_(ACTIVE_STATES)]
        if worker is not None:
            where += [JobRow.state == "running", JobRow.worker == worker]
        with self.session() as s:
            res = s.execute(update(JobRow).where(*where).values(**values))
            return bool(res.rowcount)  # type: ignore[attr-defined]

    def requeue_unsent(self, job_id: str, error_type: str) -> bool:
        """A job recorded as failed because it could never be queued (its ``error.type``
        is ``error_type``) goes back to ``queued`` for another send. True if it did."""
        with self.session() as s:
            row = s.get(JobRow, job_id)
            if row is None or row.state != "failed" or row.started_at is not None or row.error is None:
                return False
            if json.loads(row.error).get("type") != error_type:
                return False
            res = s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.state == "failed", JobRow.started_at.is_(None))
                .values(state="queued", error=None, finished_at=None)
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]

    def delete_job(self, job_id: str) -> bool:
        """Remove a terminal job's row and its unit rows (never an active job's)."""
        with self.session() as s:
            res = s.execute(delete(JobRow).where(JobRow.id == job_id, JobRow.state.in_(TERMINAL_STATES)))
            if res.rowcount:  # type: ignore[attr-defined]
                s.execute(delete(UnitRow).where(UnitRow.job_id == job_id))
                return True
            return False

    def expired_jobs(self, older_than: timedelta) -> list[str]:
        """Ids of terminal jobs that finished before now - older_than."""
        cutoff = utcnow() - older_than
        with self.session() as s:
            return list(
                s.scalars(
                    select(JobRow.id).where(JobRow.state.in_(TERMINAL_STATES), JobRow.finished_at < cutoff)
                )
            )

    def request_cancel(self, job_id: str) -> str | None:
        """Queued -> cancelled at once; running -> flagged (stops at its next check)."""
        with self.session() as s:
            s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.state == "queued")
                .values(state="cancelled", finished_at=utcnow(), cancel_requested=True)
            )
            s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.state == "running")
                .values(cancel_requested=True)
            )
            row = s.get(JobRow, job_id)
            return None if row is None else row.state

    def stale_running(self, stale_after: float) -> list[dict[str, Any]]:
        stale = utcnow() - timedelta(seconds=stale_after)
        with self.session() as s:
            rows = s.scalars(
                select(JobRow).where(
                    JobRow.state == "running",
                    or_(JobRow.heartbeat_at.is_(None), JobRow.heartbeat_at < stale),
                )
            )
            return [_job_dict(r) for r in rows]

    def stale_queued(self, older_than: float) -> list[str]:
        """Queued jobs created ``older_than`` seconds ago and never claimed since."""
        cutoff = utcnow() - timedelta(seconds=older_than)
        with self.session() as s:
            q = select(JobRow.id).where(
                JobRow.state == "queued",
                JobRow.created_at < cutoff,
                or_(JobRow.heartbeat_at.is_(None), JobRow.heartbeat_at < cutoff),
            )
            return list(s.scalars(q))

    def touch(self, job_id: str) -> None:
        """Mark a queued job as just re-sent (so the reaper waits before re-sending again)."""
        with self.session() as s:
            s.execute(update(JobRow).where(JobRow.id == job_id).values(heartbeat_at=utcnow()))

    def release_stale(self, job_id: str, stale_after: float) -> bool:
        """Reaper: put a job whose worker died back to queued (atomic vs. a live heartbeat)."""
        stale = utcnow() - timedelta(seconds=stale_after)
        with self.session() as s:
            res = s.execute(
                update(JobRow)
                .where(
                    JobRow.id == job_id,
                    JobRow.state == "running",
                    or_(JobRow.heartbeat_at.is_(None), JobRow.heartbeat_at < stale),
                )
                .values(state="queued", worker=None)
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------- units
    def add_units(self, job_id: str, units: list[tuple[str, str, bool]]) -> None:
        """units: (name, key, already_done). Existing rows are kept (idempotent re-plan)."""
        with self.session() as s:
            existing = set(s.scalars(select(UnitRow.name).where(UnitRow.job_id == job_id)))
            for name, key, done in units:
                if name not in existing:
                    s.add(UnitRow(job_id=job_id, name=name, key=key, state="done" if done else "pending"))

    def units(self, job_id: str) -> list[dict[str, Any]]:
        with self.session() as s:
            rows = s.scalars(select(UnitRow).where(UnitRow.job_id == job_id).order_by(UnitRow.name))
            return [
                {
                    "name": r.name,
                    "key": r.key,
                    "state": r.state,
                    "attempts": r.attempts,
                    "heartbeat_at": r.heartbeat_at,
                    "sent_at": r.sent_at,
                }
                for r in rows
            ]

    def mark_units_sent(self, job_id: str, names: list[str]) -> None:
        with self.session() as s:
            s.execute(
                update(UnitRow)
                .where(UnitRow.job_id == job_id, UnitRow.name.in_(names))
                .values(sent_at=utcnow())
            )

    def claim_unit(self, job_id: str, name: str, *, stale_after: float) -> bool:
        stale = utcnow() - timedelta(seconds=stale_after)
        now = utcnow()
        with self.session() as s:
            res = s.execute(
                update(UnitRow)
                .where(
                    UnitRow.job_id == job_id,
                    UnitRow.name == name,
                    or_(
                        UnitRow.state == "pending",
                        (UnitRow.state == "running")
                        & or_(UnitRow.heartbeat_at.is_(None), UnitRow.heartbeat_at < stale),
                    ),
                )
                .values(state="running", heartbeat_at=now, attempts=UnitRow.attempts + 1)
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]

    def unit_heartbeat(self, job_id: str, name: str) -> None:
        with self.session() as s:
            s.execute(
                update(UnitRow)
                .where(UnitRow.job_id == job_id, UnitRow.name == name, UnitRow.state == "running")
                .values(heartbeat_at=utcnow())
            )
            s.execute(update(JobRow).where(JobRow.id == job_id).values(heartbeat_at=utcnow()))

    def finish_unit(self, job_id: str, name: str, state: str = "done") -> tuple[int, int]:
        """Mark a unit done (or back to pending). Returns (done, total) for the job."""
        with self.session() as s:
            s.execute(
                update(UnitRow).where(UnitRow.job_id == job_id, UnitRow.name == name).values(state=state)
            )
            total = s.scalar(select(func.count()).select_from(UnitRow).where(UnitRow.job_id == job_id)) or 0
            done = (
                s.scalar(
                    select(func.count())
                    .select_from(UnitRow)
                    .where(UnitRow.job_id == job_id, UnitRow.state == "done")
                )
                or 0
            )
            s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.state == "running")
                .values(progress_done=int(done), progress_total=int(total), heartbeat_at=utcnow())
            )
            return int(done), int(total)

    def claim_reduce(self, job_id: str) -> bool:
        """Exactly one caller wins the right to run the reduce step."""
        with self.session() as s:
            res = s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.state == "running", JobRow.reducing.is_(False))
                .values(reducing=True, heartbeat_at=utcnow())
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]

    def release_reduce(self, job_id: str) -> None:
        with self.session() as s:
            s.execute(update(JobRow).where(JobRow.id == job_id).values(reducing=False))

    def stale_units(self, stale_after: float, pending_after: float) -> list[dict[str, Any]]:
        """Units of running jobs that are running with a stopped heartbeat, or still pending
        ``pending_after`` seconds after they were sent (their message was lost)."""
        stale = utcnow() - timedelta(seconds=stale_after)
        pending_stale = utcnow() - timedelta(seconds=pending_after)
        with self.session() as s:
            q = (
                select(UnitRow)
                .join(JobRow, JobRow.id == UnitRow.job_id)
                .where(
                    JobRow.state == "running",
                    or_(
                        (UnitRow.state == "running")
                        & or_(UnitRow.heartbeat_at.is_(None), UnitRow.heartbeat_at < stale),
                        (UnitRow.state == "pending")
                        & or_(UnitRow.sent_at.is_(None), UnitRow.sent_at < pending_stale),
                    ),
                )
            )
            return [{"job_id": r.job_id, "name": r.name, "attempts": r.attempts} for r in s.scalars(q)]

    def reset_unit(self, job_id: str, name: str) -> None:
        with self.session() as s:
            s.execute(
                update(UnitRow)
                .where(UnitRow.job_id == job_id, UnitRow.name == name, UnitRow.state != "done")
                .values(state="pending", sent_at=utcnow())
            )


def _dataset_dict(row: DatasetRow) -> dict[str, Any]:
    meta: dict[str, Any] = {} if row.meta is None else json.loads(row.meta)
    return {
        **meta,
        "id": row.id,
        "tenant": row.tenant,
        "sha256": row.sha256,
        "format": row.format,
        "filename": row.filename,
        "n_train": row.n_train,
        "n_test": row.n_test,
        "n_classes": row.n_classes,
        "input_shape": json.loads(row.input_shape),
        "size_bytes": row.size_bytes,
        "created_at": as_utc(row.created_at),
    }


def _job_dict(row: JobRow) -> dict[str, Any]:
    """The job as a dict: the fields of contracts.records.JobRecord, which the API
    validates from it as is, plus the store's own (tenant, fingerprint, worker, ...)."""
    return {
        "id": row.id,
        "tenant": row.tenant,
        "kind": row.kind,
        "state": row.state,
        "name": row.name,
        "request": json.loads(row.request),
        "fingerprint": row.fingerprint,
        "idempotency_key": row.idempotency_key,
        "progress": {"done": row.progress_done, "total": row.progress_total},
        "created_at": as_utc(row.created_at),
        "started_at": as_utc(row.started_at),
        "finished_at": as_utc(row.finished_at),
        "heartbeat_at": as_utc(row.heartbeat_at),
        "worker": row.worker,
        "attempts": row.attempts,
        "cancel_requested": row.cancel_requested,
        "summary": None if row.summary is None else json.loads(row.summary),
        "error": None if row.error is None else json.loads(row.error),
        "artifacts": [] if row.artifacts is None else json.loads(row.artifacts),
    }
