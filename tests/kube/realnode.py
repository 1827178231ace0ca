"""A real node for the local cluster: containers run, volumes are provisioned, a route on 8001.

Beside :class:`controlplane.LocalCluster`'s control plane, the way Kubernetes'
``hack/local-up-cluster.sh`` adds one, :class:`RealNode` starts on this host:

* **containerd** (Debian's 1.6, its CRI plugin) with its own root, state and socket under
  the cluster directory, runc, and Debian's ``containernetworking-plugins`` (a bridge
  ``chatbot0`` with host-local IPAM on ``POD_CIDR``, masquerading to the outside);
* **kubelet** and **kube-proxy** (iptables mode) built from the same ``k8s.io/kubernetes``
  module as the API server (``build-binaries kube-node``);
* **kube-router**'s firewall alone, the NetworkPolicy engine (iptables chains and ipsets);
* **CoreDNS** (``cluster.local``) on the node IP, the pods' ``clusterDNS``;
* **local-path-provisioner** (rancher), the default StorageClass ``local-path``;
* **Traefik v3** on port 8001, the route's controller: its ``kubernetesIngressNGINX``
  provider serves the operator's Ingress (IngressClass ``nginx``) and its
  ``kubernetesGateway`` provider the HTTPRoute (GatewayClass ``traefik``).

DNS, proxy, provisioner and route controller run as host processes with the admin
kubeconfig (in a real cluster they would be pods under their own RBAC). Images reach the
runtime by ``ctr images import`` (no registry is reachable): the pause image is written
here as an OCI archive around a static 10-line C program, as Kubernetes'
``build/pause/linux/pause.c``; others come from ``docker save``.

Settings these machines need, and why:

* ``failCgroupV1: false`` and ``cgroupDriver: cgroupfs``: the hosts are on cgroup v1;
* ``restrict_oom_score_adj = true`` for containerd: the sandbox refuses every negative
  ``oom_score_adj``, and runc then dies with "can't get final child's PID from pipe";
* a node IP that is not loopback, which logs and exec need, and through which the pods
  reach the API server (it listens on all addresses in this mode) and CoreDNS.

Everything dies with the cluster: the processes are the cluster's (tracked PIDs, process
groups, parent-death signal); containers are killed through the kubelet's pod cgroups,
and :func:`reap` clears what a SIGKILLed run left behind (shims, containers, mounts, the
bridge, kube-proxy's and kube-router's iptables chains, kube-router's ipsets) before the
next start.
"""

from __future__ import annotations

import contextlib
import datetime
import gzip
import hashlib
import io
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

from tests.kube import binaries, controlplane, pki
from tests.support.ports import free_port

NODE_NAME = "node-1"
POD_CIDR = "10.88.0.0/16"
BRIDGE = "chatbot0"
# The bridge's own address: where the host's processes (Traefik) reach the pods from.
BRIDGE_IP = "10.88.0.1"
CNI_BIN = Path("/usr/lib/cni")
PAUSE_IMAGE = "chatbot-local/pause:3.10"
ROUTE_PORT = 8001
LOCAL_PATH_NAMESPACE = "local-path-storage"
STORAGE_CLASS = "local-path"
CGROUP_ROOT = Path("/sys/fs/cgroup")
KUBEPODS = "kubepods"
# kube-router's NetworkPolicy sets (pkg/controllers/netpol: kubeSourceIPSetPrefix and
# kubeDestinationIPSetPrefix).
KUBE_ROUTER_IPSETS = ("KUBE-SRC-", "KUBE-DST-")
KUBE_ROUTER_FORWARD = "KUBE-ROUTER-FORWARD"

PAUSE_C = r"""
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
static void reap(int s) { (void)s; while (waitpid(-1, 0, WNOHANG) > 0) {} }
static void quit(int s) { (void)s; _exit(0); }
int main(void) {
  signal(SIGINT, quit); signal(SIGTERM, quit); signal(SIGCHLD, reap);
  for (;;) pause();
}
"""


class NodeError(RuntimeError):
    pass


