"""What the dataset routes do, as plain functions of the gateway state: store an upload
(content-addressed, parsed in a memory-limited process pool), the per-tenant storage quota
that uploads and derived datasets share, and delete."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import UploadFile
from fastapi.concurrency import run_in_threadpool

from .errors import ProblemError
from .gateway import Gateway

if TYPE_CHECKING:
    from .uploads import UploadOptions


def column_list(values: list[str] | None) -> tuple[str, ...] | None:
    """A form's column names, comma-separated or repeated, as one tuple."""
    if values is None:
        return None
    names = tuple(n.strip() for v in values for n in v.split(",") if n.strip())
    if len(names) > 100_000:
        raise ProblemError(422, "Column lists are limited to 100000 names.", type_="invalid-upload")
    return names


async def store_upload(
    gw: Gateway, tenant: str, file: UploadFile, options: UploadOptions
) -> tuple[dict[str, Any], bool]:
    """Spool, hash, check and parse an uploaded file into a canonical dataset: ``(record,
    created)``; the same content read with the same options again is the existing record."""
    # Imported here: the parser brings pandas and pyarrow, which only uploads need.
    from .uploads import UploadError, UploadLimits, UploadOptions, UploadTooLarge, parse_pool, precheck

    fd, tmp_name = tempfile.mkstemp(prefix="upload-", dir=gw.artifacts.tmp_dir())
    tmp_path = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as out:
            while chunk := await file.read(1 << 20):
                size += len(chunk)
                if size > gw.settings.max_upload_bytes:
                    raise ProblemError(
                        413,
                        f"The uploaded file is larger than the limit of {gw.settings.max_upload_bytes} "
                        "bytes (INFOSCORE_MAX_UPLOAD_BYTES).",
                        type_="body-too-large",
                    )
                digest.update(chunk)
                out.write(chunk)
        if size == 0:
            raise ProblemError(422, "The uploaded 'file' is empty.", type_="invalid-upload", field="file")
        sha = digest.hexdigest()
        # The id is the content hash, and the options' hash too when any is set: one file
        # read two ways is two datasets.
        if options == UploadOptions():
            dataset_id = f"ds_{sha[:32]}"
        else:
            keyed = json.dumps({"sha256": sha, "options": options.as_dict()}, sort_keys=True)
            dataset_id = f"ds_{hashlib.sha256(keyed.encode()).hexdigest()[:32]}"
        existing = gw.store.get_dataset(dataset_id, tenant)
        if existing is not None and gw.artifacts.dataset_path(dataset_id).exists():
            return existing, False
        check_storage_quota(gw, tenant, size)
        st = gw.settings
        limits = UploadLimits(
            max_bytes=st.max_upload_bytes,
            max_id_length=st.max_id_length,
            max_columns=st.max_columns,
            max_dataset_bytes=st.max_dataset_bytes,
            max_compression_ratio=st.max_expansion_ratio,
        )
        # Parsing runs in a small pool of memory-limited processes (at most
        # upload_parse_processes at once), which also write the canonical file: the
        # arrays never enter the gateway. The cheap header checks run here first.
        try:
            await run_in_threadpool(precheck, tmp_path, file.filename, limits)
            parsed = await parse_pool(st.upload_parse_processes, st.upload_parse_memory_bytes).run(
                tmp_path, file.filename, limits, options, gw.artifacts.dataset_path(dataset_id)
            )
        except UploadTooLarge as exc:
            raise ProblemError(413, str(exc), type_="upload-too-large", field=exc.field) from exc
        except UploadError as exc:
            raise ProblemError(422, str(exc), type_="invalid-upload", field=exc.field) from exc
        # The canonical file first, then the row: a crash in between leaves no row
        # pointing at a missing file.
        record = gw.store.add_dataset(
            {
                "id": dataset_id,
                "sha256": sha,
                "filename": (file.filename or "")[:255] or None,
                "size_bytes": size,
                **parsed,
                "options": options.as_dict(),
            },
            tenant,
        )
        return record, True
    except OSError as exc:
        raise storage_error(exc) from exc
    finally:
        tmp_path.unlink(missing_ok=True)


def check_storage_quota(gw: Gateway, tenant: str, incoming: int) -> None:
    stored = gw.store.stored_dataset_bytes(tenant)
    limit = gw.settings.max_stored_bytes
    if stored + incoming > limit:
        raise ProblemError(
            413,
            f"This upload ({incoming} bytes) would take the tenant's stored datasets to {stored + incoming} "
            f"bytes, over the quota of {limit} bytes (INFOSCORE_MAX_STORED_BYTES); "
            "DELETE /v1/datasets/{id} frees space.",
            type_="storage-quota",
            limit=limit,
            stored_bytes=stored,
        )


def storage_error(exc: OSError) -> ProblemError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ProblemError(
            507,
            "The server's artifact store is full; nothing was stored. Retry after space is freed.",
            type_="storage-full",
        )
    return ProblemError(
        503, f"The artifact store failed ({exc.strerror}); nothing was stored.", type_="storage"
    )


def get_dataset_or_404(gw: Gateway, dataset_id: str, tenant: str) -> dict[str, Any]:
    record = gw.store.get_dataset(dataset_id, tenant) if len(dataset_id) < 80 else None
    if record is None:
        raise ProblemError(404, f"No dataset with id {dataset_id!r}.", type_="not-found")
    return record


def delete_dataset(gw: Gateway, dataset_id: str, tenant: str) -> None:
    """Delete a tenant's dataset (409 while a queued or running job uses it); the file goes
    when no other tenant holds the same content."""
    get_dataset_or_404(gw, dataset_id, tenant)
    if gw.store.dataset_in_use(dataset_id, tenant):
        raise ProblemError(
            409,
            f"Dataset {dataset_id} is used by a queued or running job; cancel it or wait for it to end.",
            type_="dataset-in-use",
        )
    if gw.store.delete_dataset(dataset_id, tenant) == 0:  # no other tenant holds the same content
        gw.artifacts.remove_dataset(dataset_id)
