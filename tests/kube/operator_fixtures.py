"""Shared pieces for the operator's cluster tests: CRD install, RBAC from the chart's file,
persistent volumes for the model claims (the local cluster has no storage provisioner)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import kubernetes
import yaml
from kubernetes.client import ApiException

from tests.kube import binaries
from tests.kube.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "charts/chatbot/crds/chatbotmodels.yaml"
RBAC_FILE = ROOT / "charts/chatbot/files/operator-rbac.yaml"
EXAMPLE = ROOT / "operator/examples/chatbotmodel.yaml"
GROUP, VERSION, PLURAL = "chatbot.treenut.ai", "v1alpha1", "chatbotmodels"
OPERATOR_MODULE = "chatbot_operator.handlers"


def install_crd(api) -> None:
    ext = kubernetes.client.ApiextensionsV1Api(api)
    body = yaml.safe_load(CRD_FILE.read_text())
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        current = ext.read_custom_resource_definition(body["metadata"]["name"])
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        ext.replace_custom_resource_definition(body["metadata"]["name"], body)

    def established():
        crd = ext.read_custom_resource_definition(body["metadata"]["name"])
        return any(c.type == "Established" and c.status == "True"
                   for c in crd.status.conditions or [])

    wait_for(established, timeout=30, desc="CRD Established")
    custom = kubernetes.client.CustomObjectsApi(api)
    # The discovery/storage for the new kind is ready a moment after Established.
    wait_for(lambda: custom.list_cluster_custom_object(GROUP, VERSION, PLURAL) is not None,
             timeout=30, desc="ChatbotModel served")


def operator_cluster_role(api, name: str) -> str:
    rbac = kubernetes.client.RbacAuthorizationV1Api(api)
    rules = yaml.safe_load(RBAC_FILE.read_text())["rules"]
    with contextlib.suppress(ApiException):
        rbac.delete_cluster_role(name)
    rbac.create_cluster_role({"metadata": {"name": name}, "rules": rules})
    return name


def example(name: str = "chatbot") -> dict:
    body = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"]["name"] = name
    return body


def model_volumes(api, namespace: str, name: str) -> list[str]:
    """One pre-bound PersistentVolume per persona claim (static provisioning)."""
    core = kubernetes.client.CoreV1Api(api)
    created = []
    for persona in ("office", "character"):
        pv = f"{namespace}-{persona}"[:63]
        core.create_persistent_volume({
            "metadata": {"name": pv},
            "spec": {"capacity": {"storage": "20Gi"}, "accessModes": ["ReadWriteOnce"],
                     "hostPath": {"path": f"/tmp/{pv}"},
                     "persistentVolumeReclaimPolicy": "Delete",
                     "storageClassName": "",
                     "claimRef": {"namespace": namespace, "name": f"{name}-{persona}-models"}},
        })
        created.append(pv)
    return created


def delete_volumes(api, names: list[str]) -> None:
    core = kubernetes.client.CoreV1Api(api)
    for pv in names:
        with contextlib.suppress(ApiException):
            core.delete_persistent_volume(pv)


def get_cbm(api, namespace: str, name: str) -> dict | None:
    custom = kubernetes.client.CustomObjectsApi(api)
    try:
        return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def condition(obj: dict | None, type_: str) -> dict:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return c
    return {}


GATEWAY_API_MODULE = "sigs.k8s.io/gateway-api"


def _gateway_api_zip() -> tuple[Path, str]:
    """The sigs.k8s.io/gateway-api module zip (version pinned in versions.env), fetched once
    into build-binaries' module cache, and the prefix of its standard-channel CRDs."""
    version = binaries.versions()["GATEWAY_API_VERSION"]
    return (binaries.module_zip(GATEWAY_API_MODULE, version, timeout=300),
            f"{GATEWAY_API_MODULE}@{version}/config/crd/standard/")


def gateway_api_crd(kind_file: str = "gateway.networking.k8s.io_httproutes.yaml") -> dict:
    """A Gateway API CRD from the sigs.k8s.io/gateway-api module zip.

    Only the zip is read (the module's Go code is never built), so a module that asks for
    a newer Go than the machine's still works.
    """
    import zipfile

    zip_path, prefix = _gateway_api_zip()
    with zipfile.ZipFile(zip_path) as zf:
        return yaml.safe_load(zf.read(prefix + kind_file))


def gateway_api_crds() -> list[dict]:
    """Every standard-channel Gateway API CRD (what a Gateway controller such as Traefik
    watches: GatewayClass, Gateway, HTTPRoute, GRPCRoute, ReferenceGrant, ...)."""
    import zipfile

    zip_path, prefix = _gateway_api_zip()
    with zipfile.ZipFile(zip_path) as zf:
        return [yaml.safe_load(zf.read(n)) for n in sorted(zf.namelist())
                if n.startswith(prefix) and n.endswith(".yaml")
                and "_vap_" not in n]


KEDA_MODULE = "github.com/kedacore/keda/v2"


def keda_scaledobject_crd() -> dict:
    """KEDA's ScaledObject CRD from its Go module zip (KEDA_VERSION in versions.env), as
    KEDA's chart installs it; only the zip is read."""
    import zipfile

    version = binaries.versions()["KEDA_VERSION"]
    zip_path = binaries.module_zip(KEDA_MODULE, version, timeout=300)
    with zipfile.ZipFile(zip_path) as zf:
        return yaml.safe_load(zf.read(
            f"{KEDA_MODULE}@{version}/config/crd/bases/keda.sh_scaledobjects.yaml"))


def install_crd_object(api, body: dict) -> None:
    ext = kubernetes.client.ApiextensionsV1Api(api)
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as exc:
        if exc.status != 409:
            raise

    def established():
        crd = ext.read_custom_resource_definition(body["metadata"]["name"])
        return any(c.type == "Established" and c.status == "True"
                   for c in crd.status.conditions or [])

    wait_for(established, timeout=30, desc=f"CRD {body['metadata']['name']} Established")
