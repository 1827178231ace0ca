"""A tiny kopf operator used to test the in-process operator runner.

For every ConfigMap labelled ``chatbot-test/echo=yes`` it creates an owned
ConfigMap ``<name>-echo`` with the same data, and records in it whether it could
read Secrets (it must not, when run with its restricted ServiceAccount).
"""

import kopf
import kubernetes


@kopf.on.startup()
def configure(memo: kopf.Memo, **_):
    # Like a real operator: credentials from $KUBECONFIG (or in-cluster config);
    # the test runner points KUBECONFIG at the operator's own kubeconfig.
    memo.api = kubernetes.config.new_client_from_config()


@kopf.on.create("", "v1", "configmaps", labels={"chatbot-test/echo": "yes"})
def echo(body, name, namespace, patch, logger, memo: kopf.Memo, **_):
    core = kubernetes.client.CoreV1Api(memo.api)
    try:
        core.list_namespaced_secret(namespace)
        secrets = "allowed"
    except kubernetes.client.ApiException as exc:
        secrets = f"denied:{exc.status}"
    child = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-echo"},
        "data": {**(body.get("data") or {}), "secrets": secrets},
    }
    kopf.append_owner_reference(child, owner=body)  # not adopt(): it copies labels
    core.create_namespaced_config_map(namespace, child)
    patch.metadata.annotations["chatbot-test/echoed"] = f"{name}-echo"
    logger.info("echoed %s", name)
