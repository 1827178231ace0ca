"""Helpers for tests that talk to a real Kubernetes API server.

* :func:`wait_for` - bounded polling (no sleeps-as-assertions).
* :func:`connection_info` - kopf ``ConnectionInfo`` from any kubeconfig.
* :class:`KopfOperator` - run a kopf operator module in-process, in a thread,
  against a given kubeconfig (admin or a restricted ServiceAccount token).
* :func:`service_account_kubeconfig` - ServiceAccount + TokenRequest token +
  kubeconfig, optionally bound to (Cluster)Roles.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import importlib.util
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from tests.support.requirements import required

T = TypeVar("T")

log = logging.getLogger(__name__)


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


def connection_info(kubeconfig: str | Path, priority: int = 1000):
    """kopf ConnectionInfo for a kubeconfig file (certs, tokens, embedded data, exec)."""
    import kopf

    cfg = client_configuration(kubeconfig)
    header = cfg.get_api_key_with_prefix("authorization") or cfg.get_api_key_with_prefix(
        "BearerToken"
    )
    parts = header.split(" ", 1) if header else []
    scheme, token = (
        (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    )
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        username=cfg.username or None,
        password=cfg.password or None,
        scheme=scheme,
        token=token,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
        priority=priority,
    )


# --------------------------------------------------------------------------- kopf


def _load_handlers(module: str, registry) -> None:
    """Import (or re-import) an operator module so that its handlers land in ``registry``."""
    import kopf

    previous = kopf.get_default_registry()
    kopf.set_default_registry(registry)
    try:
        path = Path(module)
        if module.endswith(".py") or path.is_file():
            name = f"_kopf_under_test_{abs(hash(str(path.resolve())))}"
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot import operator file {module}")
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)
        elif module in sys.modules:
            importlib.reload(sys.modules[module])
        else:
            importlib.import_module(module)
    finally:
        kopf.set_default_registry(previous)


class KopfOperator:
    """Run a kopf operator in a background thread of this process.

    >>> with KopfOperator("chatbot_operator.main", namespace=ns, kubeconfig=kc) as op:
    ...     ...  # create objects, wait for the operator's effects
    >>> op.raise_if_failed()

    ``module`` is an importable module name or a path to a ``.py`` file. Handlers are
    loaded into a fresh registry (the module is re-imported if it was imported
    before). ``namespace=None`` runs cluster-wide. Credentials come only from
    ``kubeconfig`` (a login handler is added; the environment's KUBECONFIG is not
    used by kopf itself). While it runs, ``os.environ["KUBECONFIG"]`` points at
    ``kubeconfig`` too, and so does the ``kubernetes`` client's default kubeconfig
    location (``set_kubeconfig_env=False`` to opt out), so that handlers that build
    their own client with ``load_kube_config()`` / ``new_client_from_config()`` get
    the same (possibly restricted) identity; both are restored on stop. That is
    process-wide: run one such operator at a time. ``settings`` may tweak
    ``kopf.OperatorSettings`` before the start.
    """

    def __init__(
        self,
        module: str,
        *,
        kubeconfig: str | Path,
        namespace: str | Iterable[str] | None = None,
        settings: Callable[[Any], None] | None = None,
        memo: Any = None,
        ready_timeout: float = 60,
        stop_timeout: float = 30,
        set_kubeconfig_env: bool = True,
    ):
        self.set_kubeconfig_env = set_kubeconfig_env
        self._saved_env: str | None = None
        self._saved_default: str = ""
        self.module = module
        self.kubeconfig = Path(kubeconfig)
        if isinstance(namespace, str):
            namespace = [namespace]
        self.namespaces = list(namespace) if namespace is not None else None
        self._settings_hook = settings
        self._memo = memo
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self._thread: threading.Thread | None = None
        self._ready: concurrent.futures.Future = concurrent.futures.Future()
        self._stop: concurrent.futures.Future = concurrent.futures.Future()
        self.exception: BaseException | None = None

    def start(self) -> KopfOperator:
        import kopf

        registry = kopf.OperatorRegistry()
        _load_handlers(self.module, registry)
        conn = connection_info(self.kubeconfig)

        @kopf.on.login(registry=registry, id="chatbot-test-login")
        def _login(**_: Any) -> kopf.ConnectionInfo:
            return conn

        settings = kopf.OperatorSettings()
        settings.watching.server_timeout = 30
        settings.watching.client_timeout = 40
        settings.networking.connect_timeout = 10
        if self._settings_hook:
            self._settings_hook(settings)

        kwargs: dict[str, Any] = {
            "registry": registry,
            "settings": settings,
            "standalone": True,
            "ready_flag": self._ready,
            "stop_flag": self._stop,
        }
        if self._memo is not None:
            kwargs["memo"] = self._memo
        if self.namespaces is None:
            kwargs["clusterwide"] = True
        else:
            kwargs["namespaces"] = self.namespaces

        if self.set_kubeconfig_env:
            self._set_kubeconfig_env()

        def run() -> None:
            try:
                asyncio.run(kopf.operator(**kwargs))
            except BaseException as exc:  # noqa: BLE001 - reported to the test
                self.exception = exc
                if not self._ready.done():
                    self._ready.set_exception(exc)

        self._thread = threading.Thread(target=run, name=f"kopf:{self.module}", daemon=True)
        self._thread.start()
        try:
            self._ready.result(timeout=self.ready_timeout)
        except concurrent.futures.TimeoutError:
            self.stop()
            raise RuntimeError(
                f"kopf operator {self.module} not ready after {self.ready_timeout}s"
            ) from self.exception
        return self

    def _set_kubeconfig_env(self) -> None:
        import kubernetes.config.kube_config as kc

        self._saved_env = os.environ.get("KUBECONFIG")
        self._saved_default = kc.KUBE_CONFIG_DEFAULT_LOCATION
        os.environ["KUBECONFIG"] = str(self.kubeconfig)
        # The kubernetes client reads $KUBECONFIG once, at import; make its
        # argument-less load_kube_config()/new_client_from_config() follow too.
        kc.KUBE_CONFIG_DEFAULT_LOCATION = str(self.kubeconfig)

    def _restore_kubeconfig_env(self) -> None:
        import kubernetes.config.kube_config as kc

        if os.environ.get("KUBECONFIG") == str(self.kubeconfig):
            if self._saved_env is None:
                os.environ.pop("KUBECONFIG", None)
            else:
                os.environ["KUBECONFIG"] = self._saved_env
        if kc.KUBE_CONFIG_DEFAULT_LOCATION == str(self.kubeconfig):
            kc.KUBE_CONFIG_DEFAULT_LOCATION = self._saved_default

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        if self._thread is None:
            return
        if not self._stop.done():
            self._stop.set_result(None)
        self._thread.join(self.stop_timeout)
        if self.set_kubeconfig_env:
            self._restore_kubeconfig_env()
        if self._thread.is_alive():
            raise RuntimeError(f"kopf operator {self.module} did not stop in {self.stop_timeout}s")

    def raise_if_failed(self) -> None:
        if self.exception is not None:
            raise RuntimeError(f"kopf operator {self.module} crashed") from self.exception

    def __enter__(self) -> KopfOperator:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()
        if exc_info[0] is None:
            self.raise_if_failed()


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
