"""A persona's Deployment, as the operator's pure builders make it for the example
ChatbotModel, run as a Docker container (podrun.py) of the service image. Used by
test_service_image.py and tests/bench/bench_images.py."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import httpx
import yaml

from chatbot_operator import builders
from chatbot_operator.config import OperatorConfig
from chatbot_operator.profiles import BUILTIN
from chatbot_operator.spec import ChatbotModelSpec
from tests.images.podrun import docker_run_args
from tests.support import docker_engine as engine
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "operator/examples/chatbotmodel.yaml"
OWNER = builders.Owner("chatbot", "default", "0f6c7a52-0000-4000-8000-000000000000")

def example_spec(**files: str) -> ChatbotModelSpec:
    """The example ChatbotModel with other model files, without its Secrets, and with CPU
    limits and requests no larger than this machine's cores: the operator sets llama.cpp's
    threads to the limit, and more spinning threads than cores collapses throughput."""
    body = yaml.safe_load(EXAMPLE.read_text())["spec"]
    body.pop("secrets", None)
    cores = os.cpu_count() or 1
    for persona in ("office", "character"):
        for kind in ("limits", "requests"):
            cpu = body[persona].get("resources", {}).get(kind, {}).get("cpu")
            if cpu is not None:
                body[persona]["resources"][kind]["cpu"] = str(min(int(cpu), cores))
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
        self.empty_dirs = models.parent / f"empty-dirs-{self.port}"
        self.run_args = docker_run_args(
            self.pod, image=image,
            config_maps={settings["metadata"]["name"]: settings["data"]},
            claims={builders.pvc_name(OWNER, persona): str(models)},
            ports={builders.HTTP_PORT: self.port}, max_cpus=os.cpu_count(),
            empty_dirs=self.empty_dirs)
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


def models_dir(tmp_path: Path, *files: Path) -> Path:
    """A directory the container's uid 1000 can read (pytest's own tmp dirs are 0700)."""
    models = tmp_path / "models"
    models.mkdir(mode=0o755)
    models.chmod(0o755)
    for file in files:
        shutil.copy(file, models / file.name)
        (models / file.name).chmod(0o644)
    return models


