"""kind's engine beside the harness's: both ``dockerd`` share the host's network namespace,
and starting kind's must leave the harness's able to network its containers and builds.

What broke before: kind's engine ran with ``--bridge=none``, and Docker deletes ``docker0``
whenever its default bridge is disabled, so after a kind test every container and build
step in the harness's daemon failed ("could not find bridge docker0"), seen as pip unable
to resolve PyPI when the service image was rebuilt.
"""

from __future__ import annotations

import ipaddress
import json

from tests.kind import engine
from tests.support import docker_engine as harness

RESOLVE = "import socket; print(socket.getaddrinfo('pypi.org', 443)[0][4][0])"


def _ipv4_subnets(docker, network: str) -> list[ipaddress.IPv4Network]:
    info = json.loads(docker("network", "inspect", network).stdout)[0]
    return [n for c in info["IPAM"]["Config"]
            if (n := ipaddress.ip_network(c["Subnet"])).version == 4]


def test_harness_daemon_keeps_networking_with_kinds_engine_up(docker_engine, kind_engine,
                                                              tmp_path):
    base = harness.build_base_image()
    # a container on the harness's default bridge resolves the registry the builds use
    run = harness.docker("run", "--rm", base, "python3", "-c", RESOLVE, check=False,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    # and so does a BuildKit build step (what pip in the image builds needs)
    (tmp_path / "Dockerfile").write_text(f'FROM {base}\nRUN python3 -c "{RESOLVE}"\n')
    build = harness.docker("build", "--no-cache", "--progress=plain", str(tmp_path),
                           check=False, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    # kind's network stays off the harness's default bridge's addresses
    for kind_net in _ipv4_subnets(engine.docker, engine.KIND_NETWORK):
        for bridge in _ipv4_subnets(harness.docker, "bridge"):
            assert not kind_net.overlaps(bridge), (kind_net, bridge)
