"""The ChatBot AI operator: `kopf run -m chatbot_operator` (add `--namespace NS`).

A ChatbotModel becomes: per persona a model PVC, a model-fetch Job, a Deployment pinned to
its GPU and a Service; one ConfigMap of settings; the route (Ingress or HTTPRoute) with a
404 backend. Modules: spec (typed spec), crd (the CRD), profiles (GPU profiles), builders
(pure manifests), apply (server-side apply), status (pure status), reconcile, handlers,
fetch (the download program run by the Job).
"""

from chatbot_operator import handlers  # noqa: F401  (registers the kopf handlers)
