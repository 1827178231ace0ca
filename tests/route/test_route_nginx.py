"""The route on port 8001 end to end: the Ingress or HTTPRoute the operator builds, served by
a real nginx configured the way ingress-nginx, or an nginx-based Gateway, configures it
(tests/route/ingress_nginx.py and httproute_nginx.py stand in for the controllers, which
cannot run here), in front of real `chatbot serve` processes, one per persona as their pods
run, and `chatbot not-found`, the route's 404 backend. The chart's `helm test` script runs
against it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from chatbot_operator import builders
from chatbot_operator.builders import Owner
from chatbot_operator.spec import ChatbotModelSpec
from tests.kube import helpers as cluster_helpers
from tests.kube.helm import template
from tests.route import httproute_nginx, ingress_nginx
from tests.route.nginx import Nginx, http_config, nginx_binary
from tests.support import free_port
from tests.support.server import ChatbotServer

EXAMPLE = Path(__file__).resolve().parents[2] / "operator/examples/chatbotmodel.yaml"
OWNER = Owner("chatbot", "chatbot", "uid-1")


@pytest.fixture(scope="module")
def nginx_bin():
    found = nginx_binary()
    if found is None:
        msg = ("nginx is missing: tests/run unpacks Debian's nginx package into "
               "~/.cache/chatbot-dev/nginx (or apt-get install nginx)")
        if cluster_helpers.require_cluster():  # CI: an error, not a skip
            pytest.fail(msg)
        pytest.skip(msg)
    return found


@pytest.fixture(scope="module")
def endpoints(start_server, tmp_path_factory):
    """Service name -> address, as the controller reads them from EndpointSlices."""
    office, character = start_server("office"), start_server("character")
    not_found = ChatbotServer(tmp_path_factory.mktemp("not-found"), command="not-found")
    not_found.wait_until("/__healthz")
    yield {builders.deployment_name(OWNER, "office"): f"127.0.0.1:{office.port}",
           builders.deployment_name(OWNER, "character"): f"127.0.0.1:{character.port}",
           builders.not_found_name(OWNER): f"127.0.0.1:{not_found.port}"}
    not_found.stop()


@pytest.fixture
def route(nginx_bin, endpoints, tmp_path):
    """Factory: nginx serving the operator's route for the example's spec + overrides."""
    started = []

    def start(kind: str = "Ingress", no_endpoints: tuple[str, ...] = (),
              **route_overrides) -> Nginx:
        """``no_endpoints``: personas whose Service has no ready pod."""
        spec = yaml.safe_load(EXAMPLE.read_text())["spec"]
        spec["route"] = {**spec["route"], "kind": kind, **route_overrides}
        if kind == "HTTPRoute":
            spec["route"].pop("ingressClassName", None)
            spec["route"]["gateway"] = {"name": "chatbot-gateway", "sectionName": "http-8001"}
        parsed = ChatbotModelSpec.parse(spec)
        port = free_port()
        ready = {**endpoints, **{builders.deployment_name(OWNER, p): None
                                 for p in no_endpoints}}
        if kind == "Ingress":
            blocks = ingress_nginx.servers([builders.ingress(OWNER, parsed)], port, ready)
        else:
            blocks = httproute_nginx.servers(builders.http_route(OWNER, parsed), port)
        workdir = tmp_path / f"nginx-{port}"
        workdir.mkdir()
        server = Nginx(nginx_bin, workdir, http_config(blocks, ready, workdir), port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


KINDS = ["Ingress", "HTTPRoute"]


def _helm_test(route_url: str, **values) -> subprocess.CompletedProcess:
    """The chart's `helm test` Job, its script and env, run here against ``route_url``."""
    job = next(o for o in template({"route": values} if values else None)
               if o["kind"] == "Job" and o["metadata"]["annotations"].get("helm.sh/hook"))
    [container] = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    env["ROUTE_URL"] = route_url  # the Job calls the controller's Service instead
    assert container["command"][:2] == ["python", "-c"]
    return subprocess.run([sys.executable, "-c", container["command"][2]],
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=60)


def _is_project_404(response: httpx.Response, page: str) -> bool:
    return response.status_code == 404 and response.text == page


@pytest.fixture(scope="module")
def not_found_page(endpoints):
    address = endpoints[builders.not_found_name(OWNER)]
    return httpx.get(f"http://{address}/anything").text


