"""The other programs build-binaries provides: helm (against the cluster) and FerretDB."""

import socket
import struct
import subprocess

import pytest

from tests.kube import binaries, importorskip, require_cluster, wait_for
from tests.support import free_port

pytestmark = pytest.mark.cluster


def _need(component):
    comp = binaries.COMPONENTS[component]
    if not comp.is_built():
        msg = f"{component} not built: run tests/kube/build-binaries {component}"
        if require_cluster():
            pytest.fail(msg)
        pytest.skip(msg)
    return comp


def test_helm_is_pinned_version_and_installs_a_chart(kube_cluster, namespace, tmp_path):
    kubernetes = importorskip("kubernetes")
    comp = _need("helm")
    helm = str(binaries.binary("helm"))
    out = subprocess.run([helm, "version", "--short"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith(comp.version), out.stdout

    chart = tmp_path / "demo"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        "apiVersion: v2\nname: demo\nversion: 0.1.0\nkubeVersion: '>=1.30.0-0'\n")
    (chart / "values.yaml").write_text("replicas: 1\n")
    (chart / "templates" / "deployment.yaml").write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ .Release.Name }}\n"
        "spec:\n  replicas: {{ .Values.replicas }}\n"
        "  selector: {matchLabels: {app: {{ .Release.Name }}}}\n"
        "  template:\n    metadata: {labels: {app: {{ .Release.Name }}}}\n"
        "    spec: {containers: [{name: c, image: 'fake:1'}]}\n")
    env = kube_cluster.env()
    subprocess.run([helm, "install", "demo", str(chart), "-n", namespace, "--set", "replicas=2"],
                   env=env, check=True, capture_output=True, text=True)
    apps = kubernetes.client.AppsV1Api(kube_cluster.api_client())
    wait_for(lambda: apps.read_namespaced_deployment("demo", namespace).status.ready_replicas == 2,
             timeout=90, desc="helm-installed deployment has 2 ready replicas")
    ls = subprocess.run([helm, "list", "-n", namespace, "-q"], env=env, check=True,
                        capture_output=True, text=True)
    assert ls.stdout.split() == ["demo"]


def _bson_doc(fields):
    body = b""
    for key, value in fields.items():
        k = key.encode() + b"\x00"
        if isinstance(value, int):
            body += b"\x10" + k + struct.pack("<i", value)
        else:
            v = value.encode() + b"\x00"
            body += b"\x02" + k + struct.pack("<i", len(v)) + v
    return struct.pack("<i", len(body) + 5) + body + b"\x00"


def _op_msg(doc, request_id=1):
    payload = struct.pack("<I", 0) + b"\x00" + _bson_doc(doc)
    return struct.pack("<iiii", 16 + len(payload), request_id, 0, 2013) + payload


def _recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def test_ferretdb_serves_mongodb_wire_protocol_on_loopback_with_sqlite(tmp_path):
    _need("ferretdb")
    ferretdb = str(binaries.binary("ferretdb"))
    help_out = subprocess.run([ferretdb, "--help"], capture_output=True, text=True, check=True)
    assert "sqlite" in help_out.stdout.lower()

    port, debug_port = free_port(), free_port()
    data = tmp_path / "sqlite"
    data.mkdir()
    log = open(tmp_path / "ferretdb.log", "w")
    proc = subprocess.Popen(
        [ferretdb, "--handler=sqlite", f"--sqlite-url=file:{data}/",
         f"--listen-addr=127.0.0.1:{port}", f"--debug-addr=127.0.0.1:{debug_port}",
         f"--state-dir={tmp_path}", "--telemetry=disable", "--log-level=warn"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        def ping():
            assert proc.poll() is None, (tmp_path / "ferretdb.log").read_text()
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(_op_msg({"ping": 1, "$db": "admin"}))
                length, _, _, opcode = struct.unpack("<iiii", _recv_exact(s, 16))
                return opcode, _recv_exact(s, length - 16)

        opcode, reply = wait_for(ping, timeout=30, desc="FerretDB answers ping")
        assert opcode == 2013
        # {ok: 1.0}: element type 0x01 (double) named "ok".
        assert b"\x01ok\x00" + struct.pack("<d", 1.0) in reply
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
