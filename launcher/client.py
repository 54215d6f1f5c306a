"""A small Python client for the infoscore HTTP API (httpx; no torch, no server code).

>>> from launcher.client import InfoscoreClient
>>> client = InfoscoreClient("http://127.0.0.1:8000")
>>> ds = client.upload_dataset("data.csv", truth_column="clean_label")  # doctest: +SKIP
>>> job = client.submit({"kind": "training-dynamics", "dataset": {"builtin": "digits"},
...                      "model": {"arch": "mlp"}})                      # doctest: +SKIP
>>> job = client.wait(job["id"])                                        # doctest: +SKIP
>>> table = client.scores(job["id"])   # a pandas DataFrame             # doctest: +SKIP
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from contracts.records import TERMINAL_STATES

TERMINAL = frozenset(str(state) for state in TERMINAL_STATES)


class InfoscoreAPIError(Exception):
    """A problem+json answer from the API."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        super().__init__(f"{status}: {problem.get('detail', problem)}")


class InfoscoreClient:
    def __init__(
        self, url: str = "http://127.0.0.1:8000", *, api_key: str | None = None, timeout: float = 30.0
    ):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> InfoscoreClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"detail": response.text}
            raise InfoscoreAPIError(response.status_code, body)
        return response

    def upload_dataset(
        self,
        path: str | Path,
        *,
        label_column: str | None = None,
        id_column: str | None = None,
        feature_columns: Sequence[str] | None = None,
        exclude_columns: Sequence[str] | None = None,
        truth_column: str | None = None,
        standardize: bool = False,
        remap_labels: bool = False,
    ) -> dict[str, Any]:
        """Upload an npz, CSV or Parquet file; returns the dataset record (``id``, shapes,
        ``feature_names``, ``class_names``, ``class_counts``, ``warnings``, ...).

        The options (tables only, except ``standardize`` and ``remap_labels``): which column
        holds the labels (default ``label``), the ids (default ``id`` if present), the
        features (``feature_columns``: exactly these; ``exclude_columns``: all but these), the
        true labels for evaluation (``truth_column``); ``standardize`` z-scores the features
        with the training split's statistics; ``remap_labels`` maps the distinct labels,
        sorted, to 0..k-1. See docs/api.md.
        """
        path = Path(path)
        form: dict[str, Any] = {}
        for name, value in (
            ("label_column", label_column),
            ("id_column", id_column),
            ("truth_column", truth_column),
        ):
            if value:
                form[name] = value
        for name, values in (("feature_columns", feature_columns), ("exclude_columns", exclude_columns)):
            if values is not None:
                form[name] = ",".join(values) if not isinstance(values, str) else values
        if standardize:
            form["standardize"] = "true"
        if remap_labels:
            form["remap_labels"] = "true"
        with path.open("rb") as fh:
            r = self.http.post("/v1/datasets", files={"file": (path.name, fh)}, data=form)
        return dict(self._check(r).json())

    # Short name; the README uses upload_dataset.
    upload = upload_dataset

    def datasets(self, *, limit: int = 50) -> list[dict[str, Any]]:
        """This tenant's datasets, newest first (up to ``limit``, following pages)."""
        out: list[dict[str, Any]] = []
        cursor: str | None = None
        while len(out) < limit:
            params: dict[str, Any] = {"limit": min(500, limit - len(out))}
            if cursor:
                params["cursor"] = cursor
            page = self._check(self.http.get("/v1/datasets", params=params)).json()
            out.extend(page["items"])
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return out

    def dataset(self, dataset_id: str) -> dict[str, Any]:
        return dict(self._check(self.http.get(f"/v1/datasets/{dataset_id}")).json())

    def estimate(self, request: dict[str, Any]) -> dict[str, Any]:
        """Dry run: the checks, resources and time range of a request, without running it."""
        return dict(self._check(self.http.post("/v1/jobs:estimate", json=request)).json())

    def derive(self, job_id: str, apply: str = "drop-and-relabel") -> dict[str, Any]:
        """A new dataset from a succeeded label-issues job's decisions; returns its record
        (``apply``: drop | relabel | drop-and-relabel)."""
        r = self.http.post("/v1/datasets:derive", json={"job": job_id, "apply": apply})
        return dict(self._check(r).json())

    def submit(self, request: dict[str, Any], *, idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return dict(self._check(self.http.post("/v1/jobs", json=request, headers=headers)).json())

    def get(self, job_id: str) -> dict[str, Any]:
        return dict(self._check(self.http.get(f"/v1/jobs/{job_id}")).json())

    def cancel(self, job_id: str) -> dict[str, Any]:
        return dict(self._check(self.http.delete(f"/v1/jobs/{job_id}")).json())

    def list(
        self, *, state: str | None = None, kind: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        params = {k: v for k, v in {"state": state, "kind": kind, "limit": limit}.items() if v is not None}
        return list(self._check(self.http.get("/v1/jobs", params=params)).json()["items"])

    def wait(
        self,
        job_id: str,
        *,
        timeout: float = 3600.0,
        poll: float = 0.5,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the job ends; returns its record (raises TimeoutError).

        ``on_progress(job)`` is called with the job record after every poll, the last time
        with the final record: ``job["state"]`` and ``job["progress"]`` (``done``, ``total``).
        """
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if on_progress is not None:
                on_progress(job)
            if job["state"] in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout:.0f} s")
            time.sleep(poll)

    def result(
        self,
        job_id: str,
        *,
        sort: str | None = None,
        order: str = "desc",
        limit: int = 100,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"order": order, "limit": limit}
        if sort:
            params["sort"] = sort
        if cursor:
            params["cursor"] = cursor
        return dict(self._check(self.http.get(f"/v1/jobs/{job_id}/result", params=params)).json())

    def artifact(self, job_id: str, name: str) -> bytes:
        return self._check(self.http.get(f"/v1/jobs/{job_id}/artifacts/{name}")).content

    def scores(self, job_id: str) -> Any:
        """The per-sample table as a pandas DataFrame (from scores.parquet)."""
        import pandas as pd

        return pd.read_parquet(io.BytesIO(self.artifact(job_id, "scores.parquet")))
