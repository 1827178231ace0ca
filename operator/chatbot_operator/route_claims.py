"""Which ChatbotModel gets the route when several in a namespace claim the same one.

Every route claims /office, /character and / on its host (any host when none is given),
through its ingress class or its Gateway. Two models claiming the same would split or
steal each other's traffic, differently on each controller, and neither would say so. The
oldest claimant (creation time, then name) keeps it, as the Gateway API resolves
conflicting routes and ingress-nginx duplicate paths; the others report `RouteConflict`
and get no route until the claim is free.
"""

from __future__ import annotations

from pydantic import ValidationError

from chatbot_operator.spec import ChatbotModelSpec


def claim(spec: ChatbotModelSpec) -> tuple[str, str, str] | None:
    """What the route claims: (kind, ingress class or Gateway, host); None without a route."""
    route = spec.route
    host = route.host or "*"
    if route.kind == "Ingress":
        return ("Ingress", f"ingress class {route.ingress_class_name}", host)
    if route.kind == "HTTPRoute" and route.gateway is not None:
        gateway = route.gateway
        return ("HTTPRoute", f"Gateway {gateway.namespace or '-'}/{gateway.name}"
                f"/{gateway.section_name or '-'}", host)
    return None


def holder(obj: dict, spec: ChatbotModelSpec, others: list[dict]) -> str | None:
    """The name of the older ChatbotModel among `others` (the namespace's) that claims the
    route `obj` would get; None when the route is `obj`'s."""
    mine = claim(spec)
    if mine is None:
        return None
    rivals = [o for o in others if o["metadata"]["uid"] != obj["metadata"]["uid"]
              and not o["metadata"].get("deletionTimestamp") and _claim_of(o) == mine]
    first = min([obj, *rivals], key=_age)
    return None if first is obj else first["metadata"]["name"]


def _claim_of(obj: dict) -> tuple[str, str, str] | None:
    try:
        return claim(ChatbotModelSpec.parse(obj.get("spec") or {}))
    except ValidationError:
        return None  # an invalid spec gets no route: it claims nothing


def _age(obj: dict) -> tuple[str, str]:
    # RFC 3339 UTC timestamps of one API server sort as text.
    return obj["metadata"].get("creationTimestamp") or "", obj["metadata"]["name"]
