"""schemathesis against the served OpenAPI document: no input makes the API answer 5xx."""

from __future__ import annotations

import pytest

import llmos

pytestmark = pytest.mark.model


def test_no_input_makes_a_5xx(tmp_path):
    import schemathesis  # a dev dependency: a missing one fails the test, never skips it
    from hypothesis import HealthCheck, given, settings

    from llmos.shell.server.app import create_app

    # a small context keeps generated max_tokens values cheap: most are refused (413) at once
    kernel = llmos.boot(home=tmp_path, load_entrypoints=False, n_ctx=256, max_queue=4)
    try:
        kernel.load()
        schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(kernel, allowed_hosts=["testserver"]))
        failures, operations = [], 0
        for result in schema.get_all_operations():
            operation = result.ok()
            operations += 1

            @given(case=operation.as_strategy())
            @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def check(case):
                response = case.call()
                if response.status_code >= 500:
                    failures.append((case.method, case.formatted_path, response.status_code, response.text[:300]))

            check()
        assert operations >= 12  # the OpenAPI document covers what is served
        assert failures == []
    finally:
        kernel.shutdown()
