"""A real nginx on loopback for the route tests: the binary, the http block around a route's
server blocks, and the process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

from chatbot_loadtest.stack import LocalServer
from tests.support import free_port

CACHED_NGINX = Path.home() / ".cache/chatbot-dev/nginx/usr/sbin/nginx"
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
# What ingress-nginx and NGINX Gateway Fabric both pass to a backend.
PROXY_HEADERS = [
    "proxy_set_header Host $host;",
    "proxy_set_header X-Request-ID $request_id;",
    "proxy_set_header X-Real-IP $remote_addr;",
    "proxy_set_header X-Forwarded-For $remote_addr;",
    "proxy_set_header X-Forwarded-Host $host;",
    "proxy_set_header X-Forwarded-Proto $scheme;",
]


def nginx_binary() -> Path | None:
    """nginx from PATH, /usr/sbin, or the copy `tests/run` unpacks from Debian's package."""
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx", CACHED_NGINX):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def upstream(service: str) -> str:
    return f"svc_{service.replace('-', '_')}"


def http_config(servers: list[list[str]], endpoints: dict[str, str | None],
                workdir: Path) -> str:
    """nginx.conf: one upstream per Service (``endpoints``: name -> host:port, what a
    controller reads from EndpointSlices) around the given server blocks.

    A Service without a ready endpoint (None) answers 503, as both controllers do:
    ingress-nginx's balancer finds no peer, NGINX Gateway Fabric points the upstream at
    a server that returns 503."""
    # Started by root, nginx's workers would become "nobody" and could not write request
    # bodies into the test's private temp dirs.
    user = ["user root;"] if os.geteuid() == 0 else []
    out = [*user, "daemon off;", "worker_processes 1;", f"pid {workdir / 'nginx.pid'};",
           "error_log stderr notice;", "events { worker_connections 256; }", "http {",
           f"    access_log {workdir / 'access.log'};"]
    out += [f"    {kind}_temp_path {workdir / 'tmp' / kind};" for kind in TEMP_PATHS]
    unavailable = f"127.0.0.1:{free_port()}"
    out += [f"    upstream {upstream(name)} {{ server {address or unavailable}; }}"
            for name, address in endpoints.items()]
    if None in endpoints.values():
        out += ["    server {", f"        listen {unavailable};", "        return 503;", "    }"]
    for server in servers:
        out += ["    " + line for line in server]
    out.append("}")
    return "\n".join(out) + "\n"


class Nginx(LocalServer):
    """nginx serving one rendered configuration on a loopback port, stopped gracefully
    (SIGQUIT)."""

    def __init__(self, binary: Path, workdir: Path, config: str, port: int) -> None:
        self.workdir = workdir
        for kind in TEMP_PATHS:
            (workdir / "tmp" / kind).mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "nginx.conf"
        self.conf.write_text(config)
        argv = [str(binary), "-p", str(workdir), "-e", "stderr", "-c", str(self.conf)]
        check = subprocess.run([*argv, "-t"], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx refused the configuration:\n{check.stderr}\n{config}")
        super().__init__(argv, workdir / "nginx.log", port=port, stop_signal=signal.SIGQUIT,
                         stop_timeout_s=10)
        self.start()

        def listening() -> bool | None:
            with socket.socket() as sock:
                return True if sock.connect_ex(("127.0.0.1", port)) == 0 else None

        self.wait_for(listening, 10, f"nginx did not listen on {port}")
