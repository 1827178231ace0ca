"""Pure status computation and error classification."""

from __future__ import annotations

import kopf
from kubernetes.client import ApiException

from chatbot_operator.apply import as_kopf_error
from chatbot_operator.gpu_plan import Acceleration
from chatbot_operator.status import (
    CONDITIONS,
    Condition,
    accelerated_condition,
    all_failed,
    autoscaling_condition,
    deployment_ready,
    job_state,
    merge_conditions,
    model_condition,
    persona_condition,
    phase,
    progress_text,
    scheduled_condition,
    transitions,
    unschedulable,
)

READY = [Condition(t, True, "Ok", "") for t in
         ("ModelReady", "OfficeReady", "CharacterReady", "RouteReady")]


def test_phase_follows_the_conditions():
    assert phase(READY) == "Ready"
    downloading = [Condition("ModelReady", False, "Downloading", ""), *READY[1:]]
    assert phase(downloading) == "Downloading"
    failed = [Condition("ModelReady", False, "FetchFailed", "sha256 mismatch"), *READY[1:]]
    assert phase(failed) == "Failed"
    rolling = [READY[0], Condition("OfficeReady", False, "RollingOut", ""), *READY[2:]]
    assert phase(rolling) == "Progressing"


def test_transition_time_changes_only_when_the_status_does():
    first = merge_conditions(None, READY, "t1")
    again = merge_conditions(first, READY, "t2")
    assert again == first and not transitions(first, READY)
    flipped = [Condition("ModelReady", False, "Downloading", "x"), *READY[1:]]
    after = merge_conditions(first, flipped, "t3")
    assert after[0]["lastTransitionTime"] == "t3" and after[1]["lastTransitionTime"] == "t1"
    assert [c.type for c in transitions(first, flipped)] == ["ModelReady"]


def test_job_and_deployment_states():
    assert job_state(None) == "missing"
    assert job_state({"status": {}}) == "running"
    assert job_state({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}) \
        == "complete"
    assert job_state({"status": {"conditions": [{"type": "Failed", "status": "True"}]}}) \
        == "failed"
    dep = {"metadata": {"generation": 2},
           "status": {"observedGeneration": 2, "replicas": 1, "readyReplicas": 1,
                      "updatedReplicas": 1}}
    assert deployment_ready(dep, 1) == (True, "1/1")
    stale = {**dep, "status": {**dep["status"], "observedGeneration": 1}}
    assert deployment_ready(stale, 1)[0] is False
    assert deployment_ready(None, 2) == (False, "0/2")


def test_progress_column():
    download = {"character": {"percent": 41.3}}
    assert progress_text(download, {"office": "complete", "character": "running"}) == \
        "office 100%, character 41%"
    assert progress_text({}, {"office": "failed", "character": "missing"}) == \
        "office failed, character pending"


def test_transient_api_errors_retry_and_others_do_not():
    assert isinstance(as_kopf_error(ApiException(status=503, reason="Unavailable"), "x"),
                      kopf.TemporaryError)
    assert isinstance(as_kopf_error(ApiException(status=409, reason="Conflict"), "x"),
                      kopf.TemporaryError)
    err = as_kopf_error(ApiException(status=422, reason="Invalid",
                                     body='{"message": "spec.replicas: bad"}'), "applying")
    assert isinstance(err, kopf.PermanentError) and "spec.replicas: bad" in str(err)


def test_an_invalid_spec_fails_every_readiness_condition():
    conds = all_failed("InvalidSpec", "office: unknown GPU profile")
    assert [c.type for c in conds] == list(CONDITIONS)
    assert phase(conds) == "Failed"


def test_a_failed_fetch_reports_the_jobs_own_account_before_the_job_condition():
    jobs = {"office": {"status": {"conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
         "message": "Job has reached the specified backoff limit"}]}}}
    states = {"office": "failed", "character": "complete"}
    told = model_condition(states, jobs, {"office": {"message": "sha256 mismatch"}}, True)
    assert (told.reason, told.message) == ("FetchFailed", "office: sha256 mismatch")
    untold = model_condition(states, jobs, None, True)
    assert untold.message == "office: BackoffLimitExceeded: Job has reached the specified " \
                             "backoff limit"
    waiting = model_condition({"office": "running", "character": "complete"}, {}, None, True)
    assert (waiting.reason, waiting.message) == ("Downloading", "fetching the model for office")
    assert model_condition({"office": "complete"}, {}, None, False).reason == "ExistingClaim"


