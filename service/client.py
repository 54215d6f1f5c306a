"""A small Python client for the infoscore HTTP API (httpx; no torch, no server code).

>>> from service.client import InfoscoreClient
>>> client = InfoscoreClient("http://127.0.0.1:8000")
>>> job = client.submit({"kind": "training-dynamics", "dataset": {"builtin": "digits"},
...                      "model": {"arch": "mlp"}})                      # doctest: +SKIP
>>> job = client.wait(job["id"])                                        # doctest: +SKIP
>>> table = client.scores(job["id"])   # a pandas DataFrame             # doctest: +SKIP
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import httpx

TERMINAL = ("succeeded", "failed", "cancelled")


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

    def upload_dataset(self, path: str | Path) -> dict[str, Any]:
        path = Path(path)
        with path.open("rb") as fh:
            r = self.http.post("/v1/datasets", files={"file": (path.name, fh)})
        return dict(self._check(r).json())

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

    def wait(self, job_id: str, *, timeout: float = 3600.0, poll: float = 0.5) -> dict[str, Any]:
        """Poll until the job ends; returns its record (raises TimeoutError)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
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
