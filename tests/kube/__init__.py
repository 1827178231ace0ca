"""The Kubernetes test harness: a real local control plane, a real node, and the tools
around them. Its scripts (``build-binaries``, ``local-cluster``) and README are in this
directory too. Used by tests/cluster, tests/node, tests/chart, tests/route, tests/bench and
the FerretDB fixture.

By job:

* ``binaries`` - the pinned Go programs (``versions.env``): where they are cached, how
  they are built (``build-binaries``; ``gomod_patches`` for Traefik), module zips.
* ``pki`` - the cluster's CA, certificates and kubeconfigs (``openssl``).
* ``controlplane`` - :class:`LocalCluster`: etcd, kube-apiserver, controller-manager,
  scheduler and kwok's fake nodes on loopback.
* ``keeper`` - ``local-cluster up``'s detached keeper process.
* ``realnode`` - a real node beside the control plane (containerd, kubelet, kube-proxy,
  CoreDNS, Traefik...), for tests/node and ``local-cluster up --node``.
* ``helpers`` - :func:`wait_for`, API clients, ServiceAccount kubeconfigs, the
  skip-or-fail policy (:func:`importorskip`, :func:`require_cluster`).
* ``operator_runner`` - :class:`KopfOperator`, a kopf operator in-process
  (``kopf.testing.KopfRunner``) under a given kubeconfig.
* ``operator_fixtures`` - the ChatbotModel CRD, example, RBAC file and Gateway API CRDs.
* ``rbac_audit`` - which API calls an account made, from the audit log.
* ``helm`` - the helm binary, ``helm template`` parsed.

``binaries``, ``pki``, ``controlplane``, ``keeper`` and ``realnode`` use the standard
library only, so that the scripts run without the project's venv; this package's
``__init__`` therefore imports nothing that needs kubernetes or kopf until used.
The pytest fixtures that wrap the harness (``kube_cluster``, ``namespace``,
``kopf_operator``, ``sa_kubeconfig``) live in tests/cluster/conftest.py.
"""

from tests.kube.controlplane import ClusterError, LocalCluster
from tests.kube.helpers import (
    WaitTimeout,
    api_client,
    importorskip,
    require_cluster,
    service_account_kubeconfig,
    wait_for,
)
from tests.kube.operator_runner import KopfOperator, connection_info

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
