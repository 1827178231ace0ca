"""kopf handlers: small wrappers around reconcile(); all state lives in the cluster.

create/update/resume react to spec changes and restarts (with kopf's retries and backoff);
watch events of the children (fetch Job done, Deployment ready, a child edited or deleted
by hand) and of the resource's status (download progress) reconcile their owner again.
No timer: kopf would put a finalizer on every resource for it, and deleting one would then
wait for a running operator.
"""

from __future__ import annotations

import logging

import kopf
import kubernetes

from chatbot_operator.apply import Cluster
from chatbot_operator.config import OperatorConfig
from chatbot_operator.profiles import load_profiles
from chatbot_operator.reconcile import reconcile
from chatbot_operator.spec import GROUP, KIND, PLURAL, VERSION

CONFIG = OperatorConfig()


def _api_client() -> kubernetes.client.ApiClient:
    try:
        kubernetes.config.load_incluster_config()
        return kubernetes.client.ApiClient()
    except kubernetes.config.ConfigException:
        return kubernetes.config.new_client_from_config()


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger, **_):
    global CONFIG
    CONFIG = OperatorConfig()
    # reconcile posts its own Events for what happened; kopf's "handler succeeded" would
    # repeat on every watch event, so only its warnings and errors become Events.
    settings.posting.level = logging.WARNING
    memo.cluster = Cluster(_api_client(), CONFIG.field_manager)
    memo.profiles = load_profiles(CONFIG.gpu_profiles)
    logger.info("GPU profiles: %s", ", ".join(sorted(memo.profiles)))


@kopf.on.cleanup()
def cleanup(memo: kopf.Memo, **_):
    cluster = getattr(memo, "cluster", None)
    if cluster is not None:
        cluster.api.close()


def _run(memo: kopf.Memo, namespace: str, name: str) -> dict | None:
    return reconcile(memo.cluster, CONFIG, memo.profiles, namespace, name, memo.cluster.event)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def on_change(memo: kopf.Memo, namespace: str, name: str, **_):
    status = _run(memo, namespace, name) or {}
    for cond in status.get("conditions") or []:
        if cond["reason"] == "RouteAPIMissing":
            # Reported in status; check again later (the API may get installed).
            raise kopf.TemporaryError(cond["message"], delay=CONFIG.retry_delay_s)


MANAGED = {"app.kubernetes.io/managed-by": "chatbot-operator"}


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
def on_child_event(body, namespace: str, memo: kopf.Memo, **_):
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(f"{GROUP}/"):
            _run(memo, namespace, ref["name"])


@kopf.on.event(GROUP, VERSION, PLURAL, field="status.download")
def on_download_progress(type: str, namespace: str, name: str, memo: kopf.Memo, **_):
    if type in ("ADDED", "MODIFIED"):
        _run(memo, namespace, name)
