"""The service CPU image, built for real (Docker Engine, BuildKit) and run the way the
operator's Deployment runs it.

The container's options come from the operator's pure builders (persona_deployment,
settings_configmap) for the example ChatbotModel, translated by podrun.py: the same command,
environment, uid/gid 1000 (fsGroup as a supplementary group), read-only root filesystem, all
capabilities dropped, no privilege escalation, the model claim mounted read-only at /models,
emptyDirs at /data and /tmp, the CPU/memory limits and the 30 s grace period. Changed from the
example, and why: the model file (the bundled SmolLM2 and a tiny model, not an 8B download),
no Secrets (no MongoDB or OpenAI here: history goes to the embedded store on /data), and CPU
limits capped at this machine's cores (Docker refuses more; the operator derives llama.cpp's
thread count from the limit).

Docker's HEALTHCHECK runs the image's own command; only its interval is shortened here
(``--health-interval``), so that "healthy" shows within seconds instead of 30.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from chatbot.llm.bundled import BUNDLED_FILE, bundled_model_path
from chatbot_operator import builders
from tests.images.persona_pod import Container, example_spec, models_dir
from tests.support import docker_engine as engine

pytestmark = pytest.mark.docker


@pytest.fixture
def run_persona(service_image):
    started: list[Container] = []

    def run(spec, persona, models, *extra):
        container = Container(service_image[0], spec, persona, models, *extra)
        started.append(container)
        return container

    yield run
    for container in started:
        container.remove()


def _wait(cond, timeout: float, desc: str, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(desc)


# ----------------------------------------------------------------------------- the build

def test_the_image_takes_the_portable_llama_cpp_build_through_install_py(service_image):
    """The build stage installed llama-cpp-python from install.py's cache under the key of the
    pinned version, the portable flags and Python 3.11 (the host's wheel, when the host built
    it; otherwise the build compiled it itself under that key)."""
    install = engine._installer()
    key = install.build_key(install.pinned_requirement(), install.PORTABLE_CMAKE_ARGS)
    out = engine.docker("run", "--rm", "--entrypoint", "python", service_image[0], "-c",
                        "import json, importlib.metadata as m; "
                        "print(json.loads(m.distribution('llama_cpp_python')"
                        ".read_text('direct_url.json'))['url'])").stdout.strip()
    assert out.startswith(f"file:///cache/chatbot/llama-cpp-wheels/{key}/llama_cpp_python-"), out
    image = engine.inspect(service_image[0])["Config"]
    assert image["User"] == f"{builders.RUN_AS}:{builders.RUN_AS}"
    assert image["Healthcheck"]["Test"] == ["CMD", "python", "/opt/chatbot/healthcheck.py"]


# ----------------------------------------------------------------------------- run as the cluster

def test_serves_the_bundled_smollm2_as_the_deployment_runs_it(
        run_persona, tmp_path):
    spec = example_spec(office=BUNDLED_FILE)
    office = run_persona(spec, "office", models_dir(tmp_path, bundled_model_path()),
                         "--health-interval", "2s")
    ready = office.wait_ready()
    assert ready["model"] == BUNDLED_FILE and ready["persona"] == "office"

    # What Docker enforced: the pod's security context.
    info = office.inspect()
    host = info["HostConfig"]
    assert info["Config"]["User"] == "1000:1000"
    assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert {m["Destination"]: m["RW"] for m in info["Mounts"]}["/models"] is False
    ids = engine.docker("exec", office.name, "id", "-u").stdout.strip()
    assert ids == "1000"
    refused = engine.docker("exec", office.name, "touch", "/opt/chatbot/x", check=False)
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr

    # The OpenAI-compatible route here; POST /Llama on the tiny model below (the office
    # persona's long system prompt costs 15-25 s of prompt processing on two busy cores, and
    # tests/service/test_smoke_smollm2.py already asks SmolLM2 through /office/Llama).
    with httpx.Client(base_url=office.url, timeout=300) as http:
        chat = http.post("/v1/chat/completions", json={
            "model": "local", "max_tokens": 32,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]})
        assert chat.status_code == 200, chat.text
        body = chat.json()
        assert body["model"] and len(body["choices"][0]["message"]["content"].split()) >= 2
    # History goes to /data (an emptyDir), the only writable place besides /tmp, and so
    # does the journal of turns the store could not take.
    history = ready["history"]
    assert {k: history[k] for k in ("kind", "path", "state", "pending")} == {
        "kind": "embedded", "path": "/data/history.sqlite3", "state": "ok", "pending": 0}
    assert history["journal"]["state"] == "ok"
    assert history["journal"]["path"] == "/data/history.sqlite3.journal"

    assert _wait(lambda: office.health() == "healthy", 30, "HEALTHCHECK healthy")


DB_ID = "b440780c-cbaa-454f-a8d2-cf884786d89f"
RACHEL = {"input_data": "*I wave at Rachel.*", "character_name": "Rachel",
          "greeting": "*Rachel looks up.*", "context": "Rachel is a shy student."}


def test_serves_a_tiny_model_for_the_character_persona_and_stops_gracefully(
        run_persona, tiny_models, tmp_path):
    tiny = Path(tiny_models["character"])
    character = run_persona(example_spec(character=tiny.name), "character",
                            models_dir(tmp_path, tiny))
    ready = character.wait_ready()
    assert ready["model"] == tiny.name and ready["persona"] == "character"
    with httpx.Client(base_url=character.url, timeout=120) as http:
        chat = http.post("/v1/chat/completions", json={
            "model": "local", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]})
        assert chat.status_code == 200, chat.text
        # The operator's route prefix reaches the app (CHATBOT_ROOT_PATH from the Deployment).
        assert http.get("/openapi.json").json()["servers"][0]["url"] == "/character"

    # SIGTERM (docker stop, the pod's 30 s grace) while an answer is being generated: the
    # answer still arrives whole and the process exits 0 within the grace period. (An answer
    # still generating after CHATBOT_SHUTDOWN_GRACE_S, 20 s, is cut off with a 503.)
    outcome: dict = {}

    def ask() -> None:
        try:
            outcome["r"] = httpx.post(character.url + "/Llama", timeout=120, json={
                **RACHEL, "db_id": DB_ID, "user_id": "image-test"})
        except httpx.HTTPError as exc:
            outcome["error"] = repr(exc)

    asker = threading.Thread(target=ask)
    asker.start()
    _wait(lambda: httpx.get(character.url + "/performance", timeout=5).json()
          .get("engine_generating"), 30, "generation started", every=0.01)
    started = time.monotonic()
    engine.docker("stop", character.name, timeout=60)  # --stop-timeout: the grace period
    stopped_after = time.monotonic() - started
    asker.join(timeout=60)
    state = character.inspect()["State"]
    assert stopped_after < character.pod["terminationGracePeriodSeconds"], stopped_after
    assert state["ExitCode"] == 0, (state, character.logs()[-3000:])
    assert "error" not in outcome, outcome
    assert outcome["r"].status_code == 200, outcome["r"].text
    assert isinstance(outcome["r"].json(), str) and outcome["r"].headers["X-Generated-Tokens"]
    # ... and its turn was saved: in /data, the emptyDir (a host directory here).
    history = character.empty_dirs / "data" / "history.sqlite3"
    with contextlib.closing(sqlite3.connect(history)) as db:
        assert db.execute("select input_data from turns").fetchall() == [
            (RACHEL["input_data"],)]


def test_a_missing_model_file_is_not_ready_and_says_which_file(run_persona, tmp_path):
    """The claim is mounted but the fetch has not put the file there yet: the container keeps
    running, /readyz stays 503 and names the path (the readiness probe keeps it out of the
    Service), as the Deployment's CHATBOT_MODEL_WAIT_TIMEOUT_S says."""
    office = run_persona(example_spec(office="absent.gguf"), "office", models_dir(tmp_path))
    r = _wait(lambda: _get(office.url + "/readyz"), 60, "/readyz answers")
    assert r.status_code == 503
    assert "/models/absent.gguf" in r.text
    assert office.inspect()["State"]["Running"]


