"""The Docker Engine that kind runs on in the tests: a ``dockerd`` of its own, with the
capability-fitting runtime (``capfit-runtime``) as its default.

Why a daemon of its own: kind always starts its nodes with ``docker run --privileged``,
which on this machine needs the runtime wrapper (see ``capfit-runtime``); registering it in
a daemon another test may be using would change that daemon under it. This one keeps
everything apart: its socket, state and data under :data:`STATE` and :data:`DATA`
(the data root persists, so the node image stays cached between runs), no iptables rules
(``--iptables=false``: published ports go through Docker's userland proxy) and no default
bridge. It dies with the process that started it (parent-death signal) and, when it stops,
Docker stops its containers; :func:`reap` removes what a killed run left (kind's
containers and network) at the next start.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.support.docker_engine import _die_with_parent

HERE = Path(__file__).resolve().parent
RUNTIME = HERE / "capfit-runtime"
STATE = Path(os.environ.get("CHATBOT_KIND_STATE", "/run/chatbot-kind"))
DATA = Path(os.environ.get("CHATBOT_KIND_DATA", "/var/lib/chatbot-kind/docker"))
SOCKET = STATE / "docker.sock"
HOST = f"unix://{SOCKET}"
LOG_DIR = Path(os.environ.get("CHATBOT_KIND_LOG_DIR", "/tmp/chatbot-kind"))
KIND_LABEL = "io.x-k8s.kind.cluster"


class EngineUnavailable(RuntimeError):
    pass


def env() -> dict[str, str]:
    """The environment for docker and kind commands that use this engine."""
    return {**os.environ, "DOCKER_HOST": HOST, "DOCKER_BUILDKIT": "1"}


def docker(*args: str, check: bool = True, timeout: float = 120,
           input: bytes | str | None = None, **kw) -> subprocess.CompletedProcess:
    text = not isinstance(input, bytes)
    proc = subprocess.run(["/usr/bin/docker", *args], capture_output=True, text=text,
                          timeout=timeout, env=env(), input=input, **kw)
    if check and proc.returncode != 0:
        err = proc.stderr if text else proc.stderr.decode(errors="replace")
        raise RuntimeError(f"docker {' '.join(args[:4])}... failed ({proc.returncode}): "
                           f"{err[-3000:]}")
    return proc


def reachable() -> bool:
    try:
        return docker("version", "--format", "{{.Server.Version}}", check=False,
                      timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def missing_prerequisites() -> list[str]:
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    for tool, package in (("/usr/sbin/dockerd", "docker.io"), ("/usr/bin/docker", "docker.io"),
                          ("/usr/sbin/runc", "runc"), ("mmdebstrap", "mmdebstrap")):
        if not (os.access(tool, os.X_OK) or shutil.which(tool)):
            missing.append(f"{tool} (apt-get install {package})")
    return missing


def reap() -> None:
    """Remove kind's containers and networks a killed run left in this engine."""
    out = docker("ps", "-aq", "--filter", f"label={KIND_LABEL}", check=False).stdout.split()
    if out:
        docker("rm", "-f", "-v", *out, check=False, timeout=300)
    docker("network", "rm", "kind", check=False)


class Engine:
    """This harness's ``dockerd``: :meth:`start` it (or find it answering), :meth:`stop` it."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> Engine:
        if reachable():
            reap()
            return self
        if missing := missing_prerequisites():
            raise EngineUnavailable("kind's engine needs: " + ", ".join(missing))
        for d in (STATE, DATA, LOG_DIR):
            d.mkdir(parents=True, exist_ok=True)
        SOCKET.unlink(missing_ok=True)
        log = open(LOG_DIR / "dockerd.log", "ab")  # noqa: SIM115 - the daemon keeps it
        self.proc = subprocess.Popen(
            ["/usr/sbin/dockerd", "--host", HOST, "--data-root", str(DATA),
             "--exec-root", str(STATE / "exec"), "--pidfile", str(STATE / "dockerd.pid"),
             "--add-runtime", f"capfit={RUNTIME}", "--default-runtime", "capfit",
             "--iptables=false", "--ip-masq=false", "--bridge=none",
             "--cgroup-parent", "/chatbot-kind"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent)
        log.close()
        deadline = time.monotonic() + timeout
        while not reachable():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise EngineUnavailable(f"dockerd did not come up; see {LOG_DIR}/dockerd.log")
            time.sleep(0.5)
        reap()
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        reap()
        self.proc.send_signal(signal.SIGTERM)  # dockerd stops its containers and containerd
        try:
            self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
