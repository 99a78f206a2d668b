"""Property-based tests of the API against its own OpenAPI document (schemathesis, a dev dependency).

A bounded run over every operation, valid and invalid requests, against the ASGI app on the
tiny test model: no 5xx, every status one the document lists, every body and content type the
documented one. Once without a token and once with one (sent, so writes run too).
"""
import shutil

import pytest

from retrieval.serve import RetrievalService, create_app

from .conftest import make_settings

schemathesis = pytest.importorskip("schemathesis", reason="the dev dependency schemathesis is not installed")
hypothesis = pytest.importorskip("hypothesis")
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,  # noqa: E402
                                               status_code_conformance)

TOKEN = "schemathesis-token-0123456789"
# unsupported_method needs schemathesis's coverage phase, which only its pytest plugin runs;
# tests/serve/test_hostile.py checks 405 + Allow itself.
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance, content_type_conformance]
EXAMPLES = 6  # per operation and generation mode: ~11 operations × 2 modes × 2 servers in about 30 s


@pytest.mark.parametrize("token", [None, TOKEN], ids=["no-token", "token"])
def test_the_api_keeps_its_documented_contract(assets, built_index, tmp_path, token):
    copy = tmp_path / "idx"
    shutil.copytree(built_index, copy)
    settings = make_settings(assets, copy, token=token, max_k=50, max_upload_bytes=256 << 10)
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(settings, RetrievalService(settings)))
    headers = {"Authorization": f"Bearer {TOKEN}"} if token else {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    statuses = []
    for operation in operations:
        _run(operation.as_strategy(generation_mode=GenerationMode.POSITIVE), headers, statuses)
        try:
            _run(operation.as_strategy(generation_mode=GenerationMode.NEGATIVE), headers, statuses)
        except hypothesis.errors.Unsatisfiable:
            pass  # nothing to make invalid (no parameters, no body): /healthz, /stats
    assert len(statuses) >= 5 * len(operations) and {200, 400, 404, 422} <= set(statuses)


def _run(strategy, headers: dict, statuses: list) -> None:
    @hypothesis.given(case=strategy)
    @hypothesis.settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    def call(case):
        statuses.append(case.call_and_validate(headers=headers, checks=CHECKS).status_code)

    call()
