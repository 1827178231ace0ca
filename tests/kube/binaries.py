"""The Go programs the harness runs: which versions (``versions.env``), where they are
cached, and how they are built from their Go modules.

Standard library only, so that ``build-binaries`` runs with any Python >= 3.11, with or
without the project's venv.

* :data:`COMPONENTS` - etcd, the Kubernetes control plane and node programs, kwok, helm,
  FerretDB, CoreDNS, Traefik, local-path-provisioner, kube-router, Prometheus (with
  promtool) and KEDA (operator and metrics apiserver, with its CRDs), each at the version
  pinned in ``versions.env`` (the only place), cached under
  ``${XDG_CACHE_HOME:-~/.cache}/chatbot-dev/bin/<component>-<version>/``;
  :func:`binary` gives a cached program's path.
* :func:`build_all` builds what is missing with the machine's Go; Go's module and build
  caches live under ``.../chatbot-dev/go/``. Traefik's module needs patches, and Traefik,
  Prometheus, KEDA and CoreDNS are trimmed to what this product uses (``gomod_patches.py``;
  their cache directories name those builds: ``traefik-<version>-trimmed-r<N>``,
  ``prometheus-<version>-trimmed-r<N>``, ``keda-<version>-scalers-cpu-memory-prometheus-r<N>``,
  ``coredns-<version>-trimmed-r<N>``).
* :func:`module_zip` fetches a Go module's zip without building it, for the files it
  ships (skaffold's JSON schemas, the Gateway API CRDs).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.kube import gomod_patches

HERE = Path(__file__).resolve().parent
VERSIONS_FILE = HERE / "versions.env"
BUILD_COMMAND = "tests/kube/build-binaries"


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
    # Names a build that differs from the published module (Traefik, Prometheus, KEDA and
    # CoreDNS trimmed): part of the cache key, so that changing it replaces a binary cached
    # without it.
    variant: str = ""

    @property
    def version(self) -> str:
        return versions()[self.version_key]

    @property
    def bin_dir(self) -> Path:
        suffix = f"-{self.variant}" if self.variant else ""
        return cache_root() / "bin" / f"{self.name}-{self.version}{suffix}"

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
        Component("coredns", "COREDNS_VERSION", ("coredns",),
                  variant=f"trimmed-r{gomod_patches.COREDNS_PATCH_REVISION}"),
        Component("traefik", "TRAEFIK_VERSION", ("traefik",),
                  variant=f"trimmed-r{gomod_patches.TRAEFIK_PATCH_REVISION}"),
        Component(
            "local-path-provisioner", "LOCAL_PATH_PROVISIONER_VERSION", ("local-path-provisioner",)
        ),
        Component("kube-router", "KUBE_ROUTER_VERSION", ("kube-router",)),
        Component("prometheus", "PROMETHEUS_VERSION", ("prometheus", "promtool"),
                  variant=f"trimmed-r{gomod_patches.PROMETHEUS_PATCH_REVISION}"),
        Component("keda", "KEDA_VERSION", ("keda", "keda-adapter", "keda-crds.yaml"),
                  variant="scalers-" + "-".join(sorted(set(gomod_patches.KEDA_KEPT_SCALERS)))
                  + f"-r{gomod_patches.KEDA_PATCH_REVISION}"),
        Component("kubeadm", "KUBERNETES_VERSION", ("kubeadm",)),
        Component("kind", "KIND_VERSION", ("kind",)),
    )
}

# Components the cluster itself needs (helm and FerretDB are for other tests).
CLUSTER_COMPONENTS = ("etcd", "kubernetes", "kwok")
# Built from the k8s.io/kubernetes module (its staging replaces, its version ldflags).
KUBERNETES_MODULE_COMPONENTS = ("kubernetes", "kube-node", "kubectl", "kubeadm")
# What a real node adds (tests/kube/realnode.py).
NODE_COMPONENTS = ("kube-node", "kubectl", "coredns", "traefik", "local-path-provisioner",
                   "kube-router")
# The autoscaling engines the node tests run beside the node (tests/kube/engines.py).
ENGINE_COMPONENTS = ("prometheus", "keda")
# The kind quickstart (tests/kind): kind itself and kubeadm for its node image.
KIND_COMPONENTS = ("kind", "kubeadm", "kube-node", "kubectl", "coredns", "etcd", "kubernetes")


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


def log(msg: str) -> None:
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
    with open(log_file, "a") as out:
        out.write(f"\n$ go {' '.join(args)}\n")
        out.flush()
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
                log(
                    f"  {what}: still running ({_fmt(time.monotonic() - started)} elapsed, "
                    f"{state['lines']} packages/lines so far, last: {state['last'][:70]})"
                )

        t = threading.Thread(target=heartbeat, daemon=True)
        t.start()
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
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
    # One branch per program, alike in shape: a module, its main packages, its binaries and
    # the version ldflags that program reads (each names its own variables).
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
        # From a copy of the module whose plugin list keeps only the plugins this project's
        # Corefiles and kubeadm's use (build_component, gomod_patches.patch_coredns).
        mod = gomod_patches.COREDNS
        return _Recipe(mod, [mod], ["coredns"], [f"-X {mod}/coremain.GitCommit={v}"])
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
    if comp.name == "prometheus":
        # The server and promtool, from a trimmed copy of the module (build_component): of
        # the service discoveries only Kubernetes' (the tags drop the other cloud SDKs, a
        # third of the compile), no OpenAPI document, no cloud authentication for remote
        # write (gomod_patches.patch_prometheus), no embedded web UI.
        mod = gomod_patches.PROMETHEUS
        common = "github.com/prometheus/common/version"
        return _Recipe(
            mod,
            [f"{mod}/cmd/prometheus", f"{mod}/cmd/promtool"],
            ["prometheus", "promtool"],
            # Module v0.3XY.Z is Prometheus 3.XY.Z.
            [f"-X {common}.Version={_prometheus_release(v)}", f"-X {common}.Branch=chatbot-dev"],
            tags=gomod_patches.PROMETHEUS_BUILD_TAGS,
        )
    if comp.name == "keda":
        # The operator and the external-metrics apiserver; not the admission webhooks.
        mod = "github.com/kedacore/keda/v2"
        return _Recipe(
            mod,
            [f"{mod}/cmd/operator", f"{mod}/cmd/adapter"],
            ["keda", "keda-adapter"],
            [f"-X {mod}/version.Version={v}", f"-X {mod}/version.GitCommit=chatbot-dev"],
        )
    if comp.name == "kind":
        # kind's version is a constant in its source (a release needs no ldflags).
        return _Recipe("sigs.k8s.io/kind", ["sigs.k8s.io/kind"], ["kind"])
    raise KeyError(comp.name)


# Built from a patched copy of their module source, which a `replace` puts in place of the
# published module (build_component): the patch each copy gets.
PATCHED_IN_PLACE = {"prometheus": gomod_patches.patch_prometheus,
                    "coredns": gomod_patches.patch_coredns}


def _prometheus_release(module_version: str) -> str:
    """Prometheus' release number of its Go module's version: v0.316.0 -> 3.16.0."""
    _, minor, patch = module_version.lstrip("v").split(".")
    return f"{int(minor) // 100}.{int(minor) % 100}.{patch}"


def patched_source(module: str, version: str, patch, dest: Path) -> Path:
    """A writable copy of a module's source at `dest`, with `patch` applied to it (one of
    gomod_patches' functions): what the build of a patched component compiles, for the
    tests that check a patch."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    src_dir, _ = _module_zip_dir(module, version, dest.parent, dest.parent / "download.log")
    copy = _writable_copy(src_dir, dest)
    patch(copy)
    return copy


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
    log(f"{comp.name} {comp.version}: building {', '.join(recipe.outputs)} (log: {log_file})")

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
    patch = PATCHED_IN_PLACE.get(comp.name)
    if patch:
        # A copy of the module source without what this project does not use
        # (gomod_patches says what and why), in place of the published one.
        patch(_writable_copy(src_dir, work / f"{comp.name}-src"))
        gomod += [f"replace {recipe.module} => ./{comp.name}-src"]
    build_dir = work
    if comp.name == "traefik":
        # The module proxy refuses some of Traefik's dependencies: build from a patched
        # copy of its source (gomod_patches.py says what and why), as the main module,
        # since go.mod's replace directives only apply there; the patch also leaves out
        # the providers, plugins and exporter this product does not use (1388 packages of
        # 1696).
        build_dir = _writable_copy(src_dir, work / "traefik-src")
        gomod_patches.patch_traefik(build_dir)
        recipe.packages = ["./cmd/traefik"]
        _run_go(["mod", "tidy", "-e"], build_dir, log_file, "traefik (resolve modules)", started)
    elif comp.name == "keda":
        # Built as the main module from a copy of its source (its go.mod's replaces apply),
        # without the scalers and cloud SDKs this product does not use: 1569 packages of
        # 3710 (gomod_patches.patch_keda says what and why). No
        # `go mod tidy`: it would fetch what KEDA's own tests import.
        build_dir = _writable_copy(src_dir, work / "keda-src")
        gomod_patches.patch_keda(build_dir)
        recipe.packages = ["./cmd/operator", "./cmd/adapter"]
    else:
        (work / "go.mod").write_text("\n".join(gomod) + "\n")
        _run_go(
            ["get", *(f"{p}@{comp.version}" for p in recipe.packages)],
            work,
            log_file,
            f"{comp.name} (resolve modules)",
            started,
        )
    log(f"  {comp.name}: modules resolved/downloaded after {_fmt(time.monotonic() - started)}")
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
    if len(recipe.packages) > 1:
        # `go build -o DIR/` names each program after its package's directory (KEDA's
        # cmd/operator, cmd/adapter): give them the recipe's names.
        for pkg, name in zip(recipe.packages, recipe.outputs, strict=True):
            built = staging_out / pkg.rstrip("/").rsplit("/", 1)[-1]
            if built.name != name and built.is_file():
                built.rename(staging_out / name)

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

    if comp.name == "keda":
        # KEDA's CRDs (ScaledObject and friends) as the module ships them, one file.
        crds = sorted((src_dir / "config" / "crd" / "bases").glob("*.yaml"))
        docs = [p.read_text().strip().removeprefix("---").strip() for p in crds]
        (staging_out / "keda-crds.yaml").write_text("\n---\n".join(docs) + "\n")

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
    log(f"{comp.name} {comp.version}: done in {_fmt(spent)}{total}")
    return spent


