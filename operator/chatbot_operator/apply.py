"""Talking to the cluster: server-side apply under one field manager, reads, deletes.

Every child is applied whole with `force`, so re-applying an unchanged manifest changes
nothing and the operator owns exactly the fields it sets.
"""

from __future__ import annotations

import datetime
import json
import logging

import kopf
import kubernetes
from kubernetes.client import ApiException

from chatbot_contract import GROUP, PLURAL, VERSION

# apiVersion, kind -> (URL prefix, plural). Only the kinds the operator manages or reads.
_KINDS: dict[tuple[str, str], tuple[str, str]] = {
    ("v1", "ConfigMap"): ("/api/v1", "configmaps"),
    ("v1", "PersistentVolumeClaim"): ("/api/v1", "persistentvolumeclaims"),
    ("v1", "Service"): ("/api/v1", "services"),
    ("v1", "ServiceAccount"): ("/api/v1", "serviceaccounts"),
    ("keda.sh/v1alpha1", "ScaledObject"): ("/apis/keda.sh/v1alpha1", "scaledobjects"),
    ("apps/v1", "Deployment"): ("/apis/apps/v1", "deployments"),
    ("batch/v1", "Job"): ("/apis/batch/v1", "jobs"),
    ("networking.k8s.io/v1", "Ingress"): ("/apis/networking.k8s.io/v1", "ingresses"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"):
        ("/apis/gateway.networking.k8s.io/v1", "httproutes"),
    ("rbac.authorization.k8s.io/v1", "Role"): ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"):
        ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    (f"{GROUP}/{VERSION}", "ChatbotModel"): (f"/apis/{GROUP}/{VERSION}", PLURAL),
}

log = logging.getLogger(__name__)

RETRYABLE = {409, 429, 500, 502, 503, 504}


def _path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    prefix, plural = _KINDS[(api_version, kind)]
    path = f"{prefix}/namespaces/{namespace}/{plural}"
    return f"{path}/{name}" if name else path


def _custom_path(group: str, version: str, plural: str, namespace: str, name: str) -> str:
    return f"/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}"


class Cluster:
    """The few calls the operator makes, on one ApiClient."""

    def __init__(self, api: kubernetes.client.ApiClient, field_manager: str):
        self.api = api
        self.field_manager = field_manager

    def _call(self, method: str, path: str, *, body=None, query=None, content_type=None):
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        method, url, headers, body, post = self.api.param_serialize(
            method, path, query_params=query or [], header_params=headers, body=body,
            auth_settings=["BearerToken"])
        resp = self.api.call_api(method, url, header_params=headers, body=body,
                                 post_params=post, _request_timeout=30)
        data = resp.read()
        if not 200 <= resp.status < 300:
            raise ApiException(status=resp.status, reason=resp.reason,
                               body=data.decode(errors="replace") if data else None)
        return json.loads(data) if data else None

    def apply(self, obj: dict) -> dict:
        meta = obj["metadata"]
        path = _path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        return self._call("PATCH", path, body=obj,
                          query=[("fieldManager", self.field_manager), ("force", "true")],
                          content_type="application/apply-patch+yaml")

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict | None:
        try:
            return self._call("GET", _path(api_version, kind, namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, api_version: str, kind: str, namespace: str, label_selector: str) -> list:
        out = self._call("GET", _path(api_version, kind, namespace),
                         query=[("labelSelector", label_selector)])
        return out.get("items", [])

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        try:
            self._call("DELETE", _path(api_version, kind, namespace, name),
                       body={"propagationPolicy": "Background"})
        except ApiException as exc:
            if exc.status != 404:
                raise

    def get_custom(self, group: str, version: str, plural: str, namespace: str,
                   name: str) -> dict | None:
        """A custom resource (the ChatbotModel); None when it is gone."""
        try:
            return self._call("GET", _custom_path(group, version, plural, namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch_custom_status(self, group: str, version: str, plural: str, namespace: str,
                            name: str, patch: dict) -> dict | None:
        """A JSON merge patch of a custom resource's status subresource; None when the
        resource is gone."""
        path = _custom_path(group, version, plural, namespace, name) + "/status"
        try:
            return self._call("PATCH", path, body=patch,
                              content_type="application/merge-patch+json")
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def event(self, obj: dict, type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about ``obj`` (kopf's own posting only carries its warnings)."""
        meta = obj["metadata"]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
                               "name": meta["name"], "namespace": meta["namespace"],
                               "uid": meta["uid"]},
            "type": type_, "reason": reason, "message": message[:1024],
            "source": {"component": self.field_manager},
            "reportingComponent": self.field_manager, "reportingInstance": self.field_manager,
            "firstTimestamp": now[:19] + "Z", "lastTimestamp": now[:19] + "Z",
            "eventTime": now, "action": reason, "count": 1,
        }
        try:
            self._call("POST", f"/api/v1/namespaces/{meta['namespace']}/events", body=body)
        except ApiException as exc:  # an Event is never worth failing a reconcile for
            log.warning("could not post event %s: %s", reason, exc.status)


def as_kopf_error(exc: ApiException, what: str) -> Exception:
    """Transient API failures retry with backoff; the rest is a permanent error."""
    reason = f"{what}: {exc.status} {exc.reason}"
    try:
        message = json.loads(exc.body or "{}").get("message")
        if message:
            reason += f": {message}"
    except (ValueError, AttributeError):
        pass
    if exc.status in RETRYABLE or exc.status is None or exc.status == 0:
        return kopf.TemporaryError(reason, delay=5)
    return kopf.PermanentError(reason)
