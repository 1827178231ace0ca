"""`chatbot-dev`: development commands (not part of the product's `chatbot` command).

`chatbot-dev tiny-model OUT [--quant Q4_0|Q4_1|F16] [--seed N]` writes a deterministic tiny
random-weight Llama-3 GGUF (about 1 MB): it answers gibberish, fast, which is what a smoke
test of a deployment needs. Needs the `llm` extra (gguf, numpy, llama-cpp-python).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _tiny_model(args: argparse.Namespace) -> int:
    from chatbot_dev.tiny_model import write_tiny_model

    path = write_tiny_model(Path(args.out), quant=args.quant, seed=args.seed)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, {args.quant}, seed {args.seed})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatbot-dev", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("tiny-model", help="write a tiny random-weight Llama-3 GGUF")
    tiny.add_argument("out", help="output .gguf path")
    tiny.add_argument("--quant", default="Q4_0", choices=["Q4_0", "Q4_1", "F16"])
    tiny.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    return _tiny_model(build_parser().parse_args(argv))  # the only command, so far