def containerd_root() -> Path:
    return binaries.cache_root() / "node-containerd"


def node_ip() -> str:
    """The host's primary IPv4 address (the source of its default route)."""
    out = subprocess.run(["ip", "-4", "-o", "route", "get", "192.0.2.255"],
                         capture_output=True, text=True, check=True).stdout.split()
    ip = out[out.index("src") + 1]
    if ip.startswith("127."):
        raise NodeError(f"no non-loopback IPv4 address (got {ip}); a real node needs one")
    return ip


def missing_prerequisites() -> list[str]:
    """What this host lacks for a real node (empty when it can run one)."""
    missing = [f"{c} (apt-get install containerd runc)" for c in ("containerd", "runc", "ctr")
               if shutil.which(c) is None]
    if not (CNI_BIN / "bridge").exists():
        missing.append("CNI plugins (apt-get install containernetworking-plugins)")
    for tool in ("iptables", "ipset", "conntrack", "gcc", "ip"):
        if shutil.which(tool) is None:
            missing.append(tool)
    if os.geteuid() != 0:
        missing.append("root")
    missing += [f"{c} (tests/kube/build-binaries {c})"
                for c in binaries.missing_components(binaries.NODE_COMPONENTS)]
    return missing


# --------------------------------------------------------------------------- images

def _tar_bytes(files: dict[str, tuple[bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def oci_archive(ref: str, files: dict[str, tuple[bytes, int]], entrypoint: list[str],
                user: str = "65535:65535") -> bytes:
    """An OCI image layout tar of one layer holding ``files`` (path -> (bytes, mode))."""
    layer = _tar_bytes(files)
    layer_gz = gzip.compress(layer, mtime=0)
    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return digest

    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": entrypoint, "User": user},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": blob(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": blob(layer_gz), "size": len(layer_gz)}],
    }).encode()
    index = json.dumps({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": blob(manifest), "size": len(manifest),
                       "annotations": {"org.opencontainers.image.ref.name": ref,
                                       "io.containerd.image.name": ref}}],
    }).encode()
    files_out = {"oci-layout": (b'{"imageLayoutVersion":"1.0.0"}', 0o644),
                 "index.json": (index, 0o644)}
    for digest, data in blobs.items():
        files_out[f"blobs/sha256/{digest.split(':', 1)[1]}"] = (data, 0o644)
    return _tar_bytes(files_out)


def pause_binary(workdir: Path) -> bytes:
    src = workdir / "pause.c"
    src.write_text(PAUSE_C)
    out = workdir / "pause"
    subprocess.run(["gcc", "-Os", "-static", "-o", str(out), str(src)], check=True,
                   capture_output=True)
    subprocess.run(["strip", str(out)], check=False, capture_output=True)
    return out.read_bytes()


# --------------------------------------------------------------------------- reaping

def _cgroup_pids(root: Path) -> set[int]:
    pids: set[int] = set()
    if not root.exists():
        return pids
    for procs in root.rglob("cgroup.procs"):
        with contextlib.suppress(OSError, ValueError):
            pids |= {int(p) for p in procs.read_text().split()}
    return pids


