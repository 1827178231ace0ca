"""What `/performance` answers for a persona, and what a stopping service logs as its final
counters: the persona's counters since start, its queue and its engine's live counters."""

from __future__ import annotations

import socket

from chatbot.core.chat import ChatService

# The batched engine's live counters (shared by the personas on its model file), reported
# as `engine_<name>`; /readyz leaves them out of its engine facts.
ENGINE_COUNTERS = (
    "sequences_active", "sequences_waiting", "peak_sequences", "prompt_tokens_evaluated",
    "prompt_tokens_reused", "prompt_tokens_copied", "decode_steps", "decode_steps_one_thread",
    "peak_batch_tokens", "prompt_tokens_restored", "kv_host_bytes", "kv_host_sequences",
    "kv_host_saves", "kv_host_saved_tokens", "kv_host_restores", "kv_host_evictions",
    "prompt_tokens_prefilled", "prefilling", "prefills_cancelled",
)


def performance_report(service: ChatService) -> dict:
    """A persona's report. `instance` (host/counters id) names whose counters these are: it
    changes when another process answers (a restart, a rollout, another replica)."""
    engine = service.engine.status()
    return {
        "instance": f"{socket.gethostname()}/{service.stats.counters_id}",
        **service.stats.snapshot(),
        "active_connections": service.admission.active,
        "max_concurrent": service.admission.max_concurrent,
        "queue_size": service.admission.waiting,
        "max_queue": service.admission.max_queue,
        "fallbacks": service.fallbacks,
        "model": engine.model,
        "engine_generated_tokens": engine.facts.get("generated_tokens", 0),
        "engine_generating": engine.facts.get("generating", False),
        **{f"engine_{k}": engine.facts[k] for k in ENGINE_COUNTERS if k in engine.facts},
    }
