"""Helpers for tests that talk to a real Kubernetes API server.

* :func:`require_cluster`, :func:`importorskip` - the skip-or-fail policy: a missing
  binary or package skips a test, unless ``CHATBOT_REQUIRE_CLUSTER`` (or ``CI``) is set.
* :func:`wait_for` - bounded polling (no sleeps-as-assertions).
* :func:`api_client`, :func:`client_configuration` - clients for a given kubeconfig,
  never the process-wide default one.
* :func:`service_account_kubeconfig` - ServiceAccount + TokenRequest token +
  kubeconfig, optionally bound to (Cluster)Roles.

The kopf operator runner is ``operator_runner.py``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from tests.support.requirements import required

T = TypeVar("T")


REQUIRE_ENV = "CHATBOT_REQUIRE_CLUSTER"


def require_cluster() -> bool:
    """Whether missing cluster binaries are an error (CI) rather than a reason to skip."""
    return required(REQUIRE_ENV)


def importorskip(modname: str):
    """``pytest.importorskip``, but a hard failure when the cluster is required (CI)."""
    import pytest

    try:
        return importlib.import_module(modname)
    except ImportError as exc:
        msg = f"{modname} is not installed (pip install -e '.[operator,dev]'): {exc}"
        if require_cluster():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg, allow_module_level=True)


class WaitTimeout(AssertionError):
    pass


def wait_for(
    fn: Callable[[], T],
    *,
    timeout: float = 60,
    interval: float = 0.25,
    desc: str = "condition",
) -> T:
    """Call ``fn`` until it returns something truthy; return that, or fail after ``timeout``.

    Exceptions raised by ``fn`` count as "not yet" and the last one is reported.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    last_exc: BaseException | None = None
    while True:
        try:
            last = fn()
            last_exc = None
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_exc = exc
        if time.monotonic() >= deadline:
            raise WaitTimeout(
                f"timed out after {timeout:.0f}s waiting for {desc}; "
                f"last result: {last!r}; last error: {last_exc!r}"
            )
        time.sleep(interval)


# --------------------------------------------------------------------------- clients


def api_client(kubeconfig: str | Path):
    """A fresh ``kubernetes.client.ApiClient`` for this kubeconfig (never the global one)."""
    import kubernetes

    return kubernetes.config.new_client_from_config(config_file=str(kubeconfig))


def client_configuration(kubeconfig: str | Path):
    import kubernetes

    cfg = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(
        config_file=str(kubeconfig), client_configuration=cfg, persist_config=False
    )
    return cfg


# --------------------------------------------------------------------------- RBAC


def service_account_kubeconfig(
    admin_kubeconfig: str | Path,
    namespace: str,
    name: str,
    out: str | Path,
    *,
    cluster_roles: Iterable[str] = (),
    roles: Iterable[str] = (),
    cluster_role_bindings_namespaced: bool = False,
    expiration_seconds: int = 3600,
) -> tuple[Path, list[str]]:
    """Create ServiceAccount ``namespace/name``, bind it, and write a token kubeconfig.

    ``cluster_roles`` are bound cluster-wide with ClusterRoleBindings (or, with
    ``cluster_role_bindings_namespaced=True``, with RoleBindings in ``namespace``);
    ``roles`` are Roles in ``namespace`` bound with RoleBindings. The token comes
    from the TokenRequest API. Returns the kubeconfig path and the names of the
    ClusterRoleBindings created (cluster-scoped: the caller deletes them).
    """
    import kubernetes
    from kubernetes.client import (
        AuthenticationV1TokenRequest,
        V1ObjectMeta,
        V1ServiceAccount,
        V1TokenRequestSpec,
    )

    admin = api_client(admin_kubeconfig)
    core = kubernetes.client.CoreV1Api(admin)
    rbac = kubernetes.client.RbacAuthorizationV1Api(admin)
    with contextlib.suppress(kubernetes.client.ApiException):
        core.create_namespaced_service_account(
            namespace, V1ServiceAccount(metadata=V1ObjectMeta(name=name))
        )
    cluster_roles, roles = list(cluster_roles), list(roles)
    subject = {"kind": "ServiceAccount", "name": name, "namespace": namespace}
    crbs: list[str] = []
    for role in cluster_roles:
        ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role}
        if cluster_role_bindings_namespaced:
            rbac.create_namespaced_role_binding(namespace, {
                "metadata": {"name": f"{name}-{role}"[:253]},
                "roleRef": ref, "subjects": [subject]})
        else:
            crb = f"{namespace}-{name}-{role}"[:253]
            rbac.create_cluster_role_binding({
                "metadata": {"name": crb}, "roleRef": ref, "subjects": [subject]})
            crbs.append(crb)
    for role in roles:
        rbac.create_namespaced_role_binding(namespace, {
            "metadata": {"name": f"{name}-{role}"[:253]},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [subject]})
    _wait_until_authorized(admin, namespace, name, cluster_roles, roles,
                           cluster_role_bindings_namespaced)
    tr = core.create_namespaced_service_account_token(
        name, namespace,
        AuthenticationV1TokenRequest(spec=V1TokenRequestSpec(
            audiences=[], expiration_seconds=expiration_seconds)),
    )
    token = tr.status.token

    cfg = client_configuration(admin_kubeconfig)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cluster: dict[str, Any] = {"server": cfg.host}
    if cfg.ssl_ca_cert:
        ca = out.with_suffix(".ca.crt")
        ca.write_bytes(Path(cfg.ssl_ca_cert).read_bytes())
        cluster["certificate-authority"] = str(ca)
    if not cfg.verify_ssl:
        cluster["insecure-skip-tls-verify"] = True
    user = f"system:serviceaccount:{namespace}:{name}"
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {
            "cluster": "cluster", "user": user, "namespace": namespace}}],
        "current-context": "sa",
    }
    out.write_text(json.dumps(kubeconfig, indent=2) + "\n")
    out.chmod(0o600)
    admin.close()
    return out, crbs


def _wait_until_authorized(admin, namespace: str, name: str, cluster_roles: list[str],
                           roles: list[str], namespaced: bool, timeout: float = 30) -> None:
    """Bindings reach the RBAC authorizer through an informer: wait until they count.

    For the first rule of every bound role, a SubjectAccessReview for the
    ServiceAccount must say "allowed".
    """
    import kubernetes

    rbac = kubernetes.client.RbacAuthorizationV1Api(admin)
    authz = kubernetes.client.AuthorizationV1Api(admin)
    checks = []
    for role in cluster_roles:
        try:
            rules = rbac.read_cluster_role(role).rules or []
        except kubernetes.client.ApiException:
            continue
        checks += [(r, namespace if namespaced else None) for r in rules[:1]]
    for role in roles:
        try:
            rules = rbac.read_namespaced_role(role, namespace).rules or []
        except kubernetes.client.ApiException:
            continue
        checks += [(r, namespace) for r in rules[:1]]
    for rule, ns in checks:
        if not rule.resources or not rule.verbs:
            continue  # nonResourceURLs rules
        attrs = {"verb": rule.verbs[0], "group": (rule.api_groups or [""])[0],
                 "resource": rule.resources[0]}
        if ns:
            attrs["namespace"] = ns
        review = {"spec": {
            "user": f"system:serviceaccount:{namespace}:{name}",
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}",
                       "system:authenticated"],
            "resourceAttributes": attrs}}
        wait_for(lambda review=review: authz.create_subject_access_review(review).status.allowed,
                 timeout=timeout, desc=f"RBAC for {name}: {attrs}")
