#!/usr/bin/env python3
"""The operator at scale on the local control plane: N ChatbotModels in M namespaces.

Starts the local cluster (tests/kube/controlplane.py: kube-apiserver with its audit log,
controller-manager, scheduler, kwok's fake GPU nodes), runs the operator as its own process
(`kopf run -A -m chatbot_operator.handlers`) under a ServiceAccount token bound to the
chart's RBAC, creates the resources (the example, with fetch Jobs, on the cpu profile and
without a route: see _body) and prints:

- the time until all are Ready;
- the operator's API calls per resource from create to Ready (audit log), by verb;
- the operator's peak RSS (VmHWM);
- reconcile latency p50/p95 after a spec change (patch -> status.observedGeneration);
- after a restart of the operator with nothing changed: its calls and writes (should be 0).

    .venv/bin/python tests/bench/bench_operator_scale.py [--resources 50] [--namespaces 10]

Needs the binaries of tests/kube/build-binaries. Not part of the test suite (about 2-4
minutes on two cores for 50 resources).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import kubernetes  # noqa: E402

from tests.kube import api_client, controlplane, rbac_audit, service_account_kubeconfig  # noqa: E402
from tests.kube.operator_fixtures import (  # noqa: E402
    GROUP,
    PLURAL,
    VERSION,
    example,
    install_crd,
    operator_cluster_role,
)

WRITES = ("create", "patch", "update", "delete", "deletecollection")


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class OperatorProcess:
    def __init__(self, kubeconfig: Path, log: Path):
        env = {**os.environ, "KUBECONFIG": str(kubeconfig),
               "CHATBOT_OPERATOR_FETCH_IMAGE": "chatbot-operator:bench"}
        self.log = open(log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kopf", "run", "--standalone", "--all-namespaces",
             "-m", "chatbot_operator.handlers"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent)
        self.peak_rss_kib = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_rss_kib = max(self.peak_rss_kib, int(line.split()[1]))

    def stop(self) -> None:
        self._stop.set()
        self._sampler.join()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def _body(name: str) -> dict:
    """The example on the cpu profile without requests and without a route: kwok's three
    fake nodes have one GPU each (50 resources could not all be scheduled on them) and 110
    pod slots (two persona pods per resource fit, a not-found pod each would not)."""
    body = example(name)
    for persona in ("office", "character"):
        body["spec"][persona].update(gpuProfile="cpu", resources={})
    body["spec"]["route"] = {"kind": "None"}
    return body


def _phases(custom, names: list[tuple[str, str]]) -> dict[tuple[str, str], dict]:
    out = {}
    for item in custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]:
        key = (item["metadata"]["namespace"], item["metadata"]["name"])
        if key in names:
            out[key] = item
    return out


def _wait_all(custom, names, pred, timeout: float, what: str) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        items = _phases(custom, names)
        done = sum(1 for k in names if k in items and pred(items[k]))
        if done == len(names):
            return time.monotonic() - began
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}: {done}/{len(names)}")


def _by_verb(calls) -> str:
    counts: dict[str, int] = {}
    for c in calls:
        counts[f"{c.verb} {c.resource}"] = counts.get(f"{c.verb} {c.resource}", 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(resources: int, namespaces: int, workdir: Path) -> None:
    cluster = controlplane.LocalCluster(workdir / "cluster")
    kubeconfig = cluster.up(die_with_parent=True)
    operator = None
    try:
        api = api_client(kubeconfig)
        core = kubernetes.client.CoreV1Api(api)
        custom = kubernetes.client.CustomObjectsApi(api)
        install_crd(api)
        nss = [f"bench-{i}" for i in range(namespaces)]
        for ns in nss:
            core.create_namespace({"metadata": {"name": ns}})
        role = operator_cluster_role(api, f"chatbot-operator-{secrets.token_hex(3)}")
        sa_config, _ = service_account_kubeconfig(kubeconfig, nss[0], "chatbot-operator",
                                                  workdir / "operator.kubeconfig",
                                                  cluster_roles=[role])
        names = [(nss[i % namespaces], f"cbm-{i}") for i in range(resources)]
        for ns, name in names:  # static provisioning: the cluster has no provisioner
            for persona in ("office", "character"):
                core.create_persistent_volume({
                    "metadata": {"name": f"{ns}-{name}-{persona}"},
                    "spec": {"capacity": {"storage": "20Gi"}, "accessModes": ["ReadWriteOnce"],
                             "hostPath": {"path": f"/tmp/{ns}-{name}-{persona}"},
                             "storageClassName": "",
                             "claimRef": {"namespace": ns,
                                          "name": f"{name}-{persona}-models"}}})
        log = cluster.audit_log
        operator = OperatorProcess(sa_config, workdir / "operator.log")
        time.sleep(3)  # kopf's watches are up

        start = rbac_audit.offset(log)
        for ns, name in names:
            custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, _body(name))
        took = _wait_all(custom, names, lambda o: o.get("status", {}).get("phase") == "Ready",
                         600, "all Ready")
        time.sleep(2)
        calls = [c for c in rbac_audit.calls_by(log, "chatbot-operator", start)
                 if c.namespace in nss and c.verb != "watch"]
        print(f"{resources} ChatbotModels in {namespaces} namespaces: all Ready in {took:.1f} s")
        print(f"API calls create -> Ready: {len(calls)} = {len(calls) / resources:.1f} per "
              f"resource ({_by_verb(calls)})")

        quiet_from = rbac_audit.offset(log)
        time.sleep(10)
        quiet = [c for c in rbac_audit.calls_by(log, "chatbot-operator", quiet_from)
                 if c.verb != "watch"]
        print(f"steady state, 10 s: {len(quiet)} API calls")

        # Reconcile latency: a spec change (office replicas 1 -> 2), patch -> observed.
        seen: dict[tuple[str, str], float] = {}
        observed: dict[tuple[str, str], float] = {}
        sent: dict[tuple[str, str], float] = {}
        stop = threading.Event()

        def watch() -> None:
            w = kubernetes.watch.Watch()
            for ev in w.stream(custom.list_cluster_custom_object, GROUP, VERSION, PLURAL,
                               timeout_seconds=300):
                obj = ev["object"]
                key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
                st = obj.get("status") or {}
                current = key in sent and st.get("observedGeneration") == \
                    obj["metadata"]["generation"]
                if current and key not in observed:
                    observed[key] = time.monotonic()  # the operator's pass for the change
                if current and key not in seen and st.get("officeReady") == "2/2":
                    seen[key] = time.monotonic()  # ... and the cluster's rollout
                if stop.is_set() or len(seen) == len(names):
                    w.stop()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        time.sleep(1)
        change_from = rbac_audit.offset(log)
        for ns, name in names:
            sent[(ns, name)] = time.monotonic()
            custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name,
                                                  {"spec": {"office": {"replicas": 2}}})
        watcher.join(timeout=300)
        stop.set()
        lat = [seen[k] - sent[k] for k in seen]
        first = [observed[k] - sent[k] for k in observed]
        print(f"spec change until the operator's pass for it (status.observedGeneration), "
              f"{len(first)}/{resources}: p50 {statistics.median(first):.2f} s, "
              f"p95 {_pct(first, 0.95):.2f} s")
        change_calls = [c for c in rbac_audit.calls_by(log, "chatbot-operator", change_from)
                        if c.verb != "watch"]
        print(f"spec change (office replicas 1 -> 2) until status shows 2/2 ready, "
              f"{len(lat)}/{resources}: p50 {statistics.median(lat):.2f} s, "
              f"p95 {_pct(lat, 0.95):.2f} s, max {max(lat):.2f} s; "
              f"{len(change_calls) / resources:.1f} API calls per resource")
        print(f"operator peak RSS: {operator.peak_rss_kib / 1024:.0f} MiB")

        operator.stop()
        restart_from = rbac_audit.offset(log)
        operator = OperatorProcess(sa_config, workdir / "operator.log")
        time.sleep(20)
        after = [c for c in rbac_audit.calls_by(log, "chatbot-operator", restart_from)
                 if c.verb != "watch"]
        writes = [c for c in after if c.verb in WRITES]
        print(f"restart, nothing changed, 20 s: {len(after)} API calls "
              f"({len(after) / resources:.1f} per resource: {_by_verb(after)}), "
              f"{len(writes)} writes {_by_verb(writes)}")
    finally:
        if operator is not None:
            operator.stop()
        cluster.down(remove=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resources", type=int, default=50)
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    try:
        run(args.resources, args.namespaces, workdir)
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work directory: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
