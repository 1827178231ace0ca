"""The served OpenAPI documents are the truth: property-based requests, valid and invalid,
generated from each persona's `/openapi.json` by schemathesis, against the in-process app
(scripted engines, embedded history store), and every answer checked against the document:
its status is documented, its body matches that status's schema, its content type is
documented, and a method the path does not have is a 405 whose `Allow` lists the path's.

The number of examples is bounded so that this runs in CI in seconds; the number of
generated cases is printed at the end.
"""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient

from chatbot.composition_root import create_app
from chatbot.domain.personas import Persona
from chatbot.settings import Settings
from tests.support.engines import ScriptedEngine
from tests.support.openapi_contract import CHECKS, bounded, configured

MAX_EXAMPLES = 40  # per operation and generation mode

ANSWER = ["A scripted ", "answer, ", "long enough."]
_app = create_app(Settings(history_path=":memory:", search="none"),
                  engines={p: ScriptedEngine(ANSWER) for p in Persona})
_cases: dict[str, int] = {}


def _schema(persona: str):
    return configured(schemathesis.openapi.from_asgi(f"/{persona}/openapi.json", _app),
                      MAX_EXAMPLES)


office = _schema("office")
character = _schema("character")
_SETTINGS = bounded(MAX_EXAMPLES)


def _check(persona: str, case) -> None:
    _cases[persona] = _cases.get(persona, 0) + 1
    case.call_and_validate(checks=CHECKS)


@office.parametrize()
@_SETTINGS
def test_office_answers_as_its_document_says(case):
    _check("office", case)


@character.parametrize()
@_SETTINGS
def test_character_answers_as_its_document_says(case):
    _check("character", case)


# What the issue found, one by one, as a client sees it.

def test_a_paths_405_and_options_name_exactly_its_methods():
    with TestClient(_app) as client:
        for method, path, allow in [("OPTIONS", "/office/healthz", "GET"),
                                    ("OPTIONS", "/character/readyz", "GET"),
                                    ("POST", "/office/metrics", "GET"),
                                    ("DELETE", "/office/performance", "GET"),
                                    ("GET", "/office/Llama", "POST"),
                                    ("GET", "/character/gpt4.1", "POST"),
                                    ("PUT", "/office/v1/chat/completions", "POST")]:
            r = client.request(method, path)
            assert (r.status_code, r.headers.get("allow")) == (405, allow), (method, path)
            assert r.headers["content-type"] == "application/json"


def test_the_document_states_gpt_names_the_pairing_and_every_content_type():
    with TestClient(_app) as client:
        doc = client.get("/office/openapi.json").json()
        assert client.post("/office/gpt5", json={"input_data": "hi"}).json() == {
            "detail": "Invalid model name."}
        lone = client.post("/office/Llama", json={"input_data": "hi", "user_id": "u1"})
    (param,) = doc["paths"]["/{gpt_set}"]["post"]["parameters"]
    assert param["schema"]["enum"] == ["gpt4.1", "gpt4.1_mini"]
    body = doc["components"]["schemas"]["OfficeRequest"]
    assert body["dependentRequired"] == {"db_id": ["user_id"], "user_id": ["db_id"]}
    assert lone.status_code == 422 and lone.json()["errors"][0]["reason"].endswith(
        "(db_id is missing)")
    completions = doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert set(completions["200"]["content"]) == {"application/json", "text/event-stream"}
    assert {"400", "413", "415", "422", "429", "503", "504"} <= set(completions)


@pytest.mark.parametrize(("extra", "field", "reason"), [
    ({"seed": "5"}, "seed", "valid integer"),
    ({"seed": 1.5}, "seed", "fractional part"),
    ({"stream": "yes"}, "stream", "valid boolean"),
    ({"tools": [{"type": "function"}]}, "tools", "is not supported by this server"),
    ({"stop": ["\n"]}, "stop", "is not supported by this server"),
])
def test_v1_refuses_wrong_types_and_fields_it_does_not_honour(extra, field, reason):
    body = {"messages": [{"role": "user", "content": "hi"}], **extra}
    with TestClient(_app) as client:
        r = client.post("/office/v1/chat/completions", json=body)
    assert r.status_code == 422, r.text
    assert any(e["field"] == field and reason in e["reason"] for e in r.json()["errors"])


def test_cases_were_generated(capsys):
    """Runs last in this module: how many requests the property tests sent (printed)."""
    with capsys.disabled():
        print(f"\nOpenAPI contract: {sum(_cases.values())} generated requests "
              f"({', '.join(f'{k} {v}' for k, v in sorted(_cases.items()))}), 0 mismatches")
    assert sum(_cases.values()) >= 100, _cases
