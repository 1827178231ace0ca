"""A real, local Kubernetes control plane for the test suite: :class:`LocalCluster`.

It starts etcd, kube-apiserver (RBAC, a service-account signing key, an audit log of the
ServiceAccounts' calls), kube-controller-manager, kube-scheduler and kwok on 127.0.0.1
with free ports, registers fake kwok nodes (two GPU nodes, one CPU node) and stops
everything again (tracked PIDs, process groups). The programs come from ``binaries.py``,
the certificates from ``pki.py``; with a real node (``node_ip``), ``realnode.py`` adds
the kubelet and the rest.

Standard library only (plus the ``openssl`` CLI), so that ``local-cluster`` runs with any
Python >= 3.11, with or without the project's venv.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.kube.binaries import (
    BUILD_COMMAND,
    CLUSTER_COMPONENTS,
    binary,
    missing_components,
    versions,
)
from tests.kube.pki import make_pki, write_kubeconfig
from tests.support.ports import free_port

# Fake nodes registered with kwok. No taints by default: a pod lands on a GPU
# node only by nodeSelector/affinity or by asking for nvidia.com/gpu; tolerations
# for nvidia.com/gpu (added by the operator) are harmless without a taint.
NODES: list[dict] = [
    {
        "name": "gpu-2080",
        "labels": {
            "nvidia.com/gpu.product": "NVIDIA-GeForce-RTX-2080",
            "nvidia.com/gpu.present": "true",
        },
        "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110", "nvidia.com/gpu": "1"},
    },
    {
        "name": "gpu-3060",
        "labels": {
            "nvidia.com/gpu.product": "NVIDIA-GeForce-RTX-3060",
            "nvidia.com/gpu.present": "true",
        },
        "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110", "nvidia.com/gpu": "1"},
    },
    {
        "name": "cpu-1",
        "labels": {},
        "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
    },
]

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
# With a real node, the fake GPU nodes carry the GPU nodes' usual taint, so that only
# pods that tolerate it (the operator's GPU pods) land there.
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"


def default_cluster_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"chatbot-local-cluster-{os.getuid()}"


class ClusterError(RuntimeError):
    pass


# Metadata (who, verb, resource, response code) of every call by a ServiceAccount, except
# the controller-manager's own (kube-system), which would drown the rest.
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: None
    userGroups: ["system:serviceaccounts:kube-system"]
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
"""


