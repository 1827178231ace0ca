"""Pure status computation: observed children -> conditions, phase, columns.

reconcile.py observes (children, their states, the route's API) and writes; every condition
it reports is built here, from plain values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

# The conditions Ready is made of, in the order they are reported.
CONDITIONS = ("ModelReady", "OfficeReady", "CharacterReady", "RouteReady")
FAILURES = ("FetchFailed", "InvalidSpec", "ApplyFailed", "RouteAPIMissing", "RouteConflict",
            "ModelTooLarge", "CpuFallback")
# Informational: not part of Ready (Accelerated=False with allowCpuFallback is a warning;
# ApiKeysValid=False: the pods serve on with the last good keys; AutoscalingReady=False: the
# fixed replicas stay in force; ReplicasScheduled=False: the pods that run serve on).
WARNINGS = ("Accelerated", "ApiKeysValid", "AutoscalingReady", "ReplicasScheduled")


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool | None  # None: Unknown
    reason: str
    message: str

    @property
    def status_text(self) -> str:
        return "Unknown" if self.status is None else "True" if self.status else "False"


class AccelerationReport(Protocol):
    """A persona's GPU offload as gpu_plan.acceleration() reads it."""

    text: str
    fallback: bool
    reported: bool
    message: str


def all_failed(reason: str, message: str) -> list[Condition]:
    """Every readiness condition False for one reason (an invalid spec, a refused apply)."""
    return [Condition(t, False, reason, message) for t in CONDITIONS]


def model_condition(states: Mapping[str, str], jobs: Mapping[str, dict],
                    download: Mapping[str, dict] | None, fetched: bool) -> Condition:
    """ModelReady from each persona's fetch state (job_state); ``download`` is the fetch
    Jobs' own report (status.download), ``fetched`` whether the model comes from a fetch
    rather than an existing claim."""
    failed = [p for p, s in states.items() if s == "failed"]
    if failed:
        reports = {p: ((download or {}).get(p) or {}).get("message") for p in failed}
        detail = "; ".join(f"{p}: {reports[p]}" for p in failed if reports[p])
        return Condition("ModelReady", False, "FetchFailed",
                         detail or "; ".join(f"{p}: {job_failure(jobs[p])}" for p in failed))
    if all(s == "complete" for s in states.values()):
        return Condition("ModelReady", True, "Downloaded" if fetched else "ExistingClaim",
                         "model files are on the volume")
    waiting = [p for p, s in states.items() if s != "complete"]
    return Condition("ModelReady", False, "Downloading",
                     f"fetching the model for {', '.join(waiting)}")


def persona_condition(persona: str, *, ready: bool, figure: str, model_state: str,
                      too_large: str | None = None, cpu_fallback: str | None = None
                      ) -> Condition:
    """OfficeReady / CharacterReady. ``figure``: "ready/wanted" replicas; ``too_large``: why
    the model cannot fit its profile; ``cpu_fallback``: the offload report of a pod that fell
    back to the CPU when the resource does not accept that."""
    type_ = f"{persona.capitalize()}Ready"
    if too_large:
        return Condition(type_, False, "ModelTooLarge", too_large)
    if ready and cpu_fallback is not None:
        return Condition(type_, False, "CpuFallback",
                         f"{cpu_fallback}; set allowCpuFallback: true to accept it")
    if ready:
        return Condition(type_, True, "DeploymentReady", f"{figure} replicas ready")
    if model_state != "complete":
        return Condition(type_, False, "WaitingForModel",
                         "the Deployment starts once its model is downloaded")
    return Condition(type_, False, "RollingOut", f"{figure} replicas ready")


def route_disabled() -> Condition:
    return Condition("RouteReady", True, "Disabled", "route.kind is None")


def route_api_missing(kind: str, api_version: str) -> Condition:
    """The cluster does not serve the route's kind (its CRDs are not installed)."""
    return Condition("RouteReady", False, "RouteAPIMissing",
                     f"{kind} ({api_version}) is not served by this cluster: install its CRDs "
                     "or use another route.kind")


def route_conflict(holder: str, claim: str) -> Condition:
    """Another ChatbotModel of the namespace has the same route (route_claims.py)."""
    return Condition("RouteReady", False, "RouteConflict",
                     f"this route ({claim}) is ChatbotModel {holder}'s: give this one another "
                     "route.host, or route.kind None")


