"""Deterministic tiny random-weight Llama GGUF model, for smoke tests.

``write_tiny_model(out, quant="Q4_0", seed=0)`` writes a small GGUF file
(Q4_0 ~0.5 MB, F16 ~1.6 MB) that llama.cpp loads as a Llama-3-style chat model:

* architecture ``llama`` (4 layers, n_embd 128, 4 heads / 2 KV heads, n_ff 256,
  context 8192, rope base 500000, rms eps 1e-5), weights drawn from
  ``numpy.random.default_rng(seed)``;
* a byte-level BPE tokenizer (``gpt2`` / ``llama-bpe``) whose merges are learned
  at write time from the small Korean/English corpus below, followed by the
  Llama-3.1 special tokens (BOS ``<|begin_of_text|>``, EOS ``<|eot_id|>``);
* the Llama-3 Instruct chat template, so llama-cpp-python formats chats with
  ``<|start_header_id|>role<|end_header_id|>\\n\\n...<|eot_id|>``.

The same ``(quant, seed)`` always produces byte-identical output. F32 is
written directly with the ``gguf`` package; every other type is produced by
llama.cpp's own quantizer (``llama_cpp.llama_model_quantize``). The result is
published atomically (temporary file in the target directory + ``os.replace``).

The output head is shaped so the model only ever *emits* printable text: the
residual stream carries a constant "bias" feature in dimension 0 that the
output projection uses to push control tokens and byte tokens that are not
complete UTF-8 far below everything else. A random model therefore never
produces mojibake or an empty completion, and never ends a turn on its own -
generation stops at ``max_tokens`` or at a stop string.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from chatbot_dev.bpe import BPEVocab, train_bpe

__all__ = [
    "CHAT_TEMPLATE",
    "QUANT_TYPES",
    "SPECIAL_TOKENS",
    "TinyModelConfig",
    "build_tokenizer",
    "write_tiny_model",
]

#: Accepted ``quant`` values (upper case; input is case-insensitive).
QUANT_TYPES: tuple[str, ...] = ("Q4_0", "Q4_1", "Q8_0", "F16", "F32")

# llama_ftype values (llama.h); identical to gguf.LlamaFileType.
_FTYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7}

#: Llama-3.1 special tokens, in Meta's order; appended after the BPE vocab.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
)
BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|eot_id|>"

#: The Meta-Llama-3 Instruct chat template. llama-cpp-python recognises this
#: exact string and selects its built-in "llama-3" chat format.
CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}"
    "{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)

_TOKEN_TYPE_NORMAL = 1
_TOKEN_TYPE_CONTROL = 3

# Format version of what this module writes; bump when output bytes change.
_WRITER_VERSION = 1

# Built-in training corpus for the tokenizer (written for this project).
CORPUS = """\
Good morning, team. This is a quick update on the quarterly report. The sales
numbers for the third quarter are ready, and the finance team will review them
before the meeting on Thursday. Please send your comments by Wednesday evening.
If you have any questions about the budget, contact the office manager.

Hello! I am your office assistant. I can help you write emails, summarize
documents, schedule meetings, and prepare presentations. What would you like
to do today? Let me know the deadline and the people who should be invited.

Dear customer, thank you for your message. We have received your request and
our support team is looking into the problem. We will update you within two
business days. We apologize for the inconvenience and appreciate your patience.

Meeting notes: the project is on schedule. The design review is complete, the
testing phase starts next week, and the release is planned for the end of the
month. Action items: update the documentation, check the server logs, and
confirm the training session with the new employees.

The knight raised his sword and smiled. "You have travelled far, traveller.
Sit by the fire and tell me your story." The old wizard nodded slowly. "The
dragon sleeps in the mountain, but not for long. We must leave before the
morning light." The young girl looked at the map and laughed. "Then let us go
together. I know the way through the forest."

I'm not sure we can finish it today, but we'll try. It's a long story, and
they've heard it before. She said: "Don't worry, I'll be there at 9:30."
Call me at 010-1234-5678 or send an email to the team before 2025-01-15.

