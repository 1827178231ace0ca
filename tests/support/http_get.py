"""A plain HTTP GET for tests that talk to a server the harness started (Traefik,
Prometheus): its status and body, an error status included, with no client library."""

from __future__ import annotations

import urllib.error
import urllib.request


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    """(status, body); 0 and no body when nothing answered (refused, reset, timed out)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""
