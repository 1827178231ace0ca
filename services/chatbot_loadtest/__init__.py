"""The load-test client of the chat services: Locust users, a headless runner, an HTML
report (`chatbot-loadtest`, also run as `chatbot loadtest`).

A client over HTTP: it imports nothing of `chatbot` (it starts `chatbot serve` as a process
for `--spawn-stack`), and no image holds it. Locust and plotly come with the `load` extra;
the modules that need them import them lazily, so that `chatbot loadtest` without the extra
says what to install instead of a traceback.
"""

from __future__ import annotations

import importlib.util

MISSING_EXTRA = ("`chatbot loadtest` needs the load extra (Locust and plotly): "
                 "pip install 'chatbot-ai[load]' (from a checkout: pip install -e '.[load]')")


def missing_load_packages() -> list[str]:
    """The `load` extra's packages that are not installed."""
    return [name for name in ("locust", "plotly") if not _importable(name)]


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ValueError:  # sys.modules[name] is None: imports of it are blocked
        return False
