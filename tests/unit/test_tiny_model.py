"""The tiny random-weight GGUF model: determinism, loading, tokenizer, chat, generation."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

pytest.importorskip("numpy")
pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp")

from chatbot_dev import tiny_model  # noqa: E402
from chatbot_dev.tiny_model import QUANT_TYPES, SPECIAL_TOKENS, write_tiny_model  # noqa: E402
from llama_cpp import Llama  # noqa: E402
from llama_cpp.llama_chat_format import Jinja2ChatFormatter  # noqa: E402

TEXTS = [
    "Good morning, team. Please send the quarterly report by Thursday.",
    "안녕하세요. 회의록: 프로젝트는 일정대로 진행되고 있습니다.",
    '기사는 칼을 들고 미소를 지었다. "You have travelled far," she said.',
    "Mixed 한국어 and English, numbers 2025-01-15 09:30, emoji 🙂, tabs\tand\r\nnewlines\n\n  end",
]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load(path: Path) -> Llama:
    return Llama(model_path=str(path), n_ctx=512, n_threads=2, verbose=False)


@pytest.fixture(scope="module")
def q4_0_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-q4_0.gguf", "Q4_0", seed=0)


@pytest.fixture(scope="module")
def llm(q4_0_path: Path):
    model = _load(q4_0_path)
    yield model
    model.close()


# -- determinism -------------------------------------------------------------


def test_same_seed_and_quant_gives_identical_bytes(tmp_path: Path, q4_0_path: Path) -> None:
    again = write_tiny_model(tmp_path / "again.gguf", "Q4_0", seed=0)
    assert again == tmp_path / "again.gguf"
    assert _sha256(again) == _sha256(q4_0_path)


def test_different_seed_gives_different_bytes(tmp_path: Path, q4_0_path: Path) -> None:
    other = write_tiny_model(tmp_path / "seed1.gguf", "Q4_0", seed=1)
    assert other.stat().st_size == q4_0_path.stat().st_size  # same architecture...
    assert _sha256(other) != _sha256(q4_0_path)  # ...different weights


# -- loading -------------------------------------------------------------------


@pytest.mark.parametrize(("quant", "ftype"), [("Q4_0", 2), ("Q4_1", 3), ("F16", 1)])
def test_each_quant_loads_and_reports_its_file_type(tmp_path: Path, quant: str, ftype: int) -> None:
    path = write_tiny_model(tmp_path / f"m-{quant}.gguf", quant, seed=3)
    assert path.stat().st_size < 2 * 1024 * 1024
    model = _load(path)
    try:
        md = model.metadata
        assert md["general.architecture"] == "llama"
        assert int(md["general.file_type"]) == ftype
        assert int(md["llama.context_length"]) == 8192
        assert int(md["llama.embedding_length"]) == 128
        assert int(md["llama.block_count"]) == 4
        assert float(md["llama.rope.freq_base"]) == 500000.0
        assert md["tokenizer.ggml.model"] == "gpt2"
        assert md["tokenizer.ggml.pre"] == "llama-bpe"
        assert 600 <= model.n_vocab() <= 1200
    finally:
        model.close()


def test_quant_name_is_case_insensitive(tmp_path: Path, q4_0_path: Path) -> None:
    path = write_tiny_model(tmp_path / "lower.gguf", "q4_0")
    assert _sha256(path) == _sha256(q4_0_path)


def test_unknown_quant_raises_naming_allowed_values(tmp_path: Path) -> None:
    out = tmp_path / "bad.gguf"
    with pytest.raises(ValueError) as excinfo:
        write_tiny_model(out, "Q5_K_M")
    message = str(excinfo.value)
    assert "Q5_K_M" in message
    for allowed in ("Q4_0", "Q4_1", "F16"):
        assert allowed in message
    assert not out.exists()


def test_failed_write_leaves_nothing_at_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "models" / "tiny.gguf"

    def boom(*args, **kwargs):
        raise RuntimeError("quantizer crashed")

    monkeypatch.setattr(tiny_model, "_quantize", boom)
    with pytest.raises(RuntimeError, match="quantizer crashed"):
        write_tiny_model(out, "Q4_1")
    assert list(out.parent.iterdir()) == []  # no model, no temp files


def test_overwrites_existing_file(tmp_path: Path, q4_0_path: Path) -> None:
    out = tmp_path / "tiny.gguf"
    out.write_bytes(b"stale")
    write_tiny_model(out, "Q4_0", seed=0)
    assert _sha256(out) == _sha256(q4_0_path)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.gguf"]


# -- tokenizer -------------------------------------------------------------------


@pytest.mark.parametrize("text", TEXTS)
def test_korean_and_english_round_trip_through_llama_cpp(llm: Llama, text: str) -> None:
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    assert llm.detokenize(tokens).decode("utf-8") == text


def test_learned_merges_compress_text_like_the_reference_encoder(llm: Llama) -> None:
    bpe = tiny_model.build_tokenizer().bpe
    for text in TEXTS[:3]:
        tokens = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        assert len(tokens) < len(text.encode("utf-8")) / 2
        assert tokens == bpe.encode(text)


def test_special_tokens_are_single_control_tokens(llm: Llama) -> None:
    bos, eos = llm.token_bos(), llm.token_eos()
    assert llm.detokenize([bos], special=True) == b"<|begin_of_text|>"
    assert llm.detokenize([eos], special=True) == b"<|eot_id|>"
    for name in SPECIAL_TOKENS:
        ids = llm.tokenize(name.encode(), add_bos=False, special=True)
        assert len(ids) == 1, name
        assert llm.detokenize(ids, special=True) == name.encode()
        # As plain text (special=False) it is just characters, not the control token.
        assert len(llm.tokenize(name.encode(), add_bos=False, special=False)) > 1
    # BOS is added by default, exactly once.
    ids = llm.tokenize(b"hello")
    assert ids[0] == bos and bos not in ids[1:]


# -- chat template and generation --------------------------------------------------


MESSAGES = [
    {"role": "system", "content": "You are a helpful office assistant."},
    {"role": "user", "content": "회의 일정을 정리해 주세요."},
]
EXPECTED_PROMPT = (
    "<|begin_of_text|>"
    "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful office assistant.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n회의 일정을 정리해 주세요.<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)


def test_chat_template_in_metadata_renders_llama3_headers(llm: Llama) -> None:
    template = llm.metadata["tokenizer.chat_template"]
    formatter = Jinja2ChatFormatter(
        template=template, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"
    )
    assert formatter(messages=MESSAGES).prompt == EXPECTED_PROMPT


def test_create_chat_completion_uses_the_llama3_prompt(llm: Llama) -> None:
    expected_tokens = llm.tokenize(EXPECTED_PROMPT.encode(), add_bos=False, special=True)
    result = llm.create_chat_completion(MESSAGES, max_tokens=4, temperature=0.0)
    assert result["usage"]["prompt_tokens"] == len(expected_tokens)


def test_greedy_generation_returns_text_deterministically(llm: Llama) -> None:
    first = llm.create_chat_completion(MESSAGES, max_tokens=24, temperature=0.0)
    second = llm.create_chat_completion(MESSAGES, max_tokens=24, temperature=0.0)
    text = first["choices"][0]["message"]["content"]
    assert text.strip()
    assert text == second["choices"][0]["message"]["content"]
    # Random weights never choose a control token, so the turn runs to max_tokens.
    assert first["choices"][0]["finish_reason"] == "length"
    assert first["usage"]["completion_tokens"] == 24


def test_sampled_completion_is_printable_text(llm: Llama) -> None:
    out = llm.create_completion("The knight", max_tokens=48, temperature=1.0, seed=7)
    text = out["choices"][0]["text"]
    assert text.strip()
    assert "\ufffd" not in text
    assert all(c.isprintable() or c == "\n" for c in text)


def test_quant_types_constant_lists_the_cli_choices() -> None:
    assert {"Q4_0", "Q4_1", "F16"} <= set(QUANT_TYPES)
