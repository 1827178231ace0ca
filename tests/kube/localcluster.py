"""A real, local Kubernetes control plane for the test suite, built from Go modules.

Standard library only (plus the ``openssl`` CLI and ``tests.support.ports``, standard
library too), so that ``build-binaries`` and ``local-cluster`` run with any Python >= 3.11,
with or without the project's venv.

* :func:`build_all` builds etcd, kube-apiserver, kube-controller-manager,
  kube-scheduler, kwok, helm and FerretDB from their Go modules at the versions
  pinned in ``versions.env`` and caches them under
  ``${XDG_CACHE_HOME:-~/.cache}/chatbot-dev/bin/<component>-<version>/``;
  Go's module and build caches live under ``.../chatbot-dev/go/``.
* :class:`LocalCluster` starts etcd, kube-apiserver (RBAC, service-account signing
  key), kube-controller-manager, kube-scheduler and kwok on 127.0.0.1 with free
  ports, registers three fake kwok nodes (two GPU nodes, one CPU node) and stops
  everything again (tracked PIDs, process groups).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.ports import free_port

HERE = Path(__file__).resolve().parent
VERSIONS_FILE = HERE / "versions.env"


# --------------------------------------------------------------------------- versions / paths


def versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in VERSIONS_FILE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        out[key.strip()] = value.strip()
    return out


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "chatbot-dev"


@dataclass(frozen=True)
class Component:
    name: str
    version_key: str
    binaries: tuple[str, ...]

    @property
    def version(self) -> str:
        return versions()[self.version_key]

    @property
    def bin_dir(self) -> Path:
        return cache_root() / "bin" / f"{self.name}-{self.version}"

    def is_built(self) -> bool:
        return all((self.bin_dir / b).is_file() for b in self.binaries) and (
            self.bin_dir / ".complete"
        ).is_file()


COMPONENTS: dict[str, Component] = {
    c.name: c
    for c in (
        Component("etcd", "ETCD_VERSION", ("etcd",)),
        Component(
            "kubernetes",
            "KUBERNETES_VERSION",
            ("kube-apiserver", "kube-controller-manager", "kube-scheduler"),
        ),
        Component("kwok", "KWOK_VERSION", ("kwok", "kwok-stages.yaml")),
        Component("helm", "HELM_VERSION", ("helm",)),
        Component("ferretdb", "FERRETDB_VERSION", ("ferretdb",)),
        Component("kube-node", "KUBERNETES_VERSION", ("kubelet", "kube-proxy")),
        Component("kubectl", "KUBERNETES_VERSION", ("kubectl",)),
        Component("coredns", "COREDNS_VERSION", ("coredns",)),
        Component("traefik", "TRAEFIK_VERSION", ("traefik",)),
        Component(
            "local-path-provisioner", "LOCAL_PATH_PROVISIONER_VERSION", ("local-path-provisioner",)
        ),
        Component("kube-router", "KUBE_ROUTER_VERSION", ("kube-router",)),
    )
}

# Components the cluster itself needs (helm and FerretDB are for other tests).
CLUSTER_COMPONENTS = ("etcd", "kubernetes", "kwok")
# Built from the k8s.io/kubernetes module (its staging replaces, its version ldflags).
KUBERNETES_MODULE_COMPONENTS = ("kubernetes", "kube-node", "kubectl")
# What a real node adds (tests/kube/realnode.py).
NODE_COMPONENTS = ("kube-node", "kubectl", "coredns", "traefik", "local-path-provisioner",
                   "kube-router")


def binary(name: str) -> Path:
    """Path of a cached binary by program name (``kube-apiserver``, ``helm``...)."""
    for comp in COMPONENTS.values():
        if name in comp.binaries:
            return comp.bin_dir / name
    raise KeyError(name)


def missing_components(names: tuple[str, ...] | None = None) -> list[str]:
    names = names or tuple(COMPONENTS)
    return [n for n in names if not COMPONENTS[n].is_built()]


# --------------------------------------------------------------------------- building


def _log(msg: str) -> None:
    print(f"[build-binaries] {msg}", flush=True)


def _fmt(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s"


def go_env() -> dict[str, str]:
    env = dict(os.environ)
    go_root = cache_root() / "go"
    # Always our own caches (not a GOCACHE/GOMODCACHE from the environment), so that
    # CI and later runs on this machine find them where build-binaries left them.
    env["GOMODCACHE"] = str(go_root / "mod")
    env["GOCACHE"] = str(go_root / "build")
    # Use the machine's Go; never download a toolchain behind the user's back.
    env.setdefault("GOTOOLCHAIN", "local")
    env["CGO_ENABLED"] = "0"
    env["GOFLAGS"] = "-mod=mod"
    env["GOWORK"] = "off"
    return env


def _go_version() -> str:
    out = subprocess.run(
        ["go", "env", "GOVERSION"], capture_output=True, text=True, check=True, env=go_env()
    ).stdout.strip()
    m = re.match(r"go(\d+\.\d+(?:\.\d+)?)", out)
    if not m:
        raise RuntimeError(f"cannot parse Go version {out!r}")
    return m.group(1)


def _run_go(args: list[str], cwd: Path, log_file: Path, what: str, started: float) -> None:
    """Run a go command, logging to a file and printing a heartbeat with progress."""
    with open(log_file, "a") as log:
        log.write(f"\n$ go {' '.join(args)}\n")
        log.flush()
        proc = subprocess.Popen(
            ["go", *args],
            cwd=cwd,
            env=go_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        state = {"lines": 0, "last": ""}
        done = threading.Event()

        def heartbeat() -> None:
            while not done.wait(30):
                _log(
                    f"  {what}: still running ({_fmt(time.monotonic() - started)} elapsed, "
                    f"{state['lines']} packages/lines so far, last: {state['last'][:70]})"
                )

        t = threading.Thread(target=heartbeat, daemon=True)
        t.start()
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            state["lines"] += 1
            state["last"] = line.strip()
        rc = proc.wait()
        done.set()
    if rc != 0:
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-40:])
        raise RuntimeError(f"go {args[0]} failed for {what} (exit {rc}); log: {log_file}\n{tail}")


def _module_zip_dir(module: str, version: str, cwd: Path, log_file: Path) -> tuple[Path, Path]:
    """Download a module; return (source dir, go.mod path) in the module cache."""
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        cwd=cwd,
        env=go_env(),
        capture_output=True,
        text=True,
    )
    with open(log_file, "a") as log:
        log.write(out.stdout + out.stderr)
    if out.returncode != 0:
        raise RuntimeError(f"go mod download {module}@{version} failed:\n{out.stdout}{out.stderr}")
    info = json.loads(out.stdout)
    return Path(info["Dir"]), Path(info["GoMod"])


def _staging_replaces(kube_gomod: Path, staging_version: str) -> list[str]:
    """``replace`` lines for every k8s.io staging module k8s.io/kubernetes requires."""
    text = kube_gomod.read_text()
    staged = set(re.findall(r"^\s*(k8s\.io/[\w.-]+)\s*=>\s*\./staging/", text, re.M))
    required = set(re.findall(r"^\s*(k8s\.io/[\w.-]+)\s+v0\.0\.0\b", text, re.M))
    mods = sorted(staged & required)
    if not mods:
        raise RuntimeError(f"no staging modules found in {kube_gomod}")
    return [f"replace {m} => {m} {staging_version}" for m in mods]


@dataclass
class _Recipe:
    module: str  # module to require
    packages: list[str]  # main packages to build
    outputs: list[str]  # binary names, same order as packages
    ldflags: list[str] = field(default_factory=list)
    tags: str = ""


def _recipe(comp: Component) -> _Recipe:
    v = comp.version
    if comp.name == "etcd":
        return _Recipe("go.etcd.io/etcd/server/v3", ["go.etcd.io/etcd/server/v3"], ["etcd"])
    if comp.name in KUBERNETES_MODULE_COMPONENTS:
        major, minor = v.lstrip("v").split(".")[:2]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        ld = []
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
            ld += [
                f"-X {pkg}.gitVersion={v}",
                f"-X {pkg}.gitMajor={major}",
                f"-X {pkg}.gitMinor={minor}",
                f"-X {pkg}.gitTreeState=clean",
                f"-X {pkg}.buildDate={now}",
            ]
        cmds = list(comp.binaries)
        return _Recipe(
            "k8s.io/kubernetes",
            [f"k8s.io/kubernetes/cmd/{c}" for c in cmds],
            cmds,
            ld,
        )
    if comp.name == "kwok":
        return _Recipe(
            "sigs.k8s.io/kwok",
            ["sigs.k8s.io/kwok/cmd/kwok"],
            ["kwok"],
            [f"-X sigs.k8s.io/kwok/pkg/consts.Version={v}"],
        )
    if comp.name == "helm":
        major = v.lstrip("v").split(".")[0]
        mod = f"helm.sh/helm/v{major}"
        return _Recipe(
            mod,
            [f"{mod}/cmd/helm"],
            ["helm"],
            [
                f"-X {mod}/internal/version.version={v}",
                f"-X {mod}/internal/version.gitTreeState=clean",
            ],
        )
    if comp.name == "ferretdb":
        return _Recipe(
            "github.com/FerretDB/FerretDB",
            ["github.com/FerretDB/FerretDB/cmd/ferretdb"],
            ["ferretdb"],
        )
    if comp.name == "coredns":
        return _Recipe(
            "github.com/coredns/coredns",
            ["github.com/coredns/coredns"],
            ["coredns"],
            [f"-X github.com/coredns/coredns/coremain.GitCommit={v}"],
        )
    if comp.name == "traefik":
        mod = "github.com/traefik/traefik/v3"
        return _Recipe(
            mod,
            [f"{mod}/cmd/traefik"],
            ["traefik"],
            [f"-X {mod}/pkg/version.Version={v}", f"-X {mod}/pkg/version.Codename=chatbot-dev"],
        )
    if comp.name == "local-path-provisioner":
        return _Recipe(
            "github.com/rancher/local-path-provisioner",
            ["github.com/rancher/local-path-provisioner"],
            ["local-path-provisioner"],
            [f"-X main.VERSION={v}"],
        )
    if comp.name == "kube-router":
        mod = "github.com/cloudnativelabs/kube-router/v2"
        return _Recipe(
            mod,
            [f"{mod}/cmd/kube-router"],
            ["kube-router"],
            [f"-X {mod}/pkg/version.Version={v}", f"-X {mod}/pkg/version.BuildDate=chatbot-dev"],
        )
    raise KeyError(comp.name)


def _writable_copy(src: Path, dest: Path) -> Path:
    """A copy of a (read-only) module-cache directory that a build may change."""
    shutil.copytree(src, dest)
    for p in dest.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dest


def build_component(comp: Component, *, started_all: float | None = None) -> float:
    """Build one component into its versioned cache dir. Returns seconds spent."""
    started = time.monotonic()
    recipe = _recipe(comp)
    work = cache_root() / "go" / "work" / f"{comp.name}-{comp.version}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    logs = cache_root() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_file = logs / f"build-{comp.name}-{comp.version}.log"
    log_file.write_text(f"build of {comp.name} {comp.version} at {time.ctime()}\n")
    _log(f"{comp.name} {comp.version}: building {', '.join(recipe.outputs)} (log: {log_file})")

    gomod = [f"module chatbot.local/build/{comp.name}", "", f"go {_go_version()}", ""]
    src_dir, dep_gomod = _module_zip_dir(recipe.module, comp.version, work, log_file)
    if comp.name in KUBERNETES_MODULE_COMPONENTS:
        staging = "v0." + comp.version.lstrip("v").split(".", 1)[1]
        gomod += _staging_replaces(dep_gomod, staging)
        m = re.search(r"^godebug\s+(.*)$", dep_gomod.read_text(), re.M)
        if m:
            gomod += [f"godebug {m.group(1)}"]
    if comp.name == "ferretdb":
        # FerretDB embeds build/version/*.txt and panics without version.txt, which
        # is generated at release time and absent from the module zip: build from a
        # copy of the module source with the file added.
        local = _writable_copy(src_dir, work / "ferretdb-src")
        (local / "build" / "version" / "version.txt").write_text(comp.version + "\n")
        (local / "build" / "version" / "package.txt").write_text("chatbot-dev\n")
        gomod += [f"replace {recipe.module} => ./ferretdb-src"]
    build_dir = work
    if comp.name == "traefik":
        # The module proxy refuses some of Traefik's dependencies: build from a patched
        # copy of its source (gomod_patches.py says what and why), as the main module,
        # since go.mod's replace directives only apply there.
        from tests.kube import gomod_patches

        build_dir = _writable_copy(src_dir, work / "traefik-src")
        gomod_patches.patch_traefik(build_dir)
        recipe.packages = ["./cmd/traefik"]
        _run_go(["mod", "tidy", "-e"], build_dir, log_file, "traefik (resolve modules)", started)
    else:
        (work / "go.mod").write_text("\n".join(gomod) + "\n")
        _run_go(
            ["get", *(f"{p}@{comp.version}" for p in recipe.packages)],
            work,
            log_file,
            f"{comp.name} (resolve modules)",
            started,
        )
    _log(f"  {comp.name}: modules resolved/downloaded after {_fmt(time.monotonic() - started)}")
    staging_out = work / "out"
    staging_out.mkdir()
    args = ["build", "-trimpath", "-v", "-ldflags", " ".join(["-s", "-w", *recipe.ldflags])]
    if recipe.tags:
        args += ["-tags", recipe.tags]
    if len(recipe.packages) == 1:
        args += ["-o", str(staging_out / recipe.outputs[0]), recipe.packages[0]]
    else:
        args += ["-o", str(staging_out) + "/", *recipe.packages]
    _run_go(args, build_dir, log_file, f"{comp.name} (compile)", started)

    if comp.name == "kwok":
        # kwok needs Stage objects to know how to fake nodes and pods; these are
        # the defaults kwokctl uses (fast node init, heartbeat with lease, fast pods).
        parts = [
            "kustomize/stage/node/fast/node-initialize.yaml",
            "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
            "kustomize/stage/pod/fast/pod-ready.yaml",
            "kustomize/stage/pod/fast/pod-complete.yaml",
            "kustomize/stage/pod/fast/pod-delete.yaml",
        ]
        docs = [(src_dir / p).read_text().strip() for p in parts]
        (staging_out / "kwok-stages.yaml").write_text("\n---\n".join(docs) + "\n")

    for b in comp.binaries:
        if not (staging_out / b).is_file():
            raise RuntimeError(f"{comp.name}: expected output {b} missing")
    (staging_out / ".complete").write_text(
        json.dumps({"version": comp.version, "go": _go_version(), "built": time.ctime()}) + "\n"
    )
    dest = comp.bin_dir
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(staging_out, dest)
    shutil.rmtree(work, ignore_errors=True)
    spent = time.monotonic() - started
    total = f", total {_fmt(time.monotonic() - started_all)}" if started_all else ""
    _log(f"{comp.name} {comp.version}: done in {_fmt(spent)}{total}")
    return spent


@contextlib.contextmanager
def _build_lock():
    path = cache_root() / "bin" / ".build.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log("another build-binaries is running; waiting for it ...")
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def build_all(names: list[str] | None = None) -> dict[str, float]:
    names = names or list(COMPONENTS)
    for n in names:
        if n not in COMPONENTS:
            raise SystemExit(f"unknown component {n!r}; known: {', '.join(COMPONENTS)}")
    started = time.monotonic()
    timings: dict[str, float] = {}
    todo = [n for n in names if not COMPONENTS[n].is_built()]
    if not todo:
        _log(f"all cached in {cache_root() / 'bin'} ({', '.join(names)}); nothing to do")
        return timings
    if shutil.which("go") is None:
        raise SystemExit("build-binaries: `go` not found on PATH (Go >= 1.26 is needed)")
    failed: list[str] = []
    with _build_lock():
        for n in todo:
            comp = COMPONENTS[n]
            if comp.is_built():  # built by a concurrent run while we waited
                continue
            try:
                timings[n] = build_component(comp, started_all=started)
            except Exception as exc:  # keep going: report every broken component
                _log(f"{n} {comp.version}: FAILED: {exc}")
                failed.append(n)
    _log(
        f"finished in {_fmt(time.monotonic() - started)}: "
        + ", ".join(f"{k} {_fmt(v)}" for k, v in timings.items())
    )
    if failed:
        raise SystemExit(f"build-binaries: failed to build {', '.join(failed)}")
    return timings


# --------------------------------------------------------------------------- schemas

SKAFFOLD_MODULE = "github.com/GoogleContainerTools/skaffold/v2"


def skaffold_api_version(skaffold_yaml: Path | None = None) -> str:
    """The schema version skaffold.yaml declares (``apiVersion: skaffold/v4beta13``)."""
    path = skaffold_yaml or HERE.parents[1] / "skaffold.yaml"
    m = re.search(r"^apiVersion:\s*skaffold/(\S+)", path.read_text(), re.M)
    if not m:
        raise ValueError(f"{path}: no 'apiVersion: skaffold/...' line")
    return m.group(1)


def skaffold_schema(api_version: str | None = None, *, download: bool = True) -> Path:
    """skaffold's own JSON schema for ``skaffold/<api_version>``, from the skaffold Go module
    zip (``SKAFFOLD_VERSION``), extracted once into the cache. Only the zip is read."""
    api_version = api_version or skaffold_api_version()
    version = versions()["SKAFFOLD_VERSION"]
    out = cache_root() / "schemas" / f"skaffold-{version}" / f"{api_version}.json"
    if out.is_file():
        return out
    escaped = re.sub(r"[A-Z]", lambda m: "!" + m.group(0).lower(), SKAFFOLD_MODULE)
    zip_path = (Path(go_env()["GOMODCACHE"]) / "cache/download" / escaped / "@v"
                / f"{version}.zip")
    if not zip_path.is_file():
        if not download:
            raise FileNotFoundError(f"skaffold {version} module zip not downloaded: {zip_path}"
                                    " (run tests/cluster/build-binaries)")
        if shutil.which("go") is None:
            raise FileNotFoundError("`go` not found: cannot download skaffold's schemas")
        _log(f"skaffold {version}: downloading the module zip for its JSON schemas")
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run(["go", "mod", "download", "-json",
                                   f"{SKAFFOLD_MODULE}@{version}"], cwd=tmp, env=go_env(),
                                  capture_output=True, text=True, timeout=900)
        if not zip_path.is_file():
            raise RuntimeError(f"go mod download {SKAFFOLD_MODULE}@{version} failed:\n"
                               f"{proc.stdout}{proc.stderr}")
    import zipfile

    with zipfile.ZipFile(zip_path) as zf:
        data = zf.read(f"{SKAFFOLD_MODULE}@{version}/docs-v2/content/en/schemas/"
                       f"{api_version}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".tmp")
    tmp_out.write_bytes(data)
    os.replace(tmp_out, out)
    return out


# --------------------------------------------------------------------------- the cluster

# Fake nodes registered with kwok. No taints by default: a pod lands on a GPU
# node only by nodeSelector/affinity or by asking for nvidia.com/gpu; tolerations
# for nvidia.com/gpu (added by the operator) are harmless without a taint.
NODES: list[dict] = [
    {
        "name": "gpu-2080",
        "labels": {
            "nvidia.com/gpu.product": "NVIDIA-GeForce-RTX-2080",
            "nvidia.com/gpu.present": "true",
        },
        "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110", "nvidia.com/gpu": "1"},
    },
    {
        "name": "gpu-3060",
        "labels": {
            "nvidia.com/gpu.product": "NVIDIA-GeForce-RTX-3060",
            "nvidia.com/gpu.present": "true",
        },
        "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110", "nvidia.com/gpu": "1"},
    },
    {
        "name": "cpu-1",
        "labels": {},
        "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
    },
]

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
# With a real node, the fake GPU nodes carry the GPU nodes' usual taint, so that only
# pods that tolerate it (the operator's GPU pods) land there.
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"


def default_cluster_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"chatbot-local-cluster-{os.getuid()}"


def _openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{r.stderr}")


def _make_pki(pki: Path, node_ip: str | None = None) -> None:
    """CA, API server serving cert, client certs, service-account key pair.

    With ``node_ip`` (a real node), the API server's certificate also names that address,
    and a kubelet client certificate (group ``system:nodes``) is made.
    """
    pki.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650",
             "-subj", "/CN=chatbot-local-cluster-ca", cwd=pki)
    (pki / "apiserver.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,IP:" + SERVICE_IP + (f",IP:{node_ip}" if node_ip else "")
        + ",DNS:localhost,DNS:kubernetes,"
        "DNS:kubernetes.default,DNS:kubernetes.default.svc,"
        "DNS:kubernetes.default.svc.cluster.local\n"
    )
    (pki / "client.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n"
    )
    certs = {
        "apiserver": ("/CN=kube-apiserver", "apiserver.ext"),
        "admin": ("/O=system:masters/CN=chatbot-admin", "client.ext"),
        "controller-manager": ("/CN=system:kube-controller-manager", "client.ext"),
        "scheduler": ("/CN=system:kube-scheduler", "client.ext"),
        "kwok": ("/O=system:masters/CN=kwok-controller", "client.ext"),
    }
    if node_ip:
        certs["kubelet"] = ("/O=system:nodes/CN=system:node:node-1", "client.ext")
    for name, (subj, ext) in certs.items():
        _openssl("req", "-new", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", subj, cwd=pki)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "3650",
                 "-extfile", ext, cwd=pki)
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
             "-out", "sa.key", cwd=pki)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def write_kubeconfig(path: Path, server: str, ca: Path, *, cert: Path | None = None,
                     key: Path | None = None, token: str | None = None,
                     user: str = "admin", namespace: str | None = None) -> Path:
    """Write a kubeconfig (JSON is valid YAML) for client-cert or token auth."""
    u: dict = {}
    if cert and key:
        u = {"client-certificate": str(cert), "client-key": str(key)}
    if token:
        u = {"token": token}
    ctx: dict = {"cluster": "chatbot-local", "user": user}
    if namespace:
        ctx["namespace"] = namespace
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "chatbot-local", "cluster": {"server": server,
                                                           "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": u}],
        "contexts": [{"name": "chatbot-local", "context": ctx}],
        "current-context": "chatbot-local",
    }
    path.write_text(json.dumps(cfg, indent=2) + "\n")
    path.chmod(0o600)
    return path


class ClusterError(RuntimeError):
    pass


# Metadata (who, verb, resource, response code) of every call by a ServiceAccount, except
# the controller-manager's own (kube-system), which would drown the rest.
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: None
    userGroups: ["system:serviceaccounts:kube-system"]
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
"""