class LocalCluster:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok on loopback.

    All state (certs, etcd data, logs, PIDs, kubeconfigs) lives in ``dir``.
    """

    def __init__(self, dir: Path | str | None = None, *, node_ip: str | None = None):
        self.dir = (Path(dir) if dir else default_cluster_dir()).resolve()
        # Set for a cluster with a real node (realnode.py): the API server then listens on
        # all addresses and advertises this one, which the pods reach it by; the kwok
        # nodes are the GPU ones only, tainted as GPU nodes are.
        self.node_ip = node_ip
        self.pki = self.dir / "pki"
        self.logs = self.dir / "logs"
        self.state_file = self.dir / "state.json"
        self.kubeconfig = self.dir / "kubeconfig"
        # One JSON line per API call made by a ServiceAccount outside kube-system: what the
        # RBAC tests read to see which permissions the operator really used.
        self.audit_log = self.logs / "audit.log"

    # ---------------------------------------------------------------- state
    def _load_state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _save_state(self, state: dict) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self.state_file)

    @property
    def server(self) -> str:
        return self._load_state()["server"]

    def _pid_alive(self, pid: int) -> bool:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        # Guard against PID reuse: our processes all mention the cluster dir.
        if str(self.dir).encode() not in cmdline:
            return False
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                return False
        except OSError:
            return False
        return True

    def running(self) -> dict[str, int]:
        procs = self._load_state().get("pids", {})
        return {name: pid for name, pid in procs.items() if self._pid_alive(pid)}

    # ---------------------------------------------------------------- http
    def _ssl_ctx(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def api(self, method: str, path: str, body: dict | None = None,
            content_type: str = "application/json", timeout: float = 10) -> tuple[int, dict | str]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self._ssl_ctx(), timeout=timeout) as resp:
                raw = resp.read().decode()
                status = resp.status
        except urllib.error.HTTPError as e:
            raw = e.read().decode()
            status = e.code
        try:
            return status, json.loads(raw)
        except json.JSONDecodeError:
            return status, raw

    # ---------------------------------------------------------------- processes
    def _spawn(self, name: str, argv: list[str], *, die_with_parent: bool,
               death_signal: int = signal.SIGKILL, env: dict | None = None) -> int:
        log = open(self.logs / f"{name}.log", "ab")

        def preexec() -> None:
            if die_with_parent:
                import ctypes

                libc = ctypes.CDLL("libc.so.6", use_errno=True)
                libc.prctl(1, death_signal)  # PR_SET_PDEATHSIG

        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
            start_new_session=True,
            preexec_fn=preexec,
            close_fds=True,
            env=env,
        )
        log.close()
        state = self._load_state()
        state.setdefault("pids", {})[name] = proc.pid
        self._save_state(state)
        self._procs[name] = proc
        return proc.pid

    def _check_alive(self, *names: str) -> None:
        for name in names:
            proc = self._procs.get(name)
            if proc is not None and proc.poll() is not None:
                tail = self.log_tail(name)
                raise ClusterError(f"{name} exited with {proc.returncode}; log tail:\n{tail}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            return "\n".join((self.logs / f"{name}.log").read_text(errors="replace")
                             .splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def _wait(self, what: str, cond, timeout: float, procs: tuple[str, ...]) -> None:
        deadline = time.monotonic() + timeout
        last_exc: Exception | None = None
        while time.monotonic() < deadline:
            self._check_alive(*procs)
            try:
                if cond():
                    return
            except Exception as exc:  # noqa: BLE001 - retried until the deadline
                last_exc = exc
            time.sleep(0.2)
        logs = "\n".join(f"--- {p} ---\n{self.log_tail(p)}" for p in procs)
        raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what} "
                           f"(last error: {last_exc})\n{logs}")

    # ---------------------------------------------------------------- up / down
    def up(self, *, timeout: float = 120, die_with_parent: bool = False,
           progress=None) -> Path:
        """Start the cluster; return the admin kubeconfig path once it is usable."""
        say = progress or (lambda msg: None)
        missing = missing_components(CLUSTER_COMPONENTS)
        if missing:
            raise ClusterError(
                f"binaries missing for {', '.join(missing)}: run {BUILD_COMMAND}")
        if self.running():
            raise ClusterError(f"a cluster is already running in {self.dir} "
                               f"(pids {self.running()}); run `local-cluster down` first")
        started = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=True)
        for old in self.dir.iterdir():  # a previous run's state; keeper.log is ours
            if old.name != "keeper.log":
                shutil.rmtree(old) if old.is_dir() else old.unlink()
        self.logs.mkdir()
        self._procs: dict[str, subprocess.Popen] = {}
        make_pki(self.pki, SERVICE_IP, self.node_ip)
        ports = {k: free_port() for k in ("etcd", "etcd_peer", "apiserver", "cm", "sched", "kwok")}
        server = f"https://127.0.0.1:{ports['apiserver']}"
        self._save_state({"server": server, "ports": ports, "pids": {},
                          "versions": versions(), "dir": str(self.dir),
                          "node_ip": self.node_ip})
        pki = self.pki
        try:
            self._start_all(pki, ports, server, die_with_parent, timeout, say)
        except BaseException:
            self.down(remove=False)
            raise
        state = self._load_state()
        state["startup_seconds"] = round(time.monotonic() - started, 1)
        self._save_state(state)
        say(f"cluster ready in {time.monotonic() - started:.1f}s")
        return self.kubeconfig

    def _start_all(self, pki: Path, ports: dict, server: str, die_with_parent: bool,
                   timeout: float, say) -> None:
        d = self.dir
        kc = {}
        for who in ("admin", "controller-manager", "scheduler", "kwok"):
            path = self.kubeconfig if who == "admin" else d / f"{who}.kubeconfig"
            kc[who] = write_kubeconfig(path, server, pki / "ca.crt", cert=pki / f"{who}.crt",
                                       key=pki / f"{who}.key", user=who)

        etcd_url = f"http://127.0.0.1:{ports['etcd']}"
        peer_url = f"http://127.0.0.1:{ports['etcd_peer']}"
        self._spawn("etcd", [
            str(binary("etcd")), "--name=default", f"--data-dir={d / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}", "--unsafe-no-fsync",
            "--log-level=warn", "--quota-backend-bytes=4294967296",
        ], die_with_parent=die_with_parent)
        say("etcd started")

        def etcd_healthy() -> bool:
            with urllib.request.urlopen(etcd_url + "/health", timeout=2) as r:
                return json.loads(r.read()).get("health") == "true"

        self._wait("etcd health", etcd_healthy, timeout, ("etcd",))

        audit_policy = d / "audit-policy.yaml"
        audit_policy.write_text(AUDIT_POLICY)
        self._spawn("kube-apiserver", [
            str(binary("kube-apiserver")),
            f"--etcd-servers={etcd_url}",
            f"--audit-policy-file={audit_policy}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json", "--audit-log-mode=blocking",
            *(("--bind-address=0.0.0.0", f"--advertise-address={self.node_ip}",
               f"--kubelet-client-certificate={pki / 'admin.crt'}",
               f"--kubelet-client-key={pki / 'admin.key'}",
               "--kubelet-preferred-address-types=InternalIP",
               # The aggregation layer, for extension API servers on this host (KEDA's
               # external metrics, tests/kube/engines.py): requests proxied with the
               # front-proxy client certificate, to the endpoints' addresses (the
               # extension server is a host process, not behind a Service's cluster IP).
               f"--requestheader-client-ca-file={pki / 'ca.crt'}",
               "--requestheader-allowed-names=front-proxy-client",
               "--requestheader-username-headers=X-Remote-User",
               "--requestheader-group-headers=X-Remote-Group",
               "--requestheader-extra-headers-prefix=X-Remote-Extra-",
               f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
               f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
               "--enable-aggregator-routing=true")
              if self.node_ip else
              ("--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
               "--endpoint-reconciler-type=none")),
            f"--secure-port={ports['apiserver']}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
        ], die_with_parent=die_with_parent)
        say("kube-apiserver started")

        def api_ready() -> bool:
            status, _ = self.api("GET", "/readyz", timeout=3)
            return status == 200

        self._wait("kube-apiserver /readyz", api_ready, timeout, ("etcd", "kube-apiserver"))
        say("kube-apiserver ready")

        self._spawn("kube-controller-manager", [
            str(binary("kube-controller-manager")),
            f"--kubeconfig={kc['controller-manager']}",
            f"--authentication-kubeconfig={kc['controller-manager']}",
            f"--authorization-kubeconfig={kc['controller-manager']}",
            "--bind-address=127.0.0.1", f"--secure-port={ports['cm']}",
            f"--cert-dir={d / 'cm-certs'}",
            "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            "--controllers=*",
            "--node-monitor-grace-period=120s",
            # The HPAs (KEDA's, with a real node) act on a metric within seconds.
            "--horizontal-pod-autoscaler-sync-period=5s",
            "--v=1",
        ], die_with_parent=die_with_parent)

        sched_cfg = d / "scheduler-config.yaml"
        sched_cfg.write_text(json.dumps({
            "apiVersion": "kubescheduler.config.k8s.io/v1",
            "kind": "KubeSchedulerConfiguration",
            "clientConnection": {"kubeconfig": str(kc["scheduler"])},
            "leaderElection": {"leaderElect": False},
        }, indent=2) + "\n")
        self._spawn("kube-scheduler", [
            str(binary("kube-scheduler")),
            f"--config={sched_cfg}",
            f"--authentication-kubeconfig={kc['scheduler']}",
            f"--authorization-kubeconfig={kc['scheduler']}",
            "--bind-address=127.0.0.1", f"--secure-port={ports['sched']}",
            f"--cert-dir={d / 'sched-certs'}",
            "--v=1",
        ], die_with_parent=die_with_parent)

        self._spawn("kwok", [
            str(binary("kwok")),
            f"--kubeconfig={kc['kwok']}",
            f"--config={binary('kwok-stages.yaml')}",
            f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
            "--node-ip=10.244.0.1", "--cidr=10.244.0.0/16",
            f"--server-address=127.0.0.1:{ports['kwok']}",
            "--node-lease-duration-seconds=40",
        ], die_with_parent=die_with_parent)
        say("controller-manager, scheduler, kwok started")

        for node in self.fake_nodes:
            body = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": node["name"],
                    "annotations": {KWOK_ANNOTATION: "fake",
                                    "node.alpha.kubernetes.io/ttl": "0"},
                    "labels": {"type": "kwok", "kubernetes.io/hostname": node["name"],
                               "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                               **node["labels"]},
                },
                "spec": {"taints": [GPU_TAINT]} if self.node_ip else {},
                "status": {"capacity": node["capacity"], "allocatable": node["capacity"],
                           "nodeInfo": {"kubeletVersion": "fake", "architecture": "amd64",
                                        "operatingSystem": "linux"}},
            }
            status, resp = self.api("POST", "/api/v1/nodes", body)
            if status not in (200, 201):
                raise ClusterError(f"creating node {node['name']} failed: {status} {resp}")

        all_procs = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")

        def nodes_ready() -> bool:
            status, resp = self.api("GET", "/api/v1/nodes")
            if status != 200:
                return False
            ready = set()
            for n in resp["items"]:
                conds = {c["type"]: c["status"] for c in n.get("status", {}).get("conditions", [])}
                taints = [t["key"] for t in n.get("spec", {}).get("taints", []) or []]
                if conds.get("Ready") == "True" and not any(
                        k.startswith("node.kubernetes.io/") for k in taints):
                    ready.add(n["metadata"]["name"])
            return ready >= {n["name"] for n in self.fake_nodes}

        self._wait("kwok nodes Ready", nodes_ready, timeout, all_procs)
        say("nodes ready")

        def default_sa() -> bool:
            status, _ = self.api("GET", "/api/v1/namespaces/default/serviceaccounts/default")
            return status == 200

        self._wait("ServiceAccount default/default", default_sa, timeout, all_procs)
        if self.node_ip:
            # RBAC only (no Node authorizer): the kubelet's rights come from system:node.
            self.api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
                "metadata": {"name": "chatbot-local:nodes"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": "system:node"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                              "name": "system:nodes"}],
            })

    @property
    def fake_nodes(self) -> list[dict]:
        if self.node_ip:
            return [n for n in NODES if "nvidia.com/gpu" in n["capacity"]]
        return NODES

    def down(self, *, remove: bool = False, timeout: float = 15) -> list[str]:
        """Stop every process of this cluster; return the names that were running.

        Components are stopped one by one in reverse start order (kwok first, etcd
        last) with SIGTERM to their process group, escalating to SIGKILL after
        ``timeout`` seconds each.
        """
        state = self._load_state()
        pids: dict[str, int] = state.get("pids", {})
        procs = getattr(self, "_procs", {})
        stopped = []

        def gone(pid: int) -> bool:
            for p in procs.values():
                p.poll()  # reap our own children so that they do not linger as zombies
            return not self._pid_alive(pid)

        for name, pid in reversed(list(pids.items())):
            if gone(pid):
                continue
            stopped.append(name)
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, sig)
                deadline = time.monotonic() + wait
                while time.monotonic() < deadline and not gone(pid):
                    time.sleep(0.05)
                if gone(pid):
                    break
        for p in procs.values():
            with contextlib.suppress(Exception):
                p.wait(timeout=5)
        keeper = state.get("keeper")
        if keeper and keeper != os.getpid():
            # The keeper exits by itself once its children are gone.
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and self._pid_alive(keeper):
                time.sleep(0.05)
            if self._pid_alive(keeper):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(keeper, signal.SIGKILL)
        if state.get("node_ip"):
            # A real node's containers outlive containerd and the kubelet: kill them too.
            from tests.kube import realnode

            realnode.reap(self.dir)
        if state:
            state["pids"] = {}
            self._save_state(state)
        if remove and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)
        elif (self.dir / "etcd").exists():
            shutil.rmtree(self.dir / "etcd", ignore_errors=True)
        return stopped
