"""schemathesis against the API's own OpenAPI document: whatever it generates, the API never answers 5xx."""

from __future__ import annotations

import os
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, given, settings

from suanwang.devstack.broker import EmbeddedBroker
from suanwang.settings import Settings
from suanwang.store import Store
from tests.served import serving

EXAMPLES = 40  # per operation


def test_no_generated_request_gets_a_server_error(broker: EmbeddedBroker, store: Store, store_dir: Path) -> None:
    """Every operation but the never-ending stream, with schemathesis' generated cases; errors are JSON."""
    deployment = Settings(
        kafka_bootstrap=broker.bootstrap,
        topic_prefix=f"fuzz{os.getpid()}.",
        data_dir=store_dir,
        session_timeout_ms=6000,
    )
    answered: dict[str, int] = {}
    with serving(store, deployment) as live:
        schema = schemathesis.openapi.from_url(f"{live.url}/api/openapi.json").exclude(path="/api/stream")
        for result in schema.get_all_operations():
            operation = result.ok()

            @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            @given(case=operation.as_strategy())
            def check(case: schemathesis.Case) -> None:
                response = case.call()
                label = f"{case.method} {case.formatted_path} query={case.query} body={case.body!r}"
                assert response.status_code < 500, (label, response.text[:300])
                if response.status_code >= 400:
                    assert response.json()["error"], label
                answered[case.operation.label] = answered.get(case.operation.label, 0) + 1

            check()
    assert len(answered) >= 15, answered  # every operation was exercised