def test_a_pod_that_fell_back_to_the_cpu_is_not_ready_unless_that_is_accepted():
    ready = dict(ready=True, figure="1/1", model_state="complete")
    refused = persona_condition("office", **ready, cpu_fallback="office: 0/33 layers on GPU")
    assert (refused.type, refused.status, refused.reason) == ("OfficeReady", False,
                                                              "CpuFallback")
    assert "allowCpuFallback: true" in refused.message
    assert persona_condition("office", **ready).reason == "DeploymentReady"
    assert persona_condition("office", ready=False, figure="0/1",
                             model_state="running").reason == "WaitingForModel"
    too_large = persona_condition("office", **ready, too_large="needs 9 GiB of 8")
    assert (too_large.reason, too_large.message) == ("ModelTooLarge", "needs 9 GiB of 8")
    fallback = accelerated_condition([Acceleration("office gpu! 0/33", fallback=True,
                                                   message="office: 0/33 layers on GPU"),
                                      Acceleration("character cpu", message="no GPU")])
    assert (fallback.status, fallback.reason) == (False, "CpuFallback")
    unknown = accelerated_condition([Acceleration("office gpu 33/33", message="asked 33")])
    assert (unknown.status, unknown.reason) == (None, "NotReported")


def _dep(spec_replicas, replicas, ready, updated=None):
    return {"metadata": {"generation": 3}, "spec": {"replicas": spec_replicas},
            "status": {"observedGeneration": 3, "replicas": replicas, "readyReplicas": ready,
                       "updatedReplicas": replicas if updated is None else updated}}


def test_an_autoscaled_persona_shows_what_keda_wants_and_serves_while_more_start():
    # KEDA asked for 3; one is ready: the persona serves (Ready), the column says so.
    assert deployment_ready(_dep(3, 3, 1), 1, scaled=(1, 4)) == (True, "1/3 (auto 1-4)")
    assert deployment_ready(_dep(3, 3, 1), 1, scaled=(2, 4)) == (False, "1/3 (auto 2-4)")
    assert deployment_ready(_dep(3, 3, 3, updated=2), 1, scaled=(1, 4))[0] is False  # rollout
    assert deployment_ready(None, 1, scaled=(2, 4)) == (False, "0/2 (auto 2-4)")
    # A fixed count is unchanged, an unschedulable pod named in the column.
    assert deployment_ready(_dep(2, 2, 1), 2, unschedulable=1) == (
        False, "1/2 (1 unschedulable)")


def _pod(phase, reason=None, message=""):
    conds = [{"type": "PodScheduled", "status": "False" if reason else "True",
              "reason": reason, "message": message}]
    return {"status": {"phase": phase, "conditions": conds}}


def test_pods_no_node_takes_are_counted_and_named():
    why = "0/3 nodes are available: 1 Insufficient nvidia.com/gpu."
    pods = [_pod("Running"), _pod("Pending", "Unschedulable", why), _pod("Pending"),
            _pod("Pending", "Unschedulable", why)]
    assert unschedulable(pods) == (2, why)
    cond = scheduled_condition({"office": (2, why), "character": (0, "")}, report=False)
    assert (cond.status, cond.reason) == (False, "Unschedulable")
    assert cond.message == f"office: 2 replicas cannot be scheduled ({why})"
    assert scheduled_condition({"office": (0, "")}, report=False) is None
    assert scheduled_condition({"office": (0, "")}, report=True).status is True
    # A warning: the pods that run serve on, the phase stays Ready.
    assert phase([*READY, cond]) == "Ready"


def test_keda_missing_is_a_condition_naming_the_crd_and_the_fixed_count_kept():
    cond = autoscaling_condition({}, {"office": 2}, [])
    assert (cond.type, cond.status, cond.reason) == ("AutoscalingReady", False, "KedaMissing")
    assert "scaledobjects.keda.sh" in cond.message and "office keeps replicas 2" in cond.message
    assert phase([*READY, cond]) == "Ready"
    ok = autoscaling_condition({"office": "KEDA scales 1-4"}, {}, [])
    assert (ok.status, ok.reason) == (True, "ScaledObjectApplied")
    assert autoscaling_condition({}, {}, ["office"]).status is None
    assert autoscaling_condition({}, {}, []) is None
