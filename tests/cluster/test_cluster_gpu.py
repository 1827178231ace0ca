"""gpuLayers auto and a CPU fallback no one can miss, on the real control plane.

* The fetch program (run here as a process with the Job's ServiceAccount, against a
  loopback HTTP server: kwok runs no containers) downloads a header-only GGUF in the real
  shape of Llama-3.1-8B Q4_1 and reports its facts; the operator computes the layers that fit
  the RTX 2080 for four sequences and puts them in the persona's settings and status.
* The real service (`chatbot serve office`, this machine's CPU build of llama.cpp, the tiny
  model) runs with the settings, the pod identity and the settings hash the office pod on
  the kwok GPU node got; it reports 0 offloaded layers. The resource is then not Ready and
  says why (condition, Warning event, the Accel column); `allowCpuFallback: true` makes it
  Ready with an Accelerated=False warning.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.kube import importorskip

kubernetes = importorskip("kubernetes")
importorskip("kopf")
importorskip("llama_cpp")

from chatbot_operator import gpu_fit  # noqa: E402
from chatbot_operator.gguf_header import read_facts  # noqa: E402
from tests.cluster.test_cluster_operator import crd, operator, volumes  # noqa: E402, F401
from tests.kube import wait_for  # noqa: E402
from tests.kube.operator_fixtures import (  # noqa: E402
    GROUP,
    PLURAL,
    VERSION,
    condition,
    example,
    get_cbm,
)
from tests.operator.gguf_shapes import LLAMA_31_8B, Q, write_header  # noqa: E402
from tests.operator.model_server import ModelServer  # noqa: E402
from tests.support.server import ChatbotServer  # noqa: E402

pytestmark = pytest.mark.cluster

FILE = "Meta-Llama-3.1-8B-Claude.Q4_1.gguf"


def _table_row(api, namespace: str, name: str) -> dict[str, str]:
    """The row `kubectl get cbm` prints (the API server's Table for the printer columns)."""
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"
    method, url, headers, _, _ = api.param_serialize(
        "GET", path, header_params={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
        auth_settings=["BearerToken"])
    resp = api.call_api(method, url, header_params=headers)
    data = json.loads(resp.read())
    columns = [c["name"] for c in data["columnDefinitions"]]
    return dict(zip(columns, data["rows"][0]["cells"], strict=True))


def _identity(kubeconfig, tmp_path) -> dict[str, str]:
    """The pod's in-cluster identity from a ServiceAccount kubeconfig: API URL, token, CA."""
    conf = yaml.safe_load(kubeconfig.read_text())
    cluster, user = conf["clusters"][0]["cluster"], conf["users"][0]["user"]
    token = tmp_path / "token"
    token.write_text(user["token"])
    ca = cluster.get("certificate-authority")
    if ca is None:
        ca = tmp_path / "ca.crt"
        ca.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    return {"CHATBOT_KUBE_API_URL": cluster["server"], "CHATBOT_KUBE_TOKEN_FILE": str(token),
            "CHATBOT_KUBE_CA_FILE": str(ca)}


def test_auto_layers_fit_the_gpu_and_a_cpu_fallback_is_not_ready(
        kube_api, namespace, operator, volumes, fake_gpu_nodes, sa_kubeconfig,  # noqa: F811
        tmp_path):
    from chatbot.llm.tiny_model import write_tiny_model

    core = kubernetes.client.CoreV1Api(kube_api)
    apps = kubernetes.client.AppsV1Api(kube_api)
    custom = kubernetes.client.CustomObjectsApi(kube_api)
    body = example()
    body["spec"]["office"]["maxConcurrent"] = 4  # 4 x 8191 cells of KV: not all layers fit
    header = write_header(tmp_path / FILE, LLAMA_31_8B, Q.Q4_1)
    expected = gpu_fit.fit(read_facts(header), gpu_fit.Workload(n_ctx=8191, n_seq=4),
                           gpu_fit.Budget(8 << 30, 12 << 30))
    assert 0 < expected.layers < 33

    with operator():
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        # The fetch Job's run: after the operator started it (its status entry exists).
        wait_for(lambda: ((get_cbm(kube_api, namespace, "chatbot") or {}).get("status", {})
                          .get("download", {}).get("office")), timeout=60, desc="FetchStarted")
        fetch_identity = sa_kubeconfig(namespace, "chatbot-model-fetch")
        with ModelServer({FILE: header.read_bytes()}) as server:
            run = subprocess.run(
                [sys.executable, "-m", "chatbot_operator.fetch", "--source", "hf://o/r",
                 "--dest", str(tmp_path / "volume"), "--file", FILE,
                 "--report", f"{namespace}/chatbot/office", "--interval", "0"],
                env={**os.environ, "KUBECONFIG": str(fetch_identity),
                     "HF_ENDPOINT": server.url},
                capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr

        def layers_set():
            cm = core.read_namespaced_config_map("chatbot-settings", namespace)
            return cm.data["CHATBOT_OFFICE__MODEL__N_GPU_LAYERS"] == str(expected.layers) \
                and cm
        cm = wait_for(layers_set, timeout=60, desc=f"office gets {expected.layers} layers")
        # Written by the pass that rolled the new layers out, so Ready is after the rollout.
        obj = wait_for(lambda: (o := get_cbm(kube_api, namespace, "chatbot"))["status"].get(
            "phase") == "Ready" and (o["status"].get("gpuFit") or {}).get("office", {}).get(
            "layers") == expected.layers and o, timeout=60, desc="Ready with the layers")
        fit_status = obj["status"]["gpuFit"]["office"]
        assert fit_status["layers"] == expected.layers and fit_status["vramBytes"] == 8 << 30
        assert fit_status["summary"].startswith(f"{expected.layers}/33 layers on the GPU")
        assert "character" not in obj["status"]["gpuFit"]  # a number, not auto
        assert obj["status"]["accel"] == "office gpu ?, character gpu ?"
        assert condition(obj, "Accelerated")["status"] == "Unknown"

        # The office pod's process, for real: the CPU build on a GPU node.
        dep = apps.read_namespaced_deployment("chatbot-office", namespace)
        env = {e.name: e.value for e in dep.spec.template.spec.containers[0].env if e.value}
        pod = [p for p in core.list_namespaced_pod(
            namespace, label_selector="app.kubernetes.io/component=office").items
            if p.metadata.deletion_timestamp is None][0]
        assert pod.spec.node_name == "gpu-2080"
        tiny = write_tiny_model(tmp_path / "tiny.gguf", quant="Q4_1")
        service_env = {
            **{k: v for k, v in cm.data.items() if k.startswith("CHATBOT_OFFICE")},
            "CHATBOT_OFFICE_MODEL": str(tiny), "CHATBOT_OFFICE__MODEL__N_THREADS": "1",
            "CHATBOT_STATUS_REPORT": env["CHATBOT_STATUS_REPORT"],
            "CHATBOT_SETTINGS_HASH": env["CHATBOT_SETTINGS_HASH"],
            "CHATBOT_POD_NAME": pod.metadata.name,
            **_identity(sa_kubeconfig(namespace, dep.spec.template.spec.service_account_name),
                        tmp_path),
        }
        server = ChatbotServer(tmp_path, "office", env=service_env)
        try:
            ready = server.wait_until("/readyz", timeout=120).json()
            assert ready["engine"]["gpu_layers_offloaded"] == 0
            assert ready["engine"]["gpu_layers_requested"] == expected.layers
            obj = wait_for(lambda: condition(get_cbm(kube_api, namespace, "chatbot"),
                                             "OfficeReady").get("reason") == "CpuFallback"
                           and get_cbm(kube_api, namespace, "chatbot"), timeout=60,
                           desc="OfficeReady=False/CpuFallback")
        finally:
            server.stop()
        assert "reported GPU offload" in server.log.read_text()
        status = obj["status"]
        assert status["phase"] == "Failed"
        assert status["accel"] == "office cpu! 0/5, character gpu ?"  # the tiny model: 4+1
        message = condition(obj, "OfficeReady")["message"]
        assert f"pod {pod.metadata.name} offloaded 0 of the 5 layers" in message
        assert "allowCpuFallback" in message and "CPU build" in message
        assert condition(obj, "Accelerated")["status"] == "False"
        row = _table_row(kube_api, namespace, "chatbot")
        print(f"\nkubectl get cbm: {row}")
        assert row["Accel"] == "office cpu! 0/5, character gpu ?" and row["Phase"] == "Failed"
        warnings = wait_for(lambda: [e for e in core.list_namespaced_event(namespace).items
                                     if e.type == "Warning" and e.reason == "CpuFallback"],
                            timeout=30, desc="a CpuFallback Warning event")
        assert "offloaded 0" in warnings[0].message

        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "chatbot", {
            "spec": {"office": {"allowCpuFallback": True}}})
        obj = wait_for(lambda: (o := get_cbm(kube_api, namespace, "chatbot"))["status"].get(
            "phase") == "Ready" and o, timeout=60, desc="Ready with the fallback allowed")
        assert condition(obj, "OfficeReady")["status"] == "True"
        accelerated = condition(obj, "Accelerated")
        assert accelerated["status"] == "False" and accelerated["reason"] == "CpuFallback"
        assert _table_row(kube_api, namespace, "chatbot")["Accel"].startswith("office cpu!")
