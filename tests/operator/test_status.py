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
    deployment_ready,
    job_state,
    merge_conditions,
    model_condition,
    persona_condition,
    phase,
    progress_text,
    transitions,
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
