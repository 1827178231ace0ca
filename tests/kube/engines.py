"""The autoscaling engines beside the real node: Prometheus and KEDA, as a cluster runs them.

The node tests prove that a persona grows with its load through the engines people run,
not through a scaler of our own. :class:`Engines` starts, on this host and against the
local API server (``controlplane.py``, ``realnode.py``):

* **Prometheus** (``build-binaries prometheus``), scraping the persona pods as the chart's
  PodMonitor describes them: :func:`scrape_config` turns the rendered PodMonitor into the
  scrape config prometheus-operator would generate from it (``kubernetes_sd_configs`` role
  ``pod``, its selector, port, path and relabelings; the target labels the operator adds).
  prometheus-operator itself is not run. Prometheus reaches the pod IPs from the host over
  the node's bridge, as Traefik does (the release's NetworkPolicies admit the bridge's
  address).
* **KEDA** (``build-binaries keda``): its CRDs, its operator and its external-metrics API
  server (``keda-adapter``), registered as the APIService ``v1beta1.external.metrics.k8s.io``
  for the kube-controller-manager's HPA controller. The API server reaches the adapter
  through the aggregation layer (front-proxy client certificate, requestheader
  authentication; ``--enable-aggregator-routing``: to the Endpoints' address, the node IP,
  since the adapter is a host process); operator and adapter talk gRPC over mutual TLS with
  a certificate from the cluster's CA. ScaledObjects point their Prometheus trigger at
  :attr:`Engines.prometheus_url`.

The processes are the cluster's (tracked PIDs, parent-death signal): they die with the
test session like the node's, and :meth:`Engines.down` stops them earlier.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

from tests.kube import binaries, controlplane, pki
from tests.support.ports import free_port

KEDA_NAMESPACE = "keda"
METRICS_APISERVER = "keda-metrics-apiserver"
EXTERNAL_METRICS_APISERVICE = "v1beta1.external.metrics.k8s.io"
# Scrape often: the tests and the KEDA trigger see a queue within seconds (the chart's
# PodMonitor says 15s by default).
SCRAPE_INTERVAL = "2s"


def _meta_label(name: str) -> str:
    """The meta label kubernetes_sd gives a pod label."""
    return "__meta_kubernetes_pod_label_" + "".join(c if c.isalnum() else "_" for c in name)


def _present(name: str) -> str:
    return "__meta_kubernetes_pod_labelpresent_" + "".join(
        c if c.isalnum() else "_" for c in name)


def _relabeling(r: dict) -> dict:
    """A PodMonitor relabeling (camelCase) as Prometheus' relabel_config."""
    keys = {"sourceLabels": "source_labels", "targetLabel": "target_label",
            "separator": "separator", "regex": "regex", "replacement": "replacement",
            "modulus": "modulus"}
    out = {keys[k]: v for k, v in r.items() if k in keys}
    if "action" in r:
        out["action"] = r["action"].lower()
    return out


