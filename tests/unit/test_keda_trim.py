"""KEDA as the harness builds it (tests/kube/gomod_patches.patch_keda): only the scalers this
product's ScaledObjects use, none of the cloud SDKs that made its cold build the longest,
and a clear refusal for every trigger type it left out."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.kube import binaries, gomod_patches
from tests.support.trimmed_builds import patched_module_source

KEDA = "github.com/kedacore/keda/v2"


@pytest.fixture(scope="module")
def keda_src(tmp_path_factory):
    """A patched copy of KEDA's module source, from the module cache build-binaries fills."""
    return patched_module_source("keda", KEDA, gomod_patches.patch_keda,
                                 tmp_path_factory.mktemp("keda") / "src")


def test_build_scaler_keeps_prometheus_cpu_memory_and_refuses_the_rest_by_name(keda_src):
    builder = (keda_src / "pkg/scaling/scalers_builder.go").read_text()
    switch = builder[builder.index("switch triggerType {"):builder.index("// TRIGGERS-END")]
    assert re.search(r'case "prometheus":\n\t\treturn scalers.NewPrometheusScaler', switch)
    assert re.search(r'case "cpu":\n\t\treturn scalers.NewCPUMemoryScaler', switch)
    assert re.search(r'case "memory":\n\t\treturn scalers.NewCPUMemoryScaler', switch)
    refused = re.search(r'\tcase ("[^\n]*"):\n\t\treturn nil, fmt.Errorf\("scaler type %q is '
                        r'not in this build of KEDA \(it has cpu, memory, prometheus\)"', switch)
    assert refused, switch
    names = set(re.findall(r'"([\w-]+)"', refused.group(1)))
    assert {"kafka", "aws-sqs-queue", "azure-servicebus", "gcp-pubsub", "redis"} <= names
    assert not names & {"prometheus", "cpu", "memory"}
    # an unknown type still gets KEDA's own answer
    assert 'fmt.Errorf("no scaler found for type: %s", triggerType)' in switch


def test_the_build_pulls_no_cloud_sdk(keda_src):
    listed = subprocess.run(
        ["go", "list", "-deps", "-f", "{{with .Module}}{{.Path}}{{end}}", "./cmd/operator",
         "./cmd/adapter"], cwd=keda_src, env=binaries.go_env(), capture_output=True,
        text=True, timeout=600)
    assert listed.returncode == 0, listed.stderr[-3000:]
    modules = set(listed.stdout.split())
    cloud = sorted(m for m in modules if m.startswith(
        ("github.com/Azure/", "github.com/aws/", "cloud.google.com/", "google.golang.org/api",
         "github.com/dysnix/", "github.com/IBM/", "github.com/segmentio/kafka-go")))
    assert cloud == []
    assert {KEDA, "k8s.io/client-go", "sigs.k8s.io/custom-metrics-apiserver"} <= modules
