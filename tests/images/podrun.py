"""A pod's container as `docker run` arguments: what the kubelet would do with the operator's
(or the chart's) pod spec, for the things Docker can express.

A pod spec in, an argv out (the one side effect: an emptyDir's host directory is made).
Mapped: command (-> entrypoint + arguments, as Kubernetes ``command`` replaces ENTRYPOINT
and CMD), env and envFrom ConfigMaps, securityContext (runAsUser/Group, fsGroup as a
supplementary group, readOnlyRootFilesystem, capabilities drop, allowPrivilegeEscalation),
volumes (a claim is a given host directory; an emptyDir is what the kubelet makes of it, a
fresh host directory of mode 0777 - not a Docker tmpfs, whose mount over an image directory
takes that directory's owner and mode), container ports, CPU and memory
limits, and terminationGracePeriodSeconds (the stop timeout, less a preStop sleep: the
kubelet counts that sleep in the grace period, and without a route in front there is
nothing to wait for, so Docker signals at once). Probes are not Docker's: the tests poll the
same paths. Anything else in the spec is an error, so nothing is silently
dropped.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

KNOWN_POD = {"securityContext", "terminationGracePeriodSeconds", "containers", "volumes",
             "nodeSelector", "tolerations", "serviceAccountName",
             "automountServiceAccountToken", "restartPolicy"}
KNOWN_CONTAINER = {"name", "image", "imagePullPolicy", "command", "args", "ports", "env",
                   "envFrom", "resources", "startupProbe", "livenessProbe", "readinessProbe",
                   "securityContext", "volumeMounts", "lifecycle"}


class Unmapped(ValueError):
    pass


def _quantity_bytes(text: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "K": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def _cpus(text: str) -> float:
    text = str(text)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` in an env value: the value of a variable defined before it;
    `$$(VAR)` stays literal, as does a reference to an undefined variable."""
    return re.sub(r"\$(\$)?\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: m.group(0)[1:] if m.group(1) else env.get(m.group(2), m.group(0)),
                  value)


def _pre_stop_sleep_s(lifecycle: dict | None) -> float:
    """The seconds of a `preStop: {sleep: ...}` hook; any other lifecycle hook is Unmapped."""
    if lifecycle is None:
        return 0.0
    sleep = (lifecycle.get("preStop") or {}).get("sleep")
    if set(lifecycle) != {"preStop"} or set(lifecycle["preStop"]) != {"sleep"} or not sleep:
        raise Unmapped(f"container lifecycle other than a preStop sleep: {lifecycle}")
    return float(sleep["seconds"])


def docker_run_args(pod: dict, *, image: str, config_maps: dict[str, dict[str, str]],
                    claims: dict[str, str], secrets: dict[tuple[str, str], str] | None = None,
                    ports: dict[int, int] | None = None, max_cpus: float | None = None,
                    empty_dirs: Path | None = None, container: int = 0,
                    pod_name: str = "chatbot-pod", namespace: str = "default",
                    pod_ip: str = "127.0.0.1") -> list[str]:
    """`docker run` options, image and command for ``pod["containers"][container]``.

    config_maps: ConfigMap name -> data; claims: claim name -> host directory; secrets:
    (name, key) -> value; ports: containerPort -> host port on 127.0.0.1; max_cpus caps a CPU
    limit at what this machine has (Docker refuses more CPUs than there are); empty_dirs:
    where the emptyDir volumes' directories are made (required when the pod has one);
    pod_name, namespace, pod_ip: what the downward API (env fieldRef) gives the container
    (Docker assigns the container's address only as it starts, so `status.podIP` is
    loopback by default: alone, without peers, the pod's address only names itself)."""
    pod_fields = {"metadata.name": pod_name, "metadata.namespace": namespace,
                  "status.podIP": pod_ip}
    extra = set(pod) - KNOWN_POD
    if extra:
        raise Unmapped(f"pod spec fields not mapped to docker: {sorted(extra)}")
    c = pod["containers"][container]
    extra = set(c) - KNOWN_CONTAINER
    if extra:
        raise Unmapped(f"container fields not mapped to docker: {sorted(extra)}")
    pre_stop_s = _pre_stop_sleep_s(c.get("lifecycle"))
    args: list[str] = []

    pod_sec = pod.get("securityContext") or {}
    sec = {**pod_sec, **(c.get("securityContext") or {})}
    if "runAsUser" in sec:
        args += ["--user", f"{sec['runAsUser']}:{sec.get('runAsGroup', sec['runAsUser'])}"]
    if "fsGroup" in pod_sec:
        args += ["--group-add", str(pod_sec["fsGroup"])]
    if sec.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    for cap in (sec.get("capabilities") or {}).get("drop", []):
        args += ["--cap-drop", cap]
    for cap in (sec.get("capabilities") or {}).get("add", []):
        args += ["--cap-add", cap]
    if sec.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    seccomp = (sec.get("seccompProfile") or {}).get("type")
    if seccomp not in (None, "RuntimeDefault"):  # RuntimeDefault: Docker's default profile
        raise Unmapped(f"seccompProfile {seccomp}")

    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]])
    for item in c.get("env", []):
        if "value" in item:
            env[item["name"]] = _expand(item["value"], env)
        elif "fieldRef" in item["valueFrom"]:  # the downward API
            path = item["valueFrom"]["fieldRef"]["fieldPath"]
            if path not in pod_fields:
                raise Unmapped(f"env {item['name']}: fieldRef {path}")
            env[item["name"]] = pod_fields[path]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = (secrets or {})[(ref["name"], ref["key"])]
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]

    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in c.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]
            read_only = mount.get("readOnly") or claim.get("readOnly")
            spec = f"type=bind,source={claims[claim['claimName']]},target={mount['mountPath']}"
            args += ["--mount", spec + (",readonly" if read_only else "")]
        elif "emptyDir" in volume:
            if empty_dirs is None:
                raise Unmapped(f"volume {mount['name']} is an emptyDir: pass empty_dirs")
            host = Path(empty_dirs) / mount["name"]
            host.mkdir(parents=True, exist_ok=True)
            host.chmod(0o777)
            args += ["--mount", f"type=bind,source={host},target={mount['mountPath']}"]
        else:
            raise Unmapped(f"volume {mount['name']}: only claims and emptyDir are mapped")

    for port in c.get("ports", []):
        host = (ports or {}).get(port["containerPort"])
        if host is not None:
            args += ["--publish", f"127.0.0.1:{host}:{port['containerPort']}"]

    limits = (c.get("resources") or {}).get("limits") or {}
    if "memory" in limits:
        args += ["--memory", str(_quantity_bytes(str(limits["memory"])))]
    if "cpu" in limits:
        cpus = _cpus(limits["cpu"])
        args += ["--cpus", str(min(cpus, max_cpus) if max_cpus else cpus)]
    if "terminationGracePeriodSeconds" in pod:
        grace = pod["terminationGracePeriodSeconds"] - pre_stop_s
        args += ["--stop-timeout", str(math.ceil(grace))]

    command = [*c.get("command", []), *c.get("args", [])]
    if c.get("command"):
        args += ["--entrypoint", command[0], image, *command[1:]]
    else:
        args += [image, *command]
    return args