@contextlib.contextmanager
def _build_lock():
    path = cache_root() / "bin" / ".build.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("another build-binaries is running; waiting for it ...")
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
        log(f"all cached in {cache_root() / 'bin'} ({', '.join(names)}); nothing to do")
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
                log(f"{n} {comp.version}: FAILED: {exc}")
                failed.append(n)
    log(
        f"finished in {_fmt(time.monotonic() - started)}: "
        + ", ".join(f"{k} {_fmt(v)}" for k, v in timings.items())
    )
    if failed:
        raise SystemExit(f"build-binaries: failed to build {', '.join(failed)}")
    return timings


# --------------------------------------------------------------------------- module zips


def module_zip(module: str, version: str, *, download: bool = True,
               timeout: float = 900) -> Path:
    """The zip of Go module ``module@version`` in the module cache, downloaded once with
    ``go mod download``. Only the zip is used (the module is never built), so a module that
    asks for a newer Go than the machine's still works."""
    escaped = re.sub(r"[A-Z]", lambda m: "!" + m.group(0).lower(), module)
    path = Path(go_env()["GOMODCACHE"]) / "cache/download" / escaped / "@v" / f"{version}.zip"
    if path.is_file():
        return path
    if not download:
        raise FileNotFoundError(f"{module} {version} module zip not downloaded: {path}"
                                f" (run {BUILD_COMMAND})")
    if shutil.which("go") is None:
        raise FileNotFoundError(f"`go` not found: cannot download {module}")
    log(f"{module} {version}: downloading the module zip")
    with tempfile.TemporaryDirectory() as tmp:
        # Exits non-zero when the module wants a newer Go, after saving the zip.
        proc = subprocess.run(["go", "mod", "download", "-json", f"{module}@{version}"],
                              cwd=tmp, env=go_env(), capture_output=True, text=True,
                              timeout=timeout)
    if not path.is_file():
        raise FileNotFoundError(f"{module} {version} module zip not downloaded: {path}\n"
                                f"go mod download: {proc.stdout}{proc.stderr}")
    return path
