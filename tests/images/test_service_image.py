"""The service CPU image, built for real (Docker Engine, BuildKit) and run the way the
operator's Deployment runs it.

The container's options come from the operator's pure builders (persona_deployment,
settings_configmap) for the example ChatbotModel, translated by podrun.py: the same command,
environment, uid/gid 1000 (fsGroup as a supplementary group), read-only root filesystem, all
capabilities dropped, no privilege escalation, the model claim mounted read-only at /models,
emptyDirs at /data and /tmp, the CPU/memory limits and the 30 s grace period. Changed from the
example, and why: the model file (the bundled SmolLM2 and a tiny model, not an 8B download),
no Secrets (no MongoDB or OpenAI here: history goes to the embedded store on /data), and a
CPU limit capped at this machine's cores (Docker refuses more).

Docker's HEALTHCHECK runs the image's own command; only its interval is shortened here
(``--health-interval``), so that "healthy" shows within seconds instead of 30.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from chatbot.llm.bundled import BUNDLED_FILE, bundled_model_path
from chatbot_operator import builders
from chatbot_operator.config import OperatorConfig
from chatbot_operator.profiles import BUILTIN
from chatbot_operator.spec import ChatbotModelSpec
from tests.images import engine
from tests.images.podrun import docker_run_args
from tests.service.server import free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "operator/examples/chatbotmodel.yaml"
OWNER = builders.Owner("chatbot", "default", "0f6c7a52-0000-4000-8000-000000000000")

pytestmark = pytest.mark.docker


def example_spec(**files: str) -> ChatbotModelSpec:
    """The example ChatbotModel with other model files and without its Secrets."""
    body = yaml.safe_load(EXAMPLE.read_text())["spec"]
    body.pop("secrets", None)
    for persona, file in files.items():
        body[persona]["file"] = file
    return ChatbotModelSpec.parse(body)


class Container:
    """One `docker run -d` of a persona's pod; removed at the end."""

    def __init__(self, image: str, spec: ChatbotModelSpec, persona: str, models: Path,
                 *extra: str) -> None:
        config = OperatorConfig()
        deployment = builders.persona_deployment(OWNER, spec, persona, BUILTIN, config)
        self.pod = deployment["spec"]["template"]["spec"]
        settings = builders.settings_configmap(OWNER, spec, BUILTIN, config)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = f"chatbot-test-{persona}-{self.port}"
        self.run_args = docker_run_args(
            self.pod, image=image,
            config_maps={settings["metadata"]["name"]: settings["data"]},
            claims={builders.pvc_name(OWNER, persona): str(models)},
            ports={builders.HTTP_PORT: self.port}, max_cpus=os.cpu_count())
        self.started = time.monotonic()
        engine.docker("run", "-d", "--name", self.name, *extra, *self.run_args)

    def inspect(self) -> dict:
        return json.loads(engine.docker("inspect", self.name).stdout)[0]

    def logs(self) -> str:
        proc = engine.docker("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def wait_ready(self, timeout: float = 240) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.inspect()["State"]
            assert state["Running"], f"the container exited {state['ExitCode']}:\n{self.logs()}"
            try:
                r = httpx.get(self.url + "/readyz", timeout=5)
                if r.status_code == 200:
                    return r.json()
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"/readyz never answered 200:\n{self.logs()}")

    def health(self) -> str:
        return self.inspect()["State"]["Health"]["Status"]

    def remove(self) -> None:
        engine.docker("rm", "-f", self.name, check=False)


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


def _models_dir(tmp_path: Path, *files: Path) -> Path:
    """A directory the container's uid 1000 can read (pytest's own tmp dirs are 0700)."""
    models = tmp_path / "models"
    models.mkdir(mode=0o755)
    models.chmod(0o755)
    for file in files:
        shutil.copy(file, models / file.name)
        (models / file.name).chmod(0o644)
    return models


def _wait(cond, timeout: float, desc: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.2)
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