def scrape_config(pod_monitor: dict, kubeconfig: Path, interval: str = SCRAPE_INTERVAL,
                  endpoint: int = 0) -> dict:
    """The scrape config prometheus-operator generates from a PodMonitor (its
    ``podMetricsEndpoints[endpoint]``): ``kubernetes_sd_configs`` role ``pod`` in the
    selected namespaces, keep the pods its selector selects, their container port of the
    endpoint's name, not finished; target labels ``namespace``, ``container``, ``pod``,
    ``endpoint`` and ``job`` (``<namespace>/<PodMonitor name>``), then the endpoint's own
    relabelings. ``interval`` replaces the endpoint's (the tests want seconds)."""
    spec = pod_monitor["spec"]
    ep = spec["podMetricsEndpoints"][endpoint]
    ns_sel = spec.get("namespaceSelector") or {}
    sd: dict = {"role": "pod", "kubeconfig_file": str(kubeconfig)}
    if not ns_sel.get("any"):
        sd["namespaces"] = {"names": ns_sel.get("matchNames")
                            or [pod_monitor["metadata"]["namespace"]]}
    selector = spec.get("selector") or {}
    relabel = [{"source_labels": [_meta_label(k)], "regex": v, "action": "keep"}
               for k, v in (selector.get("matchLabels") or {}).items()]
    for e in selector.get("matchExpressions") or []:
        key, op = e["key"], e["operator"]
        if op in ("In", "NotIn"):
            relabel.append({"source_labels": [_meta_label(key)],
                            "regex": "(" + "|".join(e["values"]) + ")",
                            "action": "keep" if op == "In" else "drop"})
        else:  # Exists / DoesNotExist
            relabel.append({"source_labels": [_present(key)], "regex": "true",
                            "action": "keep" if op == "Exists" else "drop"})
    name = f"{pod_monitor['metadata']['namespace']}/{pod_monitor['metadata']['name']}"
    relabel += [
        {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "(Failed|Succeeded)",
         "action": "drop"},
        {"source_labels": ["__meta_kubernetes_pod_container_port_name"],
         "regex": ep["port"], "action": "keep"},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"],
         "target_label": "container"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"target_label": "endpoint", "replacement": ep["port"]},
        {"target_label": "job", "replacement": name},
        *(_relabeling(r) for r in ep.get("relabelings") or []),
    ]
    return {
        "job_name": f"podMonitor/{name}/{endpoint}",
        "honor_labels": bool(ep.get("honorLabels")),
        "scrape_interval": interval,
        "scrape_timeout": interval,
        "metrics_path": ep.get("path", "/metrics"),
        "scheme": ep.get("scheme", "http"),
        "kubernetes_sd_configs": [sd],
        "relabel_configs": relabel,
    }


class EngineError(RuntimeError):
    pass


