"""The operator image (built by tests/images on a local Debian base) running `kopf run` the way
the chart runs it, against the local control plane, and reconciling the example ChatbotModel
to Ready.

The chart is installed with helm (its image set to the locally built one; its health port a
free one, because the container shares the host's network to reach the API server on
loopback; its watch list this test's namespace, so it leaves the other tests' objects
alone). The test then plays the kubelet for the operator's Deployment, from the manifest helm
rendered: the container's command, environment, securityContext (uid 1000, read-only root,
no capabilities) and volumes go to `docker run` (tests/images/podrun.py), and the pod's
ServiceAccount is mounted as a kubelet mounts it - a token from the TokenRequest API for the
chart-created account, the cluster's CA and the namespace at
/var/run/secrets/kubernetes.io/serviceaccount, with KUBERNETES_SERVICE_HOST/PORT set - so
kopf logs in in-cluster with exactly the rights the chart grants. kwok runs no containers:
the persona pods the operator creates become Ready without a process.
"""

from __future__ import annotations

import base64
import secrets as random
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from tests.kube import importorskip

kubernetes = importorskip("kubernetes")

from tests.images.podrun import docker_run_args  # noqa: E402
from tests.kube import binaries, wait_for  # noqa: E402
from tests.kube.operator_fixtures import (  # noqa: E402
    GROUP,
    PLURAL,
    ROOT,
    VERSION,
    delete_volumes,
    example,
    get_cbm,
    model_volumes,
)
from tests.support import docker_engine as engine  # noqa: E402
from tests.support import free_port  # noqa: E402

pytestmark = [pytest.mark.cluster, pytest.mark.docker]

CHART = ROOT / "charts/chatbot"
RELEASE = "chatbot"
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def _helm(kube_cluster, *args: str) -> str:
    comp = binaries.COMPONENTS["helm"]
    if not comp.is_built():
        pytest.skip("helm is not built: run tests/kube/build-binaries helm")
    proc = subprocess.run([str(binaries.binary("helm")), *args], env=kube_cluster.env(),
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"helm {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _service_account_files(kube_cluster, api, namespace: str, account: str,
                           where: Path) -> tuple[Path, dict[str, str]]:
    """What the kubelet mounts for a pod's ServiceAccount, and the env it sets."""
    core = kubernetes.client.CoreV1Api(api)
    token = core.create_namespaced_service_account_token(
        account, namespace, {"spec": {"expirationSeconds": 3600}}).status.token
    config = yaml.safe_load(Path(kube_cluster.kubeconfig).read_text())
    cluster = config["clusters"][0]["cluster"]
    if "certificate-authority-data" in cluster:
        ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
    else:
        ca = Path(cluster["certificate-authority"]).read_text()
    where.mkdir(mode=0o755)
    where.chmod(0o755)
    for name, text in (("token", token), ("ca.crt", ca), ("namespace", namespace)):
        (where / name).write_text(text)
        (where / name).chmod(0o644)
    server = urlparse(cluster["server"])
    return where, {"KUBERNETES_SERVICE_HOST": server.hostname,
                   "KUBERNETES_SERVICE_PORT": str(server.port or 443)}


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except (OSError, urllib.error.URLError):
        return None


def test_the_operator_image_reconciles_the_example_as_the_chart_runs_it(
        kube_cluster, kube_api, namespace, fake_gpu_nodes, operator_image, tmp_path):
    image, tag = operator_image[0].rsplit(":", 1)
    health = free_port("0.0.0.0")
    custom = kubernetes.client.CustomObjectsApi(kube_api)
    volumes = model_volumes(kube_api, namespace, "chatbot")
    name = f"chatbot-operator-image-{random.token_hex(3)}"
    try:
        _helm(kube_cluster, "install", RELEASE, str(CHART), "--namespace", namespace,
              "--set", f"operator.image.repository={image}", "--set", f"operator.image.tag={tag}",
              "--set", f"operator.healthPort={health}",
              "--set", f"operator.watchNamespaces={{{namespace}}}",
              "--set", "mongodb.enabled=false", "--set", "openai.apiKey=sk-test")
        manifest = _helm(kube_cluster, "get", "manifest", RELEASE, "--namespace", namespace)
        [deployment] = [d for d in yaml.safe_load_all(manifest)
                        if d and d["kind"] == "Deployment"
                        and d["metadata"]["name"] == f"{RELEASE}-operator"]
        pod = deployment["spec"]["template"]["spec"]
        [container] = pod["containers"]
        assert container["image"] == operator_image[0]
        assert container["command"][:2] == ["kopf", "run"]

        account, env = _service_account_files(kube_cluster, kube_api, namespace,
                                              pod["serviceAccountName"], tmp_path / "sa")
        argv = docker_run_args(pod, image=operator_image[0], config_maps={}, claims={},
                               empty_dirs=tmp_path / "empty-dirs")
        kubelet = ["--network", "host", "--mount",
                   f"type=bind,source={account},target={TOKEN_DIR},readonly"]
        for key, value in env.items():
            kubelet += ["--env", f"{key}={value}"]
        started = time.monotonic()
        engine.docker("run", "-d", "--name", name, *kubelet, *argv)

        def logs() -> str:
            proc = engine.docker("logs", "--tail", "60", name, check=False)
            return proc.stdout + proc.stderr

        healthz = f"http://127.0.0.1:{health}/healthz"
        while _status(healthz) != 200:  # the startupProbe: 2 s x 60
            state = engine.docker("inspect", "-f", "{{.State.Running}}", name).stdout.strip()
            assert state == "true", f"the operator container exited:\n{logs()}"
            assert time.monotonic() - started < 120, f"/healthz never answered:\n{logs()}"
            time.sleep(0.5)
        # bench_images.py cannot reach an API server: this is the operator's start-up number.
        print(f"operator image: docker run -> /healthz 200 in {time.monotonic() - started:.1f} s")

        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, example())
        try:
            obj = wait_for(lambda: (get_cbm(kube_api, namespace, "chatbot") or {})
                           .get("status", {}).get("phase") == "Ready"
                           and get_cbm(kube_api, namespace, "chatbot"),
                           timeout=120, desc="the example ChatbotModel Ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{logs()}") from exc
        assert obj["status"]["officeReady"] == "1/1"
        assert obj["status"]["characterReady"] == "1/1"
        assert _status(healthz) == 200  # the livenessProbe
        info = engine.docker("inspect", name).stdout
        assert '"ReadonlyRootfs": true' in info and '"User": "1000:1000"' in info

        # Deleting it, then a pod deletion: SIGTERM, exit 0 within the grace period.
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "chatbot")
        wait_for(lambda: get_cbm(kube_api, namespace, "chatbot") is None, timeout=60,
                 desc="ChatbotModel deleted (the operator's finalizer ran)")
        grace = pod.get("terminationGracePeriodSeconds", 30)
        stop = time.monotonic()
        engine.docker("stop", "-t", str(grace), name, timeout=grace + 30)
        assert time.monotonic() - stop < grace
        exit_code = engine.docker("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip()
        assert exit_code == "0", logs()
    finally:
        engine.docker("rm", "-f", name, check=False)
        subprocess.run([str(binaries.binary("helm")), "uninstall", RELEASE, "-n", namespace],
                       env=kube_cluster.env(), capture_output=True, timeout=120)
        delete_volumes(kube_api, volumes)