def _kill_pids(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _pids_mentioning(text: str) -> set[int]:
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if text.encode() in (proc / "cmdline").read_bytes():
                found.add(int(proc.name))
    return found


def _rmdir_cgroups(root: Path) -> None:
    if not root.exists():
        return
    for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            d.rmdir()
    with contextlib.suppress(OSError):
        root.rmdir()


def reap(state_dir: Path) -> None:
    """Kill and remove whatever a node rooted at ``state_dir`` left behind."""
    pod_cgroups = [c / KUBEPODS for c in CGROUP_ROOT.iterdir()] if CGROUP_ROOT.exists() else []
    for _ in range(3):
        pids = set().union(*(_cgroup_pids(c) for c in pod_cgroups)) if pod_cgroups else set()
        pids |= _pids_mentioning(str(state_dir / "node" / "containerd"))  # shims: -address <sock>
        pids.discard(os.getpid())
        if not pids:
            break
        _kill_pids(pids)
        time.sleep(0.3)
    for c in pod_cgroups:
        _rmdir_cgroups(c)
    # Mounts under the node's directories (container rootfs, pod volumes, netns).
    with contextlib.suppress(OSError):
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        ours = (str(state_dir), str(containerd_root()))
        for m in sorted((m for m in mounts if m.startswith(ours)), key=len, reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)
    subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True)
    kube_proxy = binaries.binary("kube-proxy") if not binaries.missing_components(
        ("kube-node",)) else None
    if kube_proxy:
        subprocess.run([str(kube_proxy), "--cleanup"], capture_output=True, timeout=60)
    # KUBE- covers kube-proxy's chains and kube-router's (KUBE-ROUTER-*, KUBE-NWPLCY-*,
    # KUBE-POD-FW-*); its ipsets go once no rule refers to them. Not `kube-router
    # --cleanup-config`: that also tears down IPVS services and routes, which are the host's.
    for chain in ("CNI-", "KUBE-"):
        _flush_iptables(chain)
    _destroy_ipsets(KUBE_ROUTER_IPSETS)


def _flush_iptables(prefix: str) -> None:
    """Remove the rules jumping to chains named ``prefix*`` and those chains."""
    for table in ("nat", "filter"):
        rules = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True,
                               text=True).stdout.splitlines()
        chains = [r.split()[1] for r in rules
                  if r.startswith("-N ") and r.split()[1].startswith(prefix)]
        for rule in rules:
            if rule.startswith("-A ") and f"-j {prefix}" in rule \
                    and not rule.split()[1].startswith(prefix):
                subprocess.run(["iptables", "-t", table, "-D", *shlex.split(rule)[1:]],
                               capture_output=True)
        for chain in chains:
            subprocess.run(["iptables", "-t", table, "-F", chain], capture_output=True)
        for chain in chains:
            subprocess.run(["iptables", "-t", table, "-X", chain], capture_output=True)


def _destroy_ipsets(prefixes: tuple[str, ...]) -> None:
    if shutil.which("ipset") is None:
        return
    names = subprocess.run(["ipset", "list", "-n"], capture_output=True,
                           text=True).stdout.split()
    for name in names:
        if name.startswith(prefixes):
            subprocess.run(["ipset", "destroy", name], capture_output=True)


# --------------------------------------------------------------------------- the node