def route_applied(kind: str, name: str, port: int) -> Condition:
    return Condition("RouteReady", True, "Applied",
                     f"{kind} {name}: /office and /character on port {port}")


def accelerated_condition(reports: Sequence[AccelerationReport]) -> Condition:
    """Accelerated (a warning, not part of Ready): did every pod offload as told?"""
    fallbacks = [a.message for a in reports if a.fallback]
    if fallbacks:
        return Condition("Accelerated", False, "CpuFallback", "; ".join(fallbacks))
    summary = "; ".join(a.message for a in reports)
    if all(a.reported or a.text.endswith(" cpu") for a in reports):
        return Condition("Accelerated", True, "AsTold", summary)
    return Condition("Accelerated", None, "NotReported", summary)


def api_keys_condition(configured: bool,
                       reports: Mapping[str, dict | None]) -> Condition | None:
    """ApiKeysValid (a warning, not part of Ready), from the pods' own report of the keys
    file they read (status.apiKeys.<persona>): a Secret they refused (no budget, a negative
    one, a duplicate name, ...) is named entry by entry; they keep the last good keys.
    None without spec.apiKeys."""
    if not configured:
        return None
    refused = {p: r for p, r in reports.items() if r and r.get("state") == "error"}
    if refused:
        kept = sorted({n for r in refused.values() for n in r.get("names") or []})
        detail = "; ".join(f"{p}: {r.get('detail') or 'refused'}" for p, r in refused.items())
        return Condition("ApiKeysValid", False, "InvalidApiKeys",
                         f"{detail} (the pods keep the last good keys: "
                         f"{', '.join(kept) or 'none, every key is refused'})")
    if reports and all(r and r.get("state") == "ok" for r in reports.values()):
        names = sorted({n for r in reports.values() for n in r.get("names") or []})
        return Condition("ApiKeysValid", True, "Loaded",
                         f"{len(names)} keys in force: {', '.join(names)}")
    return Condition("ApiKeysValid", None, "NotReported",
                     "waiting for the persona pods to report the keys they read")


def job_state(job: dict | None) -> str:
    """'missing', 'running', 'complete' or 'failed'."""
    if job is None:
        return "missing"
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "complete"
        if cond.get("status") == "True" and cond.get("type") in ("Failed", "FailureTarget"):
            return "failed"
    return "running"


def job_failure(job: dict) -> str:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            return f"{cond.get('reason', '')}: {cond.get('message', '')}".strip(": ")
    return "failed"


def deployment_ready(dep: dict | None, want: int, *, scaled: tuple[int, int] | None = None,
                     unschedulable: int = 0) -> tuple[bool, str]:
    """(ready, "ready/wanted") for an applied Deployment.

    ``scaled``: (min, max) when KEDA owns the count: wanted is then the Deployment's own
    replicas (what the HPA set), and the persona is ready once its rollout is done and at
    least one pod (or minReplicas) is ready, while more start. ``unschedulable``: its pods
    the scheduler found no node for. Both show in the figure (`kubectl get cbm`):
    "1/2 (auto 1-4, 1 unschedulable)"."""
    notes = ([f"auto {scaled[0]}-{scaled[1]}"] if scaled else []) + (
        [f"{unschedulable} unschedulable"] if unschedulable else [])
    suffix = f" ({', '.join(notes)})" if notes else ""
    if dep is None:
        return False, f"0/{scaled[0] if scaled else want}{suffix}"
    st = dep.get("status") or {}
    if scaled is not None:
        want = (dep.get("spec") or {}).get("replicas", scaled[0])
    ready = st.get("readyReplicas") or 0
    updated = st.get("updatedReplicas") or 0
    replicas = st.get("replicas") or 0
    current = (st.get("observedGeneration") or 0) >= dep["metadata"].get("generation", 0)
    if scaled is None:
        done = current and ready == want and (updated == want or want == 0) and (
            replicas == want)
    else:
        done = current and ready >= min(want, max(1, scaled[0])) and updated == replicas
    return done, f"{ready}/{want}{suffix}"


