"""The fetch program reports download progress into the ChatbotModel's status, with only the
fetch Job's own ServiceAccount and Role (as the operator builds them).

The program runs here as a process (kwok runs no containers) against a real HTTP server on
loopback and the real API server; the ServiceAccount token is the Job's identity.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading

import pytest

from tests.kube import importorskip

kubernetes = importorskip("kubernetes")

from chatbot_operator import builders  # noqa: E402
from chatbot_operator.apply import Cluster  # noqa: E402
from tests.kube.operator_fixtures import GROUP, PLURAL, VERSION, example, get_cbm, install_crd  # noqa: E402
from tests.operator.model_server import ModelServer  # noqa: E402

pytestmark = pytest.mark.cluster

DATA = os.urandom(6 << 20)
FILE = "Meta-Llama-3.1-8B-Claude.Q4_1.gguf"


def test_fetch_job_identity_reports_progress_and_nothing_else(kube_cluster, kube_api,
                                                             namespace, sa_kubeconfig,
                                                             tmp_path):
    install_crd(kube_api)
    custom = kubernetes.client.CustomObjectsApi(kube_api)
    obj = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, example())
    other = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                   example("other"))
    owner = builders.Owner("chatbot", namespace, obj["metadata"]["uid"])
    admin = Cluster(kube_api, "test")
    for manifest in builders.fetch_rbac(owner):
        admin.apply(manifest)
    kubeconfig = sa_kubeconfig(namespace, builders.fetch_account_name(owner))

    seen: list[float] = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            info = ((get_cbm(kube_api, namespace, "chatbot") or {}).get("status", {})
                    .get("download", {}).get("office") or {})
            if "percent" in info and (not seen or seen[-1] != info["percent"]):
                seen.append(info["percent"])
            stop.wait(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    with ModelServer({FILE: DATA}) as server:
        server.cut_after, server.cuts_left = 2 << 20, 1  # one cut connection on the way
        watcher.start()
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HF_ENDPOINT": server.url}
        run = subprocess.run(
            [sys.executable, "-m", "chatbot_operator.fetch", "--source", "hf://o/r",
             "--dest", str(tmp_path), "--file", FILE,
             "--sha256", hashlib.sha256(DATA).hexdigest(),
             "--report", f"{namespace}/chatbot/office", "--interval", "0"],
            env=env, capture_output=True, text=True, timeout=120)
        stop.set()
        watcher.join()
    assert run.returncode == 0, run.stderr
    assert "progress report failed" not in run.stderr
    status = get_cbm(kube_api, namespace, "chatbot")["status"]["download"]["office"]
    assert status["phase"] == "Done" and status["percent"] == 100
    assert status["bytesDone"] == status["bytesTotal"] == len(DATA)
    assert len(seen) >= 2 and seen[-1] == 100  # progress was visible while it ran
    assert (tmp_path / FILE).read_bytes() == DATA

    # The Job's identity may touch this resource's status only.
    api = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    limited = kubernetes.client.CustomObjectsApi(api)
    for call in (
        lambda: limited.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, other["metadata"]["name"],
            {"status": {"phase": "Hacked"}}),
        lambda: limited.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "chatbot", {"spec": {"office": {"replicas": 9}}}),
        lambda: kubernetes.client.CoreV1Api(api).list_namespaced_secret(namespace),
    ):
        with pytest.raises(kubernetes.client.ApiException) as err:
            call()
        assert err.value.status == 403
    api.close()