def test_serves_the_bundled_smollm2_as_the_deployment_runs_it_and_stops_gracefully(
        run_persona, tmp_path):
    spec = example_spec(office=BUNDLED_FILE)
    office = run_persona(spec, "office", _models_dir(tmp_path, bundled_model_path()),
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

    with httpx.Client(base_url=office.url, timeout=300) as http:
        r = http.post("/Llama", json={"input_data": "What is the capital of France?",
                                      "db_id": "b440780c-cbaa-454f-a8d2-cf884786d89f",
                                      "user_id": "image-test"})
        assert r.status_code == 200, r.text
        assert len(r.json().split()) >= 3, r.json()
        chat = http.post("/v1/chat/completions", json={
            "model": "local", "max_tokens": 24,
            "messages": [{"role": "user", "content": "Say hello."}]})
        assert chat.status_code == 200, chat.text
        assert chat.json()["choices"][0]["message"]["content"].strip()
        # History is written to /data (an emptyDir), the only writable place besides /tmp.
        again = http.post("/Llama", json={"input_data": "And of Italy?",
                                          "db_id": "b440780c-cbaa-454f-a8d2-cf884786d89f",
                                          "user_id": "image-test"})
        assert again.status_code == 200 and again.headers["X-History-Turns"] != "0"

    assert _wait(lambda: office.health() == "healthy", 30, "HEALTHCHECK healthy")

    # SIGTERM (docker stop, the pod's 30 s grace) while an answer is being generated: the
    # answer still arrives whole and the process exits 0 well within the grace period.
    outcome: dict = {}

    def ask() -> None:
        try:
            outcome["r"] = httpx.post(office.url + "/Llama", timeout=120, json={
                "input_data": "Write a long story about a lighthouse keeper."})
        except httpx.HTTPError as exc:
            outcome["error"] = repr(exc)

    asker = threading.Thread(target=ask)
    asker.start()
    _wait(lambda: httpx.get(office.url + "/performance", timeout=5).json()
          .get("engine_generating"), 30, "generation started")
    started = time.monotonic()
    engine.docker("stop", office.name, timeout=60)  # --stop-timeout: the grace period
    stopped_after = time.monotonic() - started
    asker.join(timeout=60)
    state = office.inspect()["State"]
    assert stopped_after < office.pod["terminationGracePeriodSeconds"], stopped_after
    assert state["ExitCode"] == 0, (state, office.logs()[-3000:])
    assert "error" not in outcome, outcome
    assert outcome["r"].status_code == 200 and outcome["r"].json().strip(), outcome["r"].text


def test_serves_a_tiny_model_for_the_character_persona(run_persona, tiny_models, tmp_path):
    tiny = Path(tiny_models["character"])
    character = run_persona(example_spec(character=tiny.name), "character",
                            _models_dir(tmp_path, tiny))
    ready = character.wait_ready()
    assert ready["model"] == tiny.name and ready["persona"] == "character"
    with httpx.Client(base_url=character.url, timeout=120) as http:
        r = http.post("/Llama", json={
            "input_data": "*I wave at Rachel.*", "character_name": "Rachel",
            "greeting": "*Rachel looks up.*", "context": "Rachel is a shy student."})
        assert r.status_code == 200, r.text
        assert isinstance(r.json(), str)
        chat = http.post("/v1/chat/completions", json={
            "model": "local", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]})
        assert chat.status_code == 200, chat.text
        # The operator's route prefix reaches the app (CHATBOT_ROOT_PATH from the Deployment).
        assert http.get("/openapi.json").json()["servers"][0]["url"] == "/character"


def test_a_missing_model_file_is_not_ready_and_says_which_file(run_persona, tmp_path):
    """The claim is mounted but the fetch has not put the file there yet: the container keeps
    running, /readyz stays 503 and names the path (the readiness probe keeps it out of the
    Service), as the Deployment's CHATBOT_MODEL_WAIT_TIMEOUT_S says."""
    office = run_persona(example_spec(office="absent.gguf"), "office", _models_dir(tmp_path))
    r = _wait(lambda: _get(office.url + "/readyz"), 60, "/readyz answers")
    assert r.status_code == 503
    assert "/models/absent.gguf" in r.text
    assert office.inspect()["State"]["Running"]


def _get(url: str):
    try:
        return httpx.get(url, timeout=5)
    except httpx.TransportError:
        return None
