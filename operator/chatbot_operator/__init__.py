"""The ChatBot AI operator: `kopf run -m chatbot_operator` (add `--namespace NS`).

A ChatbotModel becomes: per persona a model PVC, a model-fetch Job, a Deployment pinned to
its GPU and a Service; one ConfigMap of settings; the route (Ingress or HTTPRoute) with a
404 backend. Modules: config (the operator's settings), spec (typed spec), crd (the CRD),
profiles (GPU profiles), gguf_header (a GGUF's shape), gpu_fit (gpuLayers "auto"), gpu_plan
(the layers per persona and the pods' offload report), builders (pure manifests),
route_claims (which model gets a contested route), apply (server-side apply), calm (apply
only what changed, one pass per burst), status (pure status), reconcile, handlers, fetch
(the download program run by the Job). What it shares with the chat service (the CRD's
names, the service's settings variables, probe paths, the offload report's keys):
chatbot_contract.
"""

from chatbot_operator import handlers  # noqa: F401  (registers the kopf handlers)
