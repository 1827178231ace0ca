"""What the test folders share: one importable home, so no folder reaches into another.

* ``tests.support.ports`` - :func:`free_port` (re-exported here).
* ``tests.support.server`` - :class:`ChatbotServer`, a real ``chatbot serve`` process on
  loopback (on the load-test client's ``LocalServer``), :func:`performance` (a persona's
  ``/performance`` numbers) and :func:`serve_to_the_end` (a refused configuration).
* ``tests.support.history`` - a stored conversation as its MongoDB document, read through
  either history store's public ``document()``.
* ``tests.support.ferretdb`` - a real FerretDB (MongoDB wire protocol) process.
* ``tests.support.docker_engine`` - the Docker Engine and the project's image builds;
  ``tests.support.image_fixtures`` - their session fixtures (``docker_engine``,
  ``service_image``, ``operator_image``).

The root conftest imports its fixtures from here only. The Kubernetes harness (control
plane, binaries, kopf runner, helm) is the package ``tests.kube``.
"""

from tests.support.ports import free_port

__all__ = ["free_port"]
