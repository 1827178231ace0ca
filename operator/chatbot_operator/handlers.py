"""kopf handlers: small wrappers around reconcile(); all state lives in the cluster.

create/update/resume react at once to spec changes and restarts; the resync timer follows
what the children do (Job done, pods ready) and repairs drift.
"""

from __future__ import annotations

import logging

import kopf
import kubernetes

from chatbot_operator.apply import Cluster
from chatbot_operator.config import OperatorConfig
from chatbot_operator.profiles import load_profiles
from chatbot_operator.reconcile import reconcile
from chatbot_operator.spec import GROUP, PLURAL, VERSION

CONFIG = OperatorConfig()


def _api_client() -> kubernetes.client.ApiClient:
    try:
        kubernetes.config.load_incluster_config()
        return kubernetes.client.ApiClient()
    except kubernetes.config.ConfigException:
        return kubernetes.config.new_client_from_config()


def _post_event(body: dict, type_: str, reason: str, message: str) -> None:
    poster = kopf.warn if type_ == "Warning" else kopf.info
    poster(body, reason=reason, message=message[:1000])


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger, **_):
    global CONFIG
    CONFIG = OperatorConfig()
    # Our own Events say what happened; kopf's per-handler chatter would repeat on every
    # resync tick.
    settings.posting.level = logging.WARNING
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    memo.cluster = Cluster(_api_client(), CONFIG.field_manager)
    memo.profiles = load_profiles(CONFIG.gpu_profiles)
    logger.info("GPU profiles: %s", ", ".join(sorted(memo.profiles)))


@kopf.on.cleanup()
def cleanup(memo: kopf.Memo, **_):
    cluster = getattr(memo, "cluster", None)
    if cluster is not None:
        cluster.api.close()


def _run(memo: kopf.Memo, namespace: str, name: str) -> None:
    reconcile(memo.cluster, CONFIG, memo.profiles, namespace, name, _post_event)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def on_change(memo: kopf.Memo, namespace: str, name: str, **_):
    _run(memo, namespace, name)


@kopf.timer(GROUP, VERSION, PLURAL, interval=CONFIG.resync_interval_s, sharp=False)
def resync(memo: kopf.Memo, namespace: str, name: str, **_):
    _run(memo, namespace, name)
