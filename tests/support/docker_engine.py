"""A Docker Engine for the image tests, and the images built on it.

* The client is Debian's `/usr/bin/docker` (20.10) with ``DOCKER_BUILDKIT=1``: it uses the
  daemon's built-in BuildKit. (A docker 28 client without the buildx plugin would fall back to
  the legacy builder, which lacks ``RUN --mount``.)
* When no daemon answers and this is root, :class:`Daemon` starts ``dockerd`` and stops that
  process, by its PID, at the end (it also dies with the test process: parent-death signal).
* No image registry is reachable here, so the base image is made from Debian packages:
  ``mmdebstrap --variant=minbase bookworm`` (Python 3.11, as the host's) piped into
  ``docker import``. The Dockerfiles take it as their ``PYTHON_IMAGE`` build argument; users
  build from ``python:3.12-slim`` with no flags.
* The service image's build stage takes the host's portable llama-cpp-python wheel through
  ``images/llama-cpp-wheels/`` (see its README) instead of compiling llama.cpp again.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.support.processes import die_with_parent

ROOT = Path(__file__).resolve().parents[2]
WHEELS_CONTEXT = ROOT / "images/llama-cpp-wheels"
BASE_IMAGE = "chatbot-local/python:3.11-bookworm"
SERVICE_IMAGE = "chatbot-local/chatbot-service:test-cpu"
OPERATOR_IMAGE = "chatbot-local/chatbot-operator:test"
FERRETDB_IMAGE = "chatbot-local/ferretdb"  # :<version>
BASE_PACKAGES = ["python3", "python3-venv", "python-is-python3", "passwd", "ca-certificates"]
# As Docker's Debian images: no manuals, docs or translations (dpkg's path-exclude, kept in
# the image for later apt installs) and no apt package caches (pkgcache.bin and friends,
# 80 MB a layer otherwise).
SLIM = ["--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--dpkgopt=path-include=/usr/share/locale/locale.alias",
        '--aptopt=Dir::Cache::pkgcache ""', '--aptopt=Dir::Cache::srcpkgcache ""']
LOG_DIR = Path(os.environ.get("CHATBOT_IMAGES_LOG_DIR", "/tmp/chatbot-images"))


class DockerUnavailable(RuntimeError):
    pass


def client() -> str:
    for path in ("/usr/bin/docker", shutil.which("docker")):
        if path and os.access(path, os.X_OK):
            return path
    raise DockerUnavailable("no docker client: apt-get install docker.io")


def docker(*args: str, check: bool = True, timeout: float = 120, host: str | None = None,
           input: bytes | str | None = None, **kw) -> subprocess.CompletedProcess:
    """``docker ARGS`` on the default daemon, or on ``host`` (a ``DOCKER_HOST`` URL: kind's
    engine, tests/kind/engine.py); text in and out unless ``input`` is bytes."""
    env = {**os.environ, "DOCKER_BUILDKIT": "1", **kw.pop("env", {})}
    if host:
        env["DOCKER_HOST"] = host
    text = not isinstance(input, bytes)
    proc = subprocess.run([client(), *args], capture_output=True, text=text, timeout=timeout,
                          env=env, input=input, **kw)
    if check and proc.returncode != 0:
        err = proc.stderr if text else proc.stderr.decode(errors="replace")
        raise RuntimeError(f"docker {' '.join(args[:4])}... failed ({proc.returncode}): "
                           f"{err[-3000:]}")
    return proc


def reachable(host: str | None = None) -> bool:
    try:
        return docker("version", "--format", "{{.Server.Version}}", check=False, timeout=20,
                      host=host).returncode == 0
    except (DockerUnavailable, OSError, subprocess.TimeoutExpired):
        return False


def _die_with_parent() -> None:  # runs in the child, before exec
    os.setsid()
    die_with_parent()


class Daemon:
    """``dockerd`` started here, or nothing when a daemon already answers."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> Daemon:
        if reachable():
            return self
        dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
        if os.geteuid() != 0:
            raise DockerUnavailable("no Docker daemon answers and this is not root "
                                    "(start dockerd, or run as root)")
        if not os.access(dockerd, os.X_OK):
            raise DockerUnavailable("dockerd is missing: apt-get install docker.io")
        self.proc = start_dockerd(["nice", dockerd, "--host", "unix:///var/run/docker.sock"],
                                  LOG_DIR / "dockerd.log", timeout=timeout)
        return self

    @property
    def started_here(self) -> bool:
        return self.proc is not None

    def stop(self) -> None:
        stop_dockerd(self.proc)


def start_dockerd(argv: list[str], log_path: Path, *, host: str | None = None,
                  timeout: float = 60) -> subprocess.Popen:
    """Start ``dockerd`` (argv) logging to log_path, dying with this process; return once it
    answers on ``host`` (default: the default socket), or stop it and raise."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    deadline = time.monotonic() + timeout
    while not reachable(host):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_dockerd(proc)
            raise DockerUnavailable(f"dockerd did not come up; see {log_path}")
        time.sleep(0.5)
    return proc


def stop_dockerd(proc: subprocess.Popen | None, timeout: float = 90) -> None:
    """SIGTERM by PID (dockerd stops its containers and its containerd), then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# ----------------------------------------------------------------------------- images

