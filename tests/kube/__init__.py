"""The Kubernetes test harness: a real local control plane and the tools around it.

Used by tests/cluster, tests/chart, tests/route, tests/bench and the FerretDB fixture.

* ``tests.kube.localcluster`` - build the pinned Go binaries (``versions.env``) and run
  etcd, kube-apiserver, controller-manager, scheduler and kwok (:class:`LocalCluster`);
  standard library only, so ``tests/cluster/build-binaries`` and ``local-cluster`` run
  without the venv.
* ``tests.kube.helpers`` - :func:`wait_for`, the in-process :class:`KopfOperator`,
  ServiceAccount kubeconfigs, the skip-or-fail policy (:func:`importorskip`,
  :func:`require_cluster`).
* ``tests.kube.operator_fixtures`` - the ChatbotModel CRD, example, RBAC file and
  Gateway API CRDs (needs ``kubernetes`` and ``pyyaml``).
* ``tests.kube.rbac_audit`` - which API calls an account made, from the audit log.
* ``tests.kube.helm`` - the helm binary, ``helm template`` parsed.

The names below are the harness's public API; the pytest fixtures that wrap them
(``kube_cluster``, ``namespace``, ``kopf_operator``, ``sa_kubeconfig``) live in
tests/cluster/conftest.py.
"""

from tests.kube.helpers import (
    KopfOperator,
    WaitTimeout,
    api_client,
    connection_info,
    importorskip,
    require_cluster,
    service_account_kubeconfig,
    wait_for,
)
from tests.kube.localcluster import ClusterError, LocalCluster

__all__ = [
    "ClusterError",
    "KopfOperator",
    "LocalCluster",
    "WaitTimeout",
    "api_client",
    "connection_info",
    "importorskip",
    "require_cluster",
    "service_account_kubeconfig",
    "wait_for",
]
