"""The OpenAPI contract on the real node: requests generated from each persona's document,
as the route on port 8001 serves it, sent through the route to the real pods (llama.cpp on
SmolLM2, MongoDB), every answer checked against that document (tests/support/
openapi_contract.py). A short budget: a few examples per operation and mode; the
thorough run is the in-process one (tests/unit/test_openapi_contract.py)."""

from __future__ import annotations

import pytest

from tests.support.openapi_contract import check_served_document

pytestmark = pytest.mark.node

MAX_EXAMPLES = 3
MAX_TOKENS = 16  # SmolLM2 on two cores: a valid request answered in seconds, not minutes


@pytest.mark.parametrize("persona", ["office", "character"])
def test_the_route_answers_as_the_served_document_says(installed, persona, capsys):
    sent, failures = check_served_document(installed.route(f"/{persona}"), MAX_EXAMPLES,
                                            max_tokens=MAX_TOKENS)
    with capsys.disabled():
        print(f"\nOpenAPI contract on the real node ({persona}): {sent} generated requests, "
              f"{len(failures)} mismatches")
    assert not failures, "\n\n".join(failures)