class RealNode:
    """containerd + kubelet + kube-proxy + CoreDNS + local-path + Traefik for a cluster."""

    def __init__(self, cluster: controlplane.LocalCluster, name: str = NODE_NAME):
        self.cluster = cluster
        self.name = name
        self.dir = cluster.dir / "node"
        self.ip = cluster.node_ip or node_ip()
        self.sock = self.dir / "containerd" / "containerd.sock"
        # The image store outlives the cluster: a warm start finds its images there.
        self.containerd_root = containerd_root()

    # ------------------------------------------------------------- helpers
    def ctr(self, *args: str, input: bytes | None = None, timeout: float = 300) -> str:
        proc = subprocess.run(["ctr", "--address", str(self.sock), "-n", "k8s.io", *args],
                              input=input, capture_output=True, timeout=timeout)
        if proc.returncode != 0:
            raise NodeError(f"ctr {' '.join(args[:3])} failed: {proc.stderr.decode()[-2000:]}")
        return proc.stdout.decode()

    def import_archive(self, archive: bytes) -> None:
        self.ctr("images", "import", "--no-unpack", "-", input=archive)

    def load_docker_image(self, ref: str, docker: str = "docker") -> bool:
        """Copy a local Docker image into the node's runtime, unless this very image (same
        Docker image ID) is there already from an earlier run; return whether it copied."""
        image_id = subprocess.run([docker, "image", "inspect", "--format", "{{.Id}}", ref],
                                  capture_output=True, text=True, check=True).stdout.strip()
        marker = self.containerd_root / "imported" / ref.replace("/", "_").replace(":", "@")
        full = ref if "/" in ref.split(":")[0] and "." in ref.split("/")[0] else \
            "docker.io/" + ref
        if marker.is_file() and marker.read_text() == image_id and full in self.images():
            return False
        saved = subprocess.run([docker, "save", ref], capture_output=True, check=True,
                               timeout=600).stdout
        self.ctr("images", "import", "-", input=saved, timeout=600)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(image_id)
        return True

    def images(self) -> list[str]:
        return [line.split()[0] for line in self.ctr("images", "ls", "-q").splitlines()]

    def _spawn(self, name: str, argv: list[str], env: dict | None = None) -> None:
        # Each argv names a file in the cluster's directory: the cluster's guard against
        # PID reuse only counts processes whose command line mentions it.
        assert str(self.cluster.dir) in " ".join(argv), argv
        self.cluster._spawn(name, argv, die_with_parent=self._die_with_parent,
                            env={**os.environ, **env} if env else None)

    def _start_reaper(self) -> None:
        """A process that reaps the node's containers when it gets SIGTERM: from ``down``
        (it is stopped after containerd and the kubelet, having been started before them),
        or from the kernel when the process that started the node dies, even by SIGKILL."""
        root = str(Path(__file__).resolve().parents[2])
        self.cluster._spawn(
            "node-reaper", [sys.executable, "-m", "tests.kube.realnode", "reap-on-term",
                            str(self.cluster.dir)],
            die_with_parent=self._die_with_parent, death_signal=signal.SIGTERM,
            env={**os.environ, "PYTHONPATH": root})

    def _wait(self, what: str, cond, timeout: float, *procs: str) -> None:
        self.cluster._wait(what, cond, timeout, procs)

    # ------------------------------------------------------------- up
    def up(self, *, timeout: float = 180, die_with_parent: bool = True, progress=None) -> None:
        say = progress or (lambda msg: None)
        missing = missing_prerequisites()
        if missing:
            raise NodeError("this host cannot run a real node: missing " + ", ".join(missing))
        self._die_with_parent = die_with_parent
        reap(self.cluster.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self._start_reaper()
        self._start_containerd(timeout)
        say(f"containerd up ({time.monotonic() - started:.1f}s)")
        self.import_archive(oci_archive(
            "docker.io/" + PAUSE_IMAGE, {"pause": (pause_binary(self.dir), 0o755)}, ["/pause"]))
        self._start_kubelet(timeout)
        say(f"kubelet: node {self.name} Ready ({time.monotonic() - started:.1f}s)")
        self._start_kube_proxy()
        self._start_kube_router(timeout)
        self._start_coredns(timeout)
        self._start_local_path()
        self._start_traefik(timeout)
        say(f"kube-proxy, kube-router (NetworkPolicies), CoreDNS, local-path-provisioner, "
            f"Traefik on :{ROUTE_PORT} ({time.monotonic() - started:.1f}s)")

    def down(self) -> None:
        """Stop the cluster's processes, then what the runtime left (containers, mounts)."""
        self.cluster.down(remove=False)  # reaps the node too (state["node_ip"])

    def _start_containerd(self, timeout: float) -> None:
        d = self.dir / "containerd"
        (self.dir / "cni").mkdir(parents=True, exist_ok=True)
        d.mkdir(parents=True, exist_ok=True)
        cni = {
            "cniVersion": "0.4.0", "name": "chatbot-pods",
            "plugins": [
                {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": True,
                 "hairpinMode": True,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR}]],
                          "routes": [{"dst": "0.0.0.0/0"}],
                          "dataDir": str(self.dir / "cni" / "ipam")}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
                # Docker sets the FORWARD policy to DROP, and bridged pod-to-pod traffic
                # passes FORWARD (br_netfilter): the firewall plugin lets each pod's through.
                {"type": "firewall", "backend": "iptables"},
            ],
        }
        (self.dir / "cni" / "10-chatbot.conflist").write_text(json.dumps(cni, indent=2))
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        (d / "config.toml").write_text(f"""\
version = 2
root = "{self.containerd_root / 'root'}"
state = "{d / 'state'}"
[grpc]
  address = "{self.sock}"
[{cri}]
  sandbox_image = "docker.io/{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  enable_unprivileged_ports = true
  # Pods' network namespaces under the state dir (not /var/run/netns), so that the reaper's
  # unmounts free them, and their veths, after a killed run.
  netns_mounts_under_state_dir = true
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{self.dir / 'cni'}"
""")
        self._spawn("containerd", ["containerd", "--config", str(d / "config.toml")])

        def answers() -> bool:
            return self.sock.exists() and subprocess.run(
                ["ctr", "--address", str(self.sock), "version"], capture_output=True,
                timeout=5).returncode == 0

        self._wait("containerd socket", answers, timeout, "containerd")

    def _start_kubelet(self, timeout: float) -> None:
        c = self.cluster
        d = self.dir / "kubelet"
        d.mkdir(parents=True, exist_ok=True)
        kubeconfig = pki.write_kubeconfig(
            self.dir / "kubelet.kubeconfig", c.server, c.pki / "ca.crt",
            cert=c.pki / "kubelet.crt", key=c.pki / "kubelet.key", user="kubelet")
        resolv = self.dir / "resolv.conf"  # for dnsPolicy: Default; no upstream here
        resolv.write_text(f"nameserver {self.ip}\n")
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "containerRuntimeEndpoint": f"unix://{self.sock}",
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                               "x509": {"clientCAFile": str(c.pki / "ca.crt")}},
            "authorization": {"mode": "AlwaysAllow"},
            "address": self.ip,
            "port": free_port(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            "clusterDNS": [self.ip],
            "clusterDomain": "cluster.local",
            "resolvConf": str(resolv),
            "failSwapOn": False,
            "serializeImagePulls": False,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                             "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "nodeStatusReportFrequency": "10s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "5s",
            "registerWithTaints": [],
        }
        (d / "config.json").write_text(json.dumps(config, indent=2))
        self._spawn("kubelet", [
            str(binaries.binary("kubelet")),
            f"--config={d / 'config.json'}",
            f"--kubeconfig={kubeconfig}",
            f"--root-dir={d / 'root'}",
            f"--cert-dir={d / 'pki'}",
            f"--hostname-override={self.name}",
            f"--node-ip={self.ip}",
            "--node-labels=chatbot.treenut.ai/node=real",
            "--v=1",
        ])

        def ready() -> bool:
            status, node = c.api("GET", f"/api/v1/nodes/{self.name}")
            if status != 200:
                return False
            conds = {x["type"]: x["status"] for x in node.get("status", {}).get("conditions", [])}
            return conds.get("Ready") == "True"

        self._wait(f"node {self.name} Ready", ready, timeout, "containerd", "kubelet")

    def restart_kubelet(self, down_s: float = 10, timeout: float = 120) -> float:
        """Stops the kubelet (SIGTERM), leaves the node without one for ``down_s``, starts
        it again; returns the seconds from the stop until the new kubelet reported the node
        Ready (a heartbeat newer than the stop)."""
        c = self.cluster
        pid = c.running()["kubelet"]
        stopped, stopped_at = time.monotonic(), datetime.datetime.now(datetime.UTC)
        os.kill(pid, signal.SIGTERM)
        proc = c._procs.get("kubelet")
        if proc is not None:
            proc.wait(timeout=30)
        self._wait("the kubelet to exit", lambda: not c._pid_alive(pid), 30)
        time.sleep(down_s)
        self._start_kubelet(timeout)

        def heartbeat_after_stop() -> bool:
            status, node = c.api("GET", f"/api/v1/nodes/{self.name}")
            conds = {x["type"]: x for x in node.get("status", {}).get("conditions", [])} \
                if status == 200 else {}
            ready = conds.get("Ready") or {}
            beat = ready.get("lastHeartbeatTime")
            return ready.get("status") == "True" and beat is not None and \
                datetime.datetime.fromisoformat(beat.replace("Z", "+00:00")) >= \
                stopped_at.replace(microsecond=0)

        self._wait(f"node {self.name} Ready from the new kubelet", heartbeat_after_stop,
                   timeout, "kubelet")
        return time.monotonic() - stopped

    def _start_kube_proxy(self) -> None:
        cfg = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.cluster.kubeconfig)},
            "mode": "iptables",
            "clusterCIDR": POD_CIDR,
            "hostnameOverride": self.name,
            # Replies from a pod to a pod on the same bridge skip the host's conntrack
            # unless the service traffic is masqueraded to the bridge address.
            "iptables": {"masqueradeAll": True},
            "conntrack": {"maxPerCore": 0},
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            "healthzBindAddress": f"127.0.0.1:{free_port()}",
        }
        path = self.dir / "kube-proxy.json"
        path.write_text(json.dumps(cfg, indent=2))
        self._spawn("kube-proxy", [str(binaries.binary("kube-proxy")), f"--config={path}",
                                   "--v=1"])

    def _start_kube_router(self, timeout: float) -> None:
        """kube-router with only its firewall: the engine that enforces NetworkPolicies.

        kube-router v2.1.0 is the one version the module proxy serves here, and security
        advisories are reported against it: it is the test harness's policy engine, never
        shipped with the chart.

        It starts with the node, always, rather than only for the policy tests: the chart
        enables its policies by default and clusters users install on enforce them, so the
        journey and the fault tests run under them too. What they do stays allowed: the
        host's processes (Traefik, the kubelet's probes, the tests' MongoDB client) reach
        the pods through kube-router's rule that accepts traffic from the node's own
        addresses, the pods reach the host (API server, CoreDNS, the model mirror, the route
        for `helm test`) because no policy limits egress, and the services reach MongoDB as
        the policy allows.
        """
        health_port = free_port()
        self._spawn("kube-router", [
            str(binaries.binary("kube-router")),
            "--run-firewall=true", "--run-router=false", "--run-service-proxy=false",
            "--enable-cni=false",
            f"--kubeconfig={self.cluster.kubeconfig}",
            f"--hostname-override={self.name}",
            f"--service-cluster-ip-range={controlplane.SERVICE_CIDR}",
            f"--health-port={health_port}",
            "--metrics-port=0",
            # Besides the syncs that pod and policy events trigger: the CNI firewall plugin
            # puts its FORWARD jump (which accepts every pod's traffic) first when the
            # node's first pod starts, and each sync moves kube-router's back in front.
            "--iptables-sync-period=30s",
            "--v=1",
        ])

        def enforcing() -> bool:
            return forward_chain_first() == KUBE_ROUTER_FORWARD and _http_ok(
                f"http://127.0.0.1:{health_port}/healthz")

        self._wait("kube-router's firewall chains", enforcing, timeout, "kube-router")

    def _start_coredns(self, timeout: float) -> None:
        corefile = self.dir / "Corefile"
        corefile.write_text(f"""\
.:53 {{
    bind {self.ip}
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {self.cluster.kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
""")
        self._spawn("coredns", [str(binaries.binary("coredns")), "-conf", str(corefile)])

        def answers() -> bool:
            return _dns_query(self.ip, "kubernetes.default.svc.cluster.local") is not None

        self._wait("CoreDNS answering", answers, timeout, "coredns")

    def _start_local_path(self) -> None:
        c = self.cluster
        base = self.dir / "local-path"
        base.mkdir(parents=True, exist_ok=True)
        config = {"nodePathMap": [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES",
                                   "paths": [str(base)]}]}
        helper_pod = {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "helper-pod"},
            "spec": {"containers": [{"name": "helper-pod", "image": self.helper_image,
                                     "imagePullPolicy": "IfNotPresent"}]},
        }
        ns = LOCAL_PATH_NAMESPACE
        c.api("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
        c.api("POST", f"/api/v1/namespaces/{ns}/serviceaccounts",
              {"metadata": {"name": "local-path-provisioner-service-account"}})
        c.api("POST", f"/api/v1/namespaces/{ns}/configmaps", {
            "metadata": {"name": "local-path-config"},
            "data": {"config.json": json.dumps(config),
                     "setup": '#!/bin/sh\nset -eu\nmkdir -m 0777 -p "$VOL_DIR"\n',
                     "teardown": '#!/bin/sh\nset -eu\nrm -rf "$VOL_DIR"\n',
                     "helperPod.yaml": json.dumps(helper_pod)},
        })
        c.api("POST", "/apis/storage.k8s.io/v1/storageclasses", {
            "metadata": {"name": STORAGE_CLASS, "annotations": {
                "storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "rancher.io/local-path",
            "volumeBindingMode": "WaitForFirstConsumer",
            "reclaimPolicy": "Delete",
        })
        (self.dir / "local-path-config.json").write_text(json.dumps(config))
        (self.dir / "local-path-helper-pod.json").write_text(json.dumps(helper_pod))
        self._spawn("local-path-provisioner", [
            str(binaries.binary("local-path-provisioner")), "start",
            f"--kubeconfig={c.kubeconfig}", f"--namespace={ns}",
            f"--config={self.dir / 'local-path-config.json'}",
            f"--helper-pod-file={self.dir / 'local-path-helper-pod.json'}",
            f"--helper-image={self.helper_image}",
            "--configmap-name=local-path-config",
        ])

    # The helper pod runs `sh /script/setup`: any image with a shell (the service image).
    helper_image = "chatbot-local/python:3.11-bookworm"

    def _start_traefik(self, timeout: float) -> None:
        c = self.cluster
        c.api("POST", "/apis/networking.k8s.io/v1/ingressclasses", {
            "metadata": {"name": "nginx"}, "spec": {"controller": "k8s.io/ingress-nginx"}})
        ping_port = free_port()
        static = {  # Traefik's static configuration (JSON is YAML)
            "entryPoints": {"web": {"address": f":{ROUTE_PORT}"},
                            "ping": {"address": f"127.0.0.1:{ping_port}"}},
            "ping": {"entryPoint": "ping"},
            "providers": {"kubernetesIngressNGINX": {}},
            "log": {"level": "INFO", "noColor": True},
            "accessLog": {},
        }
        if c.api("GET", "/apis/gateway.networking.k8s.io/v1")[0] == 200:
            static["providers"]["kubernetesGateway"] = {}
        config = self.dir / "traefik.yaml"
        config.write_text(json.dumps(static, indent=2))
        self._spawn("traefik", [str(binaries.binary("traefik")), f"--configFile={config}"],
                    env={"KUBECONFIG": str(c.kubeconfig)})

        self._wait("Traefik /ping", lambda: _http_ok(f"http://127.0.0.1:{ping_port}/ping"),
                   timeout, "traefik")


def forward_chain_first() -> str | None:
    """The chain the filter table's FORWARD jumps to first (its first rule's target)."""
    rules = subprocess.run(["iptables", "-t", "filter", "-S", "FORWARD"], capture_output=True,
                           text=True).stdout.splitlines()
    for rule in rules:
        if rule.startswith("-A "):
            words = shlex.split(rule)
            return words[words.index("-j") + 1] if "-j" in words else None
    return None


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as r:
        return r.status == 200


def _dns_query(server: str, name: str, timeout: float = 2) -> str | None:
    """The first A record for ``name`` from ``server`` (a minimal DNS client)."""
    qid = os.getpid() & 0xFFFF
    q = qid.to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    q += b"".join(len(p).to_bytes(1, "big") + p.encode() for p in name.split(".")) + b"\x00"
    q += b"\x00\x01\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(q, (server, 53))
        data = s.recv(512)
    if int.from_bytes(data[6:8], "big") == 0:
        return None
    # The answer starts after the question; A records end in a 4-byte address.
    return ".".join(str(b) for b in data[-4:])


def _reap_on_term(state_dir: str) -> int:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    time.sleep(0.5)  # let the kubelet and containerd go first (they got the signal too)
    reap(Path(state_dir))
    return 0


if __name__ == "__main__" and sys.argv[1:2] == ["reap-on-term"]:
    sys.exit(_reap_on_term(sys.argv[2]))