class LocalCluster:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok on loopback.

    All state (certs, etcd data, logs, PIDs, kubeconfigs) lives in ``dir``.
    """

    def __init__(self, dir: Path | str | None = None, *, node_ip: str | None = None):
        self.dir = (Path(dir) if dir else default_cluster_dir()).resolve()
        # Set for a cluster with a real node (realnode.py): the API server then listens on
        # all addresses and advertises this one, which the pods reach it by; the kwok
        # nodes are the GPU ones only, tainted as GPU nodes are.
        self.node_ip = node_ip
        self.pki = self.dir / "pki"
        self.logs = self.dir / "logs"
        self.state_file = self.dir / "state.json"
        self.kubeconfig = self.dir / "kubeconfig"
        # One JSON line per API call made by a ServiceAccount outside kube-system: what the
        # RBAC tests read to see which permissions the operator really used.
        self.audit_log = self.logs / "audit.log"

    # ---------------------------------------------------------------- state
    def _load_state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _save_state(self, state: dict) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self.state_file)

    @property
    def server(self) -> str:
        return self._load_state()["server"]

    def _pid_alive(self, pid: int) -> bool:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        # Guard against PID reuse: our processes all mention the cluster dir.
        if str(self.dir).encode() not in cmdline:
            return False
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                return False
        except OSError:
            return False
        return True

    def running(self) -> dict[str, int]:
        procs = self._load_state().get("pids", {})
        return {name: pid for name, pid in procs.items() if self._pid_alive(pid)}

    # ---------------------------------------------------------------- http
    def _ssl_ctx(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def api(self, method: str, path: str, body: dict | None = None,
            content_type: str = "application/json", timeout: float = 10) -> tuple[int, dict | str]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self._ssl_ctx(), timeout=timeout) as resp:
                raw = resp.read().decode()
                status = resp.status
        except urllib.error.HTTPError as e:
            raw = e.read().decode()
            status = e.code
        try:
            return status, json.loads(raw)
        except json.JSONDecodeError:
            return status, raw

    # ---------------------------------------------------------------- processes
    def _spawn(self, name: str, argv: list[str], *, die_with_parent: bool,
               death_signal: int = signal.SIGKILL, env: dict | None = None) -> int:
        log = open(self.logs / f"{name}.log", "ab")

        def preexec() -> None:
            if die_with_parent:
                import ctypes

                libc = ctypes.CDLL("libc.so.6", use_errno=True)
                libc.prctl(1, death_signal)  # PR_SET_PDEATHSIG

        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
            start_new_session=True,
            preexec_fn=preexec,
            close_fds=True,
            env=env,
        )
        log.close()
        state = self._load_state()
        state.setdefault("pids", {})[name] = proc.pid
        self._save_state(state)
        self._procs[name] = proc
        return proc.pid

    def _check_alive(self, *names: str) -> None:
        for name in names:
            proc = self._procs.get(name)
            if proc is not None and proc.poll() is not None:
                tail = self.log_tail(name)
                raise ClusterError(f"{name} exited with {proc.returncode}; log tail:\n{tail}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            return "\n".join((self.logs / f"{name}.log").read_text(errors="replace")
                             .splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def _wait(self, what: str, cond, timeout: float, procs: tuple[str, ...]) -> None:
        deadline = time.monotonic() + timeout
        last_exc: Exception | None = None
        while time.monotonic() < deadline:
            self._check_alive(*procs)
            try:
                if cond():
                    return
            except Exception as exc:  # noqa: BLE001 - retried until the deadline
                last_exc = exc
            time.sleep(0.2)
        logs = "\n".join(f"--- {p} ---\n{self.log_tail(p)}" for p in procs)
        raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what} "
                           f"(last error: {last_exc})\n{logs}")

    # ---------------------------------------------------------------- up / down
    def up(self, *, timeout: float = 120, die_with_parent: bool = False,
           progress=None) -> Path:
        """Start the cluster; return the admin kubeconfig path once it is usable."""
        say = progress or (lambda msg: None)
        missing = missing_components(CLUSTER_COMPONENTS)
        if missing:
            raise ClusterError(
                f"binaries missing for {', '.join(missing)}: run tests/cluster/build-binaries")
        if self.running():
            raise ClusterError(f"a cluster is already running in {self.dir} "
                               f"(pids {self.running()}); run `local-cluster down` first")
        started = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=True)
        for old in self.dir.iterdir():  # a previous run's state; keeper.log is ours
            if old.name != "keeper.log":
                shutil.rmtree(old) if old.is_dir() else old.unlink()
        self.logs.mkdir()
        self._procs: dict[str, subprocess.Popen] = {}
        _make_pki(self.pki, self.node_ip)
        ports = {k: free_port() for k in ("etcd", "etcd_peer", "apiserver", "cm", "sched", "kwok")}
        server = f"https://127.0.0.1:{ports['apiserver']}"
        self._save_state({"server": server, "ports": ports, "pids": {},
                          "versions": versions(), "dir": str(self.dir),
                          "node_ip": self.node_ip})
        pki = self.pki
        try:
            self._start_all(pki, ports, server, die_with_parent, timeout, say)
        except BaseException:
            self.down(remove=False)
            raise
        state = self._load_state()
        state["startup_seconds"] = round(time.monotonic() - started, 1)
        self._save_state(state)
        say(f"cluster ready in {time.monotonic() - started:.1f}s")
        return self.kubeconfig

    def _start_all(self, pki: Path, ports: dict, server: str, die_with_parent: bool,
                   timeout: float, say) -> None:
        d = self.dir
        kc = {}
        for who in ("admin", "controller-manager", "scheduler", "kwok"):
            path = self.kubeconfig if who == "admin" else d / f"{who}.kubeconfig"
            kc[who] = write_kubeconfig(path, server, pki / "ca.crt", cert=pki / f"{who}.crt",
                                       key=pki / f"{who}.key", user=who)

        etcd_url = f"http://127.0.0.1:{ports['etcd']}"
        peer_url = f"http://127.0.0.1:{ports['etcd_peer']}"
        self._spawn("etcd", [
            str(binary("etcd")), "--name=default", f"--data-dir={d / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}", "--unsafe-no-fsync",
            "--log-level=warn", "--quota-backend-bytes=4294967296",
        ], die_with_parent=die_with_parent)
        say("etcd started")

        def etcd_healthy() -> bool:
            with urllib.request.urlopen(etcd_url + "/health", timeout=2) as r:
                return json.loads(r.read()).get("health") == "true"

        self._wait("etcd health", etcd_healthy, timeout, ("etcd",))

        audit_policy = d / "audit-policy.yaml"
        audit_policy.write_text(AUDIT_POLICY)
        self._spawn("kube-apiserver", [
            str(binary("kube-apiserver")),
            f"--etcd-servers={etcd_url}",
            f"--audit-policy-file={audit_policy}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json", "--audit-log-mode=blocking",
            *(("--bind-address=0.0.0.0", f"--advertise-address={self.node_ip}",
               f"--kubelet-client-certificate={pki / 'admin.crt'}",
               f"--kubelet-client-key={pki / 'admin.key'}",
               "--kubelet-preferred-address-types=InternalIP")
              if self.node_ip else
              ("--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
               "--endpoint-reconciler-type=none")),
            f"--secure-port={ports['apiserver']}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
        ], die_with_parent=die_with_parent)
        say("kube-apiserver started")

        def api_ready() -> bool:
            status, _ = self.api("GET", "/readyz", timeout=3)
            return status == 200

        self._wait("kube-apiserver /readyz", api_ready, timeout, ("etcd", "kube-apiserver"))
        say("kube-apiserver ready")

        self._spawn("kube-controller-manager", [
            str(binary("kube-controller-manager")),
            f"--kubeconfig={kc['controller-manager']}",
            f"--authentication-kubeconfig={kc['controller-manager']}",
            f"--authorization-kubeconfig={kc['controller-manager']}",
            "--bind-address=127.0.0.1", f"--secure-port={ports['cm']}",
            f"--cert-dir={d / 'cm-certs'}",
            "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            "--controllers=*",
            "--node-monitor-grace-period=120s",
            "--v=1",
        ], die_with_parent=die_with_parent)

        sched_cfg = d / "scheduler-config.yaml"
        sched_cfg.write_text(json.dumps({
            "apiVersion": "kubescheduler.config.k8s.io/v1",
            "kind": "KubeSchedulerConfiguration",
            "clientConnection": {"kubeconfig": str(kc["scheduler"])},
            "leaderElection": {"leaderElect": False},
        }, indent=2) + "\n")
        self._spawn("kube-scheduler", [
            str(binary("kube-scheduler")),
            f"--config={sched_cfg}",
            f"--authentication-kubeconfig={kc['scheduler']}",
            f"--authorization-kubeconfig={kc['scheduler']}",
            "--bind-address=127.0.0.1", f"--secure-port={ports['sched']}",
            f"--cert-dir={d / 'sched-certs'}",
            "--v=1",
        ], die_with_parent=die_with_parent)

        self._spawn("kwok", [
            str(binary("kwok")),
            f"--kubeconfig={kc['kwok']}",
            f"--config={binary('kwok-stages.yaml')}",
            f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
            "--node-ip=10.244.0.1", "--cidr=10.244.0.0/16",
            f"--server-address=127.0.0.1:{ports['kwok']}",
            "--node-lease-duration-seconds=40",
        ], die_with_parent=die_with_parent)
        say("controller-manager, scheduler, kwok started")

        for node in self.fake_nodes:
            body = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": node["name"],
                    "annotations": {KWOK_ANNOTATION: "fake",
                                    "node.alpha.kubernetes.io/ttl": "0"},
                    "labels": {"type": "kwok", "kubernetes.io/hostname": node["name"],
                               "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                               **node["labels"]},
                },
                "spec": {"taints": [GPU_TAINT]} if self.node_ip else {},
                "status": {"capacity": node["capacity"], "allocatable": node["capacity"],
                           "nodeInfo": {"kubeletVersion": "fake", "architecture": "amd64",
                                        "operatingSystem": "linux"}},
            }
            status, resp = self.api("POST", "/api/v1/nodes", body)
            if status not in (200, 201):
                raise ClusterError(f"creating node {node['name']} failed: {status} {resp}")

        all_procs = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")

        def nodes_ready() -> bool:
            status, resp = self.api("GET", "/api/v1/nodes")
            if status != 200:
                return False
            ready = set()
            for n in resp["items"]:
                conds = {c["type"]: c["status"] for c in n.get("status", {}).get("conditions", [])}
                taints = [t["key"] for t in n.get("spec", {}).get("taints", []) or []]
                if conds.get("Ready") == "True" and not any(
                        k.startswith("node.kubernetes.io/") for k in taints):
                    ready.add(n["metadata"]["name"])
            return ready >= {n["name"] for n in self.fake_nodes}

        self._wait("kwok nodes Ready", nodes_ready, timeout, all_procs)
        say("nodes ready")

        def default_sa() -> bool:
            status, _ = self.api("GET", "/api/v1/namespaces/default/serviceaccounts/default")
            return status == 200

        self._wait("ServiceAccount default/default", default_sa, timeout, all_procs)
        if self.node_ip:
            # RBAC only (no Node authorizer): the kubelet's rights come from system:node.
            self.api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
                "metadata": {"name": "chatbot-local:nodes"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": "system:node"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                              "name": "system:nodes"}],
            })

    @property
    def fake_nodes(self) -> list[dict]:
        if self.node_ip:
            return [n for n in NODES if "nvidia.com/gpu" in n["capacity"]]
        return NODES

    def down(self, *, remove: bool = False, timeout: float = 15) -> list[str]:
        """Stop every process of this cluster; return the names that were running.

        Components are stopped one by one in reverse start order (kwok first, etcd
        last) with SIGTERM to their process group, escalating to SIGKILL after
        ``timeout`` seconds each.
        """
        state = self._load_state()
        pids: dict[str, int] = state.get("pids", {})
        procs = getattr(self, "_procs", {})
        stopped = []

        def gone(pid: int) -> bool:
            for p in procs.values():
                p.poll()  # reap our own children so that they do not linger as zombies
            return not self._pid_alive(pid)

        for name, pid in reversed(list(pids.items())):
            if gone(pid):
                continue
            stopped.append(name)
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, sig)
                deadline = time.monotonic() + wait
                while time.monotonic() < deadline and not gone(pid):
                    time.sleep(0.05)
                if gone(pid):
                    break
        for p in procs.values():
            with contextlib.suppress(Exception):
                p.wait(timeout=5)
        keeper = state.get("keeper")
        if keeper and keeper != os.getpid():
            # The keeper exits by itself once its children are gone.
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and self._pid_alive(keeper):
                time.sleep(0.05)
            if self._pid_alive(keeper):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(keeper, signal.SIGKILL)
        if state.get("node_ip"):
            # A real node's containers outlive containerd and the kubelet: kill them too.
            from tests.kube import realnode

            realnode.reap(self.dir)
        if state:
            state["pids"] = {}
            self._save_state(state)
        if remove and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)
        elif (self.dir / "etcd").exists():
            shutil.rmtree(self.dir / "etcd", ignore_errors=True)
        return stopped


# --------------------------------------------------------------------------- detached mode

READY_PREFIX = "READY "
FAILED_PREFIX = "FAILED "


def _serve(cluster_dir: str, timeout: float, node: bool = False) -> int:
    """Keeper process for ``local-cluster up``: parent (and reaper) of the components.

    It starts the cluster, reports READY/FAILED on stdout (a pipe to ``up``), then
    reaps its children until all have exited (``down`` stops them), so that no
    zombies are left for an init that does not reap.
    """
    realnode = None
    if node:
        from tests.kube import realnode
    cluster = LocalCluster(cluster_dir, node_ip=realnode.node_ip() if realnode else None)

    def say(msg: str) -> None:
        print(msg, flush=True)

    try:
        kubeconfig = cluster.up(timeout=timeout, progress=say)
        if realnode:
            realnode.RealNode(cluster).up(timeout=max(timeout, 180), die_with_parent=False,
                                          progress=say)
    except Exception as exc:  # noqa: BLE001 - reported to the `up` front-end
        cluster.down()
        say(FAILED_PREFIX + str(exc).replace("\n", "\n  "))
        return 1
    state = cluster._load_state()
    state["keeper"] = os.getpid()
    cluster._save_state(state)
    say(READY_PREFIX + str(kubeconfig))
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)
    signal.signal(signal.SIGTERM, lambda *_: cluster.down())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue
        names = {v: k for k, v in cluster._load_state().get("pids", {}).items()}
        print(f"{time.ctime()}: {names.get(pid, pid)} exited with status {status}",
              file=sys.stderr, flush=True)


def up_detached(cluster_dir: Path | str | None, timeout: float, progress,
                node: bool = False) -> Path:
    """Start the cluster in a detached keeper process; return the kubeconfig path."""
    cluster = LocalCluster(cluster_dir)
    if cluster.running():
        raise ClusterError(f"a cluster is already running in {cluster.dir} "
                           f"(pids {cluster.running()}); run `local-cluster down` first")
    cluster.dir.mkdir(parents=True, exist_ok=True)
    keeper_log = cluster.dir / "keeper.log"
    with open(keeper_log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.kube.localcluster", "_serve", str(cluster.dir),
             str(timeout), *(["node"] if node else [])],
            env={**os.environ, "PYTHONPATH": os.pathsep.join(
                [str(HERE.parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])])},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
            start_new_session=True, text=True,
        )
    assert proc.stdout is not None
    failure: list[str] = []
    for line in proc.stdout:
        line = line.rstrip("\n")
        if line.startswith(READY_PREFIX):
            proc.stdout.close()
            return Path(line[len(READY_PREFIX):])
        if line.startswith(FAILED_PREFIX) or failure:
            failure.append(line.removeprefix(FAILED_PREFIX))
        else:
            progress(line)
    proc.wait()
    raise ClusterError("\n".join(failure) or f"keeper exited with {proc.returncode}; "
                       f"see {keeper_log} and {cluster.logs}")


if __name__ == "__main__" and len(sys.argv) in (4, 5) and sys.argv[1] == "_serve":
    sys.exit(_serve(sys.argv[2], float(sys.argv[3]), node=sys.argv[4:] == ["node"]))
