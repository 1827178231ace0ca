"""gpuLayers auto in the operator (facts from status -> layers, status, ModelTooLarge) and the
pods' GPU offload report against what they were told (pure; no cluster)."""

from __future__ import annotations

import threading
import time

import pytest

from chatbot_operator import builders, gpu_plan
from chatbot_operator.builders import Owner
from chatbot_operator.calm import APPLIED_ANNOTATION, Applied, Coalescer
from chatbot_operator.config import OperatorConfig
from chatbot_operator.gguf_header import read_facts
from chatbot_operator.profiles import load_profiles, resolve
from chatbot_operator.spec import ChatbotModelSpec
from tests.operator.gguf_shapes import LLAMA_31_8B, Q, write_header

CONFIG = OperatorConfig()
PROFILES = load_profiles('{"a4000": {"nodeSelector": {"gpu": "a4000"}, "vram": "16Gi"}, '
                         '"tiny-gpu": {"nodeSelector": {"gpu": "tiny"}, "vram": "2Gi"}}')
OWNER = Owner("chat", "ns1", "uid-1")


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("h")
    out = {}
    for persona, quant, file in (("office", Q.Q4_1, "Meta-Llama-3.1-8B-Claude.Q4_1.gguf"),
                                 ("character", Q.Q4_0, "Meta-Llama-3.1-8B-Claude.Q4_0.gguf")):
        facts = read_facts(write_header(root / file, LLAMA_31_8B, quant))
        out[persona] = {"phase": "Done", "file": file, "gguf": facts.to_status()}
    return out


def _plan(spec: ChatbotModelSpec, persona: str, downloads: dict) -> gpu_plan.Plan:
    profile = resolve(spec.persona(persona).gpu_profile, PROFILES)
    return gpu_plan.plan(spec, persona, profile, downloads.get(persona), CONFIG)


def test_profiles_carry_their_vram():
    assert PROFILES["rtx-2080"].vram_bytes == 8 << 30
    assert PROFILES["rtx-3060"].vram_bytes == 12 << 30
    assert PROFILES["a4000"].vram_bytes == 16 << 30
    with pytest.raises(ValueError, match="a4000.vram must be a quantity"):
        load_profiles('{"a4000": {"nodeSelector": {"gpu": "x"}, "vram": "lots"}}')


def test_the_seed_gets_every_layer_and_the_estimate_in_status(downloads):
    spec = ChatbotModelSpec.parse({"character": {"gpuLayers": "auto"}})
    plans = {p: _plan(spec, p, downloads) for p in ("office", "character")}
    assert plans["office"].layers == plans["character"].layers == 33
    status = plans["office"].status
    assert status["vramBytes"] == 8 << 30 and status["kvCacheBytes"] == 1 << 30
    assert status["summary"].startswith("33/33 layers on the GPU: weights 4.46 GiB + KV cache "
                                        "1.00 GiB")
    env = builders.settings_configmap(OWNER, gpu_plan.resolved(spec, plans), PROFILES,
                                      CONFIG)["data"]
    assert env["CHATBOT_OFFICE__MODEL__N_GPU_LAYERS"] == "33"
    assert env["CHATBOT_CHARACTER__MODEL__N_GPU_LAYERS"] == "33"


def test_a_small_custom_gpu_gets_part_of_the_model(downloads):
    spec = ChatbotModelSpec.parse({"office": {"gpuProfile": "tiny-gpu", "contextSize": 4096}})
    plan = _plan(spec, "office", downloads)
    assert 1 <= plan.layers < 10 and plan.too_large is None
    assert plan.status["totalBytes"] <= 2 << 30


def test_without_facts_auto_keeps_all_layers_and_says_why(downloads):
    spec = ChatbotModelSpec.parse({"office": {"file": "other.gguf"}})
    plan = _plan(spec, "office", downloads)  # the facts are for another file
    assert plan.layers is None
    assert plan.status["summary"] == "waiting for the download of the GGUF file; all layers"
    assert builders.gpu_layers(spec.office, PROFILES["rtx-2080"]) == -1
    pvc = ChatbotModelSpec.parse({"source": {"uri": "pvc://models/llama"}})
    assert "pvc:// source" in _plan(pvc, "office", downloads).status["summary"]
    assert _plan(spec, "character", downloads).status is None  # a number: nothing to do


def test_a_model_that_cannot_run_even_on_the_cpu_is_too_large(downloads):
    spec = ChatbotModelSpec.parse({"office": {"gpuProfile": "cpu",
                                              "resources": {"limits": {"memory": "3Gi"}}}})
    plan = _plan(spec, "office", downloads)
    assert plan.layers == 0 and plan.too_large
    assert "does not fit" in plan.too_large and "of the 3.00 GiB memory limit" in \
        plan.too_large and "resources.limits.memory" in plan.too_large


