"""An Ingress as nginx server blocks, rendered the way the ingress-nginx controller renders
the parts of it this project uses.

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
- a Service without a ready endpoint: the location goes to its `default-backend` service
  when it has one (getBackendServers), else the controller answers 503;
- `proxy-read-timeout`, `proxy-body-size`, and the X-Real-IP / X-Forwarded-* headers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tests.route.nginx import PROXY_HEADERS, upstream

NGINX_ANNOTATION = "nginx.ingress.kubernetes.io/"


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


def _location(loc: _Location, regex: bool, unready: set[str]) -> list[str]:
    a = loc.annotations
    match = f'~* "^{loc.path}"' if regex else (
        f"= {loc.path}" if loc.path_type == "Exact" else loc.path)
    lines = [f"location {match} {{"]
    if loc.service is None:
        return [*lines, "    return 404;", "}"]
    if _ann(a, "rewrite-target"):
        lines.append(f'    rewrite "(?i){loc.path}" {_ann(a, "rewrite-target")} break;')
    lines += ["    " + header for header in PROXY_HEADERS]
    lines += [
        f"    proxy_read_timeout {_ann(a, 'proxy-read-timeout', '60')}s;",
        f"    client_max_body_size {_ann(a, 'proxy-body-size', '1m')};",
    ]
    errors, default_backend = _ann(a, "custom-http-errors"), _ann(a, "default-backend")
    if errors and default_backend:
        lines.append("    proxy_intercept_errors on;")
        lines += [f"    error_page {code} = @custom_{default_backend}_{code};"
                  for code in errors.split(",")]
    service = loc.service
    if service in unready and default_backend and default_backend not in unready:
        service = default_backend
    lines += [f"    proxy_pass http://{upstream(service)};", "}"]
    return lines


def _error_locations(locations: list[_Location]) -> list[str]:
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
                      f"    proxy_pass http://{upstream(backend)};", "}"]
    return lines


def servers(ingresses: list[dict], port: int,
            endpoints: dict[str, str | None] | None = None) -> list[list[str]]:
    """nginx server blocks for ``ingresses``, listening on ``port`` of 127.0.0.1;
    ``endpoints`` names the Services without a ready endpoint (None), as `http_config`."""
    unready = {name for name, address in (endpoints or {}).items() if address is None}
    blocks = []
    for host, locations in _servers(ingresses).items():
        regex = any(_ann(loc.annotations, "use-regex") == "true" for loc in locations)
        ordered = sorted(locations, key=lambda loc: loc.path, reverse=True)
        default = " default_server" if host == "_" else ""
        block = ["server {", f"    listen 127.0.0.1:{port}{default};",
                 f"    server_name {host};"]
        for loc in ordered:
            block += ["    " + line for line in _location(loc, regex, unready)]
        block += ["    " + line for line in _error_locations(ordered)]
        blocks.append([*block, "}"])
    return blocks
