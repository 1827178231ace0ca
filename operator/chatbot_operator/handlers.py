"""kopf handlers: small wrappers around reconcile(); all state lives in the cluster.

create/update/resume react to spec changes and restarts (with kopf's retries and backoff)
and re-check every child once (a child deleted by hand comes back); watch events of the
children (fetch Job done, Deployment ready; a persona pod Pending, which may have no node)
and of the resource's status (download progress,
the pods' GPU offload report, their API keys report) reconcile their owner again,
coalesced: one pass per resource after a quiet period (calm.py).
No timer: kopf would put a finalizer on every resource for it, and deleting one would then
wait for a running operator.

Everything the handlers share lives in kopf's memo, made once at startup: the configuration
(OperatorConfig, read from the environment), the Cluster client, the GPU profiles, the
Applied cache and the Coalescer.
"""

from __future__ import annotations

import copy
import logging

import kopf
import kubernetes

from chatbot_contract import ACCELERATION, GROUP, KIND, PLURAL, VERSION
from chatbot_operator.apply import RETRYABLE, Cluster
from chatbot_operator.calm import Applied, Coalescer
from chatbot_operator.config import OperatorConfig
from chatbot_operator.profiles import load_profiles
from chatbot_operator.reconcile import Outcome, reconcile
from chatbot_operator.spec import PERSONAS


def _api_client() -> kubernetes.client.ApiClient:
    try:
        kubernetes.config.load_incluster_config()
        return kubernetes.client.ApiClient()
    except kubernetes.config.ConfigException:
        return kubernetes.config.new_client_from_config()


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger, **_):
    memo.config = config = OperatorConfig()
    # reconcile posts its own Events for what happened; kopf's "handler succeeded" would
    # repeat on every watch event, so only its warnings and errors become Events.
    settings.posting.level = logging.WARNING
    # Under load (many resources, few cores) kopf's own annotation patch can take longer than
    # its default 5 s to come back through the watch; kopf would then handle an older event
    # as a new creation. Wait for it longer.
    settings.persistence.consistency_timeout = config.consistency_timeout_s
    memo.cluster = Cluster(_api_client(), config.field_manager)
    memo.profiles = load_profiles(config.gpu_profiles)
    memo.applied = Applied()
    memo.coalescer = Coalescer(lambda key: _run(memo, *key), config.coalesce_s,
                               config.coalesce_max_s, retry_if=_transient)
    logger.info("GPU profiles: %s", ", ".join(sorted(memo.profiles)))


def _transient(exc: Exception) -> bool:
    if isinstance(exc, kubernetes.client.ApiException):
        return exc.status in RETRYABLE
    # kopf's TemporaryError, and a timeout or a cut connection (urllib3, OSError).
    return not isinstance(exc, kopf.PermanentError)


@kopf.on.cleanup()
def cleanup(memo: kopf.Memo, **_):
    coalescer = getattr(memo, "coalescer", None)
    if coalescer is not None:
        coalescer.stop()
    cluster = getattr(memo, "cluster", None)
    if cluster is not None:
        cluster.api.close()


def _run(memo: kopf.Memo, namespace: str, name: str) -> Outcome:
    return reconcile(memo.cluster, memo.config, memo.profiles, namespace, name,
                     memo.cluster.event, memo.applied)


@kopf.on.create(GROUP, VERSION, PLURAL)
def on_create(memo: kopf.Memo, namespace: str, name: str, retry: int, **_):
    # A new resource (a new uid) has no children yet: its first pass reads none of them.
    # (kopf may call this again for an event older than its own bookkeeping patch: then the
    # children are known and nothing is forgotten.)
    if not memo.applied.knows(namespace, name):
        memo.applied.forget(namespace, name, new=retry == 0)
    _check(_run(memo, namespace, name))


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def on_change(memo: kopf.Memo, namespace: str, name: str, **_):
    memo.applied.forget(namespace, name)
    _check(_run(memo, namespace, name))


def _check(outcome: Outcome) -> None:
    if outcome.retry_after is not None:
        raise kopf.TemporaryError(outcome.retry_reason, delay=outcome.retry_after)


MANAGED = {"app.kubernetes.io/managed-by": "chatbot-operator"}


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
def on_child_event(body, type: str | None, namespace: str, memo: kopf.Memo, **_):
    meta = body.get("metadata", {})
    memo.applied.observe(body.get("kind"), namespace, meta.get("name"),
                         None if type == "DELETED" else copy.deepcopy(dict(body)))
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(f"{GROUP}/"):
            memo.coalescer.request((namespace, ref["name"]))


def _persona_pod(body, **_) -> bool:
    return body.get("metadata", {}).get("labels", {}).get(
        "app.kubernetes.io/component") in PERSONAS


@kopf.on.event("", "v1", "pods", labels=MANAGED, when=_persona_pod)
def on_persona_pod(body, type: str | None, namespace: str, memo: kopf.Memo, **_):
    """Persona pods while Pending: a pod the scheduler finds no node for changes nothing in
    its Deployment's status, so ReplicasScheduled follows these events (kept in Applied,
    read by the pass without an API call)."""
    meta = body.get("metadata", {})
    labels = meta.get("labels", {})
    instance = labels.get("app.kubernetes.io/instance")
    pending = type != "DELETED" and body.get("status", {}).get("phase") == "Pending"
    if instance and memo.applied.pod_seen(
            namespace, instance, labels["app.kubernetes.io/component"], meta.get("name"),
            {"status": copy.deepcopy(dict(body.get("status", {})))} if pending else None):
        memo.coalescer.request((namespace, instance))


@kopf.on.event(GROUP, VERSION, PLURAL, field="status.download")
def on_download_progress(type: str, namespace: str, name: str, memo: kopf.Memo, **_):
    if type in ("ADDED", "MODIFIED"):
        memo.coalescer.request((namespace, name))


@kopf.on.event(GROUP, VERSION, PLURAL, field=f"status.{ACCELERATION}")
def on_acceleration_report(type: str, namespace: str, name: str, memo: kopf.Memo, **_):
    if type in ("ADDED", "MODIFIED"):
        memo.coalescer.request((namespace, name))


@kopf.on.event(GROUP, VERSION, PLURAL, field="status.apiKeys")
def on_api_keys_report(type: str, namespace: str, name: str, memo: kopf.Memo, **_):
    """The pods read a new (or refused) API keys file: ApiKeysValid follows."""
    if type in ("ADDED", "MODIFIED"):
        memo.coalescer.request((namespace, name))
