"""``local-cluster up``'s keeper: the cluster outlives the command that started it.

:func:`up_detached` starts ``python -m tests.kube.keeper _serve DIR TIMEOUT [node]`` in a
new session and returns the kubeconfig path once the keeper reports READY; the keeper
(:func:`_serve`) starts the cluster (and, with ``node``, the real node), then stays the
parent of the components and reaps them when they exit, so that no zombies are left for
an init that does not reap. ``local-cluster down`` stops the components; the keeper then
exits by itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.kube.controlplane import ClusterError, LocalCluster

ROOT = Path(__file__).resolve().parents[2]

READY_PREFIX = "READY "
FAILED_PREFIX = "FAILED "


def _serve(cluster_dir: str, timeout: float, node: bool = False) -> int:
    """Keeper process for ``local-cluster up``: parent (and reaper) of the components.

    It starts the cluster, reports READY/FAILED on stdout (a pipe to ``up``), then
    reaps its children until all have exited (``down`` stops them), so that no
    zombies are left for an init that does not reap.
    """
    realnode = None
    if node:
        from tests.kube import realnode
    cluster = LocalCluster(cluster_dir, node_ip=realnode.node_ip() if realnode else None)

    def say(msg: str) -> None:
        print(msg, flush=True)

    try:
        kubeconfig = cluster.up(timeout=timeout, progress=say)
        if realnode:
            realnode.RealNode(cluster).up(timeout=max(timeout, 180), die_with_parent=False,
                                          progress=say)
    except Exception as exc:  # noqa: BLE001 - reported to the `up` front-end
        cluster.down()
        say(FAILED_PREFIX + str(exc).replace("\n", "\n  "))
        return 1
    state = cluster._load_state()
    state["keeper"] = os.getpid()
    cluster._save_state(state)
    say(READY_PREFIX + str(kubeconfig))
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)
    signal.signal(signal.SIGTERM, lambda *_: cluster.down())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue
        names = {v: k for k, v in cluster._load_state().get("pids", {}).items()}
        print(f"{time.ctime()}: {names.get(pid, pid)} exited with status {status}",
              file=sys.stderr, flush=True)


def up_detached(cluster_dir: Path | str | None, timeout: float, progress,
                node: bool = False) -> Path:
    """Start the cluster in a detached keeper process; return the kubeconfig path."""
    cluster = LocalCluster(cluster_dir)
    if cluster.running():
        raise ClusterError(f"a cluster is already running in {cluster.dir} "
                           f"(pids {cluster.running()}); run `local-cluster down` first")
    cluster.dir.mkdir(parents=True, exist_ok=True)
    keeper_log = cluster.dir / "keeper.log"
    with open(keeper_log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.kube.keeper", "_serve", str(cluster.dir),
             str(timeout), *(["node"] if node else [])],
            env={**os.environ, "PYTHONPATH": os.pathsep.join(
                [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
            start_new_session=True, text=True,
        )
    assert proc.stdout is not None
    failure: list[str] = []
    for line in proc.stdout:
        line = line.rstrip("\n")
        if line.startswith(READY_PREFIX):
            proc.stdout.close()
            return Path(line[len(READY_PREFIX):])
        if line.startswith(FAILED_PREFIX) or failure:
            failure.append(line.removeprefix(FAILED_PREFIX))
        else:
            progress(line)
    proc.wait()
    raise ClusterError("\n".join(failure) or f"keeper exited with {proc.returncode}; "
                       f"see {keeper_log} and {cluster.logs}")


if __name__ == "__main__" and len(sys.argv) in (4, 5) and sys.argv[1] == "_serve":
    sys.exit(_serve(sys.argv[2], float(sys.argv[3]), node=sys.argv[4:] == ["node"]))
