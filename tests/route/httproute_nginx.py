"""A Gateway API HTTPRoute as nginx server blocks: what an nginx-based Gateway (NGINX Gateway
Fabric) does with the parts of the HTTPRoute spec this project uses, following the
Gateway API's own rules. The Gateway implementation cannot run here; this module is its
stand-in, and nginx, the HTTPRoute (from the operator's builder) and the backends are real.

- `hostnames` -> server_name; without hostnames the route serves every host;
- `PathPrefix` matches whole path elements: `/office` matches `/office` and `/office/...`,
  never `/officer` (so `location = /office` plus `location /office/`); `/` matches all;
- `URLRewrite` `ReplacePrefixMatch`: the matched prefix is replaced (`/office/healthz` with
  "/" becomes `/healthz`, `/office` becomes `/`);
- paths no rule matches: the Gateway's own 404;
- a backend Service without a ready endpoint: 503 (`nginx.http_config`).
"""

from __future__ import annotations

from tests.route.nginx import PROXY_HEADERS, upstream


def _proxy(backend: str, rewrite: str | None) -> list[str]:
    lines = [f"    rewrite {rewrite} break;"] if rewrite else []
    return [*lines, *("    " + header for header in PROXY_HEADERS),
            f"    proxy_pass http://{upstream(backend)};"]


def _rule_locations(rule: dict) -> list[str]:
    [backend] = [ref["name"] for ref in rule["backendRefs"]]
    replace = None
    for f in rule.get("filters") or []:
        path = (f.get("urlRewrite") or {}).get("path") or {}
        if path.get("type") == "ReplacePrefixMatch":
            replace = path["replacePrefixMatch"]
    lines: list[str] = []
    for match in rule["matches"]:
        assert match["path"]["type"] == "PathPrefix", match  # all this project uses
        prefix = match["path"]["value"].rstrip("/")
        if not prefix:  # "/" matches every path; a replacement of "/" by "/" is a no-op
            lines += ["location / {", *_proxy(backend, None), "}"]
            continue
        to = (replace or prefix).rstrip("/")
        lines += [f"location = {prefix} {{",
                  *_proxy(backend, f"^ {to or '/'}" if replace is not None else None), "}",
                  f"location {prefix}/ {{",
                  *_proxy(backend, f"^{prefix}/(.*)$ {to}/$1" if replace is not None
                          else None), "}"]
    return lines


def servers(route: dict, port: int) -> list[list[str]]:
    """nginx server blocks for one HTTPRoute on a listener at ``port`` of 127.0.0.1."""
    locations = [line for rule in route["spec"]["rules"] for line in _rule_locations(rule)]
    if not any(line == "location / {" for line in locations):
        locations += ["location / {", "    return 404;", "}"]
    hosts = route["spec"].get("hostnames") or []
    blocks = []
    if hosts:  # other hosts reach no route: the Gateway's 404
        blocks.append(["server {", f"    listen 127.0.0.1:{port} default_server;",
                       "    server_name _;", "    return 404;", "}"])
    blocks.append(["server {", f"    listen 127.0.0.1:{port}{'' if hosts else ' default_server'};",
                   f"    server_name {' '.join(hosts) or '_'};",
                   *("    " + line for line in locations), "}"])
    return blocks
