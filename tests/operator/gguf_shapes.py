"""Header-only GGUF files (metadata + tensor infos, no weights) in the real shapes of the
seed's models, written with the `gguf` package (llama.cpp's own writer)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from chatbot_dev.tiny_model import add_llama_shape

gguf = __import__("gguf")
Q = gguf.GGMLQuantizationType


@dataclass(frozen=True)
class Shape:
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int
    context_length: int
    tied: bool = False  # output head = token embeddings (no output.weight)
    rope_freqs: bool = False


# meta-llama/Llama-3.1-8B (QuantFactory/Meta-Llama-3.1-8B-Claude-GGUF is a fine-tune of it).
LLAMA_31_8B = Shape(32, 4096, 32, 8, 14336, 128256, 131072, rope_freqs=True)
# HuggingFaceTB/SmolLM2-135M-Instruct
SMOLLM2_135M = Shape(30, 576, 9, 3, 1536, 49152, 8192, tied=True)


def write_header(path: Path, shape: Shape, weights: Q, embd: Q | None = None,
                 output: Q = Q.Q6_K) -> Path:
    """llama.cpp's quantize defaults for a Q4_0/Q4_1 file: the weight matrices in that type,
    the token embeddings too, the output head in Q6_K, norms in F32."""
    embd = embd or weights
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_name("header-only " + path.name)
    add_llama_shape(w, context_length=shape.context_length, n_embd=shape.n_embd,
                    n_layer=shape.n_layer, n_ff=shape.n_ff, n_head=shape.n_head,
                    n_head_kv=shape.n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(shape.n_vocab)
    w.add_file_type({Q.Q4_0: 2, Q.Q4_1: 3}.get(weights, 1))
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(shape.n_vocab)])

    def tensor(name: str, rows: int, cols: int | None, qtype: Q) -> None:
        dims = (rows, cols) if cols is not None else (rows,)
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        nbytes = int(np.prod(dims)) // block * size
        w.add_tensor_info(name, dims, np.dtype(np.float32), nbytes, raw_dtype=qtype)

    e, kv = shape.n_embd, shape.n_head_kv * (shape.n_embd // shape.n_head)
    tensor("token_embd.weight", shape.n_vocab, e, embd)
    if shape.rope_freqs:
        tensor("rope_freqs.weight", e // shape.n_head // 2, None, Q.F32)
    layer = {"attn_norm": (e, None, Q.F32), "attn_q": (e, e, weights),
             "attn_k": (kv, e, weights), "attn_v": (kv, e, weights),
             "attn_output": (e, e, weights), "ffn_norm": (e, None, Q.F32),
             "ffn_gate": (shape.n_ff, e, weights), "ffn_up": (shape.n_ff, e, weights),
             "ffn_down": (e, shape.n_ff, weights)}
    for i in range(shape.n_layer):
        for name, (rows, cols, qtype) in layer.items():
            tensor(f"blk.{i}.{name}.weight", rows, cols, qtype)
    tensor("output_norm.weight", e, None, Q.F32)
    if not shape.tied:
        tensor("output.weight", shape.n_vocab, e, output)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    return path


def copy_header(src: Path, dest: Path) -> Path:
    """A real model's metadata and tensor infos, without its weights."""
    reader = gguf.GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(str(dest), arch=arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    for t in reader.tensors:
        w.add_tensor_info(t.name, tuple(int(d) for d in reversed(t.shape)),
                          np.dtype(np.float32), int(t.n_bytes), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    return dest
