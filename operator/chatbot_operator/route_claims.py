"""Which ChatbotModel gets the route when several in a namespace claim the same one.

Every route claims /office, /character and / on its host (any host when none is given),
through its ingress class or its Gateway. Two models claiming the same would split or
steal each other's traffic, differently on each controller, and neither would say so.

The model that has the route keeps it (its status names the claim it holds); among models
that do not have it yet (or both, after a race) the oldest gets it, by creation time, then
name: as the Gateway API and ingress-nginx favour the oldest route. The others report
`RouteConflict` and get no route until the claim is free. A holder is never displaced by
a model whose spec changed to its claim, so no model has to be told of another's change.
"""

from __future__ import annotations

from pydantic import ValidationError

from chatbot_operator.spec import ChatbotModelSpec


def claim(spec: ChatbotModelSpec) -> str | None:
    """What the route claims, in words (also kept in status.route.claim while it is held);
    None without a route."""
    route = spec.route
    host = route.host or "*"
    if route.kind == "Ingress":
        return f"Ingress on host {host}, ingress class {route.ingress_class_name}"
    if route.kind == "HTTPRoute" and route.gateway is not None:
        gateway = route.gateway
        listener = f", listener {gateway.section_name}" if gateway.section_name else ""
        return (f"HTTPRoute on host {host}, Gateway "
                f"{gateway.namespace or '(this namespace)'}/{gateway.name}{listener}")
    return None


def holder(obj: dict, spec: ChatbotModelSpec, others: list[dict]) -> str | None:
    """The name of the ChatbotModel among `others` (the namespace's) that has, or comes
    before `obj` for, the route `obj` would get; None when the route is `obj`'s."""
    mine = claim(spec)
    if mine is None:
        return None
    rivals = [o for o in others if o["metadata"]["uid"] != obj["metadata"]["uid"]
              and not o["metadata"].get("deletionTimestamp") and _claim_of(o) == mine]
    first = min([obj, *rivals], key=lambda o: _precedence(o, mine))
    return None if first is obj else first["metadata"]["name"]


def _claim_of(obj: dict) -> str | None:
    try:
        return claim(ChatbotModelSpec.parse(obj.get("spec") or {}))
    except ValidationError:
        return None  # an invalid spec gets no route: it claims nothing


def holds(obj: dict, spec: ChatbotModelSpec) -> bool:
    """Whether `obj` has the route its spec claims (as its last pass recorded): then no
    other model can take it, and nothing needs to be compared."""
    wanted = claim(spec)
    return wanted is not None and _held(obj) == wanted


def _held(obj: dict) -> str | None:
    return ((obj.get("status") or {}).get("route") or {}).get("claim")


def _precedence(obj: dict, wanted: str) -> tuple[bool, str, str]:
    # RFC 3339 UTC timestamps of one API server sort as text.
    return (_held(obj) != wanted, obj["metadata"].get("creationTimestamp") or "",
            obj["metadata"]["name"])
