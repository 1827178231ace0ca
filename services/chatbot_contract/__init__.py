"""What the operator and the chat service rely on in each other: one source for both sides.

The service reads its configuration from ``CHATBOT_*`` variables (chatbot/settings.py),
answers its probes on fixed paths, refuses bodies over a limit and reports its GPU offload
into its ChatbotModel's status; the operator (chatbot_operator: builders, spec, crd,
gpu_fit, gpu_plan) writes those variables into each ChatbotModel's ConfigMap, probes those
paths, sizes its Ingress and its defaults alike and reads that report. Both import the
names and numbers from here, so a change is made once; tests/operator/test_service_contract.py
parses the ConfigMap the operator generates with the service's own Settings.

A package of its own, standard library only: both images install it beside their own
package (the operator image holds no ``chatbot``, the service image no ``chatbot_operator``).
"""

from __future__ import annotations

# pydantic-settings: the prefix of every variable, and the separator of nested fields
# (CHATBOT_OFFICE__MODEL__N_CTX is Settings().office.model.n_ctx).
ENV_PREFIX = "CHATBOT_"
NESTED_DELIMITER = "__"

# Outside services' conventional names, read without the prefix (the CHATBOT_ forms work
# too); the operator passes them from the ChatbotModel's secrets.
MONGO_URL_ENV = "MONGO_URL"
OPENAI_API_KEY_ENV = "OPENAI_API_KEY"

# HTTP paths, relative to a persona's root (/office, /character behind the route).
HEALTH_PATH = "/healthz"  # liveness: the process answers
READY_PATH = "/readyz"  # readiness: the model is loaded
# The not-found backend's probe (`chatbot not-found`): a path no client asks for.
NOT_FOUND_HEALTH_PATH = "/__healthz"

# Where the operator mounts the ChatbotModel's API keys Secret (spec.apiKeys), and the file
# the service reads there (CHATBOT_API_KEYS_FILE; format: chatbot/domain/api_keys.py).
API_KEYS_DIR = "/etc/chatbot/api-keys"
API_KEYS_FILE = "keys.json"

# Request bodies over this are refused (413) by the service, and by the Ingress before it.
MAX_BODY_BYTES = 64 * 1024

# llama.cpp's context and batch per persona unless configured (the seed's values): the
# service's ModelSettings, the ChatbotModel's contextSize / batchSize, the GPU fit.
DEFAULT_CONTEXT_SIZE = 8191
DEFAULT_BATCH_SIZE = 2048

# On SIGTERM the service gives the answers in flight this long (CHATBOT_SHUTDOWN_GRACE_S);
# the operator's pods wait longer than it plus their preStop sleep before the kubelet kills.
DEFAULT_SHUTDOWN_GRACE_S = 20
# An answer still generating when that grace ends is stopped by the service itself (503 +
# Retry-After); uvicorn's own cut-off (a bare 500) waits this much longer, as a backstop.
# The pods' terminationGracePeriodSeconds leave more than this after the grace.
SHUTDOWN_CUTOFF_MARGIN_S = 2


# The ChatbotModel custom resource (the operator's CRD, the service's status report).
GROUP = "chatbot.treenut.ai"
VERSION = "v1alpha1"
KIND = "ChatbotModel"
PLURAL = "chatbotmodels"

# What llama.cpp really offloaded, as each persona's pods report it (chatbot/status_report.py)
# into ``status.<ACCELERATION>.<persona>`` and the operator reads it (gpu_plan.acceleration).
ACCELERATION = "acceleration"
REPORT_POD = "pod"  # the pod that reported
REPORT_SETTINGS_HASH = "settingsHash"  # the operator's settings hash the pod ran with
REPORT_OFFLOADED = "offloaded"  # layers on the GPU
REPORT_REQUESTED = "requested"  # n_gpu_layers the pod was told (-1: all)
REPORT_LAYERS_TOTAL = "layersTotal"  # the model's layers, its output layer included
REPORT_SUPPORTED = "supported"  # whether that llama.cpp has a GPU backend at all
REPORT_AT = "reportedAt"  # RFC 3339, UTC


def env_name(*path: str) -> str:
    """The variable of a (nested) setting: ``env_name("office", "model", "n_ctx")`` is
    ``CHATBOT_OFFICE__MODEL__N_CTX``; ``env_name("office_model")`` is
    ``CHATBOT_OFFICE_MODEL``."""
    if not path:
        raise ValueError("env_name needs the setting's field names")
    return ENV_PREFIX + NESTED_DELIMITER.join(part.upper() for part in path)