@pytest.mark.parametrize("kind", KINDS)
def test_helm_test_passes_through_the_route_and_fails_for_another_host(route, kind):
    nginx = route(kind, host="chat.example")
    ok = _helm_test(nginx.url, host="chat.example")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "/office/healthz: HTTP 200" in ok.stdout
    assert "/character/healthz: HTTP 200" in ok.stdout
    # the route serves chat.example only: the hook must notice when it is not reached
    wrong = _helm_test(nginx.url, host="other.example")
    assert wrong.returncode == 1
    assert "route check failed for: office, character" in wrong.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_the_route_strips_the_prefix_and_reaches_each_persona(route, kind):
    nginx = route(kind)
    with httpx.Client(base_url=nginx.url, timeout=120) as client:
        office = client.post("/office/Llama", json={"input_data": "회의록 작성 요령은?"})
        assert office.status_code == 200, office.text
        assert isinstance(office.json(), str) and office.json()
        character = client.post("/character/Llama", json={
            "input_data": "*waves*", "character_name": "Rachel",
            "greeting": "*Rachel looks up.*", "context": "Rachel is a shy student."})
        assert character.status_code == 200, character.text
        assert isinstance(character.json(), str) and character.json()
        # the prefix is stripped: each persona sees its own root paths
        assert client.get("/office/readyz").json()["persona"] == "office"
        assert client.get("/character/readyz").json()["persona"] == "character"
        assert client.get("/office/healthz?probe=1").status_code == 200  # query kept
        # a body over 64k is refused before any model runs (the Ingress's limit, or the
        # service's own behind a Gateway)
        too_big = client.post("/office/Llama", content=b"x" * 70_000,
                              headers={"Content-Type": "application/json"})
        assert too_big.status_code == 413


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("host", [None, "chat.example"], ids=["no-host", "host"])
def test_every_other_path_gets_the_projects_404_page(route, not_found_page, kind, host):
    """Unknown paths and look-alike prefixes answer the project's page, not the
    controller's, with or without route.host (the example has none)."""
    assert "<html" in not_found_page.lower()
    nginx = route(kind, **({"host": host} if host else {}))
    headers = {"Host": host} if host else {}
    with httpx.Client(base_url=nginx.url, headers=headers, timeout=30) as client:
        for path in ("/", "/nope", "/officer/healthz", "/characters",
                     "/character/../../etc/passwd", "/v1/chat/completions"):
            answer = client.get(path)
            assert _is_project_404(answer, not_found_page), (path, answer.status_code,
                                                              answer.text[:200])
        assert _is_project_404(client.post("/nope", json={}), not_found_page)


def test_ingress_nginx_is_case_insensitive(route):
    nginx = route("Ingress")
    assert httpx.get(nginx.url + "/OFFICE/healthz", timeout=30).status_code == 200


@pytest.mark.parametrize("kind", KINDS)
def test_inside_a_persona_an_unknown_path_is_the_404_page_and_its_own_errors_stay_json(
        route, not_found_page, kind):
    """The persona itself answers an unknown path with the project's page (nothing in the
    route intercepts its answers); what its routes answer on purpose stays JSON."""
    nginx = route(kind)
    with httpx.Client(base_url=nginx.url, timeout=30) as client:
        assert _is_project_404(client.get("/office/no/such/page"), not_found_page)
        assert _is_project_404(client.post("/character/no/such/page", json={}), not_found_page)
        # /office/<name> is the GPT route: POST only, so GET there is a 405
        for answer, status in ((client.get("/office/Llama"), 405),
                               (client.post("/office/Llama", json={}), 422)):
            assert answer.status_code == status
            assert answer.headers["content-type"] == "application/json"
            assert answer.json()["detail"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_persona_without_a_ready_pod_is_503_not_the_404_page(route, not_found_page, kind):
    """While a persona has no ready pod (a restart, a rollout of its only replica) its
    Service has no endpoint: the route answers 503, which clients retry; a 404 page would
    lose the question. The other persona and the 404 page are unaffected."""
    nginx = route(kind, no_endpoints=("office",))
    with httpx.Client(base_url=nginx.url, timeout=30) as client:
        for answer in (client.post("/office/Llama", json={"input_data": "안녕하세요"}),
                       client.get("/office/healthz")):
            assert answer.status_code == 503, (answer.status_code, answer.text[:200])
            assert answer.text != not_found_page
        assert client.get("/character/healthz").status_code == 200
        assert _is_project_404(client.get("/nope"), not_found_page)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_refused_body_is_413_through_the_proxy_every_time(route, chunked):
    """Behind a Gateway the service itself refuses a body over 64k. It must read what the
    proxy is still sending before answering; closing early resets the proxy's upload and
    the client gets nginx's 502 instead of the 413. (A body close to the proxy's own 1m
    limit makes that race all but certain.)"""
    nginx = route("HTTPRoute")
    body = b'{"input_data": "' + b"x" * 1_000_000 + b'"}'
    statuses = []
    with httpx.Client(base_url=nginx.url, timeout=30) as client:
        for _ in range(20):
            content = iter([body[i:i + 8192] for i in range(0, len(body), 8192)]) \
                if chunked else body
            answer = client.post("/office/Llama", content=content,
                                 headers={"Content-Type": "application/json"})
            statuses.append(answer.status_code)
    assert set(statuses) == {413}, statuses
