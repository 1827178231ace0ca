"""An Ingress as nginx configuration, rendered the way the ingress-nginx controller renders
the parts of it this project uses, and a real nginx process to serve it.

The controller itself cannot run here (it needs its own OpenResty build and pods it can
reach), so this module is its stand-in and says so; nginx, the Ingress (from the operator's
builder) and the backends (`chatbot serve`, `chatbot not-found`) are real. What it models,
after ingress-nginx's `createServers` (internal/ingress/controller/controller.go) and its
nginx.tmpl:

- one server per rule host; rules without a host join the catch-all server `_`, whose `/`
  is the controller's own default backend (a bare nginx 404) unless a rule claims `/` with
  the same pathType;
- a host's own server sends `/` to the Ingress's `spec.defaultBackend`;
- `use-regex`: every location of that server is a case-insensitive regex (`~* "^path"`),
  longest path first;
- `rewrite-target`: `rewrite "(?i)path" target break;`;
- `custom-http-errors` with `default-backend`: those upstream codes are answered by the
  default-backend service;
- `proxy-read-timeout`, `proxy-body-size`, and the X-Real-IP / X-Forwarded-* headers.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

NGINX_ANNOTATION = "nginx.ingress.kubernetes.io/"
CACHED_NGINX = Path.home() / ".cache/chatbot-dev/nginx/usr/sbin/nginx"


def nginx_binary() -> Path | None:
    """nginx from PATH, /usr/sbin, or the copy `tests/run` unpacks from Debian's package."""
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx", CACHED_NGINX):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


@dataclass
class _Location:
    path: str
    path_type: str
    service: str | None  # None: the controller's own default backend
    annotations: dict[str, str] = field(default_factory=dict)
    is_default: bool = False  # a server's root location, until a rule claims it


def _ann(annotations: dict[str, str], name: str, default: str = "") -> str:
    return annotations.get(NGINX_ANNOTATION + name, default)


def _servers(ingresses: list[dict]) -> dict[str, list[_Location]]:
    servers: dict[str, list[_Location]] = {
        "_": [_Location("/", "Prefix", None, is_default=True)]}
    for ing in ingresses:
        annotations = ing["metadata"].get("annotations") or {}
        default = (ing["spec"].get("defaultBackend") or {}).get("service", {}).get("name")
        for rule in ing["spec"].get("rules") or []:
            host = rule.get("host") or "_"
            if host not in servers:
                servers[host] = [_Location("/", "Prefix", default, annotations, True)]
            for p in (rule.get("http") or {}).get("paths") or []:
                path, path_type = p.get("path") or "/", p["pathType"]
                service = p["backend"]["service"]["name"]
                same = [loc for loc in servers[host]
                        if loc.path == path and loc.path_type == path_type]
                if same:  # a default root location is replaced; otherwise the first wins
                    if same[0].is_default:
                        same[0].service, same[0].annotations = service, annotations
                        same[0].is_default = False
                    continue
                servers[host].append(_Location(path, path_type, service, annotations))
    return servers


def _location(loc: _Location, regex: bool, upstreams: dict[str, str]) -> list[str]:
    a = loc.annotations
    match = f'~* "^{loc.path}"' if regex else (
        f"= {loc.path}" if loc.path_type == "Exact" else loc.path)
    lines = [f"location {match} {{"]
    if loc.service is None:
        return [*lines, "    return 404;", "}"]
    if _ann(a, "rewrite-target"):
        lines.append(f'    rewrite "(?i){loc.path}" {_ann(a, "rewrite-target")} break;')
    lines += [
        "    proxy_set_header Host $host;",
        "    proxy_set_header X-Request-ID $request_id;",
        "    proxy_set_header X-Real-IP $remote_addr;",
        "    proxy_set_header X-Forwarded-For $remote_addr;",
        "    proxy_set_header X-Forwarded-Host $host;",
        "    proxy_set_header X-Forwarded-Proto $scheme;",
        f"    proxy_read_timeout {_ann(a, 'proxy-read-timeout', '60')}s;",
        f"    client_max_body_size {_ann(a, 'proxy-body-size', '1m')};",
    ]
    errors, error_backend = _ann(a, "custom-http-errors"), _ann(a, "default-backend")
    if errors and error_backend:
        lines.append("    proxy_intercept_errors on;")
        lines += [f"    error_page {code} = @custom_{error_backend}_{code};"
                  for code in errors.split(",")]
    lines += [f"    proxy_pass http://{upstreams[loc.service]};", "}"]
    return lines


def _error_locations(locations: list[_Location], upstreams: dict[str, str]) -> list[str]:
    lines: list[str] = []
    seen = set()
    for loc in locations:
        errors, backend = (_ann(loc.annotations, "custom-http-errors"),
                           _ann(loc.annotations, "default-backend"))
        for code in errors.split(",") if errors and backend else []:
            if (backend, code) in seen:
                continue
            seen.add((backend, code))
            lines += [f"location @custom_{backend}_{code} {{", "    internal;",
                      "    proxy_intercept_errors off;",
                      f"    proxy_set_header X-Code {code};",
                      "    proxy_set_header X-Format $http_accept;",
                      "    proxy_set_header X-Original-URI $request_uri;",
                      "    rewrite (.*) / break;",
                      f"    proxy_pass http://{upstreams[backend]};", "}"]
    return lines


def render(ingresses: list[dict], endpoints: dict[str, str], port: int, workdir: Path) -> str:
    """nginx.conf for ``ingresses``; ``endpoints`` maps each Service name to host:port (what
    the controller would read from the Service's EndpointSlices)."""
    upstreams = {name: f"svc_{name.replace('-', '_')}" for name in endpoints}
    out = ["daemon off;", "worker_processes 1;", f"pid {workdir / 'nginx.pid'};",
           "error_log stderr notice;", "events { worker_connections 256; }", "http {",
           f"    access_log {workdir / 'access.log'};"]
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        out.append(f"    {kind}_temp_path {workdir / 'tmp' / kind};")
    for name, address in endpoints.items():
        out.append(f"    upstream {upstreams[name]} {{ server {address}; }}")
    for host, locations in _servers(ingresses).items():
        regex = any(_ann(loc.annotations, "use-regex") == "true" for loc in locations)
        ordered = sorted(locations, key=lambda loc: loc.path, reverse=True)
        default = " default_server" if host == "_" else ""
        out += ["    server {", f"        listen 127.0.0.1:{port}{default};",
                f"        server_name {host};"]
        for loc in ordered:
            out += ["        " + line for line in _location(loc, regex, upstreams)]
        out += ["        " + line for line in _error_locations(ordered, upstreams)]
        out.append("    }")
    out.append("}")
    return "\n".join(out) + "\n"


class Nginx:
    """nginx serving one rendered configuration on a loopback port."""

    def __init__(self, binary: Path, workdir: Path, config: str, port: int) -> None:
        self.workdir, self.port = workdir, port
        self.url = f"http://127.0.0.1:{port}"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (workdir / "tmp" / kind).mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "nginx.conf"
        self.conf.write_text(config)
        self.log = workdir / "nginx.log"
        check = subprocess.run([str(binary), "-t", "-p", str(workdir), "-e", "stderr",
                                "-c", str(self.conf)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx refused the configuration:\n{check.stderr}\n{config}")
        self._out = open(self.log, "wb")
        self.proc = subprocess.Popen([str(binary), "-p", str(workdir), "-e", "stderr",
                                      "-c", str(self.conf)],
                                     stdout=self._out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.log.read_text()}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"nginx did not listen on {port}: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful shutdown
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
