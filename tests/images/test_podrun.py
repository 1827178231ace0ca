"""podrun: a pod spec -> `docker run` options. What the image tests rely on: every security
setting of the operator's pods is carried over, and a field it cannot express is an error
rather than silently dropped."""

from __future__ import annotations

import copy

import pytest

from chatbot_operator import builders
from chatbot_operator.config import OperatorConfig
from chatbot_operator.profiles import BUILTIN
from chatbot_operator.spec import ChatbotModelSpec
from tests.images.podrun import Unmapped, docker_run_args

OWNER = builders.Owner("chatbot", "ns", "uid")


def _pod():
    spec = ChatbotModelSpec.parse({"office": {"resources": {"limits": {"cpu": "4",
                                                                       "memory": "1Gi"}}}})
    dep = builders.persona_deployment(OWNER, spec, "office", BUILTIN, OperatorConfig())
    return dep["spec"]["template"]["spec"]


def _args(pod, tmp_path, **kw):
    return docker_run_args(pod, image="img", config_maps={"chatbot-settings": {"A": "1"}},
                           claims={"chatbot-office-models": "/srv/models"},
                           empty_dirs=tmp_path, **kw)


def test_the_persona_pod_maps_to_its_security_mounts_and_command(tmp_path):
    args = _args(_pod(), tmp_path, ports={8080: 18080}, max_cpus=2)
    joined = " ".join(args)
    for expected in ("--user 1000:1000", "--group-add 1000", "--read-only", "--cap-drop ALL",
                     "--security-opt no-new-privileges", "--env A=1",
                     "--env CHATBOT_ROOT_PATH=/office",
                     "type=bind,source=/srv/models,target=/models,readonly",
                     f"type=bind,source={tmp_path}/data,target=/data",
                     "--publish 127.0.0.1:18080:8080", f"--memory {1 << 30}", "--cpus 2",
                     # the pod's grace period less its preStop sleep, which Docker skips
                     f"--stop-timeout {builders.TERMINATION_GRACE_S - builders.PRE_STOP_SLEEP_S}"):
        assert expected in joined, expected
    assert (tmp_path / "data").stat().st_mode & 0o777 == 0o777  # as an emptyDir
    assert "--env CHATBOT_POD_NAME=chatbot-pod" in joined  # the downward API's metadata.name
    # status.podIP, and $(VAR) expanded in a later value as the kubelet does
    assert "--env CHATBOT_POD_IP=127.0.0.1" in joined
    assert "--env CHATBOT_AFFINITY_SELF=http://127.0.0.1:8080" in joined
    at = args.index("--entrypoint")
    assert args[at + 1:at + 6] == ["chatbot", "img", "serve", "office", "--host"]


@pytest.mark.parametrize("where, field", [("pod", "hostNetwork"), ("container", "workingDir")])
def test_a_field_it_cannot_express_is_an_error(tmp_path, where, field):
    pod = copy.deepcopy(_pod())
    (pod if where == "pod" else pod["containers"][0])[field] = {}
    with pytest.raises(Unmapped, match=field):
        _args(pod, tmp_path)


def test_a_lifecycle_hook_other_than_a_pre_stop_sleep_is_an_error(tmp_path):
    pod = copy.deepcopy(_pod())
    pod["containers"][0]["lifecycle"] = {"preStop": {"exec": {"command": ["sleep", "5"]}}}
    with pytest.raises(Unmapped, match="lifecycle"):
        _args(pod, tmp_path)


def test_an_unsupported_volume_or_seccomp_profile_is_an_error(tmp_path):
    pod = copy.deepcopy(_pod())
    pod["volumes"][1] = {"name": "data", "hostPath": {"path": "/x"}}
    with pytest.raises(Unmapped, match="data"):
        _args(pod, tmp_path)
    pod = copy.deepcopy(_pod())
    pod["securityContext"]["seccompProfile"] = {"type": "Unconfined"}
    with pytest.raises(Unmapped, match="Unconfined"):
        _args(pod, tmp_path)


def test_an_unsupported_downward_api_field_is_an_error(tmp_path):
    pod = copy.deepcopy(_pod())
    pod["containers"][0]["env"].append(
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}})
    with pytest.raises(Unmapped, match="spec.nodeName"):
        _args(pod, tmp_path)
