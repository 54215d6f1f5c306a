"""Property-based fuzzing of the HTTP API from its own OpenAPI schema (schemathesis), on
the real app with a real redis: no input may cause a 5xx, and every error is problem+json."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 100


def test_no_server_errors_and_problem_json(api: Any) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.app)
    statuses: Counter[int] = Counter()
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an invalid schema raises here
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: Any) -> None:
            response = case.call()
            statuses[response.status_code] += 1
            assert response.status_code < 500, (
                case.method,
                case.path,
                response.status_code,
                response.text[:500],
            )
            if response.status_code >= 400:
                content_type = response.headers.get("content-type") or response.headers.get("Content-Type")
                content_type = content_type[0] if isinstance(content_type, list) else content_type
                assert content_type.startswith("application/problem+json"), response.text[:300]
                body = response.json()
                assert body["status"] == response.status_code and body["detail"]

        fuzz()
    total = sum(statuses.values())
    print(
        f"\nfuzzed {total} requests over {operations} operations; by status: {dict(sorted(statuses.items()))}"
    )
    assert operations >= 10 and total >= 300
    assert not [s for s in statuses if s >= 500]
