"""Two ChatbotModels of a namespace claiming one route: the oldest keeps it."""

from __future__ import annotations

from chatbot_operator.route_claims import claim, holder
from chatbot_operator.spec import ChatbotModelSpec


def _model(name: str, created: str, route: dict | None = None, **meta) -> dict:
    spec = {"route": route} if route is not None else {}
    return {"metadata": {"name": name, "uid": f"uid-{name}", "creationTimestamp": created,
                         **meta}, "spec": spec}


def _holder(obj: dict, *others: dict) -> str | None:
    return holder(obj, ChatbotModelSpec.parse(obj["spec"]), [obj, *others])


def test_the_oldest_of_two_models_without_a_host_keeps_the_route():
    old = _model("b-old", "2026-11-26T10:00:00Z")
    new = _model("a-new", "2026-11-26T10:00:05Z")
    assert _holder(new, old) == "b-old"
    assert _holder(old, new) is None
    # Created in the same second: the name decides, the same way for both.
    twin = _model("c-twin", "2026-11-26T10:00:00Z")
    assert _holder(twin, old) == "b-old" and _holder(old, twin) is None


def test_other_hosts_classes_kinds_and_models_being_deleted_do_not_conflict():
    old = _model("old", "2026-11-26T10:00:00Z")
    new = "2026-11-26T10:00:05Z"
    assert _holder(_model("n", new, {"host": "b.example"}), old) is None
    assert _holder(_model("n", new, {"ingressClassName": "traefik"}), old) is None
    assert _holder(_model("n", new, {"kind": "None"}), old) is None
    gateway = {"kind": "HTTPRoute", "gateway": {"name": "edge", "namespace": "gw"}}
    assert _holder(_model("n", new, gateway), old) is None
    assert _holder(_model("n", new, gateway), _model("o", "2026-11-26T09:00:00Z",
                                                     gateway)) == "o"
    going = _model("old", "2026-11-26T10:00:00Z", deletionTimestamp="2026-11-26T11:00:00Z")
    assert _holder(_model("n", new), going) is None
    # A model whose spec no longer parses has no route: it claims nothing.
    broken = _model("broken", "2026-11-26T09:00:00Z", {"kind": "Ingress"})
    broken["spec"]["route"]["host"] = ["not", "a", "host"]
    assert _holder(_model("n", new), broken) is None


def test_a_claim_names_what_is_shared():
    assert claim(ChatbotModelSpec.parse({})) == ("Ingress", "ingress class nginx", "*")
    assert claim(ChatbotModelSpec.parse({"route": {"kind": "None"}})) is None
