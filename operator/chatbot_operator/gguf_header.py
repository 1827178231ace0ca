"""Read a GGUF file's header (metadata and tensor infos) without touching the weights.

Only what the GPU-layer estimate needs (gpu_fit.py): the architecture's shape and the byte
size of every tensor, grouped per repeating layer. Pure standard library, streaming: a
header-only file (tensor infos, no data) reads the same as the full model, and the 128k-token
vocabulary arrays are skipped, not kept.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

MAGIC = b"GGUF"

# ggml type id -> (elements per block, bytes per block); ggml.c's type_traits.
GGML_TYPES: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 40), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176),
    14: (256, 210), 15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98),
    19: (256, 50), 20: (32, 18), 21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1),
    25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2),
    34: (256, 54), 35: (256, 66), 39: (32, 17), 40: (64, 36), 41: (128, 18),
}

# GGUF metadata value types: id -> struct format (scalars), 8 string, 9 array.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_LAYER = re.compile(r"^blk\.(\d+)\.")


class GgufError(ValueError):
    pass


@dataclass(frozen=True)
class GgufFacts:
    """What llama.cpp's memory use depends on, from one GGUF header."""

    architecture: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_ff: int
    n_vocab: int
    layer_bytes: tuple[int, ...]  # per repeating layer (blk.N.*)
    input_bytes: int  # token embeddings: always in host memory
    output_bytes: int  # output head + final norm (token embeddings again when tied)
    other_bytes: int = 0  # anything else outside the layers (rope factors...)
    tensor_bytes: int = field(default=0)  # all tensors in the file

    def to_status(self) -> dict:
        return {"architecture": self.architecture, "nLayer": self.n_layer,
                "nEmbd": self.n_embd, "nHead": self.n_head, "nHeadKv": self.n_head_kv,
                "headDimK": self.head_dim_k, "headDimV": self.head_dim_v, "nFf": self.n_ff,
                "nVocab": self.n_vocab, "layerBytes": list(self.layer_bytes),
                "inputBytes": self.input_bytes, "outputBytes": self.output_bytes,
                "otherBytes": self.other_bytes, "tensorBytes": self.tensor_bytes}

    @classmethod
    def from_status(cls, data: dict) -> GgufFacts:
        try:
            return cls(str(data["architecture"]), int(data["nLayer"]), int(data["nEmbd"]),
                       int(data["nHead"]), int(data["nHeadKv"]), int(data["headDimK"]),
                       int(data["headDimV"]), int(data["nFf"]), int(data["nVocab"]),
                       tuple(int(b) for b in data["layerBytes"]), int(data["inputBytes"]),
                       int(data["outputBytes"]), int(data.get("otherBytes", 0)),
                       int(data.get("tensorBytes", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise GgufError(f"incomplete GGUF facts in status: {exc}") from None


class _Reader:
    def __init__(self, f: BinaryIO):
        self.f = f

    def take(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise GgufError("truncated GGUF header")
        return data

    def scalar(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.take(self.scalar("<Q")).decode("utf-8", "replace")

    def skip_string(self) -> None:
        self.f.seek(self.scalar("<Q"), 1)

    def value(self, vtype: int, keep: bool):
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype, count = self.scalar("<I"), self.scalar("<Q")
            if itype in _SCALARS and not keep:
                self.f.seek(struct.calcsize(_SCALARS[itype]) * count, 1)
                return count
            if itype == _STRING and not keep:
                for _ in range(count):
                    self.skip_string()
                return count  # only its length is kept (the vocabulary size)
            return [self.value(itype, True) for _ in range(count)]
        raise GgufError(f"unknown GGUF value type {vtype}")


def tensor_nbytes(ggml_type: int, dims: tuple[int, ...]) -> int:
    try:
        block, size = GGML_TYPES[ggml_type]
    except KeyError:
        raise GgufError(f"unknown ggml tensor type {ggml_type}") from None
    n = 1
    for d in dims:
        n *= d
    return n // block * size


def read_header(path: str | Path) -> tuple[dict, dict[str, tuple[int, tuple[int, ...]]]]:
    """(metadata, {tensor name: (ggml type, dims)}); big arrays become their length."""
    with open(path, "rb") as f:
        r = _Reader(f)
        if r.take(4) != MAGIC:
            raise GgufError(f"{path} is not a GGUF file")
        version = r.scalar("<I")
        if version < 2:
            raise GgufError(f"GGUF version {version} is not supported (2 or later)")
        n_tensors, n_kv = r.scalar("<Q"), r.scalar("<Q")
        meta: dict = {}
        for _ in range(n_kv):
            key = r.string()
            vtype = r.scalar("<I")
            # Per-layer arrays (head_count_kv of some models) are small and needed.
            meta[key] = r.value(vtype, keep=".attention." in key or key.endswith("_length"))
        tensors: dict[str, tuple[int, tuple[int, ...]]] = {}
        for _ in range(n_tensors):
            name = r.string()
            dims = tuple(r.scalar("<Q") for _ in range(r.scalar("<I")))
            ggml_type = r.scalar("<I")
            r.scalar("<Q")  # offset
            tensors[name] = (ggml_type, dims)
    return meta, tensors


def _first(value) -> int:
    if isinstance(value, list):
        return int(max(value)) if value else 0
    return int(value)


def facts_from(meta: dict, tensors: dict[str, tuple[int, tuple[int, ...]]]) -> GgufFacts:
    arch = str(meta.get("general.architecture", "llama"))

    def key(name: str, default=None):
        value = meta.get(f"{arch}.{name}", default)
        if value is None:
            raise GgufError(f"GGUF metadata lacks {arch}.{name}")
        return value

    n_layer = _first(key("block_count"))
    n_embd = _first(key("embedding_length"))
    n_head = _first(key("attention.head_count"))
    n_head_kv = _first(key("attention.head_count_kv", n_head))
    head_k = _first(key("attention.key_length", n_embd // max(n_head, 1)))
    head_v = _first(key("attention.value_length", head_k))
    n_ff = _first(key("feed_forward_length", 4 * n_embd))
    vocab = meta.get("tokenizer.ggml.tokens", meta.get(f"{arch}.vocab_size", 0))
    n_vocab = len(vocab) if isinstance(vocab, list) else int(vocab)

    layers = [0] * n_layer
    sizes = {name: tensor_nbytes(t, dims) for name, (t, dims) in tensors.items()}
    input_bytes = output_bytes = other = 0
    for name, nbytes in sizes.items():
        m = _LAYER.match(name)
        if m and int(m.group(1)) < n_layer:
            layers[int(m.group(1))] += nbytes
        elif name == "token_embd.weight":
            input_bytes += nbytes
        elif name.startswith("output"):
            output_bytes += nbytes
        else:
            other += nbytes
    if "output.weight" not in sizes:
        # Tied embeddings: llama.cpp loads the token embeddings a second time as the head.
        output_bytes += sizes.get("token_embd.weight", 0)
    if not n_vocab and "token_embd.weight" in tensors:
        n_vocab = tensors["token_embd.weight"][1][-1]
    return GgufFacts(arch, n_layer, n_embd, n_head, n_head_kv, head_k, head_v, n_ff, n_vocab,
                     tuple(layers), input_bytes, output_bytes, other, sum(sizes.values()))


def read_facts(path: str | Path) -> GgufFacts:
    return facts_from(*read_header(path))
