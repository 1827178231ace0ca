"""Calm reconciles, counted by the API server: the operator's calls for one ChatbotModel from
create to Ready, none while nothing changes, and no writes after a restart.

The numbers come from kube-apiserver's audit log (every call by the operator's
ServiceAccount, rbac_audit.py), so they count kopf's own calls too. Watches are long-lived
streams opened once per kind, not per event: they are listed apart.
"""

from __future__ import annotations

import time

import pytest

from tests.kube import importorskip

kubernetes = importorskip("kubernetes")
importorskip("kopf")

from tests.cluster.test_cluster_operator import crd, operator, volumes  # noqa: E402, F401
from tests.kube import rbac_audit, wait_for  # noqa: E402
from tests.kube.operator_fixtures import GROUP, PLURAL, VERSION, example, get_cbm  # noqa: E402

pytestmark = pytest.mark.cluster

CREATE_TO_READY_MAX = 60
WRITES = ("create", "patch", "update", "delete", "deletecollection")


def _ready(api, ns, name="chatbot"):
    obj = get_cbm(api, ns, name)
    return obj if (obj or {}).get("status", {}).get("phase") == "Ready" else None


def _calls(log, since: int, namespace: str) -> list[rbac_audit.Call]:
    return [c for c in rbac_audit.calls_by(log, "chatbot-operator", since)
            if c.namespace == namespace and c.verb != "watch"]


def _summary(calls: list[rbac_audit.Call]) -> str:
    counts: dict[str, int] = {}
    for c in calls:
        key = f"{c.verb} {c.resource}"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def test_create_to_ready_is_cheap_steady_state_is_silent_and_a_restart_writes_nothing(
        kube_cluster, kube_api, namespace, operator, volumes, fake_gpu_nodes):  # noqa: F811
    if kube_cluster.local is None:
        pytest.skip("only the local control plane writes an audit log")
    log = kube_cluster.local.audit_log
    custom = kubernetes.client.CustomObjectsApi(kube_api)
    with operator():
        start = rbac_audit.offset(log)
        began = time.monotonic()
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, example())
        wait_for(lambda: _ready(kube_api, namespace), timeout=120, interval=0.1, desc="Ready")
        took = time.monotonic() - began
        time.sleep(1.0)  # the pass that wrote Ready, and the events it caused, settle
        to_ready = _calls(log, start, namespace)
        steady_from = rbac_audit.offset(log)
        time.sleep(6)
        steady = _calls(log, steady_from, namespace)
    print(f"\ncreate -> Ready: {took:.1f} s, {len(to_ready)} API calls "
          f"({_summary(to_ready)})")
    print(f"steady state (6 s): {len(steady)} API calls {_summary(steady)}")
    assert len(to_ready) <= CREATE_TO_READY_MAX, _summary(to_ready)
    assert steady == [], _summary(steady)

    restart_from = rbac_audit.offset(log)
    with operator():
        time.sleep(6)  # the resume pass, and anything it would set off
        assert _ready(kube_api, namespace)
    after = _calls(log, restart_from, namespace)
    writes = [c for c in after if c.verb in WRITES]
    print(f"restart: {len(after)} API calls, {len(writes)} writes ({_summary(after)})")
    assert writes == [], _summary(writes)