class Engines:
    """Prometheus and KEDA for a cluster with a real node."""

    def __init__(self, cluster: controlplane.LocalCluster, node_ip: str, pod_monitor: dict):
        self.cluster = cluster
        self.node_ip = node_ip
        self.pod_monitor = pod_monitor
        self.dir = cluster.dir / "engines"
        self.names: list[str] = []
        self.prometheus_url = ""

    # ---------------------------------------------------------------- processes
    def _spawn(self, name: str, argv: list[str], env: dict | None = None) -> None:
        # Each argv names a file in the cluster's directory (the cluster's PID-reuse guard).
        assert str(self.cluster.dir) in " ".join(argv), argv
        self.cluster._spawn(name, argv, die_with_parent=True,
                            env={**os.environ, **(env or {})})
        self.names.append(name)

    def _wait(self, what: str, cond, timeout: float, *procs: str) -> None:
        self.cluster._wait(what, cond, timeout, procs)

    def up(self, *, keda: bool = True, timeout: float = 120, progress=None) -> Engines:
        """Prometheus, then (``keda``) KEDA."""
        self.up_prometheus(timeout=timeout, progress=progress)
        if keda:
            self.up_keda(timeout=timeout, progress=progress)
        return self

    def _check_built(self, *names: str) -> None:
        missing = binaries.missing_components(names)
        if missing:
            raise EngineError(f"binaries missing for {', '.join(missing)}: run "
                              f"{binaries.BUILD_COMMAND} {' '.join(missing)}")

    def up_prometheus(self, *, timeout: float = 120, progress=None) -> None:
        self._check_built("prometheus")
        self.dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self._start_prometheus(timeout)
        (progress or print)(f"Prometheus up on {self.prometheus_url} "
                            f"({time.monotonic() - started:.1f}s)")

    def up_keda(self, *, timeout: float = 120, progress=None) -> None:
        self._check_built("keda")
        self.dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self._start_keda(timeout)
        (progress or print)(f"KEDA operator and metrics apiserver up, "
                            f"{EXTERNAL_METRICS_APISERVICE} Available "
                            f"({time.monotonic() - started:.1f}s)")

    def remove_keda(self, timeout: float = 120) -> None:
        """Take KEDA out of the cluster again, for the tests after these: its CRDs while its
        operator still runs (it removes its finalizers from the ScaledObjects), then the
        APIService (an unavailable aggregated API stalls discovery, and namespace deletion
        with it) and what was made for it; its processes stop with :meth:`down`."""
        c, ns = self.cluster, KEDA_NAMESPACE
        subprocess.run(
            [str(binaries.binary("kubectl")), "delete", "--ignore-not-found", "--wait",
             f"--timeout={int(timeout)}s", "-f", str(binaries.binary("keda-crds.yaml"))],
            capture_output=True, text=True, timeout=timeout + 30,
            env={**os.environ, "KUBECONFIG": str(c.kubeconfig)})
        for path in (f"/apis/apiregistration.k8s.io/v1/apiservices/{EXTERNAL_METRICS_APISERVICE}",
                     "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/"
                     "keda-hpa-controller-external-metrics",
                     "/apis/rbac.authorization.k8s.io/v1/clusterroles/keda-external-metrics-reader",
                     f"/api/v1/namespaces/{ns}"):
            c.api("DELETE", path)

    def down(self, timeout: float = 10) -> None:
        """Stop the engines' processes (the cluster's ``down`` would too, at its end)."""
        state = self.cluster._load_state()
        pids = state.get("pids", {})
        for name in reversed(self.names):
            pid = pids.pop(name, None)
            if pid is None:
                continue
            proc = self.cluster._procs.pop(name, None)
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, sig)
                if proc is None:
                    break
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=wait)
                    break
        self.cluster._save_state(state)
        self.names.clear()

    # ---------------------------------------------------------------- Prometheus
    def _start_prometheus(self, timeout: float) -> None:
        port = free_port()
        config = {"global": {"scrape_interval": SCRAPE_INTERVAL,
                             "evaluation_interval": SCRAPE_INTERVAL},
                  "scrape_configs": [scrape_config(self.pod_monitor, self.cluster.kubeconfig)]}
        path = self.dir / "prometheus.yml"
        path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML
        self._spawn("prometheus", [
            str(binaries.binary("prometheus")), f"--config.file={path}",
            f"--storage.tsdb.path={self.dir / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=2h", "--log.level=warn",
        ])
        self.prometheus_url = f"http://127.0.0.1:{port}"
        self._wait("Prometheus /-/ready", lambda: _http_status(
            self.prometheus_url + "/-/ready") == 200, timeout, "prometheus")

    def query(self, promql: str, at: float | None = None) -> list[dict]:
        """An instant query's result vector (raises naming the error if Prometheus refuses)."""
        params = {"query": promql, **({"time": str(at)} if at else {})}
        return self._api("/api/v1/query", params)["result"]

    def query_range(self, promql: str, start: float, end: float, step: float = 2) -> list[dict]:
        params = {"query": promql, "start": str(start), "end": str(end), "step": str(step)}
        return self._api("/api/v1/query_range", params)["result"]

    def targets(self) -> list[dict]:
        return self._api("/api/v1/targets", {"state": "active"})["activeTargets"]

    def _api(self, path: str, params: dict) -> dict:
        url = f"{self.prometheus_url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as e:
            body = json.loads(e.read() or b"{}")
        if body.get("status") != "success":
            raise EngineError(f"Prometheus {path} {params.get('query', '')!r}: "
                              f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    # ---------------------------------------------------------------- KEDA
    def _start_keda(self, timeout: float) -> None:
        c = self.cluster
        self._install_crds()
        ns = KEDA_NAMESPACE
        c.api("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
        certs = self.dir / "keda-certs"
        certs.mkdir(exist_ok=True)
        crt, key = pki.make_host_cert(c.pki, "keda", ["127.0.0.1", self.node_ip],
                                      dns=(f"{METRICS_APISERVER}.{ns}.svc",))
        for src, dest in ((c.pki / "ca.crt", "ca.crt"), (crt, "tls.crt"), (key, "tls.key")):
            (certs / dest).write_bytes(src.read_bytes())
        grpc_port, adapter_port = free_port(), free_port()
        env = {"KUBECONFIG": str(c.kubeconfig), "WATCH_NAMESPACE": "",
               "POD_NAMESPACE": ns, "KEDA_CLUSTER_OBJECT_NAMESPACE": ns,
               "POD_NAME": "keda-operator"}
        self._spawn("keda-operator", [
            str(binaries.binary("keda")), f"--cert-dir={certs}",
            f"--metrics-service-bind-address=127.0.0.1:{grpc_port}",
            f"--metrics-bind-address=127.0.0.1:{free_port()}",
            f"--health-probe-bind-address=127.0.0.1:{free_port()}",
            "--enable-cert-rotation=false", "--enable-webhook-patching=false",
            "--enable-apiservice-patching=false", "--leader-elect=false",
            f"--ca-dir={certs}", "--zap-log-level=info",
        ], env=env)
        self._spawn("keda-adapter", [
            str(binaries.binary("keda-adapter")),
            f"--secure-port={adapter_port}", f"--bind-address={self.node_ip}",
            f"--cert-dir={certs}", f"--tls-cert-file={certs / 'tls.crt'}",
            f"--tls-private-key-file={certs / 'tls.key'}",
            f"--metrics-service-address=127.0.0.1:{grpc_port}",
            f"--port={free_port()}",
            f"--lister-kubeconfig={c.kubeconfig}",
            f"--authentication-kubeconfig={c.kubeconfig}",
            f"--authorization-kubeconfig={c.kubeconfig}",
        ], env=env)
        self._register_apiservice(adapter_port)
        self._wait(f"APIService {EXTERNAL_METRICS_APISERVICE} Available",
                   self._apiservice_available, timeout, "keda-operator", "keda-adapter")

    def _install_crds(self) -> None:
        kubectl = str(binaries.binary("kubectl"))
        proc = subprocess.run(
            [kubectl, "apply", "--server-side", "-f", str(binaries.binary("keda-crds.yaml"))],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig)})
        if proc.returncode != 0:
            raise EngineError(f"installing KEDA's CRDs failed: {proc.stderr[-2000:]}")
        for crd in ("scaledobjects.keda.sh", "triggerauthentications.keda.sh"):
            self._wait(f"CRD {crd} Established", lambda crd=crd: _established(
                self.cluster.api("GET", f"/apis/apiextensions.k8s.io/v1/"
                                 f"customresourcedefinitions/{crd}")[1]), 60)

    def _register_apiservice(self, port: int) -> None:
        c, ns = self.cluster, KEDA_NAMESPACE
        # The HPA controller (its own ServiceAccount: --use-service-account-credentials)
        # reads external metrics, as KEDA's chart grants it.
        c.api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", {
            "metadata": {"name": "keda-external-metrics-reader"},
            "rules": [{"apiGroups": ["external.metrics.k8s.io"], "resources": ["*"],
                       "verbs": ["get", "list", "watch"]}]})
        c.api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
            "metadata": {"name": "keda-hpa-controller-external-metrics"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "keda-external-metrics-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "horizontal-pod-autoscaler",
                          "namespace": "kube-system"}]})
        c.api("POST", f"/api/v1/namespaces/{ns}/services", {
            "metadata": {"name": METRICS_APISERVER},
            "spec": {"ports": [{"name": "https", "port": port, "targetPort": port}]}})
        # Endpoints (the controller-manager mirrors them into an EndpointSlice): the
        # aggregator dials the address behind the Service, the node IP.
        status, resp = c.api("POST", f"/api/v1/namespaces/{ns}/endpoints", {
            "metadata": {"name": METRICS_APISERVER},
            "subsets": [{"addresses": [{"ip": self.node_ip}],
                         "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]})
        if status not in (200, 201):
            raise EngineError(f"Endpoints {ns}/{METRICS_APISERVER}: {status} {resp}")
        ca = base64.b64encode((c.pki / "ca.crt").read_bytes()).decode()
        status, resp = c.api("POST", "/apis/apiregistration.k8s.io/v1/apiservices", {
            "metadata": {"name": EXTERNAL_METRICS_APISERVICE},
            "spec": {"service": {"namespace": ns, "name": METRICS_APISERVER, "port": port},
                     "group": "external.metrics.k8s.io", "version": "v1beta1",
                     "caBundle": ca, "groupPriorityMinimum": 100, "versionPriority": 100}})
        if status not in (200, 201):
            raise EngineError(f"registering {EXTERNAL_METRICS_APISERVICE}: {status} {resp}")

    def _apiservice_available(self) -> bool:
        _, svc = self.cluster.api(
            "GET", f"/apis/apiregistration.k8s.io/v1/apiservices/{EXTERNAL_METRICS_APISERVICE}")
        conds = {c["type"]: c for c in (svc.get("status") or {}).get("conditions", [])}
        return conds.get("Available", {}).get("status") == "True"


def _established(crd: dict) -> bool:
    return any(c["type"] == "Established" and c["status"] == "True"
               for c in (crd.get("status") or {}).get("conditions", []))


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
