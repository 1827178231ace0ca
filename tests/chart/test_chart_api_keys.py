"""The chart's API keys: the Secret it writes from values, the ChatbotModel naming it, the
NOTES warning when the routes are open, and bad key entries refused at install."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml

from chatbot.domain.api_keys import parse_keys
from chatbot_operator.spec import ChatbotModelSpec
from tests.kube.helm import CHART, find, one, run, template

CRD = yaml.safe_load((CHART / "crds/chatbotmodels.yaml").read_text())
WEB = {"name": "web", "key": "sk-web-0123456789abcdef", "routes": ["local", "v1"],
       "budgets": {"requestsPerMinute": 60, "tokensPerMinute": 20000}}
BATCH = {"name": "batch", "sha256": "a" * 64, "routes": ["gpt"],
         "budgets": {"requestsPerMinute": 5, "tokensPerMinute": 1000}}


def _notes(values: dict | None = None) -> str:
    proc = run("install", "chatbot", str(CHART), "--dry-run=client", "--namespace", "demo",
               values=values or {}, check=True)
    return proc.stdout.split("NOTES:", 1)[1]


def test_keys_from_values_become_a_secret_the_chatbotmodel_names_and_the_service_reads():
    objs = template({"apiKeys": {"keys": [WEB, BATCH]}, "chatbotModel": {"create": True}})
    secret = one(objs, "Secret", "chatbot-api-keys")
    keys = parse_keys(secret["stringData"]["keys.json"])  # the service's own parser
    assert [(k.name, sorted(k.routes), k.tokens_per_minute) for k in keys] == [
        ("web", ["local", "v1"], 20000), ("batch", ["gpt"], 1000)]
    cbm = one(objs, "ChatbotModel")
    assert cbm["spec"]["apiKeys"] == {"secretName": "chatbot-api-keys", "key": "keys.json"}
    jsonschema.validate(cbm, CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    assert ChatbotModelSpec.parse(cbm["spec"]).api_keys.secret_name == "chatbot-api-keys"


def test_an_existing_secret_is_named_and_none_is_written():
    objs = template({"apiKeys": {"existingSecret": "tenants", "existingSecretKey": "k.json"},
                     "chatbotModel": {"create": True}})
    assert not find(objs, "Secret", "chatbot-api-keys")
    assert one(objs, "ChatbotModel")["spec"]["apiKeys"] == {"secretName": "tenants",
                                                            "key": "k.json"}
    assert not find(template(), "Secret", "chatbot-api-keys")


def test_notes_warn_that_the_routes_are_open_without_keys_the_gpt_routes_above_all():
    open_notes = _notes({"openai": {"apiKey": "sk-test"}})
    assert "WARNING: no API keys are configured" in open_notes
    assert "spend this installation's OpenAI account for any caller" in open_notes
    assert "WARNING" in _notes()
    keyed = _notes({"apiKeys": {"keys": [WEB]}, "chatbotModel": {"create": True}})
    assert "WARNING" not in keyed
    assert "Authorization: Bearer <key>" in keyed and "chatbot-api-keys" in keyed


BAD = [
    ({**WEB, "budgets": {"requestsPerMinute": 60, "tokensPerMinute": -1}},
     "/apiKeys/keys/0/budgets/tokensPerMinute"),
    ({k: v for k, v in WEB.items() if k != "budgets"}, "budgets"),
    ({**WEB, "routes": ["admin"]}, "/apiKeys/keys/0/routes/0"),
]


@pytest.mark.parametrize("entry,message", BAD, ids=["negative", "no-budget", "route"])
def test_a_bad_key_entry_fails_the_install_naming_it(entry, message):
    proc = run("template", "chatbot", str(CHART), values={"apiKeys": {"keys": [entry]}})
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr, proc.stderr


def test_a_duplicate_key_name_fails_the_install_naming_both_entries():
    proc = run("template", "chatbot", str(CHART),
               values={"apiKeys": {"keys": [WEB, BATCH, {**BATCH, "sha256": "b" * 64}]}})
    assert proc.returncode != 0
    assert "apiKeys.keys[2] (batch): duplicate name (also apiKeys.keys[1])" in proc.stderr


def test_keys_and_an_existing_secret_are_exclusive():
    proc = run("template", "chatbot", str(CHART),
               values={"apiKeys": {"keys": [WEB], "existingSecret": "s"}})
    assert proc.returncode != 0
    assert "apiKeys.keys and apiKeys.existingSecret are exclusive" in proc.stderr


def test_the_secret_holds_no_key_in_the_chatbotmodel():
    cbm = one(template({"apiKeys": {"keys": [WEB]}, "chatbotModel": {"create": True}}),
              "ChatbotModel")
    assert WEB["key"] not in json.dumps(cbm)
