"""The operator-service contract: what the operator writes into a ChatbotModel's ConfigMap
and pods, the service reads with its own Settings.

Settings ignores variables it does not know (extra="ignore"), so a setting renamed on one
side only would be dropped silently in a pod: here it fails a test. The probes and limits
the operator sets are checked against the service's app, in process (no model is loaded:
/healthz answers at once, /readyz 503 until a model is).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from pydantic import AliasChoices, BaseModel
from starlette.testclient import TestClient

import chatbot_contract as contract
from chatbot.composition_root import create_app, not_found_app
from chatbot.domain.personas import Persona
from chatbot.settings import Settings
from chatbot_operator import builders, crd
from chatbot_operator.builders import Owner
from chatbot_operator.config import OperatorConfig
from chatbot_operator.profiles import load_profiles, resolve
from chatbot_operator.spec import ChatbotModelSpec

OWNER = Owner("chat", "ns1", "uid-1")
CONFIG = OperatorConfig()
PROFILES = load_profiles("")
# Not the defaults, so that a value that is not read shows.
SPEC = ChatbotModelSpec.parse({
    "office": {"file": "office.gguf", "contextSize": 4096, "batchSize": 512, "maxConcurrent": 3,
               "gpuLayers": 20, "resources": {"limits": {"cpu": "3"}}},
    "character": {"file": "character.gguf", "gpuProfile": "cpu", "gpuLayers": "auto",
                  "maxConcurrent": 4},
    "secrets": {"mongodb": {"name": "mongo", "key": "url"},
                "openai": {"name": "openai", "key": "api-key"}},
})
# What the kubelet puts in for the env entries that come from elsewhere (valueFrom).
FROM_ELSEWHERE = {"MONGO_URL": "mongodb://mongo:27017", "OPENAI_API_KEY": "sk-test",
                  "CHATBOT_POD_NAME": "chat-office-0", "CHATBOT_POD_IP": "10.1.2.3"}


def _accepted(model: type[BaseModel], prefix: str) -> set[str]:
    """Every variable name Settings reads (prefix + field, nested with the delimiter, and
    the validation aliases)."""
    names: set[str] = set()
    for name, field in model.model_fields.items():
        if isinstance(field.validation_alias, AliasChoices):
            names |= {str(choice).upper() for choice in field.validation_alias.choices}
        else:
            names.add(f"{prefix}{name.upper()}")
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            names |= _accepted(field.annotation,
                               f"{prefix}{name.upper()}{contract.NESTED_DELIMITER}")
    return names


def _pod_env(persona: str) -> dict[str, str]:
    """The environment of a persona's container: the ConfigMap (envFrom), then its env."""
    env = dict(builders.settings_configmap(OWNER, SPEC, PROFILES, CONFIG)["data"])
    dep = builders.persona_deployment(OWNER, SPEC, persona, PROFILES, CONFIG)
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"configMapRef": {"name": builders.settings_name(OWNER)}}]
    for var in container["env"]:
        value = var["value"] if "value" in var else FROM_ELSEWHERE[var["name"]]
        # The kubelet expands $(NAME) of the variables defined before it.
        env[var["name"]] = re.sub(r"\$\(([A-Z0-9_]+)\)", lambda m: env[m.group(1)], value)
    return env


def _settings(monkeypatch, env: dict[str, str]) -> Settings:
    accepted = _accepted(Settings, contract.ENV_PREFIX)
    for name in list(os.environ):
        if name in accepted:
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


@pytest.mark.parametrize("persona", ["office", "character"])
def test_every_variable_the_operator_sets_is_one_the_service_reads(persona):
    unknown = set(_pod_env(persona)) - _accepted(Settings, contract.ENV_PREFIX)
    assert not unknown, f"the service's Settings has no field for {sorted(unknown)}"


