"""On Kubernetes: tell the operator what llama.cpp really offloaded, and which API keys the
pod accepts.

After the model loads, each persona merge-patches ``status.acceleration.<persona>`` of its
ChatbotModel (``CHATBOT_STATUS_REPORT`` = NAMESPACE/NAME) with the pod's ServiceAccount
token, which may patch that resource's status and nothing else. The operator compares it
with the layers the pod was told (the report carries the operator's settings hash) and
keeps a persona that silently fell back to the CPU out of Ready.

With API keys, each change of the keys file a pod reads (reloaded, or refused with the
entries named) is merge-patched into ``status.apiKeys.<persona>``: the operator's
ApiKeysValid condition. Standard library only; a failed report is logged and retried a few
times, never fatal.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import ssl
import time
import urllib.request

from chatbot.settings import Settings
from chatbot_contract import (
    ACCELERATION,
    GROUP,
    PLURAL,
    REPORT_AT,
    REPORT_LAYERS_TOTAL,
    REPORT_OFFLOADED,
    REPORT_POD,
    REPORT_REQUESTED,
    REPORT_SETTINGS_HASH,
    REPORT_SUPPORTED,
    VERSION,
)

log = logging.getLogger(__name__)


def report_body(persona: str, facts: dict, settings: Settings) -> dict:
    n_layer = int(facts.get("n_layer") or 0)
    return {"status": {ACCELERATION: {persona: {
        REPORT_POD: settings.pod_name or os.uname().nodename,
        REPORT_SETTINGS_HASH: settings.settings_hash,
        REPORT_OFFLOADED: int(facts.get("gpu_layers_offloaded") or 0),
        REPORT_REQUESTED: facts.get("gpu_layers_requested"),
        REPORT_LAYERS_TOTAL: n_layer + 1,  # llama.cpp counts the output layer
        REPORT_SUPPORTED: bool(facts.get("gpu_offload_supported")),
        REPORT_AT: datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }}}}


def _api_url(settings: Settings) -> str:
    if settings.kube_api_url:
        return settings.kube_api_url.rstrip("/")
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
    return f"https://{host}:{port}"


def send(settings: Settings, body: dict, timeout: float = 10) -> None:
    namespace, name = settings.status_report.split("/")
    url = (f"{_api_url(settings)}/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/"
           f"{name}/status")
    token = settings.kube_token_file.read_text().strip()
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="PATCH", headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/merge-patch+json",
        "Accept": "application/json"})
    context = ssl.create_default_context(cafile=str(settings.kube_ca_file))
    with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
        resp.read()


def _send_with_retries(settings: Settings, body: dict, what: str, summary: str,
                       attempts: int) -> bool:
    """PATCHes `body`, retrying with a growing pause: the API server may be briefly away."""
    for attempt in range(1, attempts + 1):
        try:
            send(settings, body)
            log.info("reported %s to %s: %s", what, settings.status_report, summary)
            return True
        except (OSError, KeyError, ValueError) as exc:
            log.warning("%s report to %s failed (attempt %d): %s",
                        what, settings.status_report, attempt, exc)
            time.sleep(min(2 ** attempt, 10))
    return False


def report(settings: Settings, persona: str, facts: dict, attempts: int = 4) -> bool:
    body = report_body(persona, facts, settings)
    return _send_with_retries(settings, body, "GPU offload",
                              str(body["status"][ACCELERATION][persona]), attempts)


def api_keys_body(persona: str, keys: dict, settings: Settings) -> dict:
    return {"status": {"apiKeys": {persona: {
        "pod": settings.pod_name or os.uname().nodename,
        "state": keys["state"], "names": keys["names"], "detail": keys["detail"][:1000],
        "reportedAt": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }}}}


def report_api_keys(settings: Settings, persona: str, keys: dict, attempts: int = 4) -> bool:
    return _send_with_retries(settings, api_keys_body(persona, keys, settings), "API keys",
                              f"{keys['state']} {', '.join(keys['names'])}", attempts)
