"""Run a kopf operator in this process, against a given kubeconfig, with kopf's own
:class:`kopf.testing.KopfRunner` (``kopf run`` in a thread).

What KopfRunner does not do, and :class:`KopfOperator` adds around it:

* credentials from one kubeconfig only (admin, or a restricted ServiceAccount token): a
  login handler returns :func:`connection_info` for it, and while the operator runs
  ``KUBECONFIG`` and the ``kubernetes`` client's default kubeconfig point at it, so that
  handlers that build their own client get the same identity;
* a fresh registry every time, with the module re-imported (``kopf run -m`` would not
  import a module twice, so a second run would have no handlers);
* waiting until the operator is ready: KopfRunner returns as soon as its thread starts.
  kopf starts its liveness endpoint (``--liveness``) when the startup handlers are done,
  the moment its ready flag is raised, so a 200 from it is the signal;
* putting back what ``kopf run`` changes for the whole process: the test's stdio once the
  operator is ready (kopf's log lines stay in the runner's output), then the default
  registry and the root logger's handlers and level, so that the next test starts clean.

The operator runs in a thread, not a process: tests that need the operator killed
(SIGKILL) or run as its container runs it start ``kopf run`` as a subprocess themselves
(tests/cluster/test_cluster_chart.py).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tests.kube.helpers import client_configuration
from tests.support.ports import free_port

# Loopback, never through an HTTP proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


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

    >>> with KopfOperator("chatbot_operator.handlers", namespace=ns, kubeconfig=kc) as op:
    ...     ...  # create objects, wait for the operator's effects; op.alive

    ``module`` is an importable module name or a path to a ``.py`` file.
    ``namespace=None`` runs cluster-wide. Setting ``KUBECONFIG`` is process-wide (opt out
    with ``set_kubeconfig_env=False``): run one such operator at a time. ``settings`` may
    tweak ``kopf.OperatorSettings`` before the start. On leaving the ``with`` block the
    operator stops; if it crashed, its exception is raised (KopfRunner's ``reraise``).
    """

    def __init__(
        self,
        module: str,
        *,
        kubeconfig: str | Path,
        namespace: str | Iterable[str] | None = None,
        settings: Callable[[Any], None] | None = None,
        ready_timeout: float = 60,
        stop_timeout: float = 30,
        set_kubeconfig_env: bool = True,
    ):
        self.module = module
        self.kubeconfig = Path(kubeconfig)
        if isinstance(namespace, str):
            namespace = [namespace]
        self.namespaces = list(namespace) if namespace is not None else None
        self._settings_hook = settings
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.set_kubeconfig_env = set_kubeconfig_env
        self._runner = None
        self._undo = contextlib.ExitStack()

    def start(self) -> KopfOperator:
        import kopf
        from kopf.testing import KopfRunner

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

        liveness = f"http://127.0.0.1:{free_port()}/healthz"
        where = (["--all-namespaces"] if self.namespaces is None
                 else [f"--namespace={ns}" for ns in self.namespaces])
        self._change_process_state()
        self._runner = KopfRunner(["run", "--standalone", f"--liveness={liveness}", *where],
                                  registry=registry, settings=settings,
                                  timeout=self.stop_timeout)
        stdio = sys.stdin, sys.stdout, sys.stderr
        self._runner.__enter__()
        try:
            self._wait_ready(liveness)
        except BaseException:
            with contextlib.suppress(Exception):
                self.stop()
            raise
        # click's CliRunner has swapped the process's stdio for its own buffers (it puts
        # them back when the operator exits); kopf's log handler keeps writing to them,
        # while what the test prints goes to pytest again.
        sys.stdin, sys.stdout, sys.stderr = stdio
        return self

    def _wait_ready(self, liveness: str) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self._runner.future.done():
                result = self._runner.future.result()
                raise RuntimeError(f"kopf operator {self.module} exited while starting "
                                   f"(exit code {result.exit_code}):\n{result.output[-3000:]}"
                                   ) from result.exception
            with contextlib.suppress(OSError):
                with _DIRECT.open(liveness, timeout=1) as resp:
                    if resp.status == 200:
                        return
            time.sleep(0.05)
        raise RuntimeError(f"kopf operator {self.module} not ready after {self.ready_timeout}s")

    def _change_process_state(self) -> None:
        """Point KUBECONFIG at the operator's kubeconfig, and be ready to put back what
        ``kopf run`` changes for the whole process; :meth:`stop` undoes both."""
        import kopf
        import kubernetes.config.kube_config
        import pytest

        mp = self._undo.enter_context(pytest.MonkeyPatch.context())
        if self.set_kubeconfig_env:
            mp.setenv("KUBECONFIG", str(self.kubeconfig))
            # The kubernetes client reads $KUBECONFIG once, at import; make its
            # argument-less load_kube_config()/new_client_from_config() follow too.
            mp.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION",
                       str(self.kubeconfig))
        self._undo.callback(kopf.set_default_registry, kopf.get_default_registry())
        root, quiet = logging.getLogger(), logging.getLogger("asyncio")
        self._undo.callback(root.setLevel, root.level)
        for logger in (root, quiet):  # kopf's loggers.configure() edits these in place
            mp.setattr(logger, "handlers", list(logger.handlers))
        mp.setattr(quiet, "propagate", quiet.propagate)

    @property
    def alive(self) -> bool:
        return self._runner is not None and not self._runner.future.done()

    def stop(self, *exc_info: Any) -> None:
        """Stop the operator (idempotent); raise its exception if it crashed."""
        runner, self._runner = self._runner, None
        with self._undo:
            if runner is not None:
                runner.__exit__(*(exc_info or (None, None, None)))

    def __enter__(self) -> KopfOperator:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop(*exc_info)