안녕하세요. 저는 사무 업무를 도와드리는 인공지능 비서입니다. 이메일 작성, 문서 요약,
회의 일정 관리, 보고서 작성을 도와드릴 수 있습니다. 무엇을 도와드릴까요?

팀 여러분, 좋은 아침입니다. 이번 분기 보고서에 대해 간단히 공유드립니다. 3분기 매출
자료가 준비되었으며, 재무팀에서 목요일 회의 전에 검토할 예정입니다. 의견이 있으시면
수요일 저녁까지 보내 주시기 바랍니다. 예산 관련 문의는 사무실 관리자에게 연락해 주세요.

고객님, 문의해 주셔서 감사합니다. 요청하신 내용을 접수하였으며 지원팀에서 문제를
확인하고 있습니다. 영업일 기준 이틀 이내에 다시 연락드리겠습니다. 불편을 드려
죄송합니다. 기다려 주셔서 감사합니다.

회의록: 프로젝트는 일정대로 진행되고 있습니다. 디자인 검토가 완료되었고 다음 주부터
테스트 단계가 시작됩니다. 출시는 이번 달 말로 예정되어 있습니다. 할 일: 문서를
업데이트하고, 서버 로그를 확인하고, 신입 사원 교육 일정을 확정합니다.

기사는 칼을 들고 미소를 지었다. "먼 길을 오셨군요, 여행자여. 불 옆에 앉아 이야기를
들려주세요." 늙은 마법사는 천천히 고개를 끄덕였다. "용은 산속에서 잠들어 있지만
오래 가지는 않을 것입니다. 해가 뜨기 전에 떠나야 합니다." 어린 소녀는 지도를 보며
웃었다. "그럼 함께 가요. 저는 숲을 지나는 길을 알고 있어요."

