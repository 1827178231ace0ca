"""The operator image, built for real: the model-fetch Job's program runs in it the way the
Job runs it, against a real HTTP mirror on loopback (tests/operator/model_server.py).

The container's options come from the operator's pure builder (fetch_job) for a ChatbotModel
whose source is hf://owner/repo with the operator's HF_ENDPOINT set to the mirror, translated
by podrun.py: the same command and arguments, environment, uid/gid 1000, read-only root
filesystem, all capabilities dropped, the model claim at /models (a host directory owned by
group 1000 with the setgid bit, as fsGroup leaves a volume). Changed from the Job, and why: it
runs on the host network (the mirror listens on the host's loopback), and without
``--report`` (no API server here; the status reporting with the Job's ServiceAccount is
tested in tests/cluster/test_cluster_fetch_progress.py). `kopf run` from this image against the
local control plane: tests/cluster/test_cluster_operator_image.py.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from chatbot_operator import builders
from chatbot_operator.config import OperatorConfig
from chatbot_operator.profiles import BUILTIN
from chatbot_operator.spec import ChatbotModelSpec
from tests.images.podrun import docker_run_args
from tests.operator.model_server import ModelServer
from tests.support import docker_engine as engine

pytestmark = pytest.mark.docker

OWNER = builders.Owner("chatbot", "default", "0f6c7a52-0000-4000-8000-000000000000")
DATA = os.urandom(3 * (1 << 20) + 4321)
SHA = hashlib.sha256(DATA).hexdigest()
FILE = "tiny.Q4_1.gguf"


@pytest.fixture
def mirror():
    with ModelServer({FILE: DATA}) as server:
        yield server


def _claim(tmp_path: Path) -> Path:
    """A volume as fsGroup 1000 leaves it: group 1000, group-writable, setgid."""
    claim = tmp_path / "claim"
    claim.mkdir()
    os.chown(claim, 0, builders.RUN_AS)
    claim.chmod(0o2775)
    return claim


def run_fetch(image: str, mirror: ModelServer, claim: Path, sha256: str = SHA):
    spec = ChatbotModelSpec.parse({"source": {"uri": "hf://owner/repo"},
                                   "office": {"file": FILE, "sha256": sha256}})
    job = builders.fetch_job(OWNER, spec, "office", BUILTIN,
                             OperatorConfig(hf_endpoint=mirror.url))
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    args = container["args"]
    at = args.index("--report")
    container["args"] = args[:at] + args[at + 2:]
    argv = docker_run_args(pod, image=image, config_maps={},
                           claims={builders.pvc_name(OWNER, "office"): str(claim)})
    return engine.docker("run", "--rm", "--network", "host", *argv, check=False,
                         timeout=120)


def test_the_fetch_job_downloads_and_verifies_into_the_claim(operator_image, mirror,
                                                             tmp_path):
    claim = _claim(tmp_path)
    run = run_fetch(operator_image[0], mirror, claim)
    assert run.returncode == 0, run.stdout + run.stderr
    assert (claim / FILE).read_bytes() == DATA
    assert (claim / FILE).stat().st_uid == builders.RUN_AS  # written as the pod's user
    assert (claim / (FILE + ".sha256")).read_text().startswith(SHA)
    assert "(100.0%)" in run.stdout
    assert mirror.requests == [(f"/owner/repo/resolve/main/{FILE}", None)]


def test_the_fetch_job_resumes_after_a_cut_connection(operator_image, mirror, tmp_path):
    claim = _claim(tmp_path)
    mirror.cut_after, mirror.cuts_left = 1_000_000, 2  # two cuts, then the rest
    run = run_fetch(operator_image[0], mirror, claim)
    assert run.returncode == 0, run.stdout + run.stderr
    assert hashlib.sha256((claim / FILE).read_bytes()).hexdigest() == SHA
    assert [r for _, r in mirror.requests] == [None, "bytes=1000000-", "bytes=2000000-"]
    assert "resuming" in run.stdout


def test_the_fetch_job_refuses_a_wrong_checksum_and_leaves_nothing(operator_image, mirror,
                                                                   tmp_path):
    claim = _claim(tmp_path)
    run = run_fetch(operator_image[0], mirror, claim, sha256="0" * 64)
    assert run.returncode == 3, run.stdout + run.stderr
    assert f"sha256 mismatch for {FILE}" in run.stderr
    assert list(claim.iterdir()) == []


def test_the_image_runs_kopf_as_its_default_command(operator_image):
    """The image's CMD is the chart's command (checked against the chart in test_images.py);
    here: kopf and the handlers import inside the image, as uid 1000 on a read-only root."""
    probe = engine.docker(
        "run", "--rm", "--read-only", "--cap-drop", "ALL", "--entrypoint", "python",
        operator_image[0], "-c",
        "import os, kopf, chatbot_operator.handlers; print(os.getuid(), kopf.__name__)")
    assert probe.stdout.split() == [str(builders.RUN_AS), "kopf"]
    assert engine.inspect(operator_image[0])["Config"]["Cmd"][:2] == ["kopf", "run"]