def test_the_service_parses_the_operators_configmap_to_the_spec(monkeypatch):
    office = _settings(monkeypatch, _pod_env("office"))
    assert office.office_model == Path("/models/office.gguf")
    assert office.character_model == Path("/models/character.gguf")
    assert office.office.max_concurrent == 3
    assert (office.office.model.n_ctx, office.office.model.n_batch) == (4096, 512)
    assert office.office.model.n_gpu_layers == 20
    assert office.office.model.main_gpu == 0
    assert office.office.model.n_threads == 3
    assert office.character.max_concurrent == 4
    assert office.character.model.n_gpu_layers == 0  # auto on the cpu profile
    assert office.character.model.n_ctx == contract.DEFAULT_CONTEXT_SIZE
    assert office.model_wait_timeout_s == CONFIG.model_wait_timeout_s
    assert office.history_path == Path(builders.DATA_DIR) / "history.sqlite3"
    assert office.root_path == "/office"
    assert office.status_report == "ns1/chat"
    assert office.settings_hash == builders.settings_hash(
        SPEC, "office", resolve(SPEC.office.gpu_profile, PROFILES), CONFIG)
    assert office.pod_name == "chat-office-0"
    assert office.affinity and office.affinity_self == f"http://10.1.2.3:{builders.HTTP_PORT}"
    assert office.affinity_peers_dns == f"chat-office-peers:{builders.HTTP_PORT}"
    assert office.mongo_url.get_secret_value() == FROM_ELSEWHERE["MONGO_URL"]
    assert office.openai_api_key.get_secret_value() == FROM_ELSEWHERE["OPENAI_API_KEY"]
    assert _settings(monkeypatch, _pod_env("character")).root_path == "/character"


@pytest.mark.parametrize("persona", ["office", "character"])
def test_the_history_journal_lives_on_a_writable_volume_of_the_pod(monkeypatch, persona):
    """The root filesystem is read-only: the journal of turns answered while MongoDB is
    away must be on a mounted, writable volume (the pod's `data` emptyDir), or it would
    fail at start and keep nothing."""
    journal = _settings(monkeypatch, _pod_env(persona)).journal_path()
    pod = builders.persona_deployment(OWNER, SPEC, persona, PROFILES, CONFIG)["spec"][
        "template"]["spec"]
    [container] = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = [m for m in container["volumeMounts"]
              if journal is not None and journal.is_relative_to(m["mountPath"])]
    assert mounts and not mounts[0].get("readOnly"), (journal, container["volumeMounts"])
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[0]["name"])
    assert "emptyDir" in volume  # survives container restarts; flushed before pod exit


def test_the_defaults_of_the_crd_the_spec_and_the_service_agree():
    service = Settings().office.model
    spec = ChatbotModelSpec.parse({})
    schema = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for persona in ("office", "character"):
        props = schema["properties"][persona]["properties"]
        assert props["contextSize"]["default"] == spec.persona(persona).context_size \
            == service.n_ctx
        assert props["batchSize"]["default"] == spec.persona(persona).batch_size \
            == service.n_batch


def test_the_probed_paths_are_served_and_the_ingress_limit_is_the_services(tmp_path):
    dep = builders.persona_deployment(OWNER, SPEC, "office", PROFILES, CONFIG)
    container = dep["spec"]["template"]["spec"]["containers"][0]
    app = TestClient(create_app(Settings(history_path=tmp_path / "h.db"), [Persona.OFFICE]))
    assert app.get(container["livenessProbe"]["httpGet"]["path"]).status_code == 200
    assert app.get(container["startupProbe"]["httpGet"]["path"]).status_code == 200
    # Served, and not ready: no model is loaded in this test.
    assert app.get(container["readinessProbe"]["httpGet"]["path"]).status_code == 503

    not_found = builders.not_found_deployment(OWNER, SPEC)
    probe = not_found["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert TestClient(not_found_app()).get(probe["httpGet"]["path"]).status_code == 200

    limit = builders.ingress(OWNER, SPEC)["metadata"]["annotations"][
        "nginx.ingress.kubernetes.io/proxy-body-size"]
    assert int(limit.removesuffix("k")) * 1024 == Settings().max_body_bytes
    too_large = app.post("/Llama", content=b"x" * (Settings().max_body_bytes + 1),
                         headers={"content-type": "application/json"})
    assert too_large.status_code == 413