오늘 날씨가 정말 좋네요. 점심은 뭐 먹을까요? 저는 김치찌개가 먹고 싶어요. 회의가
끝나면 같이 커피 한잔 해요. 내일은 오전 10시에 출근하고 오후에는 외근이 있습니다.
감사합니다. 수고하셨습니다. 좋은 하루 보내세요!
"""


@dataclass(frozen=True)
class TinyModelConfig:
    """Hyper-parameters of the tiny model (all defaults are part of the format)."""

    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 256
    context_length: int = 8192
    rope_freq_base: float = 500000.0
    rms_eps: float = 1e-5
    num_merges: int = 512
    # Weight scales.
    embd_std: float = 1.0
    hidden_std: float = 0.05
    output_std: float = 0.2
    suppress_logit: float = 30.0

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


@dataclass(frozen=True)
class TinyTokenizer:
    tokens: tuple[str, ...]
    token_types: tuple[int, ...]
    merges: tuple[str, ...]
    bos_id: int
    eos_id: int
    bpe: BPEVocab


@lru_cache(maxsize=4)
def build_tokenizer(num_merges: int = TinyModelConfig.num_merges) -> TinyTokenizer:
    """Train the BPE on :data:`CORPUS` and append the special tokens.

    With the built-in corpus training stops at 415 merges (no pair left that
    occurs twice), giving 256 + 415 + 11 = 682 tokens.
    """
    bpe = train_bpe(CORPUS, num_merges=num_merges)
    tokens = list(bpe.tokens) + list(SPECIAL_TOKENS)
    types = [_TOKEN_TYPE_NORMAL] * len(bpe.tokens) + [_TOKEN_TYPE_CONTROL] * len(SPECIAL_TOKENS)
    return TinyTokenizer(
        tokens=tuple(tokens),
        token_types=tuple(types),
        merges=tuple(bpe.merge_strings),
        bos_id=tokens.index(BOS_TOKEN),
        eos_id=tokens.index(EOS_TOKEN),
        bpe=bpe,
    )


def _emittable(tok: TinyTokenizer) -> np.ndarray:
    """Mask of tokens the model may generate: printable, complete UTF-8 text."""
    mask = np.zeros(len(tok.tokens), dtype=bool)
    for i in range(len(tok.bpe.tokens)):
        try:
            text = tok.bpe.token_bytes(i).decode("utf-8")
        except UnicodeDecodeError:
            continue
        mask[i] = all(c.isprintable() or c == "\n" for c in text)
    return mask


def _normalize_quant(quant: str) -> str:
    q = str(quant).strip().upper()
    if q not in QUANT_TYPES:
        raise ValueError(f"unknown quant {quant!r}; allowed values: {', '.join(QUANT_TYPES)}")
    return q


def _tensors(cfg: TinyModelConfig, tok: TinyTokenizer, seed: int) -> list[tuple[str, np.ndarray]]:
    """Random weights as (name, numpy array); the draw order is part of the format.

    numpy shapes are (rows, cols) = (out_features, in_features); gguf stores
    them reversed, so ``token_embd`` is ne = [n_embd, n_vocab] as llama.cpp wants.
    """
    rng = np.random.default_rng(seed)
    n_vocab = len(tok.tokens)
    e, ff, kv = cfg.n_embd, cfg.n_ff, cfg.n_head_kv * cfg.head_dim

    def normal(shape: tuple[int, ...], std: float) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std)).astype(np.float32)

    ones = np.ones(e, dtype=np.float32)

    # Dimension 0 of the residual stream is a constant bias feature: every
    # embedding has 1.0 there and no layer writes to it.
    token_embd = normal((n_vocab, e), cfg.embd_std)
    token_embd[:, 0] = 1.0

    out: list[tuple[str, np.ndarray]] = [("token_embd.weight", token_embd)]
    for i in range(cfg.n_layer):
        attn_out = normal((e, e), cfg.hidden_std)
        attn_out[0, :] = 0.0
        ffn_down = normal((e, ff), cfg.hidden_std)
        ffn_down[0, :] = 0.0
        out += [
            (f"blk.{i}.attn_norm.weight", ones.copy()),
            (f"blk.{i}.attn_q.weight", normal((e, e), cfg.hidden_std)),
            (f"blk.{i}.attn_k.weight", normal((kv, e), cfg.hidden_std)),
            (f"blk.{i}.attn_v.weight", normal((kv, e), cfg.hidden_std)),
            (f"blk.{i}.attn_output.weight", attn_out),
            (f"blk.{i}.ffn_norm.weight", ones.copy()),
            (f"blk.{i}.ffn_gate.weight", normal((ff, e), cfg.hidden_std)),
            (f"blk.{i}.ffn_up.weight", normal((ff, e), cfg.hidden_std)),
            (f"blk.{i}.ffn_down.weight", ffn_down),
        ]

    # Output head: random for printable tokens; everything else reads only the
    # bias feature, with a large negative weight.
    output = normal((n_vocab, e), cfg.output_std)
    keep = _emittable(tok)
    output[:, 0] = 0.0
    output[~keep, :] = 0.0
    output[~keep, 0] = -cfg.suppress_logit
    out += [("output_norm.weight", ones.copy()), ("output.weight", output)]
    return out


def add_llama_shape(w, *, context_length: int, n_embd: int, n_layer: int, n_ff: int,
                    n_head: int, n_head_kv: int) -> None:
    """The llama architecture's shape keys, on a `gguf.GGUFWriter` (also the header-only
    models of tests/operator/gguf_shapes.py)."""
    w.add_context_length(context_length)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(n_embd // n_head)


def _write_f32(path: Path, cfg: TinyModelConfig, tok: TinyTokenizer, seed: int) -> None:
    import gguf

    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_type("model")
    w.add_name("ChatBot AI Tiny Random Llama")
    w.add_description(
        "Random-weight smoke-test model written by chatbot_dev.tiny_model;"
        " it produces no meaningful text."
    )
    w.add_uint32("chatbot.tiny_model.version", _WRITER_VERSION)
    w.add_uint32("chatbot.tiny_model.seed", seed)
    w.add_file_type(_FTYPES["F32"])

    w.add_vocab_size(len(tok.tokens))
    add_llama_shape(w, context_length=cfg.context_length, n_embd=cfg.n_embd,
                    n_layer=cfg.n_layer, n_ff=cfg.n_ff, n_head=cfg.n_head,
                    n_head_kv=cfg.n_head_kv)
    w.add_rope_freq_base(cfg.rope_freq_base)
    w.add_layer_norm_rms_eps(cfg.rms_eps)

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(list(tok.tokens))
    w.add_token_types(list(tok.token_types))
    w.add_token_merges(list(tok.merges))
    w.add_bos_token_id(tok.bos_id)
    w.add_eos_token_id(tok.eos_id)
    w.add_eot_token_id(tok.eos_id)  # else llama.cpp guesses <|end_of_text|>
    w.add_eom_token_id(tok.tokens.index("<|eom_id|>"))
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    for name, arr in _tensors(cfg, tok, seed):
        w.add_tensor(name, arr)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _quantize(src: Path, dst: Path, quant: str, verbose: bool) -> None:
    try:
        import llama_cpp
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            f"quant {quant} needs llama-cpp-python (pip install 'chatbot-ai[llm]'); F32 does not"
        ) from exc

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = _FTYPES[quant]
    params.nthread = 1  # per-row quantization: the result does not depend on it
    # llama-cpp-python routes llama.cpp's log through this logger; its level is
    # unset (prints everything) until a Llama(verbose=...) is created. Its
    # level mapping predates ggml's current enum (WARN arrives as ERROR), so
    # only CRITICAL really silences the quantizer's expected fallback warning
    # (output.weight: 128 columns is too narrow for Q6_K, Q8_0 is used).
    log = logging.getLogger("llama-cpp-python")
    old_level = log.level
    if not verbose:
        log.setLevel(logging.CRITICAL)
    try:
        rc = llama_cpp.llama_model_quantize(
            os.fsencode(src), os.fsencode(dst), ctypes.byref(params)
        )
    finally:
        log.setLevel(old_level)
    if rc != 0:
        raise RuntimeError(
            f"llama_model_quantize to {quant} failed with status {rc}"
            " (verbose=True shows llama.cpp's log)"
        )


def write_tiny_model(
    out_path: os.PathLike[str] | str,
    quant: str = "Q4_0",
    seed: int = 0,
    *,
    config: TinyModelConfig | None = None,
    verbose: bool = False,
) -> Path:
    """Write the tiny random Llama model to ``out_path`` and return the path.

    ``quant`` is one of :data:`QUANT_TYPES` (case-insensitive); anything else
    raises ``ValueError``. ``seed`` (0 <= seed < 2**32) selects the random
    weights; the tokenizer is the same for every seed. Output is byte-identical
    for equal arguments. The file appears at ``out_path`` only when complete
    (an existing file there is replaced). ``verbose`` shows llama.cpp's
    quantizer log on stderr. ``config`` overrides the architecture (tests and
    experiments only; the defaults are what the CLI writes).
    """
    q = _normalize_quant(quant)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    cfg = config or TinyModelConfig()
    if cfg.n_embd % cfg.n_head or cfg.n_head % cfg.n_head_kv:
        raise ValueError("n_embd must divide by n_head and n_head by n_head_kv")

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(cfg.num_merges)

    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    f32_tmp: Path | None = None
    try:
        if q == "F32":
            _write_f32(tmp, cfg, tok, seed)
        else:
            fd, f32_name = tempfile.mkstemp(
                dir=out.parent, prefix=f".{out.name}.", suffix=".f32.tmp"
            )
            os.close(fd)
            f32_tmp = Path(f32_name)
            _write_f32(f32_tmp, cfg, tok, seed)
            _quantize(f32_tmp, tmp, q, verbose)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    finally:
        if f32_tmp is not None:
            with contextlib.suppress(OSError):
                f32_tmp.unlink()
    return out
