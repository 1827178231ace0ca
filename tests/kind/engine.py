"""The Docker Engine that kind runs on in the tests: a ``dockerd`` of its own, with the
capability-fitting runtime (``capfit-runtime``) as its default.

Why a daemon of its own: kind always starts its nodes with ``docker run --privileged``,
which on this machine needs the runtime wrapper (see ``capfit-runtime``); registering it in
a daemon another test may be using would change that daemon under it. This one keeps
everything apart: its socket, state and data under :data:`STATE` and :data:`DATA`
(the data root persists, so the node image stays cached between runs), no iptables rules
(``--iptables=false``: published ports go through Docker's userland proxy). It dies with the
process that started it (parent-death signal) and, when it stops, Docker stops its
containers; :func:`reap` removes what a killed run left (kind's containers and network) at
the next start.

It shares the host's network namespace with the harness's ``dockerd``
(tests/support/docker_engine.py), so it must not touch that daemon's ``docker0``:
``--bridge=none`` would make dockerd delete ``docker0`` at start (Docker does so whenever
its default bridge is disabled), and the harness's containers and builds then fail to get a
network ("could not find bridge docker0"; pip in a build cannot resolve). So its default
bridge is a bridge of its own, :data:`BRIDGE` on :data:`BRIDGE_CIDR`, and kind's network is
created here on :data:`KIND_SUBNET` (kind uses a ``kind`` network it finds), outside
Docker's default pools (172.17-31.0.0/16, 192.168.0.0/16), which the harness's daemon
allocates from without looking at this one's.

Its volumes are in memory: ``dockerd`` runs in a mount namespace of its own
(``unshare --mount``) with a tmpfs (:data:`VOLUMES_SIZE` at most) on ``DATA/volumes``. A kind
node keeps ``/var`` in an anonymous volume: the node image's containerd store copied in at
``kind create cluster``, the images ``kind load`` unpacks, the cluster's PersistentVolumes;
about 3.5 GB for the quickstart. Removing that from this machine's disk took 20 of the 22 s
of ``kind delete cluster`` (5 s in all from memory), and writing it is quicker too (one paired
run under the same load: ``kind create cluster`` 34 s -> 17 s, ``kind load docker-image``
30 s -> 20 s). The tmpfs exists only in that namespace, so the host never sees the mount, and
it is freed when the last process in it (dockerd, its containerd, the nodes) exits, however
the test ends: a SIGKILLed pytest takes dockerd with it (parent-death signal), which stops
the nodes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.support import docker_engine

HERE = Path(__file__).resolve().parent
RUNTIME = HERE / "capfit-runtime"
STATE = Path(os.environ.get("CHATBOT_KIND_STATE", "/run/chatbot-kind"))
DATA = Path(os.environ.get("CHATBOT_KIND_DATA", "/var/lib/chatbot-kind/docker"))
SOCKET = STATE / "docker.sock"
HOST = f"unix://{SOCKET}"
LOG_DIR = Path(os.environ.get("CHATBOT_KIND_LOG_DIR", "/tmp/chatbot-kind"))
KIND_LABEL = "io.x-k8s.kind.cluster"
BRIDGE = "chatbot-kind0"  # this engine's default bridge (docker0 is the harness daemon's)
BRIDGE_CIDR = "10.231.1.1/24"
KIND_NETWORK = "kind"
KIND_SUBNET = "10.231.0.0/24"
KIND_GATEWAY = "10.231.0.1"
KIND_IPV6_SUBNET = "fc00:f853:ccd:e793::/64"  # what kind itself picks for "kind"
VOLUMES_SIZE = "8g"  # the tmpfs's limit (memory is used only as it fills: ~3.5 GB)


class EngineUnavailable(docker_engine.DockerUnavailable):
    pass


def env() -> dict[str, str]:
    """The environment for docker and kind commands that use this engine."""
    return {**os.environ, "DOCKER_HOST": HOST, "DOCKER_BUILDKIT": "1"}


def docker(*args: str, **kw) -> subprocess.CompletedProcess:
    """``docker ARGS`` on this engine (tests.support.docker_engine.docker's arguments)."""
    return docker_engine.docker(*args, host=HOST, **kw)


def reachable() -> bool:
    return docker_engine.reachable(HOST)


def missing_prerequisites() -> list[str]:
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    for tool, package in (("/usr/sbin/dockerd", "docker.io"), ("/usr/bin/docker", "docker.io"),
                          ("/usr/sbin/runc", "runc"), ("mmdebstrap", "mmdebstrap"),
                          ("/usr/sbin/ip", "iproute2"), ("/usr/bin/unshare", "util-linux")):
        if not (os.access(tool, os.X_OK) or shutil.which(tool)):
            missing.append(f"{tool} (apt-get install {package})")
    return missing


def reap() -> None:
    """Remove kind's containers and networks a killed run left in this engine."""
    out = docker("ps", "-aq", "--filter", f"label={KIND_LABEL}", check=False).stdout.split()
    if out:
        docker("rm", "-f", "-v", *out, check=False, timeout=300)
    docker("network", "rm", KIND_NETWORK, check=False)


def kind_network() -> None:
    """kind's network as kind creates it (bridge, masquerade, IPv6 ULA), on
    :data:`KIND_SUBNET` rather than the first free default pool."""
    docker("network", "create", "-d=bridge",
           "-o", "com.docker.network.bridge.enable_ip_masquerade=true",
           "--subnet", KIND_SUBNET, "--gateway", KIND_GATEWAY,  # paired by order
           "--ipv6", "--subnet", KIND_IPV6_SUBNET, KIND_NETWORK)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["/usr/sbin/ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode:
        raise EngineUnavailable(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


class Engine:
    """This harness's ``dockerd``: :meth:`start` it (or find it answering), :meth:`stop` it."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> Engine:
        if not reachable():
            self._start_dockerd(timeout)
        reap()
        kind_network()
        return self

    def _start_dockerd(self, timeout: float) -> None:
        if missing := missing_prerequisites():
            raise EngineUnavailable("kind's engine needs: " + ", ".join(missing))
        for d in (STATE, DATA, LOG_DIR):
            d.mkdir(parents=True, exist_ok=True)
        SOCKET.unlink(missing_ok=True)
        if _ip("link", "show", BRIDGE, check=False).returncode:  # dockerd takes its address
            _ip("link", "add", "name", BRIDGE, "type", "bridge")
            _ip("addr", "add", BRIDGE_CIDR, "dev", BRIDGE)
        (DATA / "volumes").mkdir(parents=True, exist_ok=True)
        in_memory_volumes = [
            "/usr/bin/unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
            'mount -t tmpfs -o "size=$1,mode=0701" chatbot-kind-volumes "$2" && shift 2 && '
            'exec "$@"', "sh", VOLUMES_SIZE, str(DATA / "volumes")]
        self.proc = docker_engine.start_dockerd(
            [*in_memory_volumes, "/usr/sbin/dockerd", "--host", HOST, "--data-root", str(DATA),
             "--exec-root", str(STATE / "exec"), "--pidfile", str(STATE / "dockerd.pid"),
             "--add-runtime", f"capfit={RUNTIME}", "--default-runtime", "capfit",
             "--iptables=false", "--ip-masq=false", "--bridge", BRIDGE,
             "--cgroup-parent", "/chatbot-kind"],
            LOG_DIR / "dockerd.log", host=HOST, timeout=timeout)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        reap()
        docker_engine.stop_dockerd(self.proc)
        _ip("link", "del", BRIDGE, check=False)

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
