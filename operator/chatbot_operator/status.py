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
# ApiKeysValid=False: the pods serve on with the last good keys).
WARNINGS = ("Accelerated", "ApiKeysValid")


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


def deployment_ready(dep: dict | None, want: int) -> tuple[bool, str]:
    """(ready, "ready/wanted") for an applied Deployment."""
    if dep is None:
        return False, f"0/{want}"
    st = dep.get("status") or {}
    ready = st.get("readyReplicas") or 0
    updated = st.get("updatedReplicas") or 0
    current = (st.get("observedGeneration") or 0) >= dep["metadata"].get("generation", 0)
    done = current and ready == want and (updated == want or want == 0) and (
        (st.get("replicas") or 0) == want)
    return done, f"{ready}/{want}"


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

