"""kind's node image, assembled here from what this machine can build (no registry).

``kind build node-image`` cannot finish offline (it pulls its base image and every
control-plane image), so this module does what its Dockerfile and build do, from local parts:

1. the base (:func:`build_base`): ``mmdebstrap`` bookworm with systemd, iptables, conntrack,
   containerd, runc and the CNI plugins from Debian, kind's own node files from its Go
   module (``images/base/files/``: entrypoint, units, ``/kind/bin``), the Dockerfile's
   ``systemctl enable/mask`` steps, then ``docker import`` with kind's entrypoint;
2. the images kubeadm runs (:func:`component_images`): kube-apiserver, -controller-manager,
   -scheduler, kube-proxy, etcd, CoreDNS and pause, built from the harness's binaries
   (tests/kube/binaries.py, one Kubernetes version) under the exact names
   ``kubeadm config images list`` prints, plus kind's local-path storage images;
3. the node (:func:`build_node_image`): the base with ``kubeadm``/``kubelet``/``kubectl``,
   ``/kind/version`` and ``/kind/manifests``, those images imported into its containerd
   (as kind does: ``ctr images import --no-unpack``), committed and tagged
   :data:`IMAGE` (``chatbot-local/kind-node:<kubernetes version>``).

What differs from kindest/node, and why: one bridge CNI (``/etc/cni/net.d``, the pod subnet
10.244.0.0/16 of a one-node cluster) instead of kindnetd, which no registry serves; Debian's
containerd 1.6 and runc instead of kind's builds; and the settings this machine's sandbox
needs (kubelet ``--fail-cgroupv1=false`` for cgroup v1, containerd's
``restrict_oom_score_adj``, no negative ``OOMScoreAdjust``). The image's tag carries a hash
of every input, so it is rebuilt only when one changes.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
import time
import zipfile
from pathlib import Path

from tests.kind import engine
from tests.kube import binaries, realnode

HERE = Path(__file__).resolve().parent
REPO = "chatbot-local/kind-node"
BASE_REPO = "chatbot-local/kind-base"
LOCAL = "chatbot-local"
POD_SUBNET = "10.244.0.0/16"
PACKAGES = ["systemd", "conntrack", "iptables", "nftables", "iproute2", "ethtool", "util-linux",
            "mount", "kmod", "libseccomp2", "pigz", "bash", "ca-certificates", "curl", "jq",
            "procps", "containerd", "runc", "containernetworking-plugins", "busybox-static"]

CNI_CONFLIST = {
    "cniVersion": "0.4.0", "name": "kind-bridge",
    "plugins": [
        {"type": "bridge", "bridge": "kind0", "isGateway": True, "ipMasq": True,
         "hairpinMode": True,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_SUBNET}]],
                  "routes": [{"dst": "0.0.0.0/0"}]}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}
# kind applies /kind/manifests/default-cni.yaml after kubeadm init; the bridge above needs no
# objects, so the manifest only says where the network comes from.
CNI_MANIFEST = """apiVersion: v1
kind: ConfigMap
metadata:
  name: kind-bridge-cni
  namespace: kube-system
data:
  note: "pod network: the bridge CNI in /etc/cni/net.d of the node image (one node)"
