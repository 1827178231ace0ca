"""Things only a real API server does: CEL validation, schema checks, SSA, RBAC."""

import pytest

from tests.kube import importorskip

kubernetes = importorskip("kubernetes")

from kubernetes.client import ApiException  # noqa: E402

from tests.kube import wait_for  # noqa: E402

pytestmark = pytest.mark.cluster

GROUP = "test.chatbot.example.com"
CEL_MESSAGE = "minReplicas must not exceed maxReplicas"


def _crd(plural, kind, rule=None, message=CEL_MESSAGE):
    # A throwaway CRD of its own, so its metadata has the shape of the product's CRD
    # (operator/chatbot_operator/crd.py) without reusing it: the API server is under test.
    spec_schema = {
        "type": "object",
        "properties": {
            "minReplicas": {"type": "integer", "minimum": 0},
            "maxReplicas": {"type": "integer", "minimum": 0},
            "model": {"type": "string", "enum": ["smollm2", "llama"]},
        },
    }
    if rule:
        spec_schema["x-kubernetes-validations"] = [{"rule": rule, "message": message}]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": plural[:-1], "kind": kind},
            "versions": [{
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": spec_schema},
                }},
            }],
        },
    }


@pytest.fixture(scope="module")
def scaler_crd(kube_cluster):
    client = kube_cluster.api_client()
    ext = kubernetes.client.ApiextensionsV1Api(client)
    body = _crd("celscalers", "CelScaler", rule="self.minReplicas <= self.maxReplicas")
    name = body["metadata"]["name"]
    ext.create_custom_resource_definition(body)

    def established():
        conds = ext.read_custom_resource_definition(name).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conds)

    wait_for(established, timeout=30, desc=f"CRD {name} Established")
    custom = kubernetes.client.CustomObjectsApi(client)
    # Established is not quite "served": wait until the resource answers a list.
    wait_for(lambda: custom.list_cluster_custom_object(GROUP, "v1", "celscalers") is not None,
             timeout=30, desc="celscalers served")
    yield custom
    ext.delete_custom_resource_definition(name)

    def deleted():
        try:
            ext.read_custom_resource_definition(name)
            return False
        except ApiException as exc:
            return exc.status == 404

    wait_for(deleted, timeout=60, desc=f"CRD {name} deleted")


def _scaler(name, lo, hi, model="smollm2"):
    return {"apiVersion": f"{GROUP}/v1", "kind": "CelScaler", "metadata": {"name": name},
            "spec": {"minReplicas": lo, "maxReplicas": hi, "model": model}}


def test_cel_rule_rejects_invalid_object_with_its_message(scaler_crd, namespace):
    ok = scaler_crd.create_namespaced_custom_object(
        GROUP, "v1", namespace, "celscalers", _scaler("ok", 1, 3))
    assert ok["spec"] == {"minReplicas": 1, "maxReplicas": 3, "model": "smollm2"}

    with pytest.raises(ApiException) as err:
        scaler_crd.create_namespaced_custom_object(
            GROUP, "v1", namespace, "celscalers", _scaler("bad", 5, 2))
    assert err.value.status == 422
    assert CEL_MESSAGE in err.value.body

    # The rule also guards updates of an existing object.
    with pytest.raises(ApiException) as err:
        scaler_crd.patch_namespaced_custom_object(
            GROUP, "v1", namespace, "celscalers", "ok", {"spec": {"minReplicas": 9}})
    assert err.value.status == 422 and CEL_MESSAGE in err.value.body


def test_openapi_schema_rejects_wrong_types_and_enum_values(scaler_crd, namespace):
    for bad_spec, fragment in (
        ({"minReplicas": "two", "maxReplicas": 3}, "spec.minReplicas"),
        ({"minReplicas": 1, "maxReplicas": 3, "model": "gpt"}, "spec.model"),
        ({"minReplicas": -1, "maxReplicas": 3}, "spec.minReplicas"),
    ):
        body = {"apiVersion": f"{GROUP}/v1", "kind": "CelScaler",
                "metadata": {"name": "bad"}, "spec": bad_spec}
        with pytest.raises(ApiException) as err:
            scaler_crd.create_namespaced_custom_object(GROUP, "v1", namespace, "celscalers", body)
        assert err.value.status == 422, bad_spec
        assert fragment in err.value.body, err.value.body


def test_crd_with_uncompilable_cel_rule_is_rejected(kube_api):
    ext = kubernetes.client.ApiextensionsV1Api(kube_api)
    body = _crd("brokenrules", "BrokenRule", rule="self.minReplicas <= self.noSuchField")
    with pytest.raises(ApiException) as err:
        ext.create_custom_resource_definition(body)
    assert err.value.status == 422
    assert "x-kubernetes-validations" in err.value.body
    assert "noSuchField" in err.value.body


def test_server_side_apply_tracks_field_managers_and_conflicts(kube_api, namespace):
    core = kubernetes.client.CoreV1Api(kube_api)

    def apply(manager, data, force=False):
        body = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "ssa", "namespace": namespace}, "data": data}
        return core.patch_namespaced_config_map(
            "ssa", namespace, body, field_manager=manager, force=force or None,
            _content_type="application/apply-patch+yaml")

    apply("operator", {"model": "smollm2"})
    apply("chart", {"replicas": "2"})
    cm = core.read_namespaced_config_map("ssa", namespace)
    assert cm.data == {"model": "smollm2", "replicas": "2"}
    assert {m.manager for m in cm.metadata.managed_fields} >= {"operator", "chart"}

    with pytest.raises(ApiException) as err:
        apply("chart", {"model": "llama"})
    assert err.value.status == 409 and "conflict" in err.value.body.lower()

    apply("chart", {"model": "llama", "replicas": "2"}, force=True)
    assert core.read_namespaced_config_map("ssa", namespace).data["model"] == "llama"


def test_rbac_is_enforced_for_service_account_tokens(kube_api, namespace, sa_kubeconfig):
    rbac = kubernetes.client.RbacAuthorizationV1Api(kube_api)
    rbac.create_namespaced_role(namespace, {
        "metadata": {"name": "cm-reader"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"],
                   "verbs": ["get", "list", "watch"]}],
    })
    kc = sa_kubeconfig(namespace, "reader", roles=["cm-reader"])
    as_sa = kubernetes.config.new_client_from_config(config_file=str(kc))
    core = kubernetes.client.CoreV1Api(as_sa)

    # Allowed by the Role (RoleBindings may take a moment to reach the authorizer cache).
    wait_for(lambda: core.list_namespaced_config_map(namespace) is not None,
             timeout=30, desc="ServiceAccount may list configmaps")
    # Not granted: reading secrets, writing configmaps, anything in other namespaces.
    for call in (
        lambda: core.list_namespaced_secret(namespace),
        lambda: core.create_namespaced_config_map(namespace, {"metadata": {"name": "x"}}),
        lambda: core.list_namespaced_config_map("default"),
        lambda: core.list_node(),
    ):
        with pytest.raises(ApiException) as err:
            call()
        assert err.value.status == 403
        assert f"system:serviceaccount:{namespace}:reader" in err.value.body
    as_sa.close()
