"""What the property-based contract tests check on every answer (schemathesis), shared by
the in-process test (tests/unit/test_openapi_contract.py) and the real node's
(tests/node/test_contract.py)."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, Phase, settings
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


def bounded(max_examples: int, shrink: bool = True):
    """Hypothesis settings: deterministic, bounded, no example database; without `shrink`,
    a failure is reported as found (shrinking would resend slow requests for minutes)."""
    phases = [p for p in Phase if shrink or p not in (Phase.shrink, Phase.explain)]
    return settings(max_examples=max_examples, deadline=None, derandomize=True,
                    suppress_health_check=list(HealthCheck), database=None, phases=phases)


def _described(exc: BaseException) -> str:
    """An exception with the failures a group holds (Hypothesis reports several at once)."""
    if isinstance(exc, BaseExceptionGroup):
        return f"{exc}: " + "; ".join(_described(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


def _capped(case, max_tokens: int) -> None:
    """A valid request made cheap to answer on a real model: at most `max_tokens` generated
    (still a valid value of the field the document declares)."""
    body = case.body if isinstance(case.body, dict) else None
    if body is None or "messages" not in body:
        return
    limits = [k for k in ("max_tokens", "max_completion_tokens") if k in body]
    for k in limits:
        if isinstance(body[k], int) and body[k] > max_tokens:
            body[k] = max_tokens
    if not limits:
        body["max_tokens"] = max_tokens


def _calling(send):
    """`send` as a one-argument test function (@given refuses functions with defaults)."""
    def check(case):
        send(case)
    return check


def check_served_document(base_url: str, max_examples: int, timeout_s: float = 120,
                          max_tokens: int | None = None) -> tuple[int, list[str]]:
    """Requests generated from `<base_url>/openapi.json`, sent to a running server: how
    many were sent, and what did not match the document (one entry per operation).
    `max_tokens`: a real model's answers to valid OpenAI-style requests kept that short,
    and no shrinking (each request costs a generation)."""
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
            cap = max_tokens if mode is GenerationMode.POSITIVE else None

            def send(case, cap=cap):
                nonlocal sent
                sent += 1
                if cap is not None:
                    _capped(case, cap)
                case.call_and_validate(checks=CHECKS, timeout=timeout_s)

            check = bounded(max_examples, shrink=max_tokens is None)(
                given(case=operation.as_strategy(generation_mode=mode))(_calling(send)))

            try:
                check()
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                pass
            except Exception as exc:  # noqa: BLE001 - collected, reported together
                failures.append(f"{operation.label} ({mode.value}): {_described(exc)}")
    return sent, failures
