"""``kind create cluster`` on the locally assembled node image, and ``kind delete cluster``.

What a kind user gets before installing anything: the node Ready, the control plane,
kube-proxy and CoreDNS running from the images preloaded under kubeadm's names, the default
StorageClass provisioning a volume for a pod that resolves a Service name; then the cluster
deleted with no container, volume or network of it left in the engine.
"""

from __future__ import annotations

import json
import time

from tests.kind import engine, nodeimage
from tests.kind.cluster import PLAIN_CONFIG, KindCluster
from tests.kube.helpers import wait_for

PROBE = """apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: probe}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 16Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: probe}
spec:
  restartPolicy: Never
  containers:
  - name: probe
    image: IMAGE
    imagePullPolicy: Never
    command: [sh, -c, "getent hosts kubernetes.default && echo ok > /data/ok && cat /data/ok"]
    volumeMounts: [{name: data, mountPath: /data}]
  volumes:
  - name: data
    persistentVolumeClaim: {claimName: probe}
"""


def _pods(cluster: KindCluster, ns: str) -> dict[str, str]:
    """Pod name -> phase, or "Ready" for a running pod whose containers are all ready."""
    items = json.loads(cluster.kubectl("get", "pods", "-n", ns, "-o", "json").stdout)["items"]
    out = {}
    for p in items:
        phase = p["status"].get("phase", "")
        ready = [c.get("ready") for c in p["status"].get("containerStatuses", [])]
        out[p["metadata"]["name"]] = "Ready" if phase == "Running" and all(ready) else phase
    return out


def test_kind_cluster_runs_pods_and_is_deleted_cleanly(kind_engine, tmp_path):
    started = time.monotonic()
    image, steps = nodeimage.build_node_image()
    built_s = time.monotonic() - started
    cluster = KindCluster("chatbot-check", image, tmp_path, PLAIN_CONFIG)
    try:
        cluster.create()
        wait_for(lambda: "True" in cluster.kubectl(
            "get", "nodes", "-o", "jsonpath={.items[*].status.conditions[?(@.type=='Ready')]"
            ".status}", check=False).stdout, timeout=240, desc="the kind node Ready")
        wait_for(lambda: (p := _pods(cluster, "kube-system")) and all(
            v == "Ready" for v in p.values()) and any(k.startswith("coredns") for k in p),
            timeout=300, desc="kube-system pods Ready")
        cluster.kubectl("apply", "-f", "-",
                        input=PROBE.replace("IMAGE", nodeimage.helper_image()))
        wait_for(lambda: _pods(cluster, "default").get("probe") in ("Succeeded", "Failed"),
                 timeout=240, desc="the probe pod done")
        logs = cluster.kubectl("logs", "probe").stdout
        assert _pods(cluster, "default")["probe"] == "Succeeded", logs
        assert logs.strip().endswith("ok"), logs
    except Exception:
        cluster.logs(tmp_path / "kind-logs")
        raise
    finally:
        cluster.delete()
    print(f"\nkind node image: {built_s:.0f} s ({steps or 'cached'}); "
          f"kind create cluster: {cluster.created_s or 0:.0f} s")
    left = engine.docker("ps", "-a", "--filter", f"label={engine.KIND_LABEL}=chatbot-check",
                         "-q").stdout.split()
    assert not left, f"containers left: {left}"
    volumes = engine.docker("volume", "ls", "-q", "--filter", "dangling=true").stdout.split()
    assert not volumes, f"volumes left: {volumes}"
