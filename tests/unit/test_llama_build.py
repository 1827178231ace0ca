"""The llama.cpp this environment loads must never run AMX tile instructions.

ggml's AMX code asks the kernel for the tile permission on one thread and runs the tile
instructions on its worker threads, so on Intel CPUs with AMX (Sapphire Rapids and later) the
first generation dies with SIGILL (upstream llama.cpp#26954). services/install.py builds
llama.cpp without AMX; these tests fail on any build that has it, e.g. one compiled with
`-march=native` on such a CPU, whatever CPU the tests themselves run on.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

llama_cpp = pytest.importorskip("llama_cpp")

from chatbot.llm.loading import llama_cpp_build, system_info_features  # noqa: E402

# llama-cpp-python versions whose vendored llama.cpp carries the upstream fix: none yet.
# When one is pinned, add it here and AMX builds become allowed.
AMX_FIXED_IN: set[str] = set()
TILE_INSTRUCTIONS = re.compile(r"\b(ldtilecfg|sttilecfg|tilezero|tileloadd|tileloaddt1|"
                               r"tilestored|tilerelease|tdpb[su][su]d|tdpbf16ps)\b")
x86_only = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                              reason="AMX is an x86-64 extension")


def tile_instructions(library: Path) -> set[str]:
    dump = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(library)],
                          capture_output=True, text=True, check=True, timeout=300).stdout
    return set(TILE_INSTRUCTIONS.findall(dump))


def ggml_cpu_libraries() -> list[Path]:
    lib = Path(llama_cpp.__file__).parent / "lib"
    return sorted(p for p in lib.glob("libggml-cpu*.so*") if not p.is_symlink())


def test_system_info_is_parsed_per_backend():
    info = ("CPU : SSE3 = 1 | AVX2 = 1 | AMX_INT8 = 1 | AVX512 = 0 | "
            "CUDA : ARCHS = 750,860 | USE_GRAPHS = 1 | ")
    assert system_info_features(info) == {
        "CPU": {"SSE3": "1", "AVX2": "1", "AMX_INT8": "1", "AVX512": "0"},
        "CUDA": {"ARCHS": "750,860", "USE_GRAPHS": "1"}}


@x86_only
def test_the_loaded_llama_cpp_was_compiled_without_amx():
    build = llama_cpp_build()
    if llama_cpp.__version__ in AMX_FIXED_IN:
        pytest.skip(f"llama-cpp-python {llama_cpp.__version__} carries llama.cpp#26954's fix")
    assert "AVX2" in build["cpu_features"], build["system_info"]
    assert build["amx"] is False, (
        "llama.cpp was compiled with AMX (llama.cpp#26954: SIGILL at the first generation on "
        f"AMX CPUs); reinstall it with services/install.py. {build['system_info']}")


@x86_only
@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs binutils' objdump")
def test_the_loaded_ggml_cpu_library_holds_no_amx_tile_instruction():
    libraries = ggml_cpu_libraries()
    assert libraries, "llama-cpp-python ships no libggml-cpu"
    if llama_cpp.__version__ in AMX_FIXED_IN:
        pytest.skip(f"llama-cpp-python {llama_cpp.__version__} carries llama.cpp#26954's fix")
    for library in libraries:
        assert not tile_instructions(library), f"{library} contains AMX tile instructions"


@x86_only
@pytest.mark.skipif(shutil.which("objdump") is None or shutil.which("gcc") is None,
                    reason="needs gcc and objdump")
def test_the_tile_instruction_check_finds_amx_code(tmp_path):
    """The check above can fail: code compiled for AMX, as ggml's AMX kernels are, is found."""
    source = tmp_path / "amx.c"
    source.write_text("#include <immintrin.h>\n"
                      "void clear(void) { _tile_zero(0); _tile_release(); }\n")
    subprocess.run(["gcc", "-O2", "-mamx-tile", "-shared", "-fPIC", "-o",
                    str(tmp_path / "libamx.so"), str(source)], check=True, timeout=120)
    assert {"tilezero", "tilerelease"} <= tile_instructions(tmp_path / "libamx.so")
