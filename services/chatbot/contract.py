"""What the operator relies on in the chat service: one source for both sides.

The service reads its configuration from ``CHATBOT_*`` variables (settings.py), answers its
probes on fixed paths and refuses bodies over a limit; the operator (chatbot_operator:
builders, spec, crd, gpu_fit) writes those variables into each ChatbotModel's ConfigMap,
probes those paths and sizes its Ingress and its defaults alike. Both import the names and
numbers from here, so a change is made once; tests/operator/test_service_contract.py parses
the ConfigMap the operator generates with the service's own Settings.

Standard library only, nothing imported from the rest of ``chatbot``: the operator image
imports this module without the service's dependencies.
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


def env_name(*path: str) -> str:
    """The variable of a (nested) setting: ``env_name("office", "model", "n_ctx")`` is
    ``CHATBOT_OFFICE__MODEL__N_CTX``; ``env_name("office_model")`` is
    ``CHATBOT_OFFICE_MODEL``."""
    if not path:
        raise ValueError("env_name needs the setting's field names")
    return ENV_PREFIX + NESTED_DELIMITER.join(part.upper() for part in path)
