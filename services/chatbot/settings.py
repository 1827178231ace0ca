"""All configuration, typed, in one place (environment prefix `CHATBOT_`).

Nested fields use `__`: `CHATBOT_OFFICE__MAX_CONCURRENT=2`,
`CHATBOT_CHARACTER__GENERATION__MAX_TOKENS=128`. Model files: `CHATBOT_OFFICE_MODEL`,
`CHATBOT_CHARACTER_MODEL` (default: the bundled SmolLM2-135M-Instruct).

The conventional names of the outside services are read without the prefix: `MONGO_URL`,
`MONGO_DATABASE`, `OPENAI_API_KEY`, `OPENAI_BASE_URL` (the `CHATBOT_` forms work too).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from chatbot.domain.personas import Persona, SamplingOverrides
from chatbot_contract import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CONTEXT_SIZE,
    DEFAULT_SHUTDOWN_GRACE_S,
    ENV_PREFIX,
    MAX_BODY_BYTES,
    MONGO_URL_ENV,
    NESTED_DELIMITER,
    OPENAI_API_KEY_ENV,
    env_name,
)


def _data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")


class ModelSettings(BaseModel):
    """How llama.cpp loads a persona's model (the seed's values by default)."""

    n_ctx: int = Field(default=DEFAULT_CONTEXT_SIZE, gt=0)
    n_batch: int = Field(default=DEFAULT_BATCH_SIZE, gt=0)
    prompt_tokens_per_step: int = Field(
        default=256, gt=0,
        description="batched engine: at most this many prompt tokens per decode step, after "
        "one token of every generating sequence (long prompts are chunked, so running "
        "conversations keep getting tokens while new ones are prefilled)")
    cache_ram_mib: int = Field(
        default=256, ge=0,
        description="batched engine: host RAM for the KV cells of conversations whose slot "
        "went to another one, restored on their next turn (LRU; 0: off; llama-server's "
        "--cache-ram)")
    prefill_next_turn: bool = Field(
        default=True,
        description="batched engine: once an answer ends, evaluate the start of the "
        "conversation's next prompt (its replayed turns and this answer) in its slot while "
        "the user reads, behind every generation, so the next turn evaluates only its new "
        "message")
    n_gpu_layers: int = Field(default=-1, ge=-1)
    main_gpu: int = Field(default=0, ge=0)
    flash_attn: bool = True
    kv_cache_type: Literal["f16", "q8_0", "f32"] = "f16"
    n_threads: int | None = Field(default=None, gt=0, description="default: all cores")
    use_mmap: bool = True
    use_mlock: bool = False
    # RoPE stays at the model's own values unless both are configured.
    rope_scaling_type: int | None = None
    rope_freq_scale: float | None = None
    seed: int | None = None


class PersonaSettings(BaseModel):
    max_concurrent: int = Field(default=1, ge=1)
    max_queue: int = Field(default=16, ge=0, description="requests waiting beyond max_concurrent")
    request_timeout_s: float = Field(default=300.0, gt=0)
    prior_service_s: float = Field(
        default=20.0, gt=0, description="service time assumed for Retry-After until measured"
    )
    model: ModelSettings = ModelSettings()
    generation: SamplingOverrides = SamplingOverrides()
    fallback: SamplingOverrides = SamplingOverrides()
    gpt: SamplingOverrides = Field(
        default=SamplingOverrides(), description="the GPT routes' sampling (OpenAI)")


class OfficeSettings(PersonaSettings):
    max_concurrent: int = Field(default=1, ge=1)
    assistant_name: str = "TreeNut 오피스"
    assistant_role: str = (
        "사용자의 업무 질문에 정확하고 실용적인 답변을 제공하는 업무 지원 AI 어시스턴트"
    )
    model: ModelSettings = ModelSettings(n_gpu_layers=-1)


class CharacterModelSettings(ModelSettings):
    # A field default, not ModelSettings(n_gpu_layers=50) as the default object: setting any
    # other CHATBOT_CHARACTER__MODEL__* variable builds a new object and would lose the 50.
    n_gpu_layers: int = Field(default=50, ge=-1)


class CharacterSettings(PersonaSettings):
    max_concurrent: int = Field(default=2, ge=1)
    model: CharacterModelSettings = CharacterModelSettings()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=NESTED_DELIMITER, extra="ignore"
    )

    engine: Literal["batched", "sequential"] = Field(
        default="batched",
        description="batched: continuous batching, one context per model file serving every "
        "persona on it; sequential: one generation at a time per model (the old engine)",
    )
    office_model: Path | None = None
    character_model: Path | None = None
    office: OfficeSettings = OfficeSettings()
    character: CharacterSettings = CharacterSettings()

    history_path: Path = Field(
        default_factory=lambda: _data_home() / "chatbot" / "history.sqlite3",
        description="embedded history store; ':memory:' keeps nothing across restarts",
    )
    history_journal_path: Path | None = Field(
        default=None,
        description="the pod's journal of turns answered while the history store is away "
                    "(written to the store once it is back); default: beside history_path "
                    "(<history_path>.journal), or in memory when history_path is :memory:")
    history_journal_max_turns: int = Field(
        default=10_000, ge=0,
        description="turns the journal holds at most; past it an answer says (header "
                    "X-History-Kept: false) that its turn is not kept")
    history_journal_flush_s: float = Field(
        default=3.0, ge=0,
        description="on shutdown, how long the journal's pending turns may take to be "
                    "written to the store (what is left waits in the file for the next start)")
    model_wait_timeout_s: float = Field(
        default=0.0, ge=0,
        description="wait this long for a missing model file to appear (0: fail at once)",
    )
    max_body_bytes: int = Field(default=MAX_BODY_BYTES, gt=0)
    root_path: str = Field(default="", description="path prefix a proxy strips, e.g. /office")
    shutdown_grace_s: float = Field(
        default=float(DEFAULT_SHUTDOWN_GRACE_S), gt=0,
        description="on SIGTERM, in-flight answers get this long to finish"
    )
    log_level: str = "info"

    # Conversation memory in MongoDB; without a URL the embedded store above is used.
    mongo_url: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices(MONGO_URL_ENV, env_name("mongo_url")),
        description="a standard mongodb:// connection string (may hold credentials)")
    mongo_database: str = Field(
        default="chatbot", min_length=1,
        validation_alias=AliasChoices("MONGO_DATABASE", "CHATBOT_MONGO_DATABASE"))
    mongo_timeout_s: float = Field(
        default=2.0, gt=0, description="bound on every MongoDB operation; then no history")

    # The GPT routes (OpenAI). Without a key they answer 503.
    openai_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices(OPENAI_API_KEY_ENV, env_name("openai_api_key")))
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_BASE_URL", "CHATBOT_OPENAI_BASE_URL"),
        description="another OpenAI-compatible endpoint, e.g. http://host/office/v1")
    openai_timeout_s: float = Field(default=120.0, gt=0, description="per OpenAI call")
    openai_max_retries: int = Field(default=2, ge=0, description="the openai client's retries")
    openai_max_concurrent: int = Field(default=8, ge=1, description="GPT calls at once")
    openai_max_queue: int = Field(default=32, ge=0)

    # API keys (api/auth.py): without a file every route is open, as before.
    api_keys_file: Path | None = Field(
        default=None, description="JSON list of API keys with their routes and budgets "
        "(domain/api_keys.py); the operator mounts the ChatbotModel's spec.apiKeys Secret")
    api_keys_reload_s: float = Field(
        default=5.0, gt=0, description="look for a changed keys file at most this often")
    api_keys_replicas: int = Field(
        default=1, ge=1, description="pods sharing the key budgets; while the budget store "
        "(MongoDB) is away each enforces 1/replicas of every budget")

    # Web search for office answers with google_access=true.
    search: Literal["ddgs", "recorded", "none"] = Field(
        default="ddgs",
        description="ddgs: DuckDuckGo via the ddgs library; recorded: results from "
                    "search_recorded_path (tests, offline demos); none: never search")
    search_timeout_s: float = Field(default=8.0, gt=0)
    search_recorded_path: Path | None = Field(
        default=None, description="JSON list of ddgs-shaped results {title, href, body}")

    # Conversation affinity across replicas (chatbot.peers): each turn goes to the replica
    # that holds the conversation's KV cells; the replicas forward to each other.
    affinity: bool = Field(
        default=True, description="forward a conversation's turns to its owner replica "
        "(bounded-load consistent hashing on db_id, or /v1's X-Session-ID or first "
        "messages); without peers (affinity_peers, affinity_peers_dns) nothing is forwarded")
    affinity_self: str | None = Field(
        default=None, pattern=r"^https?://[^/]+$",
        description="this replica's own address as its peers reach it, http://IP:PORT "
        "(the operator sets it from the pod's IP)")
    affinity_peers: list[str] = Field(
        default_factory=list, description="the replicas' addresses, http://IP:PORT each "
        "(a fixed set; JSON list in the environment)")
    affinity_peers_dns: str | None = Field(
        default=None, pattern=r"^[a-z0-9.-]+:[0-9]+$",
        description="HOST:PORT whose DNS name lists every ready replica (the operator's "
        "headless Service), resolved every affinity_refresh_s")
    affinity_refresh_s: float = Field(default=2.0, gt=0)
    affinity_load_factor: float = Field(
        default=1.25, ge=1, description="a replica holding more than this times the mean "
        "of requests in flight (and more than twice max_concurrent) is passed over")
    affinity_connect_timeout_s: float = Field(
        default=1.0, gt=0, description="a peer that does not accept the connection in this "
        "long is skipped for affinity_down_s and the turn is served here")
    affinity_down_s: float = Field(default=5.0, gt=0)
    # KV handoff (chatbot.peers.handoff): a draining replica hands its conversations' KV
    # cells to the replicas that own them next, on a port of its own that only peers reach.
    kv_handoff: bool = Field(
        default=True, description="on drain, hand each conversation's KV cells to the "
        "replica that owns it next, and take the ones peers hand over (needs affinity "
        "peers and kv_handoff_port)")
    kv_handoff_port: int | None = Field(
        default=None, ge=1, le=65535, description="the port peers hand KV cells to, on "
        "affinity_self's address (none: no handoff); never behind the public route")
    kv_handoff_timeout_s: float = Field(
        default=5.0, gt=0, description="on drain, how long handing over may take in all "
        "(what is not sent by then is evaluated again by its next turn)")

    # On Kubernetes (set by the operator): report the GPU offload into the ChatbotModel's
    # status.acceleration.<persona>, with the pod's ServiceAccount token.
    status_report: str | None = Field(
        default=None, pattern=r"^[a-z0-9-]+/[a-z0-9.-]+$",
        description="NAMESPACE/NAME of the ChatbotModel to report into")
    settings_hash: str | None = Field(default=None, description="the operator's settings hash")
    pod_name: str | None = None
    pod_ip: str | None = Field(
        default=None, description="the pod's IP (set by the operator; its affinity_self "
        "is built from it)")
    kube_api_url: str | None = Field(
        default=None, description="default: https://$KUBERNETES_SERVICE_HOST:$..._PORT")
    kube_token_file: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
    kube_ca_file: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")

    def journal_path(self) -> Path | None:
        """Where the history journal lives (None: in memory)."""
        if self.history_journal_path is not None:
            return self.history_journal_path
        if str(self.history_path) == ":memory:":
            return None
        return self.history_path.with_name(self.history_path.name + ".journal")

    @field_validator("mongo_url")
    @classmethod
    def _mongodb_scheme(cls, url: SecretStr | None) -> SecretStr | None:
        if url is not None and not url.get_secret_value().startswith(
                ("mongodb://", "mongodb+srv://")):
            raise ValueError("must be a connection string starting with mongodb:// or "
                             "mongodb+srv://")
        return url

    @model_validator(mode="after")
    def _affinity_knows_itself(self):
        if (self.affinity and (self.affinity_peers or self.affinity_peers_dns)
                and self.affinity_self is None):
            raise ValueError("affinity with peers (CHATBOT_AFFINITY_PEERS or "
                             "CHATBOT_AFFINITY_PEERS_DNS) needs CHATBOT_AFFINITY_SELF, this "
                             "replica's own http://IP:PORT")
        return self

    @model_validator(mode="after")
    def _recorded_search_has_a_file(self):
        if self.search == "recorded" and self.search_recorded_path is None:
            raise ValueError("search=recorded needs CHATBOT_SEARCH_RECORDED_PATH")
        return self

    def persona(self, persona: Persona) -> PersonaSettings:
        return self.office if persona is Persona.OFFICE else self.character

    def model_path(self, persona: Persona) -> Path | None:
        return self.office_model if persona is Persona.OFFICE else self.character_model
