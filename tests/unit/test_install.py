"""services/install.py: llama-cpp-python is built once per set of CMake flags and never
reused across flags (pip's own wheel cache is keyed by the sdist only).

Compiling llama.cpp takes minutes, so the flag-change tests below record the pip calls
instead of running them (a stand-in for pip); the real build is what tests/run itself does,
and the last test checks that this environment's llama-cpp-python came from it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def install(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("chatbot_install", ROOT / "services/install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(module.FLAGS_VARIABLE, raising=False)
    calls: list[tuple[list[str], str]] = []
    installed = {"url": ""}

    def pip(*args, env=None):
        calls.append((list(args), (env or {}).get("CMAKE_ARGS", "")))
        if args[0] == "wheel":
            wheel_dir = Path(args[args.index("--wheel-dir") + 1])
            (wheel_dir / "llama_cpp_python-0.3.36-cp311-cp311-linux_x86_64.whl").write_bytes(b"")
        elif args[0] == "install" and args[-1].endswith(".whl"):
            installed["url"] = Path(args[-1]).as_uri()

    monkeypatch.setattr(module, "pip", pip)
    monkeypatch.setattr(module, "installed_from", lambda: installed["url"])
    module.calls = calls
    return module


def builds(install) -> list[str]:
    return [flags for args, flags in install.calls if args[0] == "wheel"]


def test_the_default_build_is_portable_and_never_has_amx(install):
    flags = install.cmake_args()
    assert "-DGGML_NATIVE=OFF" in flags
    for amx in ("AMX_TILE", "AMX_INT8", "AMX_BF16"):
        assert f"-DGGML_{amx}=OFF" in flags


def test_same_flags_build_once_other_flags_build_again(install, monkeypatch):
    install.main([])
    install.main([])
    assert builds(install) == [install.PORTABLE_CMAKE_ARGS]
    assert sum("--force-reinstall" in args for args, _ in install.calls) == 1  # then kept

    native = "-DGGML_NATIVE=ON"
    monkeypatch.setenv(install.FLAGS_VARIABLE, native)
    install.main([])
    assert builds(install) == [install.PORTABLE_CMAKE_ARGS, native]
    assert install.installed_from().startswith(
        (install.cache_dir() / install.build_key(install.pinned_requirement(), native)).as_uri())

    # Back to the default: the portable wheel is still cached, so it is reinstalled, not rebuilt.
    monkeypatch.delenv(install.FLAGS_VARIABLE)
    install.main(["-e", ".[llm]"])
    assert builds(install) == [install.PORTABLE_CMAKE_ARGS, native]
    assert install.calls[-1][0] == ["install", "-e", ".[llm]"]
    assert install.installed_from().startswith(
        (install.cache_dir() / install.build_key(install.pinned_requirement(),
                                                 install.PORTABLE_CMAKE_ARGS)).as_uri())


def test_a_failed_build_leaves_no_cache_entry(install, monkeypatch):
    def broken(*args, env=None):
        raise SystemExit("compiler died")

    monkeypatch.setattr(install, "pip", broken)
    with pytest.raises(SystemExit):
        install.main([])
    assert [p for p in install.cache_dir().iterdir() if p.is_dir()] == []  # built again next


def test_a_build_killed_outright_is_cleaned_up_by_the_next(install):
    key = install.build_key(install.pinned_requirement(), install.cmake_args())
    leftover = install.cache_dir() / f"{key}.x1y2z3"  # a SIGKILLed build's staging directory
    leftover.mkdir(parents=True)
    (leftover / "half.whl").write_bytes(b"")
    install.main([])
    assert not leftover.exists() and (install.cache_dir() / key).is_dir()


def test_the_pin_comes_from_pyproject(install):
    assert install.pinned_requirement() == "llama-cpp-python==0.3.36"


def test_this_environment_runs_the_wheel_built_with_the_flags_in_force():
    """tests/run installs through services/install.py: a llama-cpp-python from anywhere else
    (pip's cache, an earlier native build) fails here."""
    spec = importlib.util.spec_from_file_location("chatbot_install", ROOT / "services/install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = module.cache_dir() / module.build_key(module.pinned_requirement(),
                                                     module.cmake_args())
    assert module.installed_from().startswith(expected.as_uri()), (
        f"{sys.executable}'s llama-cpp-python was not installed from {expected}; "
        "run services/install.py")
