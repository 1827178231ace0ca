"""What a ServiceAccount really did, read from the local kube-apiserver's audit log, set
against what an RBAC rules list grants: the evidence that the chart's operator RBAC is
exactly the operator's calls (every call allowed, every permission used)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Call:
    group: str  # "" for the core API group
    resource: str  # "chatbotmodels" or "chatbotmodels/status"
    verb: str
    code: int
    namespace: str
    message: str = ""  # the response's status message, for failures

    @property
    def permission(self) -> tuple[str, str, str]:
        return (self.group, self.resource, self.verb)

    @property
    def refused_by_rbac(self) -> bool:
        """A 403 from authorization, not the NamespaceLifecycle admission's 403 for a write
        into a namespace that is being deleted (a test's namespace torn down while the
        operator still reacts to it)."""
        return self.code == 403 and "because it is being terminated" not in self.message


def offset(audit_log: Path) -> int:
    """Where the log ends now: ``calls_by(..., since=offset(log))`` reads only what follows."""
    return audit_log.stat().st_size if audit_log.exists() else 0


def calls_by(audit_log: Path, account: str, since: int = 0) -> list[Call]:
    """Every completed resource request made by ServiceAccount ``account`` (any namespace),
    after byte ``since`` of the log."""
    found = []
    suffix = f":{account}"
    with open(audit_log, "rb") as f:
        f.seek(since)
        text = f.read().decode()
    for line in text.splitlines():
        entry = json.loads(line)
        user = entry.get("user", {}).get("username", "")
        ref = entry.get("objectRef")
        if (not user.startswith("system:serviceaccount:") or not user.endswith(suffix)
                or entry.get("stage") != "ResponseComplete" or not ref):
            continue  # another user, a watch still open, or a non-resource URL
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        status = entry.get("responseStatus", {})
        found.append(Call(ref.get("apiGroup", ""), resource, entry["verb"],
                          status.get("code", 0), ref.get("namespace", ""),
                          status.get("message", "")))
    return found


def used(calls: list[Call]) -> set[tuple[str, str, str]]:
    """The permissions the calls needed. A server-side apply that created its object (a
    PATCH answered 201) was also authorized for ``create``, inside the same request, so the
    audit log has no line of its own for it."""
    needed = {c.permission for c in calls}
    needed |= {(c.group, c.resource, "create") for c in calls
               if c.verb == "patch" and c.code == 201}
    return needed


def granted(rules: list[dict]) -> set[tuple[str, str, str]]:
    """(group, resource, verb) for every combination a rules list names."""
    return {(group, resource, verb)
            for rule in rules
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]}
