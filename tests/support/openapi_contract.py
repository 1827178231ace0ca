"""What the property-based contract tests check on every answer (schemathesis), shared by
the in-process test (tests/unit/test_openapi_contract.py) and the real node's
(tests/node/test_contract.py)."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)
from schemathesis.config import PositiveDataAcceptanceConfig


@schemathesis.check
def no_internal_error(ctx, response, case):
    """No 500: schemathesis' own `not_a_server_error` also refuses the documented 503 that
    the GPT routes answer where no OpenAI key is configured."""
    if response.status_code == 500:
        raise AssertionError(f"500 Internal Server Error: {response.text[:300]}")


CHECKS = [no_internal_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance, negative_data_rejection,
          positive_data_acceptance, unsupported_method]
# A valid request is answered: 200, or the GPT routes' 503 (no OpenAI key configured).
ACCEPTED = ["200", "503"]


def configured(schema, max_examples: int):
    """Valid and invalid requests, at most `max_examples` per operation and mode."""
    schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                    max_examples=max_examples)
    schema.config.checks.positive_data_acceptance = PositiveDataAcceptanceConfig(
        expected_statuses=ACCEPTED)
    return schema


def bounded(max_examples: int):
    """Hypothesis settings: deterministic, bounded, no example database."""
    return settings(max_examples=max_examples, deadline=None, derandomize=True,
                    suppress_health_check=list(HealthCheck), database=None)


def check_served_document(base_url: str, max_examples: int,
                          timeout_s: float = 120) -> tuple[int, list[str]]:
    """Requests generated from `<base_url>/openapi.json`, sent to a running server: how
    many were sent, and what did not match the document (one entry per operation)."""
    from hypothesis import given
    from hypothesis.errors import Unsatisfiable

    schema = configured(schemathesis.openapi.from_url(f"{base_url}/openapi.json"),
                        max_examples)
    schema.config.update(base_url=base_url)
    sent = 0
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @bounded(max_examples)
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case):
                nonlocal sent
                sent += 1
                case.call_and_validate(checks=CHECKS, timeout=timeout_s)

            try:
                check()
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                pass
            except Exception as exc:  # noqa: BLE001 - collected, reported together
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    return sent, failures
