"""Two ChatbotModels of a namespace claiming one route: the holder keeps it, else the oldest."""

from __future__ import annotations

from chatbot_operator.route_claims import claim, holder, holds
from chatbot_operator.spec import ChatbotModelSpec

NO_HOST = "Ingress on host *, ingress class nginx"


def _model(name: str, created: str, route: dict | None = None, holds: str | None = None,
           **meta) -> dict:
    obj = {"metadata": {"name": name, "uid": f"uid-{name}", "creationTimestamp": created,
                        **meta}, "spec": {"route": route} if route is not None else {}}
    if holds:
        obj["status"] = {"route": {"kind": "Ingress", "claim": holds}}
    return obj


def _holder(obj: dict, *others: dict) -> str | None:
    return holder(obj, ChatbotModelSpec.parse(obj["spec"]), [obj, *others])


def test_the_oldest_of_two_new_models_without_a_host_gets_the_route():
    old = _model("b-old", "2026-11-26T10:00:00Z")
    new = _model("a-new", "2026-11-26T10:00:05Z")
    assert _holder(new, old) == "b-old"
    assert _holder(old, new) is None
    # Created in the same second: the name decides, the same way for both.
    twin = _model("c-twin", "2026-11-26T10:00:00Z")
    assert _holder(twin, old) == "b-old" and _holder(old, twin) is None


def test_the_model_that_has_the_route_keeps_it_against_an_older_one_that_wants_it_now():
    """An older model whose spec changed to a younger one's route: the younger keeps it, so
    it need not be told of the other's change."""
    younger = _model("young", "2026-11-26T10:00:05Z", holds=NO_HOST)
    older = _model("old", "2026-11-26T10:00:00Z")
    assert _holder(older, younger) == "young"
    assert _holder(younger, older) is None
    # It held another host before: that is not this claim.
    moved = _model("young", "2026-11-26T10:00:05Z",
                   holds="Ingress on host a.example, ingress class nginx")
    assert _holder(older, moved) is None
    # A holder need not look at the others at all; a model that held another host must.
    assert holds(younger, ChatbotModelSpec.parse(younger["spec"]))
    assert not holds(moved, ChatbotModelSpec.parse(moved["spec"]))
    assert not holds(older, ChatbotModelSpec.parse(older["spec"]))


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
    assert claim(ChatbotModelSpec.parse({})) == NO_HOST
    assert claim(ChatbotModelSpec.parse({"route": {"kind": "None"}})) is None
    assert claim(ChatbotModelSpec.parse({"route": {
        "kind": "HTTPRoute", "host": "chat.example",
        "gateway": {"name": "edge", "sectionName": "http-8001"}}})) == (
        "HTTPRoute on host chat.example, Gateway (this namespace)/edge, listener http-8001")
