"""The two personas: their generation parameters (local model and GPT routes), fallback
parameters and history depth. Their system prompts are built in core/prompts.py."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class Persona(StrEnum):
    OFFICE = "office"
    CHARACTER = "character"


class SamplingParams(BaseModel):
    """Sampling parameters for one generation call."""

    model_config = ConfigDict(frozen=True)

    max_tokens: int = Field(gt=0)
    temperature: float = Field(ge=0)
    top_p: float = Field(gt=0, le=1)
    top_k: int = Field(default=40, ge=0)
    min_p: float = Field(default=0.05, ge=0, le=1)
    repeat_penalty: float = Field(default=1.0, gt=0)
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None


class SamplingOverrides(BaseModel):
    """Partial sampling parameters from configuration; unset fields keep the persona's."""

    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repeat_penalty: float | None = Field(default=None, gt=0)
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None

    def apply(self, base: SamplingParams) -> SamplingParams:
        return base.model_copy(update=self.model_dump(exclude_none=True))


class PersonaProfile(BaseModel):
    """What makes a persona here: its sampling, its fallback's and how much history it
    replays."""

    model_config = ConfigDict(frozen=True)

    persona: Persona
    history_turns: int
    generation: SamplingParams
    fallback: SamplingParams


# The reference implementation (v1.7.4) used these values; see shared/reference.
OFFICE = PersonaProfile(
    persona=Persona.OFFICE,
    history_turns=8,
    generation=SamplingParams(
        max_tokens=1024, temperature=0.7, top_p=0.9, min_p=0.1, repeat_penalty=1.08,
        frequency_penalty=0.1, presence_penalty=0.1,
    ),
    fallback=SamplingParams(max_tokens=1024, temperature=0.7, top_p=0.9, repeat_penalty=1.08),
)

CHARACTER = PersonaProfile(
    persona=Persona.CHARACTER,
    history_turns=10,
    generation=SamplingParams(
        max_tokens=256, temperature=0.8, top_p=0.9, top_k=40, min_p=0.1, repeat_penalty=1.05,
    ),
    fallback=SamplingParams(max_tokens=512, temperature=0.8, top_p=0.9, repeat_penalty=1.08),
)

PROFILES = {Persona.OFFICE: OFFICE, Persona.CHARACTER: CHARACTER}

# Stop strings beyond the model's own end-of-turn token (Llama-3 family).
STOP_STRINGS = ("<|eot_id|>",)

# A streamed answer with fewer non-space characters than this is retried without streaming.
MIN_ANSWER_CHARS = 10

# GPT routes: path name -> OpenAI model.
GPT_MODELS = {"gpt4.1": "gpt-4.1", "gpt4.1_mini": "gpt-4.1-mini"}

# The reference implementation's OpenAI settings (v1.7.4), per persona.
GPT_SAMPLING = {
    Persona.OFFICE: SamplingParams(max_tokens=1000, temperature=0.82, top_p=0.95),
    Persona.CHARACTER: SamplingParams(max_tokens=1000, temperature=1.2, top_p=0.8),
}
