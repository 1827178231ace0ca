"""skaffold.yaml, checked against skaffold's own published JSON schema for its apiVersion
(docs-v2/content/en/schemas/<version>.json from the skaffold Go module, SKAFFOLD_VERSION in
tests/kube/versions.env, fetched by tests/kube/build-binaries), with every profile's
patches applied; and what it deploys: the chart rendered with each profile's values and
the images skaffold would build.
"""

from __future__ import annotations

import copy
import json
import re

import jsonschema
import pytest
import yaml

from tests.chart import skaffold_schema
from tests.kube import helpers as cluster_helpers
from tests.kube.helm import CHART, ROOT, one, run, template

SKAFFOLD = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


@pytest.fixture(scope="module")
def validator():
    try:
        path = skaffold_schema.schema(download=False)
    except FileNotFoundError as exc:
        if cluster_helpers.require_cluster():
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    schema = json.loads(path.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _apply(doc: dict, patches: list[dict]) -> dict:
    """RFC 6902 add/replace (what the profiles use) on a copy."""
    out = copy.deepcopy(doc)
    for p in patches:
        *parents, last = [int(x) if x.isdigit() else x for x in p["path"].strip("/").split("/")]
        node = out
        for key in parents:
            node = node[key]
        if p["op"] == "replace":
            node[last]  # noqa: B018 - must exist
        elif p["op"] != "add":
            raise AssertionError(f"unexpected op {p['op']}")
        node[last] = p["value"]
    return out


def _profile(name: str) -> dict:
    """skaffold.yaml as skaffold sees it with -p NAME."""
    prof = next(p for p in SKAFFOLD["profiles"] if p["name"] == name)
    doc = {k: v for k, v in SKAFFOLD.items() if k != "profiles"}
    for section in ("build", "deploy"):
        if section in prof:
            doc[section] = prof[section]
    return _apply(doc, prof.get("patches", []))


def _errors(validator, doc) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(doc)]


def test_skaffold_yaml_matches_skaffolds_schema_for_its_api_version(validator):
    assert SKAFFOLD["apiVersion"] == f"skaffold/{skaffold_schema.api_version()}"
    assert _errors(validator, SKAFFOLD) == []
    for name in ("kind", "minikube", "gpu"):
        assert _errors(validator, _profile(name)) == [], name


@pytest.mark.parametrize("path,bad", [
    (("deploy", "helm", "releases", 0), {"chartpath": "charts/chatbot"}),
    (("build", "artifacts", 0, "docker"), {"dockerFile": "x"}),
    (("build", "local"), {"push": "no"}),
])
def test_the_schema_check_catches_mistakes(validator, path, bad):
    doc = copy.deepcopy(SKAFFOLD)
    node = doc
    for key in path:
        node = node[key]
    node.update(bad)
    assert _errors(validator, doc), f"{bad} accepted"


def _sanitized(image: str) -> str:  # skaffold's SanitizeHelmTemplateValue
    return re.sub(r"[./:-]", "_", image)


def test_three_images_built_from_existing_dockerfiles_and_wired_into_the_chart():
    images = {a["image"]: a["docker"]["dockerfile"] for a in SKAFFOLD["build"]["artifacts"]}
    assert images == {"ghcr.io/treenut/chatbot-operator": "images/operator/Dockerfile",
                      "ghcr.io/treenut/chatbot-service": "images/service/Dockerfile.cuda"}
    cpu = _profile("kind")["build"]["artifacts"][1]["docker"]["dockerfile"]
    assert cpu == "images/service/Dockerfile"
    assert {*images.values(), cpu} == {str(p.relative_to(ROOT))
                                       for p in (ROOT / "images").rglob("Dockerfile*")}
    assert VALUES["operator"]["image"]["repository"] in images
    assert VALUES["serviceImage"]["repository"] in images
    [release] = SKAFFOLD["deploy"]["helm"]["releases"]
    assert (ROOT / release["chartPath"]).resolve() == CHART
    for key, tmpl in release["setValueTemplates"].items():
        node = VALUES
        for part in key.split("."):
            node = node[part]  # the value exists in the chart
        name = re.fullmatch(r"\{\{\.IMAGE_(?:REPO|TAG)_(\w+)\}\}", tmpl).group(1)
        assert name in {_sanitized(i) for i in images}, tmpl


def _render_profile(name: str) -> list[dict]:
    [release] = _profile(name)["deploy"]["helm"]["releases"]
    values: dict = {}
    for f in release.get("valuesFiles", []):
        values.update(yaml.safe_load((ROOT / f).read_text()))
    built = {"IMAGE_REPO_ghcr_io_treenut_chatbot_operator": "localhost/op",
             "IMAGE_TAG_ghcr_io_treenut_chatbot_operator": "dev1",
             "IMAGE_REPO_ghcr_io_treenut_chatbot_service": "localhost/svc",
             "IMAGE_TAG_ghcr_io_treenut_chatbot_service": "dev2"}
    for key, tmpl in release["setValueTemplates"].items():
        *parents, last = key.split(".")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = built[tmpl.strip("{}.")]
    proc = run("lint", "--strict", str(CHART), values=values)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return template(values, namespace=release["namespace"])


