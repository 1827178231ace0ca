"""The local cluster's certificates and kubeconfigs, made with the ``openssl`` CLI.

:func:`make_pki` writes a CA, the API server's serving certificate, a client certificate
per component (admin, controller-manager, scheduler, kwok; the kubelet with a real node)
and the service-account signing key pair; :func:`write_kubeconfig` writes a kubeconfig for
a client certificate or a token. Standard library only, like the rest of the control plane.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{r.stderr}")


def make_pki(pki: Path, service_ip: str, node_ip: str | None = None) -> None:
    """CA, API server serving cert, client certs, service-account key pair.

    The API server's certificate names loopback and ``service_ip`` (the ``kubernetes``
    Service's address). With ``node_ip`` (a real node), it also names that address,
    and a kubelet client certificate (group ``system:nodes``) is made.
    """
    pki.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650",
             "-subj", "/CN=chatbot-local-cluster-ca", cwd=pki)
    (pki / "apiserver.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,IP:" + service_ip + (f",IP:{node_ip}" if node_ip else "")
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
        # The aggregator's client certificate towards extension API servers (KEDA's
        # external-metrics apiserver): --proxy-client-cert-file, requestheader-allowed-names.
        certs["front-proxy-client"] = ("/CN=front-proxy-client", "client.ext")
    for name, (subj, ext) in certs.items():
        _openssl("req", "-new", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", subj, cwd=pki)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "3650",
                 "-extfile", ext, cwd=pki)
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
             "-out", "sa.key", cwd=pki)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def make_host_cert(pki: Path, name: str, ips: list[str],
                   dns: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """A certificate from the cluster's CA for a program on this host that both serves TLS
    (on ``ips``, localhost and the ``dns`` names: the aggregator checks an extension API
    server's certificate for ``<service>.<namespace>.svc``) and is a client (KEDA's
    operator and metrics apiserver, whose gRPC link is mutual TLS). Returns (cert, key)."""
    ext = pki / f"{name}.ext"
    names = [f"DNS:{d}" for d in ("localhost", *dns)] + [f"IP:{ip}" for ip in ips]
    ext.write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "subjectAltName=" + ",".join(names) + "\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-new", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={name}", cwd=pki)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "3650", "-extfile", ext.name,
             cwd=pki)
    return pki / f"{name}.crt", pki / f"{name}.key"


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