def _accel(report: dict | None, told=-1, profile="rtx-2080", hash_="h1"):
    spec = ChatbotModelSpec.parse({"office": {"gpuProfile": profile}})
    return gpu_plan.acceleration("office", spec.office, PROFILES[profile], told, report, hash_)


def _report(offloaded: int, hash_="h1", supported=False) -> dict:
    return {"pod": "chat-office-abc", "settingsHash": hash_, "offloaded": offloaded,
            "layersTotal": 33, "supported": supported}


def test_a_pod_on_the_cpu_build_is_a_fallback():
    a = _accel(_report(0))
    assert a.fallback and a.text == "office cpu! 0/33"
    assert "offloaded 0 of the 33 layers" in a.message and "CPU build" in a.message
    assert _accel(_report(33, supported=True)).text == "office gpu 33/33"
    assert not _accel(_report(20), told=20).fallback
    assert _accel(_report(20), told=20).text == "office gpu 20/20 of 33"


def test_reports_from_other_settings_or_none_are_not_trusted():
    assert _accel(_report(0, hash_="old")).text == "office gpu ?"
    assert not _accel(None).fallback
    assert _accel(_report(0), profile="cpu", told=0).text == "office cpu"


def test_the_pods_report_into_their_resource_with_the_settings_hash():
    spec = ChatbotModelSpec.parse({})
    dep = builders.persona_deployment(OWNER, spec, "office", PROFILES, CONFIG)
    pod = dep["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["containers"][0]["env"]}
    assert env["CHATBOT_STATUS_REPORT"] == "ns1/chat"
    assert env["CHATBOT_SETTINGS_HASH"] == dep["spec"]["template"]["metadata"][
        "annotations"][builders.HASH_ANNOTATION]
    assert env["CHATBOT_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert pod["serviceAccountName"] == builders.fetch_account_name(OWNER)


class _Recorder:
    """Stands in for the API server to count calls (the cluster tests use the real one)."""

    def __init__(self):
        self.objects: dict = {}
        self.calls: list[str] = []

    def get(self, api_version, kind, namespace, name):
        self.calls.append(f"get {kind}")
        return self.objects.get((kind, name))

    def apply(self, body):
        self.calls.append(f"apply {body['kind']}")
        self.objects[(body["kind"], body["metadata"]["name"])] = body
        return body


def test_children_are_applied_only_when_their_manifest_changes():
    cluster, applied = _Recorder(), Applied()
    cm = builders.settings_configmap(OWNER, ChatbotModelSpec.parse({}), PROFILES, CONFIG)
    key = ("ns1", "chat")
    assert applied.apply(cluster, key, cm)[1] is True
    assert applied.apply(cluster, key, cm) == (None, False)  # remembered: no call at all
    assert cluster.calls == ["get ConfigMap", "apply ConfigMap"]
    assert APPLIED_ANNOTATION in cluster.objects[("ConfigMap", "chat-settings")][
        "metadata"]["annotations"]
    # A restarted operator (or a spec change) reads the child once, and writes nothing.
    fresh = Applied()
    assert fresh.apply(cluster, key, cm)[1] is False
    assert cluster.calls[-1] == "get ConfigMap"
    changed = builders.settings_configmap(OWNER, ChatbotModelSpec.parse(
        {"office": {"maxConcurrent": 3}}), PROFILES, CONFIG)
    assert fresh.apply(cluster, key, changed)[1] is True
    # A Deployment read anyway comes back when deleted by hand, whatever is remembered.
    assert applied.apply(cluster, key, cm, None)[1] is True


def test_a_burst_of_events_is_one_pass_and_an_event_during_a_pass_one_more():
    runs: list[float] = []
    gate = threading.Event()

    def run(key):
        runs.append(time.monotonic())
        gate.wait(5)

    c = Coalescer(run, quiet_s=0.2, max_wait_s=2)
    for _ in range(20):
        c.request(("ns", "a"))
        time.sleep(0.01)
    deadline = time.monotonic() + 3
    while not runs and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(runs) == 1
    c.request(("ns", "a"))  # during the pass
    c.request(("ns", "a"))
    gate.set()
    time.sleep(0.6)
    assert len(runs) == 2
    c.stop()


def test_a_resource_created_again_under_its_name_is_not_taken_for_the_old_one():
    applied = Applied()
    applied.bind("ns1", "chat", "uid-1")
    applied.job_complete(("ns1", "chat"), "chat-office-fetch-1", True)
    applied.bind("ns1", "chat", "uid-1")
    assert applied.job_complete(("ns1", "chat"), "chat-office-fetch-1")
    applied.bind("ns1", "chat", "uid-2")
    assert not applied.job_complete(("ns1", "chat"), "chat-office-fetch-1")