"""

# Settings this sandbox needs (see the module docstring and docs/testing.md).
CONTAINERD_UNIT_DROPIN = """[Service]
# The sandbox refuses negative oom_score_adj and raising RLIMIT_NOFILE's hard limit.
OOMScoreAdjust=0
LimitNOFILE=
"""


def log(msg: str) -> None:
    print(f"[kind-node] {msg}", flush=True)


def kind_version() -> str:
    return binaries.versions()["KIND_VERSION"]


def kubernetes_version() -> str:
    return binaries.versions()["KUBERNETES_VERSION"]


def kind_zip() -> Path:
    return binaries.module_zip("sigs.k8s.io/kind", kind_version())


def kind_base_files() -> dict[str, bytes]:
    """``images/base/files/*`` of kind's module, by path inside the node."""
    prefix = f"sigs.k8s.io/kind@{kind_version()}/images/base/files/"
    out = {}
    with zipfile.ZipFile(kind_zip()) as zf:
        for name in zf.namelist():
            if name.startswith(prefix) and not name.endswith("/"):
                out[name[len(prefix):]] = zf.read(name)
    if "usr/local/bin/entrypoint" not in out:
        raise RuntimeError(f"kind's base files not found in {kind_zip()}")
    return out


def kind_storage_manifest(provisioner: str, helper: str) -> str:
    """kind's default StorageClass manifest (local-path-provisioner) from its source, with
    the two images it names replaced by the local ones."""
    name = f"sigs.k8s.io/kind@{kind_version()}/pkg/build/nodeimage/const_storage.go"
    with zipfile.ZipFile(kind_zip()) as zf:
        src = zf.read(name).decode()
    body = src.split("const defaultStorageManifest = `", 1)[1].rsplit("`", 1)[0]
    return body.replace("` + storageProvisionerImage + `", provisioner).replace(
        "` + storageHelperImage + `", helper)


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()[:12]


def base_inputs() -> bytes:
    files = kind_base_files()
    return json.dumps({"packages": PACKAGES, "kind": kind_version(),
                       "files": {k: hashlib.sha256(v).hexdigest() for k, v in files.items()},
                       "dropin": CONTAINERD_UNIT_DROPIN,
                       "cni": CNI_CONFLIST, "customize": _customize_script()},
                      sort_keys=True).encode()


def node_inputs() -> bytes:
    progs = {}
    for prog in ("kubeadm", "kubelet", "kubectl", "kube-apiserver", "kube-controller-manager",
                 "kube-scheduler", "kube-proxy", "etcd", "coredns", "local-path-provisioner"):
        progs[prog] = str(binaries.binary(prog).stat().st_mtime_ns)
    return base_inputs() + json.dumps(progs, sort_keys=True).encode()


def base_tag() -> str:
    return f"{BASE_REPO}:{_digest(base_inputs())}"


def image_tag() -> str:
    """The node image's content-addressed tag (every input hashed)."""
    return f"{REPO}:{kubernetes_version()}-{_digest(node_inputs())}"


IMAGE = f"{REPO}:{binaries.versions()['KUBERNETES_VERSION']}"


def _customize_script() -> str:
    """What kind's Dockerfile RUNs, as an mmdebstrap customize hook (``$1`` = the root)."""
    return "\n".join([
        'set -e; r="$1"',
        # kind's files are copied in by the caller (a tar extracted into "$r") first.
        'chmod 755 "$r/kind" "$r/kind/bin" "$r"/kind/bin/* "$r"/usr/local/bin/*',
        'find "$r/lib/systemd/system/sysinit.target.wants/" '
        '-name systemd-tmpfiles-setup.service -delete',
        'rm -f "$r"/lib/systemd/system/multi-user.target.wants/* '
        '"$r"/etc/systemd/system/*.wants/* "$r"/lib/systemd/system/local-fs.target.wants/* '
        '"$r"/lib/systemd/system/sockets.target.wants/*udev* '
        '"$r"/lib/systemd/system/sockets.target.wants/*initctl* '
        '"$r"/lib/systemd/system/basic.target.wants/*',
        'echo ReadKMsg=no >> "$r/etc/systemd/journald.conf"',
        'ln -sf /usr/lib/systemd/systemd "$r/sbin/init"',
        # Debian's paths where kind's units and scripts expect its own builds.
        'ln -sf /usr/bin/containerd "$r/usr/local/bin/containerd"',
        'ln -sf /usr/bin/ctr "$r/usr/local/bin/ctr"',
        'ln -sf /usr/bin/containerd-shim-runc-v2 "$r/usr/local/bin/containerd-shim-runc-v2"',
        'mkdir -p "$r/opt/cni" && ln -sfn /usr/lib/cni "$r/opt/cni/bin"',
        'chroot "$r" systemctl enable kubelet.service containerd.service '
        'undo-mount-hacks.service',
        'chroot "$r" systemctl mask systemd-binfmt.service',
        'mkdir -p "$r/etc/kubernetes/manifests"',
        # containerd's base runtime spec, as kind's build makes it (ctr oci spec | jq).
        'chroot "$r" ctr oci spec | chroot "$r" jq '
        "'.hooks.createContainer[.hooks.createContainer| length] |= . + "
        '{"path": "/kind/bin/mount-product-files.sh"} | del(.process.rlimits)\' '
        '> "$r/etc/containerd/cri-base.json"',
        # This sandbox: no negative oom_score_adj, no raising RLIMIT_NOFILE; cgroup v1.
        'sed -i "s/restrict_oom_score_adj = false/restrict_oom_score_adj = true/" '
        '"$r/etc/containerd/config.toml"',
        'mkdir -p "$r/etc/systemd/system/containerd.service.d"',
        'sed -i "s|^KUBELET_EXTRA_ARGS=.*|& --fail-cgroupv1=false|" "$r/etc/default/kubelet"',
    ])


def _files_tar(files: dict[str, tuple[bytes, int]]) -> bytes:
    return realnode._tar_bytes(files)


def build_base(logdir: Path) -> str:
    """kind's base image (step 1): rootfs by mmdebstrap, imported into kind's engine."""
    tag = base_tag()
    if engine.docker("image", "inspect", tag, check=False).returncode == 0:
        return tag
    files = {k: (v, 0o755 if k.startswith(("usr/local/bin/", "kind/bin/")) else 0o644)
             for k, v in kind_base_files().items()}
    files["etc/systemd/system/containerd.service.d/10-sandbox.conf"] = (
        CONTAINERD_UNIT_DROPIN.encode(), 0o644)
    files["etc/cni/net.d/10-kind-bridge.conflist"] = (
        json.dumps(CNI_CONFLIST, indent=2).encode(), 0o644)
    with tempfile.TemporaryDirectory() as tmp:
        overlay = Path(tmp) / "kind-files.tar"
        overlay.write_bytes(_files_tar(files))
        script = Path(tmp) / "customize.sh"
        script.write_text(_customize_script() + "\n")
        ca_hook = ('for c in /usr/local/share/ca-certificates/*.crt; do [ -e "$c" ] && '
                   'cp "$c" "$1/usr/local/share/ca-certificates/"; done; '
                   'chroot "$1" update-ca-certificates >/dev/null')
        with open(logdir / "mmdebstrap.log", "wb") as log_file:
            strap = subprocess.Popen(
                ["nice", "mmdebstrap", "--quiet", "--variant=minbase",
                 f"--include={','.join(PACKAGES)}",
                 *_slim(), f"--customize-hook={ca_hook}",
                 f'--customize-hook=tar -C "$1" -xf {overlay}',
                 f"--customize-hook=sh -x {script} \"$1\"", "bookworm", "-"],
                stdout=subprocess.PIPE, stderr=log_file)
            imported = subprocess.run(
                ["/usr/bin/docker", "import",
                 "--change", "ENV container=docker",
                 "-", tag + "-rootfs"], stdin=strap.stdout, capture_output=True, text=True,
                timeout=1800, env=engine.env())
            strap.stdout.close()
            strap.wait(timeout=120)
    if strap.returncode or imported.returncode:
        raise RuntimeError(f"kind base: mmdebstrap rc={strap.returncode} (see "
                           f"{logdir}/mmdebstrap.log), import: {imported.stderr[-2000:]}")
    # `docker import --change` knows no STOPSIGNAL: the rest of kind's image config as a build.
    _build(tag, f"FROM {tag}-rootfs\nENV container=docker\nSTOPSIGNAL SIGRTMIN+3\n"
           'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]\n', {})
    engine.docker("rmi", tag + "-rootfs", check=False)
    return tag


def _slim() -> list[str]:
    from tests.support.docker_engine import SLIM
    return SLIM


def helper_image() -> str:
    """kind's local-path helper (a shell for the volume's setup and teardown): the base."""
    return f"{LOCAL}/local-path-helper:{_digest(base_tag().encode())}"


def kubeadm_images() -> list[str]:
    """``kubeadm config images list`` for the harness's Kubernetes version."""
    out = subprocess.run([str(binaries.binary("kubeadm")), "config", "images", "list",
                          "--kubernetes-version", kubernetes_version()],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return out.split()


def _build(tag: str, dockerfile: str, files: dict[str, Path | bytes]) -> None:
    with tempfile.TemporaryDirectory() as ctx:
        for name, src in files.items():
            dest = Path(ctx) / name
            if isinstance(src, bytes):
                dest.write_bytes(src)
            else:
                shutil.copy2(src, dest)
            dest.chmod(0o755)
        (Path(ctx) / "Dockerfile").write_text(dockerfile)
        engine.docker("build", "-q", "-t", tag, ctx, timeout=600)


def component_images(base: str, workdir: Path) -> dict[str, str]:
    """Build the images kubeadm and kind's manifests name; returns name -> role."""
    names = {}
    for ref in kubeadm_images():
        repo = ref.rsplit(":", 1)[0].rsplit("/", 1)[1]
        names[repo] = ref
    pause = realnode.pause_binary(workdir)
    binary_image = "FROM scratch\nCOPY {0} /usr/local/bin/{0}\nENV PATH=/usr/local/bin\n"
    built = {}
    for prog in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        _build(names[prog], binary_image.format(prog), {prog: binaries.binary(prog)})
        built[names[prog]] = prog
    _build(names["etcd"], binary_image.format("etcd") + "USER 0\n",
           {"etcd": binaries.binary("etcd")})
    built[names["etcd"]] = "etcd"
    # kube-proxy runs iptables: on the node's own base (its layers are in the node already).
    _build(names["kube-proxy"], f"FROM {base}\nCOPY kube-proxy /usr/local/bin/kube-proxy\n"
           "ENTRYPOINT []\n", {"kube-proxy": binaries.binary("kube-proxy")})
    built[names["kube-proxy"]] = "kube-proxy"
    _build(names["coredns"], 'FROM scratch\nCOPY coredns /coredns\nENTRYPOINT ["/coredns"]\n',
           {"coredns": binaries.binary("coredns")})
    built[names["coredns"]] = "coredns"
    _build(names["pause"], 'FROM scratch\nCOPY pause /pause\nENTRYPOINT ["/pause"]\n',
           {"pause": pause})
    built[names["pause"]] = "pause"
    lpp = f"{LOCAL}/local-path-provisioner:{binaries.versions()['LOCAL_PATH_PROVISIONER_VERSION']}"
    _build(lpp, "FROM scratch\nCOPY local-path-provisioner /usr/local/bin/local-path-provisioner"
           "\nENV PATH=/usr/local/bin\n",
           {"local-path-provisioner": binaries.binary("local-path-provisioner")})
    built[lpp] = "storage-provisioner"
    helper = helper_image()
    _build(helper, f"FROM {base}\nENTRYPOINT []\n", {})
    built[helper] = "storage-helper"
    return built


def _sandbox_image(config_toml: str) -> str:
    m = re.search(r'sandbox_image\s*=\s*"([^"]+)"', config_toml)
    if not m:
        raise RuntimeError("no sandbox_image in kind's containerd config")
    return m.group(1)


def build_node_image(progress=log) -> tuple[str, dict[str, float]]:
    """The node image, built when an input changed; returns (tag, seconds per step)."""
    binaries.build_all(list(binaries.KIND_COMPONENTS))  # what it needs, when not cached
    tag = image_tag()
    times: dict[str, float] = {}
    if engine.docker("image", "inspect", tag, check=False).returncode == 0:
        engine.docker("tag", tag, IMAGE)
        _forget_older(keep={tag, IMAGE, base_tag()})
        return IMAGE, times
    logdir = engine.LOG_DIR
    logdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    progress(f"base image (mmdebstrap bookworm + kind {kind_version()}'s node files)")
    base = build_base(logdir)
    times["base"] = time.monotonic() - started
    with tempfile.TemporaryDirectory() as tmp:
        t = time.monotonic()
        progress("control-plane, etcd, CoreDNS, pause and storage images")
        images = component_images(base, Path(tmp))
        archive = Path(tmp) / "images.tar"
        with open(archive, "wb") as out:
            subprocess.run(["/usr/bin/docker", "save", *images], stdout=out, check=True,
                           env=engine.env(), timeout=600)
        times["images"] = time.monotonic() - t
        t = time.monotonic()
        progress("node: kubeadm, kubelet, kubectl and the images into its containerd")
        cid = engine.docker("run", "-d", "--privileged", "--entrypoint", "sleep", base,
                            "infinity").stdout.strip()
        try:
            _assemble(cid, archive, images)
            engine.docker("commit", "--change",
                          'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]',
                          cid, tag, timeout=600)
        finally:
            engine.docker("rm", "-f", "-v", cid, check=False, timeout=120)
        times["node"] = time.monotonic() - t
    engine.docker("tag", tag, IMAGE)
    _forget_older(keep={tag, IMAGE, base})
    return IMAGE, times


def _forget_older(keep: set[str]) -> None:
    """Untag earlier node and base images (other inputs) so the engine's disk stays bounded."""
    for repo in (REPO, BASE_REPO):
        refs = engine.docker("images", "--format", "{{.Repository}}:{{.Tag}}", repo,
                             check=False).stdout.split()
        old = [r for r in refs if r not in keep]
        if old:
            engine.docker("rmi", *old, check=False, timeout=300)


def _exec(cid: str, *cmd: str, input: bytes | str | None = None, timeout: float = 300) -> str:
    proc = engine.docker("exec", *(["-i"] if input is not None else []), cid, *cmd,
                         input=input, timeout=timeout)
    return proc.stdout if isinstance(proc.stdout, str) else proc.stdout.decode()


def _assemble(cid: str, archive: Path, images: dict[str, str]) -> None:
    for prog in ("kubeadm", "kubelet", "kubectl"):
        engine.docker("cp", str(binaries.binary(prog)), f"{cid}:/usr/bin/{prog}")
    _exec(cid, "chown", "root:root", "/usr/bin/kubeadm", "/usr/bin/kubelet", "/usr/bin/kubectl")
    helper = next(r for r, role in images.items() if role == "storage-helper")
    provisioner = next(r for r, role in images.items() if role == "storage-provisioner")
    _exec(cid, "mkdir", "-p", "/kind/manifests")
    _exec(cid, "sh", "-c", "cat > /kind/version", input=kubernetes_version())
    _exec(cid, "sh", "-c", "cat > /kind/manifests/default-cni.yaml", input=CNI_MANIFEST)
    _exec(cid, "sh", "-c", "cat > /kind/manifests/default-storage.yaml",
          input=kind_storage_manifest(provisioner, helper))
    _exec(cid, "bash", "-c", "nohup containerd > /dev/null 2>&1 &")
    _exec(cid, "bash", "-c", "for i in $(seq 50); do ctr version >/dev/null 2>&1 && exit 0; "
          "sleep 0.2; done; ctr version")
    with open(archive, "rb") as f:
        proc = subprocess.run(
            ["/usr/bin/docker", "exec", "-i", cid, "ctr", "--namespace=k8s.io", "images",
             "import", "--label=io.cri-containerd.pinned=pinned", "--all-platforms",
             "--no-unpack", "--digests", "-"], stdin=f, capture_output=True, env=engine.env(),
            timeout=900)
    if proc.returncode:
        raise RuntimeError(f"ctr images import: {proc.stderr.decode()[-2000:]}")
    config = _exec(cid, "cat", "/etc/containerd/config.toml")
    pause = next(r for r, role in images.items() if role == "pause")
    sandbox = _sandbox_image(config)
    if sandbox != pause:
        _exec(cid, "ctr", "--namespace=k8s.io", "images", "tag", "--force", pause, sandbox)
    # docker save names them docker.io/<repo> for short names; CRI looks them up as written.
    listed = _exec(cid, "ctr", "--namespace=k8s.io", "images", "list", "-q").split()
    for ref in [*images, sandbox]:
        full = ref if "." in ref.split("/", 1)[0] else f"docker.io/{ref}"
        if full not in listed:
            raise RuntimeError(f"{full} missing from the node's containerd: {listed}")
    _exec(cid, "pkill", "containerd")
