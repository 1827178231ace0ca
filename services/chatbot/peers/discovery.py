"""Who the replicas of this persona are: a fixed list, or the addresses a DNS name lists
(the operator's headless Service: one A record per ready pod), looked up again every few
seconds. Plain DNS needs no Kubernetes API access and no RBAC; a pod that is not ready
drops out of the name, and a peer that refuses connections is skipped for a while.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

from chatbot.core.affinity import HashRing

log = logging.getLogger(__name__)


class Peers:
    """This replica and its peers as a hash ring, kept current in the background."""

    def __init__(self, self_url: str, static: list[str] = (), dns: str | None = None,
                 refresh_s: float = 2.0, down_s: float = 5.0) -> None:
        self.self_url = self_url
        self._static = [u.rstrip("/") for u in static]
        self._dns = dns
        self.refresh_s, self.down_s = refresh_s, down_s
        self._down_until: dict[str, float] = {}
        self._task: asyncio.Task | None = None
        self._resolved = asyncio.Event()
        self.ring = HashRing([self_url, *self._static])
        if dns is None:
            self._resolved.set()

    def _set(self, members: list[str]) -> None:
        if set(members) != set(self.ring.members):
            log.info("replicas: %s", ", ".join(sorted(members)))
            self.ring = HashRing(members)

    async def _resolve(self) -> None:
        host, _, port = self._dns.rpartition(":")
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, int(port), type=socket.SOCK_STREAM)
        except OSError as exc:  # no ready pod yet, or DNS away: keep what we had
            log.debug("peers: %s did not resolve: %s", host, exc)
            return
        members = {self.self_url, *self._static}
        for family, _, _, _, address in infos:
            ip = address[0]
            members.add(f"http://[{ip}]:{port}" if family == socket.AF_INET6
                        else f"http://{ip}:{port}")
        self._set(sorted(members))

    async def _refresh(self) -> None:
        while True:
            await self._resolve()
            self._resolved.set()
            await asyncio.sleep(self.refresh_s)

    async def current(self) -> HashRing:
        """The ring (starting the DNS refresh on first use, and waiting for its first
        answer at most one refresh period)."""
        if self._dns is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._refresh())
        if not self._resolved.is_set():
            try:
                await asyncio.wait_for(self._resolved.wait(), self.refresh_s)
            except TimeoutError:
                pass
        return self.ring

    async def resolve_now(self) -> HashRing:
        """The ring after one more DNS lookup (a fixed list: as it is)."""
        if self._dns is not None:
            await self._resolve()
        return self.ring

    def mark_down(self, member: str) -> None:
        self._down_until[member] = time.monotonic() + self.down_s

    def down(self) -> set[str]:
        now = time.monotonic()
        return {m for m, until in self._down_until.items() if until > now}