def test_kind_profile_deploys_the_cpu_image_on_the_cpu_profile_with_a_small_model():
    for name in ("kind", "minikube"):
        objs = _render_profile(name)
        cbm = one(objs, "ChatbotModel")
        assert cbm["spec"]["image"] == "localhost/svc:dev2"
        assert {cbm["spec"][p]["gpuProfile"] for p in ("office", "character")} == {"cpu"}
        assert cbm["spec"]["office"]["file"].startswith("smollm2-135m")
        op = one(objs, "Deployment", "chatbot-operator")["spec"]["template"]["spec"]
        env = {e["name"]: e["value"] for e in op["containers"][0]["env"]}
        assert op["containers"][0]["image"] == "localhost/op:dev1"
        assert env["CHATBOT_OPERATOR_FETCH_IMAGE"] == "localhost/op:dev1"
    activation = {p["name"]: p.get("activation") for p in SKAFFOLD["profiles"]}
    assert activation["kind"] == [{"kubeContext": "kind-.*"}]
    assert _profile("kind")["build"]["local"]["push"] is False  # skaffold loads into kind


def test_gpu_profile_deploys_the_cuda_image_on_the_seeds_gpus():
    objs = _render_profile("gpu")
    cbm = one(objs, "ChatbotModel")
    assert cbm["spec"]["office"]["gpuProfile"] == "rtx-2080"
    assert cbm["spec"]["character"]["gpuProfile"] == "rtx-3060"
    assert cbm["spec"]["image"] == "localhost/svc:dev2"
    service = _profile("gpu")["build"]["artifacts"][1]["docker"]
    assert service["dockerfile"] == "images/service/Dockerfile.cuda"
    assert service["buildArgs"]["CUDA_ARCHITECTURES"] == "75;86"


def _quickstart_commands(doc) -> list[list[str]]:
    """The kind quickstart's commands (the first ```bash block that creates a kind
    cluster), continuation lines joined, comments dropped, each split as the shell would."""
    import shlex

    blocks = re.findall(r"```bash\n(.*?)```", doc.read_text(), re.S)
    block = next(b for b in blocks if "kind create cluster" in b)
    return [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines()
            if shlex.split(line, comments=True)]


def _flag(argv: list[str], *names: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in names]


@pytest.mark.parametrize("doc", ["README.md", "docs/deploying.md"])
def test_kind_profile_does_what_the_kind_quickstart_does(doc):
    """``skaffold run -p kind`` builds, loads and installs what the quickstart's steps do:
    the same Dockerfiles for the same images, the chart as the same release in the same
    namespace with the CPU image, and the quickstart's ChatbotModel (the chart creates it
    from ci/kind-values.yaml instead of a ``kubectl apply``)."""
    cmds = _quickstart_commands(ROOT / doc)
    built = {_flag(c, "-t")[0].rsplit(":", 1)[0]: _flag(c, "-f")[0]
             for c in cmds if c[:2] == ["docker", "build"]}
    profile = _profile("kind")
    assert built == {a["image"]: a["docker"]["dockerfile"]
                     for a in profile["build"]["artifacts"]}
    loaded = next(c for c in cmds if c[:3] == ["kind", "load", "docker-image"])
    refs = [a for i, a in enumerate(loaded[3:], 3)
            if not a.startswith("-") and loaded[i - 1] != "--name"]
    assert {ref.rsplit(":", 1)[0] for ref in refs} == set(built)
    install = next(c for c in cmds if c[:2] == ["helm", "install"] and "charts/chatbot" in c)
    [release] = profile["deploy"]["helm"]["releases"]
    assert install[2] == release["name"]
    assert (ROOT / install[3]).resolve() == (ROOT / release["chartPath"]).resolve()
    assert _flag(install, "-n", "--namespace") == [release["namespace"]]
    assert ("--create-namespace" in install) == release["createNamespace"]
    kind_values = {}
    for f in release["valuesFiles"]:
        kind_values.update(yaml.safe_load((ROOT / f).read_text()))
    for setting in _flag(install, "--set"):
        key, value = setting.split("=", 1)
        node = kind_values
        for part in key.split("."):
            node = node[part]
        assert str(node) == value, setting
    applied = next(c for c in cmds if c[0] == "kubectl" and "apply" in c)
    assert _flag(applied, "-n", "--namespace") == [release["namespace"]]
    example = yaml.safe_load((ROOT / _flag(applied, "-f")[0]).read_text())
    spec = {k: v for k, v in example["spec"].items() if k != "image"}  # skaffold sets it
    assert kind_values["chatbotModel"]["spec"] == spec