def unschedulable(pods: Sequence[dict]) -> tuple[int, str]:
    """How many of these pods the scheduler found no node for (Pending, PodScheduled False,
    reason Unschedulable), and the scheduler's message for the first one."""
    messages = [c.get("message") or "no node fits"
                for pod in pods if (pod.get("status") or {}).get("phase") == "Pending"
                for c in (pod.get("status") or {}).get("conditions") or []
                if c.get("type") == "PodScheduled" and c.get("status") == "False"
                and c.get("reason") == "Unschedulable"]
    return len(messages), messages[0] if messages else ""


def autoscaling_condition(applied: Mapping[str, str], missing: Mapping[str, int],
                          waiting: Sequence[str]) -> Condition | None:
    """AutoscalingReady (a warning, not part of Ready), for the personas with autoscaling:
    ``applied`` persona -> what its ScaledObject does, ``missing`` persona -> the fixed
    replicas it keeps because KEDA is not installed, ``waiting``: no Deployment yet (the
    model is downloading). None when no persona autoscales."""
    if missing:
        kept = ", ".join(f"{p} keeps replicas {n}" for p, n in missing.items())
        return Condition("AutoscalingReady", False, "KedaMissing",
                         "scaledobjects.keda.sh (keda.sh/v1alpha1) is not served by this "
                         f"cluster: install KEDA; until then {kept}")
    if applied:
        return Condition("AutoscalingReady", True, "ScaledObjectApplied",
                         "; ".join(f"{p}: {what}" for p, what in applied.items()))
    if waiting:
        return Condition("AutoscalingReady", None, "WaitingForModel",
                         f"the ScaledObject of {', '.join(waiting)} comes with its Deployment")
    return None


def scheduled_condition(unscheduled: Mapping[str, tuple[int, str]],
                        report: bool) -> Condition | None:
    """ReplicasScheduled (a warning, not part of Ready): a pod no node can take (a GPU
    persona scaled past its GPU nodes) is named, not left a silent Pending pod. ``report``:
    say so also when all are scheduled (a persona autoscales, or it was False before)."""
    stuck = {p: v for p, v in unscheduled.items() if v[0]}
    if stuck:
        return Condition("ReplicasScheduled", False, "Unschedulable", "; ".join(
            f"{p}: {n} replica{'s' if n > 1 else ''} cannot be scheduled ({why})"
            for p, (n, why) in stuck.items()))
    if report:
        return Condition("ReplicasScheduled", True, "AllScheduled",
                         "every replica has a node")
    return None


def phase(conditions: list[Condition]) -> str:
    conditions = [c for c in conditions if c.type not in WARNINGS]
    by_type = {c.type: c for c in conditions}
    if all(c.status for c in conditions):
        return "Ready"
    if any(c.reason in FAILURES for c in conditions):
        return "Failed"
    model = by_type.get("ModelReady")
    if model is not None and not model.status:
        return "Downloading"
    return "Progressing"


def merge_conditions(previous: list[dict] | None, current: list[Condition],
                     now: str) -> list[dict]:
    """Kubernetes-style conditions; lastTransitionTime changes only when status does."""
    before = {c.get("type"): c for c in previous or []}
    out = []
    for c in current:
        status = c.status_text
        old = before.get(c.type)
        since = old.get("lastTransitionTime") if old and old.get("status") == status else now
        out.append({"type": c.type, "status": status, "reason": c.reason,
                    "message": c.message, "lastTransitionTime": since or now})
    return out


def transitions(previous: list[dict] | None, current: list[Condition]) -> list[Condition]:
    """Conditions whose status or reason changed (worth an Event)."""
    before = {c.get("type"): c for c in previous or []}
    changed = []
    for c in current:
        old = before.get(c.type)
        if old is None or old.get("status") != c.status_text or \
                old.get("reason") != c.reason:
            changed.append(c)
    return changed


def progress_text(download: dict | None, states: dict[str, str]) -> str:
    """The Model printer column: one figure per persona, e.g. "office 100%, character 41%"."""
    parts = []
    for persona, state in states.items():
        info = (download or {}).get(persona) or {}
        if state == "complete":
            pct = "100%"
        elif state == "failed":
            pct = "failed"
        elif "percent" in info:
            pct = f"{info['percent']:.0f}%"
        else:
            pct = "pending"
        parts.append(f"{persona} {pct}")
    return ", ".join(parts)

