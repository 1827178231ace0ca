"""Pure status computation: observed children -> phase, conditions, columns."""

from __future__ import annotations

from dataclasses import dataclass

CONDITIONS = ("ModelReady", "OfficeReady", "CharacterReady", "RouteReady")
FAILURES = ("FetchFailed", "InvalidSpec", "ApplyFailed", "RouteAPIMissing", "ModelTooLarge",
            "CpuFallback")
# Informational: not part of Ready (Accelerated=False with allowCpuFallback is a warning).
WARNINGS = ("Accelerated",)


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool | None  # None: Unknown
    reason: str
    message: str

    @property
    def status_text(self) -> str:
        return "Unknown" if self.status is None else "True" if self.status else "False"


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

