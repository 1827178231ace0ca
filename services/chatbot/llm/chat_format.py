"""Chat messages -> prompt text, with the GGUF's own chat template.

Chosen exactly as llama-cpp-python's `create_chat_completion` chooses (a template it
recognises gets its built-in formatter, any other runs as Jinja2, none falls back to
llama-2), so the batched and the sequential engine send a model the same prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

from chatbot.domain.conversation import ChatMessage


@dataclass(frozen=True)
class FormattedPrompt:
    text: str
    stop: tuple[str, ...]  # stop strings the template adds (its end-of-turn text)
    add_bos: bool  # False when the template already wrote the BOS text


class ChatFormat:
    def __init__(self, metadata: dict[str, str], bos_text: str, eos_text: str,
                 eos_id: int) -> None:
        from llama_cpp import llama_chat_format as cf

        builtin = {"chatml": cf.format_chatml, "llama-3": cf.format_llama3,
                   "mistral-instruct": cf.format_mistral_instruct}
        guessed = cf.guess_chat_format_from_gguf_metadata(metadata)
        template = metadata.get("tokenizer.chat_template")
        if guessed in builtin:
            self.name, self._format = guessed, builtin[guessed]
        elif template:
            self.name = "gguf"
            self._format = cf.Jinja2ChatFormatter(
                template=template, eos_token=eos_text, bos_token=bos_text,
                stop_token_ids=[eos_id])
        else:
            self.name, self._format = "llama-2", cf.format_llama2

    def __call__(self, messages: list[ChatMessage]) -> FormattedPrompt:
        result = self._format(messages=[{"role": m.role, "content": m.content}
                                        for m in messages])
        stop = result.stop or ()
        stop = (stop,) if isinstance(stop, str) else tuple(s for s in stop if s)
        return FormattedPrompt(result.prompt, stop, not result.added_special)
