"""Datasets: upload, list, get, delete, and derive one from a label-issues job."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, File, Form, Query, Response, UploadFile

from contracts.label_issues import DeriveRequest
from contracts.records import DatasetList, DatasetRecord

from .. import datasets as service
from ..gateway import GatewayDep, TenantDep
from ..paging import time_cursor, time_page

router = APIRouter(tags=["datasets"])


@router.post("/v1/datasets", status_code=201, response_model=DatasetRecord)
async def upload_dataset(
    gw: GatewayDep,
    tenant: TenantDep,
    response: Response,
    file: Annotated[
        UploadFile, File(description="npz (x, y, x_test?, y_test?, ids?, y_true?), CSV or Parquet")
    ],
    label_column: Annotated[str | None, Form(max_length=200, description="default 'label'")] = None,
    id_column: Annotated[str | None, Form(max_length=200, description="default 'id' if present")] = None,
    feature_columns: Annotated[
        list[str] | None, Form(description="comma-separated (or repeated): exactly these features")
    ] = None,
    exclude_columns: Annotated[
        list[str] | None, Form(description="comma-separated (or repeated): columns to drop")
    ] = None,
    truth_column: Annotated[
        str | None, Form(max_length=200, description="true labels of the training rows, for evaluation")
    ] = None,
    standardize: Annotated[
        bool, Form(description="z-score features with the training split's statistics")
    ] = False,
    remap_labels: Annotated[
        bool, Form(description="map the distinct labels, sorted, to 0..k-1 (class_names keep them)")
    ] = False,
) -> DatasetRecord:
    from ..uploads import UploadOptions

    options = UploadOptions(
        label_column=label_column or "label",
        id_column=id_column or None,
        feature_columns=service.column_list(feature_columns),
        exclude_columns=service.column_list(exclude_columns) or (),
        truth_column=truth_column or None,
        standardize=standardize,
        remap_labels=remap_labels,
    )
    record, created = await service.store_upload(gw, tenant, file, options)
    if created:
        response.headers["Location"] = f"/v1/datasets/{record['id']}"
    else:
        response.status_code = 200
    return DatasetRecord(**record)


@router.get("/v1/datasets", response_model=DatasetList)
def list_datasets(
    gw: GatewayDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> DatasetList:
    """This tenant's datasets, newest first, paged by ``limit`` and ``cursor``."""
    before = time_cursor(cursor)
    rows = gw.store.list_datasets(tenant=tenant, limit=limit + 1, before=before)
    rows, next_cursor = time_page(rows, limit)
    return DatasetList(items=[DatasetRecord(**r) for r in rows], next_cursor=next_cursor)


@router.get("/v1/datasets/{dataset_id}", response_model=DatasetRecord)
def get_dataset(dataset_id: str, gw: GatewayDep, tenant: TenantDep) -> DatasetRecord:
    return DatasetRecord(**service.get_dataset_or_404(gw, dataset_id, tenant))


@router.delete("/v1/datasets/{dataset_id}", status_code=204)
def delete_dataset(dataset_id: str, gw: GatewayDep, tenant: TenantDep) -> Response:
    service.delete_dataset(gw, dataset_id, tenant)
    return Response(status_code=204)


@router.post("/v1/datasets:derive", status_code=201, response_model=DatasetRecord)
def derive_dataset(
    body: Annotated[DeriveRequest, Body()], gw: GatewayDep, tenant: TenantDep, response: Response
) -> DatasetRecord:
    """A new dataset from a succeeded label-issues job (docs/jobs/label-issues.md)."""
    from ..derive import derive_dataset as derive

    try:
        record, created = derive(gw, body, tenant)
    except OSError as exc:
        raise service.storage_error(exc) from exc
    if not created:
        response.status_code = 200
    response.headers["Location"] = f"/v1/datasets/{record['id']}"
    return DatasetRecord(**record)