def image_exists(tag: str) -> bool:
    return docker("image", "inspect", tag, check=False).returncode == 0


def inspect(tag: str) -> dict:
    return json.loads(docker("image", "inspect", tag).stdout)[0]


def installed_distributions(tag: str) -> set[str]:
    """The (normalised) names of the Python distributions installed in an image."""
    code = ("import importlib.metadata as m, re; print(*sorted({re.sub(r'[-_.]+', '-', "
            "d.metadata['Name']).lower() for d in m.distributions()}))")
    return set(docker("run", "--rm", "--entrypoint", "python", tag, "-c", code).stdout.split())


def build_base_image(tag: str = BASE_IMAGE) -> str:
    """Debian bookworm (minbase) with Python 3.11, venv and useradd; trusts the host's local
    CAs (TLS to the package registries is intercepted here) so pip and apt work in builds."""
    if image_exists(tag):
        return tag
    if not shutil.which("mmdebstrap"):
        raise DockerUnavailable("mmdebstrap is missing: apt-get install mmdebstrap")
    hook = ('for c in /usr/local/share/ca-certificates/*.crt; do [ -e "$c" ] && '
            'cp "$c" "$1/usr/local/share/ca-certificates/"; done; '
            'chroot "$1" update-ca-certificates >/dev/null')
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOG_DIR / "mmdebstrap.log", "wb") as log:
        strap = subprocess.Popen(
            ["nice", "mmdebstrap", "--quiet", "--variant=minbase",
             f"--include={','.join(BASE_PACKAGES)}", *SLIM, f"--customize-hook={hook}",
             "bookworm", "-"], stdout=subprocess.PIPE, stderr=log)
        imported = subprocess.run(
            [client(), "import", "--change", "ENV LANG=C.UTF-8", "--change",
             'CMD ["python3"]', "-", tag], stdin=strap.stdout, capture_output=True,
            text=True, timeout=900)
        strap.stdout.close()
        strap.wait(timeout=60)
    if strap.returncode or imported.returncode:
        raise RuntimeError(f"base image: mmdebstrap rc={strap.returncode} (see "
                           f"{LOG_DIR}/mmdebstrap.log), import: {imported.stderr[-2000:]}")
    return tag


def _installer():
    spec = importlib.util.spec_from_file_location("chatbot_install", ROOT / "services/install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def seed_wheels() -> str | None:
    """Link the host's portable llama-cpp-python build into the build context, under the key
    install.py computes for this interpreter and the portable flags; None when the host has
    not built it (the image build then compiles llama.cpp itself)."""
    install = _installer()
    key = install.build_key(install.pinned_requirement(), install.PORTABLE_CMAKE_ARGS)
    source = install.cache_dir() / key
    for old in WHEELS_CONTEXT.iterdir():
        if old.is_dir() and old.name != key:
            shutil.rmtree(old)
    if not any(source.glob("llama_cpp_python-*.whl")):
        return None
    target = WHEELS_CONTEXT / key
    target.mkdir(exist_ok=True)
    for file in source.iterdir():
        dest = target / file.name
        if not dest.exists():
            try:
                os.link(file, dest)
            except OSError:
                shutil.copy2(file, dest)
    return key


def build(dockerfile: str, tag: str, *build_args: str, timeout: float = 2400) -> str:
    """``docker build`` from the repository root; the full log goes to LOG_DIR."""
    args = ["build", "--progress=plain", "-f", dockerfile, "-t", tag]
    for arg in build_args:
        args += ["--build-arg", arg]
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"build-{tag.replace('/', '_').replace(':', '_')}.log"
    proc = docker(*args, ".", check=False, timeout=timeout, cwd=ROOT)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"docker build -f {dockerfile} failed; log: {log}\n"
                           f"{(proc.stdout + proc.stderr)[-4000:]}")
    return proc.stdout + proc.stderr


def build_service_image() -> tuple[str, str]:
    seed_wheels()
    return SERVICE_IMAGE, build("images/service/Dockerfile", SERVICE_IMAGE,
                                f"PYTHON_IMAGE={build_base_image()}")


def build_operator_image() -> tuple[str, str]:
    return OPERATOR_IMAGE, build("images/operator/Dockerfile", OPERATOR_IMAGE,
                                 f"PYTHON_IMAGE={build_base_image()}")


def build_ferretdb_image(binary: Path, version: str) -> str:
    """The FerretDB binary the cluster harness builds, as an image like FerretDB's own
    (``ghcr.io/ferretdb/ferretdb``, which no registry here serves): the chart's MongoDB-wire
    server with ``mongodb.server: ferretdb``."""
    import tempfile

    tag = f"{FERRETDB_IMAGE}:{version}"
    with tempfile.TemporaryDirectory() as ctx:
        shutil.copy2(binary, Path(ctx) / "ferretdb")
        (Path(ctx) / "Dockerfile").write_text(
            f"FROM {build_base_image()}\nCOPY ferretdb /ferretdb\nUSER 999:999\n"
            'EXPOSE 27017\nENTRYPOINT ["/ferretdb"]\n')
        docker("build", "-t", tag, ctx, timeout=600)
    return tag
