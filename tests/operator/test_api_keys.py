"""spec.apiKeys: the Secret mounted into the persona pods, the budgets' replica count, and the
ApiKeysValid condition from the pods' own report of the keys they read (pure builders)."""

from __future__ import annotations

from pathlib import Path

from chatbot.settings import Settings
from chatbot_contract import API_KEYS_DIR
from chatbot_operator import builders, crd
from chatbot_operator.builders import Owner
from chatbot_operator.config import OperatorConfig
from chatbot_operator.profiles import load_profiles
from chatbot_operator.spec import ChatbotModelSpec
from chatbot_operator.status import api_keys_condition, phase

OWNER = Owner("chat", "ns1", "uid-1")
CONFIG = OperatorConfig()
PROFILES = load_profiles("")


def _spec(**overrides) -> ChatbotModelSpec:
    return ChatbotModelSpec.parse(overrides)


def _pod(spec: ChatbotModelSpec, persona: str) -> dict:
    return builders.persona_deployment(OWNER, spec, persona, PROFILES, CONFIG)[
        "spec"]["template"]["spec"]


def test_the_keys_secret_is_mounted_whole_into_every_persona_pod_and_read_from_there():
    spec = _spec(apiKeys={"secretName": "chat-keys", "key": "tenants.json"},
                 office={"replicas": 2}, character={"replicas": 1})
    data = builders.settings_configmap(OWNER, spec, PROFILES, CONFIG)["data"]
    for persona in ("office", "character"):
        pod = _pod(spec, persona)
        volume = next(v for v in pod["volumes"] if v["name"] == "api-keys")
        assert volume["secret"] == {"secretName": "chat-keys", "optional": True,
                                    "items": [{"key": "tenants.json", "path": "keys.json"}]}
        mount = next(m for m in pod["containers"][0]["volumeMounts"]
                     if m["name"] == "api-keys")
        # No subPath: only a whole-volume mount sees the kubelet's update of the Secret.
        assert mount == {"name": "api-keys", "mountPath": API_KEYS_DIR, "readOnly": True}
    settings = Settings(api_keys_file=data["CHATBOT_API_KEYS_FILE"],
                        api_keys_replicas=data["CHATBOT_API_KEYS_REPLICAS"])
    assert str(settings.api_keys_file) == f"{API_KEYS_DIR}/keys.json"
    assert settings.api_keys_replicas == 3  # every pod of the installation shares a budget


def test_without_api_keys_nothing_is_mounted_and_the_service_stays_open():
    spec = _spec()
    data = builders.settings_configmap(OWNER, spec, PROFILES, CONFIG)["data"]
    assert not any(k.startswith("CHATBOT_API_KEYS") for k in data)
    assert all(v["name"] != "api-keys" for v in _pod(spec, "office")["volumes"])


def test_scaling_does_not_restart_the_pods_but_naming_a_secret_rolls_them():
    before = _spec(apiKeys={"secretName": "k"})
    scaled = _spec(apiKeys={"secretName": "k"}, office={"replicas": 3})
    other = _spec(apiKeys={"secretName": "other"})

    def template(spec):
        dep = builders.persona_deployment(OWNER, spec, "character", PROFILES, CONFIG)
        return dep["spec"]["template"]

    assert template(before) == template(scaled)
    assert template(before) != template(other)


def test_the_crd_names_the_secret_and_the_key_defaults_to_keys_json():
    schema = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    api_keys = schema["spec"]["properties"]["apiKeys"]
    assert api_keys["required"] == ["secretName"]
    assert api_keys["properties"]["key"]["default"] == "keys.json"
    assert "apiKeys" in schema["status"]["properties"]


def test_a_refused_secret_is_a_condition_naming_the_entry_and_the_pods_keep_serving():
    refused = {"state": "error", "names": ["web"],
               "detail": "/etc/chatbot/api-keys/keys.json: keys[1] (batch): budgets: is "
                         "required; keys[2] (web): duplicate name (also keys[0])"}
    cond = api_keys_condition(True, {"office": refused, "character": refused})
    assert (cond.type, cond.status, cond.reason) == ("ApiKeysValid", False, "InvalidApiKeys")
    assert "keys[1] (batch): budgets: is required" in cond.message
    assert "keys[2] (web): duplicate name" in cond.message
    assert "keep the last good keys: web" in cond.message
    # A warning: the personas stay Ready on the last good keys.
    from chatbot_operator.status import Condition
    ready = [Condition(t, True, "Ok", "") for t in
             ("ModelReady", "OfficeReady", "CharacterReady", "RouteReady")]
    assert phase([*ready, cond]) == "Ready"


def test_the_condition_follows_the_pods_reports():
    ok = {"state": "ok", "names": ["batch", "web"], "detail": ""}
    assert api_keys_condition(False, {"office": ok}) is None
    loaded = api_keys_condition(True, {"office": ok, "character": ok})
    assert (loaded.status, loaded.reason) == (True, "Loaded")
    assert "batch, web" in loaded.message
    waiting = api_keys_condition(True, {"office": ok, "character": None})
    assert (waiting.status, waiting.reason) == (None, "NotReported")


def test_the_example_with_api_keys_parses():
    root = Path(__file__).resolve().parents[2]
    import yaml

    docs = list(yaml.safe_load_all(
        (root / "operator/examples/chatbotmodel-api-keys.yaml").read_text()))
    model = next(d for d in docs if d["kind"] == "ChatbotModel")
    secret = next(d for d in docs if d["kind"] == "Secret")
    spec = ChatbotModelSpec.parse(model["spec"])
    from chatbot.domain.api_keys import parse_keys

    keys = parse_keys(secret["stringData"][spec.api_keys.key])
    assert {k.name for k in keys} >= {"web"} and spec.api_keys.secret_name == \
        secret["metadata"]["name"]
