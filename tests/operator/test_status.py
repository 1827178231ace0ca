"""Pure status computation and error classification."""

from __future__ import annotations

import kopf
from kubernetes.client import ApiException

from chatbot_operator.apply import as_kopf_error
from chatbot_operator.status import (
    Condition,
    deployment_ready,
    job_state,
    merge_conditions,
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