def _get(url: str):
    try:
        return httpx.get(url, timeout=5)
    except httpx.TransportError:
        return None


def test_the_cuda_image_builds_where_its_nvidia_bases_can_be_had(docker_engine):
    """images/service/Dockerfile.cuda is linted and parsed in test_images.py everywhere; it is
    built only where NVIDIA's CUDA bases are already in the local Docker Engine."""
    from tests.images.test_images import SERVICE_CUDA, stages

    bases = [stage[0][1].split()[0] for stage in stages(SERVICE_CUDA)]
    missing = [base for base in bases if not engine.image_exists(base)]
    if missing:
        pytest.skip(f"the CUDA image needs {' and '.join(missing)}: no image registry is "
                    "reachable here (Docker Hub fails at DNS) and NVIDIA's CUDA images cannot "
                    "be made from Debian packages; its Dockerfile is linted and parsed in "
                    "test_images.py")
    engine.build("images/service/Dockerfile.cuda", "chatbot-local/chatbot-service:test-cuda")
    out = engine.docker("run", "--rm", "--entrypoint", "python",
                        "chatbot-local/chatbot-service:test-cuda", "-c",
                        "import llama_cpp; print(llama_cpp.llama_supports_gpu_offload())")
    assert out.stdout.strip() == "True"
