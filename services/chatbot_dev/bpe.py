"""A small, deterministic byte-level BPE trainer (GPT-2 / Llama-3 style).

This is the tokenizer half of :mod:`chatbot_dev.tiny_model`. It learns merges
from a built-in corpus at write time, so the repository carries no third-party
vocabulary files.

The vocabulary it produces follows the conventions llama.cpp expects for
``tokenizer.ggml.model = "gpt2"`` with ``tokenizer.ggml.pre = "llama-bpe"``:

* every byte is one token, spelled with the GPT-2 *bytes-to-unicode* mapping
  (space is ``Ġ``, newline is ``Ċ``, ...); token id ``b`` is byte ``b``;
* then one token per learned merge, in merge order;
* merges are stored as ``"left right"`` strings, rank = list position.

Pre-tokenisation approximates the Llama-3 split regex with the standard ``re``
module (``\\p{L}`` becomes ``[^\\W\\d_]``, ``\\p{N}`` becomes ``\\d``). The split only
decides which merges get learned; whatever llama.cpp's exact regex does at
inference time, every byte sequence still round-trips because all 256 byte
tokens exist and every merge result is itself a token.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

__all__ = [
    "BPEVocab",
    "bytes_to_unicode",
    "pretokenize",
    "train_bpe",
]

# Llama-3 split regex ("adapted" form used by llama.cpp), translated to ``re``:
#   \p{L}                 -> [^\W\d_]
#   \p{N}                 -> \d
#   [^\r\n\p{L}\p{N}]     -> (?:[^\r\n\w]|_)
#   [^\s\p{L}\p{N}]       -> (?:[^\s\w]|_)
_LLAMA3_SPLIT = re.compile(
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
    r"|(?:[^\r\n\w]|_)?[^\W\d_]+"
    r"|\d{1,3}"
    r"| ?(?:[^\s\w]|_)+[\r\n]*"
    r"|\s*[\r\n]+"
    r"|\s+(?!\S)"
    r"|\s+"
)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 reversible byte -> printable unicode character mapping.

    Printable Latin-1 bytes map to themselves; the remaining 68 bytes
    (controls, space, DEL, NBSP, soft hyphen, ...) are shifted to U+0100 and up,
    in byte order.
    """
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    kept = set(keep)
    mapping: dict[int, str] = {}
    shifted = 0
    for b in range(256):
        if b in kept:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return mapping


@lru_cache(maxsize=1)
def _unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def encode_bytes(data: bytes) -> str:
    """Spell raw bytes in the GPT-2 mapped alphabet."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in data)


def decode_bytes(text: str) -> bytes:
    """Inverse of :func:`encode_bytes`."""
    table = _unicode_to_bytes()
    return bytes(table[c] for c in text)


def pretokenize(text: str) -> list[str]:
    """Split text into words the way the Llama-3 pre-tokenizer (approximately) does."""
    return _LLAMA3_SPLIT.findall(text)


@dataclass(frozen=True)
class BPEVocab:
    """Result of training: token strings (mapped alphabet) and merge rules."""

    tokens: tuple[str, ...]
    merges: tuple[tuple[str, str], ...]
    _ids: dict[str, int] = field(init=False, repr=False, compare=False)
    _ranks: dict[tuple[str, str], int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ids", {t: i for i, t in enumerate(self.tokens)})
        object.__setattr__(self, "_ranks", {m: i for i, m in enumerate(self.merges)})

    @property
    def merge_strings(self) -> list[str]:
        """Merges in GGUF form: ``"left right"``."""
        return [f"{a} {b}" for a, b in self.merges]

    def token_bytes(self, token_id: int) -> bytes:
        return decode_bytes(self.tokens[token_id])

    def _bpe_word(self, word: str) -> list[str]:
        if word in self._ids:  # llama.cpp's ignore_merges for llama-bpe
            return [word]
        parts = list(word)
        while len(parts) > 1:
            best_rank = None
            best_i = -1
            for i in range(len(parts) - 1):
                rank = self._ranks.get((parts[i], parts[i + 1]))
                if rank is not None and (best_rank is None or rank < best_rank):
                    best_rank, best_i = rank, i
            if best_rank is None:
                break
            parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
        return parts

    def encode(self, text: str) -> list[int]:
        """Reference encoder (no special-token parsing, no BOS)."""
        out: list[int] = []
        for word in pretokenize(text):
            for piece in self._bpe_word(encode_bytes(word.encode("utf-8"))):
                out.append(self._ids[piece])
        return out

    def decode(self, ids: list[int]) -> str:
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")


def train_bpe(corpus: str, num_merges: int, min_frequency: int = 2) -> BPEVocab:
    """Learn up to ``num_merges`` byte-level BPE merges from ``corpus``.

    Fully deterministic: ties between equally frequent pairs are broken by the
    lexicographic order of the (left, right) strings. Training stops early when
    no pair occurs at least ``min_frequency`` times.
    """
    if num_merges < 0:
        raise ValueError("num_merges must be >= 0")
    table = bytes_to_unicode()
    tokens: list[str] = [table[b] for b in range(256)]
    known: set[str] = set(tokens)
    merges: list[tuple[str, str]] = []

    word_freq = Counter(encode_bytes(w.encode("utf-8")) for w in pretokenize(corpus))
    # Sort for a deterministic iteration order independent of dict history.
    words: list[list[str]] = []
    freqs: list[int] = []
    for w, f in sorted(word_freq.items()):
        words.append(list(w))
        freqs.append(f)

    while len(merges) < num_merges:
        pair_counts: Counter[tuple[str, str]] = Counter()
        for parts, f in zip(words, freqs, strict=True):
            for i in range(len(parts) - 1):
                pair_counts[(parts[i], parts[i + 1])] += f
        if not pair_counts:
            break
        best, count = min(pair_counts.items(), key=lambda kv: (-kv[1], kv[0]))
        if count < min_frequency:
            break
        left, right = best
        merged = left + right
        merges.append(best)
        if merged not in known:
            known.add(merged)
            tokens.append(merged)
        for parts in words:
            if len(parts) < 2:
                continue
            i = 0
            while i < len(parts) - 1:
                if parts[i] == left and parts[i + 1] == right:
                    parts[i : i + 2] = [merged]
                i += 1
    return BPEVocab(tokens=tuple(tokens), merges=tuple(merges))
