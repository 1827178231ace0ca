"""Free TCP ports for the processes the tests start. Standard library only: the cluster
harness (tests/kube/controlplane.py) runs without the project's venv."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS's pick); ``host="0.0.0.0"`` for a process that
    listens on every interface, such as a container on the host network."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
