"""Source patches for Go programs whose module cannot be built as published here, or
whose published build is far more than the tests need.

Traefik v3 is built from a copy of its module source, because the Go module proxy
this project can reach refuses three things its go.mod asks for. The patches
below change nothing in routing (the Ingress-NGINX and Gateway API providers, the
middlewares our routes use); they remove what this binary therefore lacks:

- the nested module ``github.com/traefik/traefik/dynamic/ext`` (``replace``d to
  ``./pkg/config/dynamic/ext``) is not in the module zip: it is recreated with the
  empty extension types upstream keeps for its enterprise build;
- lego's DNS-challenge providers pull SDKs the proxy refuses (ucloud, alidns, ...):
  ACME's DNS-01 challenge is disabled (HTTP-01 and TLS-ALPN-01 remain);
- the ``containous/go-http-auth`` fork is refused: upstream ``abbot/go-http-auth``
  v0.4.0 replaces it, without the fork's two additions: basic auth checks a password
  against its htpasswd hash (MD5, SHA, bcrypt) through upstream's ``CheckAuth`` instead
  of the fork's ``CheckSecret``, and digest auth answers a stale nonce with a plain 401
  challenge (no ``stale=true``), so a client re-authenticates instead of retrying.

Traefik is also trimmed to what this product runs (``_trim_traefik``): the harness starts
it with the Kubernetes Ingress-NGINX and Gateway API providers, ping and the access log,
and the routes use the rewrite, timeout and body-size middlewares. Left out, where a cold
build spent its time (``go build -debug-actiongraph`` on 2 shared cores: of the 689 s its
compile actions took, these 218; 1696 packages, 1388 after):

- the providers ``ecs`` (the AWS SDK's ec2, ssm and ecs clients: 112 s, ec2 alone 65),
  ``consul``, ``consulCatalog``, ``nomad``, ``etcd``, ``redis``, ``zooKeeper`` (13 s):
  their static-configuration fields take any options (``TrimmedProvider``) and
  ``ValidateConfiguration`` refuses them at startup: ``providers.ecs: not in this build of
  Traefik``; the precedence list keeps their names;
- plugins, the Yaegi interpreter and the WebAssembly runtime (47 s):
  ``experimental.plugins``, ``experimental.localPlugins`` and ``providers.plugin`` are
  refused at startup the same way, a ``plugin`` middleware when it is built;
- the InfluxDB v2 metrics exporter (25 s): ``metrics.influxDB2`` refused at startup;
- the rateLimit middleware's Redis storage (go-redis, 22 s with the redis provider):
  ``rateLimit: its redis storage is not in this build of Traefik`` when the middleware is
  built (the router reports it); the in-memory limiter remains.

Kept although unused, each too small to be worth a patch (3-10 s): the docker/swarm,
knative and CRD providers, the OpenTelemetry exporters, Datadog/StatsD metrics, the
version check.

Prometheus is built from a copy of its module source (``patch_prometheus``). Its service
discovery was already trimmed by upstream's build tags (``PROMETHEUS_BUILD_TAGS``: of the
SD mechanisms only Kubernetes', with file, http and ``static_configs``, which are always
in; another ``*_sd_configs`` key is an unknown field). The patch leaves out, of the 537 s
the compile actions of server and promtool took, these 118 (1283 packages, 1045 after):

- the OpenAPI document of the HTTP API (libopenapi, 68 s): ``GET /api/v1/openapi.yaml``
  answers 501 naming it, and ``/api/v1/features`` no longer lists it;
- the cloud authentications of remote write and Alertmanager: ``sigv4`` (the AWS SDK,
  27 s), ``google_iam`` (Google's auth libraries, 16 s) and ``azuread`` (the Azure SDK,
  8 s): a configuration that names one fails to load, in the server and in ``promtool
  check config`` alike: ``sigv4 (AWS SigV4 authentication): not in this build of
  Prometheus``; basic auth, authorization, OAuth2 and TLS remain.

Kept: the OTLP receiver and the OTLP trace exporters (woven into remote write and
tracing), and everything the tests use: Kubernetes pod discovery, scraping, PromQL, rules.

KEDA is built from a copy of its module source trimmed to what this product's ScaledObjects
use (``patch_keda``): compiling its ~70 scalers' cloud SDKs was most of a cold build. Kept:
the ``prometheus`` trigger and the ``cpu``/``memory`` resource triggers, everything of
KEDA's core (operator, metrics apiserver, HashiCorp Vault, Secrets, env and bound
ServiceAccount tokens in TriggerAuthentication). Removed, each refused with an error that
names it:

- every other scaler: ``buildScaler`` answers ``scaler type "kafka" is not in this build of
  KEDA``; an unknown type keeps KEDA's ``no scaler found for type``;
- the prometheus trigger's cloud-managed Prometheus auth (Azure workload identity, GCP
  credentials, AWS SigV4) and the fasthttp round tripper (predictkube's);
- the Azure Key Vault, GCP Secret Manager and AWS Secrets Manager secret stores of a
  TriggerAuthentication, and the Azure Event Grid destination of a CloudEventSource: the
  same names and signatures, each refusing (KEDA logs it as for a store it cannot reach).

CoreDNS is built from a copy of its module source whose generated plugin list keeps only
the plugins this project's Corefiles use (``patch_coredns``): the real node's (bind,
errors, kubernetes, cache), kubeadm's default one, which kind deploys too (errors, health,
ready, kubernetes, prometheus, forward, cache, loop, reload, loadbalance), and log and
hosts, common in a user's Corefile: 13 of its 62. The patch removes the others' lines from
``plugin.cfg`` and from the two files ``go generate`` writes from it,
``core/plugin/zplugin.go`` (the imports that compile a plugin in) and
``core/dnsserver/zdirectives.go`` (the directives, in plugin.cfg's order, the order a query
goes through them), leaving what ``go generate`` would write from the trimmed plugin.cfg.
Gone with them: route53 (the AWS SDK), azure, clouddns (Google's API client), etcd, trace
(Datadog's and Zipkin's tracers), grpc, geoip, nomad, file, sign, ...; a Corefile that
names one fails to load, ``Unknown directive 'route53'``. debug, dnstap, metadata and
transfer stay compiled in, because forward, cache, log and kubernetes import their
packages, but have no directive either. 1403 packages in 196 modules, 814 in 80 after;
a cold compile (empty GOCACHE) on 2 shared cores 1m50s -> 1m08s alone, its CPU 191 -> 122 s;
binary 79 -> 55 MB.
Kept although unused, in CoreDNS's core (``core/dnsserver``), not its plugin list: the DNS
over QUIC, gRPC, HTTPS and HTTP/3 servers (quic-go, gRPC).
"""

from __future__ import annotations

import re
from pathlib import Path

TRAEFIK_EXT_GO = """\
// Package ext holds the dynamic configuration extension points; empty in the
// open-source build. Recreated here because the module zip lacks it.
package ext

// HTTP extends dynamic.HTTPConfiguration.
type HTTP struct{}

// Router extends dynamic.Router.
type Router struct{}

// TCPRouter extends dynamic.TCPRouter.
type TCPRouter struct{}

// DeepCopyInto copies nothing: the extension is empty.
func (in *HTTP) DeepCopyInto(out *HTTP) { *out = *in }
"""


def _sub(path: Path, pattern: str, repl: str, *, count: int = 0, flags: int = 0) -> None:
    text = path.read_text()
    new, n = re.subn(pattern, repl, text, count=count, flags=re.M | flags)
    if n == 0:
        raise RuntimeError(f"patch: {pattern!r} not found in {path}")
    path.write_text(new)


TRAEFIK_CHECK_SECRET_GO = """

// checkSecretUpstream is the fork's goauth.CheckSecret on upstream go-http-auth v0.4.0:
// its BasicAuth.CheckAuth compares a password with an htpasswd entry (MD5, SHA, bcrypt).
func checkSecretUpstream(password, secret string) bool {
	req, err := http.NewRequest(http.MethodGet, "/", nil)
	if err != nil {
		return false
	}
	req.SetBasicAuth("user", password)
	check := &goauth.BasicAuth{Secrets: func(string, string) string { return secret }}
	return check.CheckAuth(req) != ""
}
"""


def patch_traefik(src: Path) -> None:
    """Patch a writable copy of Traefik's module source so it builds from the proxy."""
    ext = src / "pkg" / "config" / "dynamic" / "ext"
    ext.mkdir(parents=True, exist_ok=True)
    (ext / "go.mod").write_text("module github.com/traefik/traefik/dynamic/ext\n\ngo 1.24\n")
    (ext / "ext.go").write_text(TRAEFIK_EXT_GO)

    acme = src / "pkg" / "provider" / "acme" / "provider.go"
    _sub(acme, r'^\s*"github.com/go-acme/lego/v\d+/providers/dns"\n', "")
    _sub(
        acme,
        r"provider, err = dns\.NewDNSChallengeProviderByName\(p\.DNSChallenge\.Provider\)",
        'provider, err = nil, fmt.Errorf("DNS challenge provider %q: not in this build",'
        " p.DNSChallenge.Provider)",
    )
    if '"fmt"' not in acme.read_text():
        _sub(acme, r"^import \(\n", 'import (\n\t"fmt"\n', count=1)

    _sub(
        src / "go.mod",
        r"^\s*github.com/abbot/go-http-auth => github.com/containous/go-http-auth \S+$",
        "\tgithub.com/abbot/go-http-auth => github.com/abbot/go-http-auth v0.4.0",
    )
    auth = src / "pkg" / "middlewares" / "auth"
    _sub(auth / "basic_auth.go", r"goauth\.CheckSecret,", "checkSecretUpstream,")
    with open(auth / "basic_auth.go", "a") as fh:
        fh.write(TRAEFIK_CHECK_SECRET_GO)
    _sub(auth / "digest_auth.go", r"d\.auth\.RequireAuthStale\(rw, req\)",
         "d.auth.RequireAuth(rw, req)")

    _trim_traefik(src)


# --------------------------------------------------------------------------- Traefik's trim

TRAEFIK = "github.com/traefik/traefik/v3"
# The providers left out (the static configuration's field -> its package under
# pkg/provider): AWS ECS (its SDK's ec2/ssm/ecs clients were a sixth of the compile), the
# KV stores and the Consul/Nomad catalogs. Kept: the Kubernetes providers (Ingress-NGINX
# and Gateway API, which this product's routes use; Ingress, CRD, Knative), file, http,
# rest, docker and swarm.
TRAEFIK_TRIMMED_PROVIDERS = {
    "Ecs": "ecs",
    "ConsulCatalog": "consulcatalog",
    "Nomad": "nomad",
    "Consul": "kv/consul",
    "Etcd": "kv/etcd",
    "Redis": "kv/redis",
    "ZooKeeper": "kv/zk",
}
# Bumped whenever patch_traefik changes what it builds: part of Traefik's cache key.
TRAEFIK_PATCH_REVISION = 1

TRAEFIK_STATIC_TRIMMED_GO = """\
package static

import (
	"errors"
	"slices"
	"strings"
)

// TrimmedProvider stands for a provider this build of Traefik leaves out. It takes any
// options, so that a configuration that names the provider parses, and
// ValidateConfiguration refuses it by name.
type TrimmedProvider map[string]any

// trimmedFeatures refuses, by name, what the static configuration asks for that this build
// of Traefik leaves out.
func (c *Configuration) trimmedFeatures() error {
	var asked []string
	if c.Providers != nil {
		for name, p := range map[string]TrimmedProvider{
%(providers)s		} {
			if p != nil {
				asked = append(asked, "providers."+name)
			}
		}
		if len(c.Providers.Plugin) > 0 {
			asked = append(asked, "providers.plugin")
		}
	}
	if c.Experimental != nil && len(c.Experimental.Plugins) > 0 {
		asked = append(asked, "experimental.plugins")
	}
	if c.Experimental != nil && len(c.Experimental.LocalPlugins) > 0 {
		asked = append(asked, "experimental.localPlugins")
	}
	if c.Metrics != nil && c.Metrics.InfluxDB2 != nil {
		asked = append(asked, "metrics.influxDB2")
	}
	if len(asked) == 0 {
		return nil
	}
	slices.Sort(asked)
	return errors.New(strings.Join(asked, ", ") + ": not in this build of Traefik")
}
"""

TRAEFIK_PLUGINS_TRIMMED_GO = """\
package plugins

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"

	"github.com/traefik/traefik/v3/pkg/provider"
)

// errNoPlugins: the Yaegi and WebAssembly plugin runtimes are left out of this build.
var errNoPlugins = errors.New("plugins (Yaegi, WebAssembly) are not in this build of Traefik")

// Constructor creates a plugin handler.
type Constructor func(context.Context, http.Handler) (http.Handler, error)

// Builder builds no plugin: this build of Traefik has no plugin runtime.
type Builder struct{}

// NewBuilder refuses any plugin; with none configured, its Builder has nothing to build.
func NewBuilder(_ *Manager, plugins map[string]Descriptor,
	localPlugins map[string]LocalDescriptor) (*Builder, error) {
	names := slices.Sorted(maps.Keys(plugins))
	names = append(names, slices.Sorted(maps.Keys(localPlugins))...)
	if len(names) > 0 {
		return nil, fmt.Errorf("%s: %w", strings.Join(names, ", "), errNoPlugins)
	}
	return &Builder{}, nil
}

// Build refuses: no middleware plugin is in this build.
func (b Builder) Build(pName string, _ map[string]any, _ string) (Constructor, error) {
	return nil, fmt.Errorf("middleware plugin %s: %w", pName, errNoPlugins)
}

// BuildProvider refuses: no provider plugin is in this build.
func (b Builder) BuildProvider(pName string, _ map[string]any) (provider.Provider, error) {
	return nil, fmt.Errorf("provider plugin %s: %w", pName, errNoPlugins)
}
"""

# The files of pkg/plugins that hold the plugin runtimes (and their tests).
TRAEFIK_PLUGIN_RUNTIME_FILES = ("builder.go", "providers.go", "middlewareyaegi.go",
                                "middlewarewasm.go", "wasip.go", "wasip_mock.go")

TRAEFIK_INFLUXDB2_GO = """\
package metrics

import (
	"context"

	"github.com/rs/zerolog/log"
	otypes "github.com/traefik/traefik/v3/pkg/observability/types"
)

// RegisterInfluxDB2 refuses: the InfluxDB v2 exporter is left out of this build (the
// static configuration's validation refuses metrics.influxDB2 before this is reached).
func RegisterInfluxDB2(ctx context.Context, _ *otypes.InfluxDB2) Registry {
	log.Ctx(ctx).Error().Msg("metrics.influxDB2: not in this build of Traefik")
	return nil
}

// StopInfluxDB2 has nothing to stop.
func StopInfluxDB2() {}
"""

TRAEFIK_REDIS_LIMITER_GO = """\
package ratelimiter

import (
	"context"
	"errors"
	"time"

	"github.com/rs/zerolog"
	"github.com/traefik/traefik/v3/pkg/config/dynamic"
	"golang.org/x/time/rate"
)

// newRedisLimiter refuses: the rateLimit middleware's Redis storage is left out of this
// build (the in-memory one remains).
func newRedisLimiter(context.Context, rate.Limit, int64, time.Duration, int, dynamic.RateLimit,
	*zerolog.Logger) (limiter, error) {
	return nil, errors.New("rateLimit: its redis storage is not in this build of Traefik")
}
"""


def _trim_traefik(src: Path) -> None:
    """Leave out of Traefik what this product does not run (the module docstring says what
    and why); each piece left out is refused by name when configured."""
    pkg = src / "pkg"
    static = pkg / "config" / "static" / "static_config.go"
    text = static.read_text()
    options: dict[str, str] = {}
    for field, rel in TRAEFIK_TRIMMED_PROVIDERS.items():
        imp = f"{TRAEFIK}/pkg/provider/{rel}"
        m = re.search(rf'^\t(?:(\w+) )?"{re.escape(imp)}"\n', text, re.M)
        if not m:
            raise RuntimeError(f"traefik patch: {imp} not imported by {static}")
        alias = m.group(1) or rel.rsplit("/", 1)[-1]
        text = text[: m.start()] + text[m.end():]
        sources = "".join(f.read_text() for f in sorted((pkg / "provider" / rel).glob("*.go"))
                          if not f.name.endswith("_test.go"))
        name = re.search(r'\bProviderName\s*=\s*"([^"]+)"', sources)
        if not name:
            raise RuntimeError(f"traefik patch: no ProviderName in {pkg / 'provider' / rel}")
        # The precedence list keeps its names, as literals.
        text, n = re.subn(rf"^\t{alias}\.ProviderName,$", f'\t"{name.group(1)}",', text,
                          flags=re.M)
        # The field takes any options (TrimmedProvider) under its name (the json tag's);
        # --help says it is not in this build.
        line = re.search(rf'^(\t{field}\s+)\*{alias}\.\w+(\s+`description:")'
                         rf'([^`]*json:"(\w+),omitempty")', text, re.M)
        if n != 1 or not line:
            raise RuntimeError(f"traefik patch: {field} ({alias}) not found in {static}")
        text = (text[: line.start()] + line.expand(r"\1TrimmedProvider\2(not in this build) \3")
                + text[line.end():])
        options[line.group(4)] = field
    text, n = re.subn(r"^(func \(c \*Configuration\) ValidateConfiguration\(\) error \{\n)",
                      r"\1\tif err := c.trimmedFeatures(); err != nil {\n\t\treturn err\n\t}\n\n",
                      text, flags=re.M)
    if n != 1:
        raise RuntimeError(f"traefik patch: ValidateConfiguration not found in {static}")
    static.write_text(text)
    (static.parent / "chatbot_trimmed.go").write_text(TRAEFIK_STATIC_TRIMMED_GO % {
        "providers": "".join(f'\t\t\t"{opt}": c.Providers.{field},\n'
                             for opt, field in sorted(options.items()))})

    aggregator = pkg / "provider" / "aggregator" / "aggregator.go"
    for field in TRAEFIK_TRIMMED_PROVIDERS:
        _sub(aggregator, rf"^\tif conf\.{field} != nil \{{\n.*?^\t\}}\n\n", "", count=1,
             flags=re.S)

    plugins = pkg / "plugins"
    for name in TRAEFIK_PLUGIN_RUNTIME_FILES:
        (plugins / name).unlink()
        (plugins / name.replace(".go", "_test.go")).unlink(missing_ok=True)
    (plugins / "chatbot_trimmed.go").write_text(TRAEFIK_PLUGINS_TRIMMED_GO)

    metrics = pkg / "observability" / "metrics"
    (metrics / "influxdb2_test.go").unlink(missing_ok=True)
    (metrics / "influxdb2.go").write_text(TRAEFIK_INFLUXDB2_GO)

    ratelimiter = pkg / "middlewares" / "ratelimiter"
    for name in ("lua.go", "redis_limiter.go"):
        (ratelimiter / name).unlink()
    (ratelimiter / "chatbot_redis_trimmed.go").write_text(TRAEFIK_REDIS_LIMITER_GO)


# --------------------------------------------------------------------------- Prometheus

PROMETHEUS = "github.com/prometheus/prometheus"
# Service discovery: the build tags keep Kubernetes' (file, http and static_configs are
# always in); every other mechanism is refused by Prometheus itself as an unknown field.
PROMETHEUS_BUILD_TAGS = "remove_all_sd,enable_kubernetes_sd"
# Bumped whenever patch_prometheus (or the tags) change what it builds: part of its cache key.
PROMETHEUS_PATCH_REVISION = 1

# The remote-write and Alertmanager authentications left out: the config key, the package
# this build puts in place of the one that pulled a cloud SDK, and what that package must
# still provide (the config type, the round tripper's constructor).
PROMETHEUS_TRIMMED_AUTH = {
    "sigv4": ("github.com/prometheus/sigv4", "storage/remote/sigv4", "SigV4Config",
              "NewSigV4RoundTripper", "AWS SigV4"),
    "azuread": (f"{PROMETHEUS}/storage/remote/azuread", "storage/remote/azuread",
                "AzureADConfig", "NewAzureADRoundTripper", "Azure AD"),
    "google_iam": (f"{PROMETHEUS}/storage/remote/googleiam", "storage/remote/googleiam",
                   "Config", "NewRoundTripper", "Google IAM"),
}

PROMETHEUS_AUTH_STUB_GO = """\
// Package %(pkg)s stands for %(what)s authentication, left out of this build of Prometheus
// (its SDK was most of what it cost to compile): a configuration that asks for it is
// refused when it is loaded, by name.
package %(pkg)s

import (
	"errors"
	"net/http"
)

var errNotInBuild = errors.New("%(key)s (%(what)s authentication): not in this build of Prometheus")

// %(type)s refuses to be configured.
type %(type)s struct{}

// UnmarshalYAML refuses: %(what)s is not in this build.
func (*%(type)s) UnmarshalYAML(func(any) error) error { return errNotInBuild }

// %(ctor)s refuses: %(what)s is not in this build.
func %(ctor)s(*%(type)s, http.RoundTripper) (http.RoundTripper, error) {
	return nil, errNotInBuild
}
"""

# web/api/v1's OpenAPI specification (GET /api/v1/openapi.yaml), built with libopenapi:
# no dependency but Kubernetes' client took longer to compile.
PROMETHEUS_OPENAPI_FILES = ("openapi.go", "openapi_examples.go", "openapi_helpers.go",
                            "openapi_paths.go", "openapi_schemas.go")

PROMETHEUS_OPENAPI_STUB_GO = """\
package v1

import (
	"log/slog"
	"net/http"
)

%(options)s
// OpenAPIBuilder serves no specification: the OpenAPI document is left out of this build.
type OpenAPIBuilder struct{}

// NewOpenAPIBuilder builds nothing.
func NewOpenAPIBuilder(OpenAPIOptions, *slog.Logger) *OpenAPIBuilder { return &OpenAPIBuilder{} }

// ServeOpenAPI answers 501, naming what is missing.
func (*OpenAPIBuilder) ServeOpenAPI(w http.ResponseWriter, _ *http.Request) {
	http.Error(w, "the OpenAPI specification (/api/v1/openapi.yaml) is not in this build of"+
		" Prometheus", http.StatusNotImplemented)
}

// WrapHandler returns the handler unchanged (as upstream's: no validation).
func (*OpenAPIBuilder) WrapHandler(next http.HandlerFunc) http.HandlerFunc { return next }
"""


def patch_prometheus(src: Path) -> None:
    """Patch a writable copy of Prometheus' module source: without the OpenAPI document and
    the cloud authentications of remote write (the module docstring says what and why)."""
    for key, (imp, rel, typ, ctor, what) in PROMETHEUS_TRIMMED_AUTH.items():
        pkg_dir = src / rel
        if pkg_dir.is_dir():
            for f in pkg_dir.glob("*.go"):
                f.unlink()
        pkg_dir.mkdir(parents=True, exist_ok=True)
        pkg = rel.rsplit("/", 1)[-1]
        (pkg_dir / f"{pkg}.go").write_text(PROMETHEUS_AUTH_STUB_GO % {
            "pkg": pkg, "what": what, "key": key, "type": typ, "ctor": ctor})
        new_imp = f"{PROMETHEUS}/{rel}"
        if imp != new_imp:  # an outside module's package: its importers take this one
            importers = [f for f in src.rglob("*.go") if not f.name.endswith("_test.go")
                         and f'"{imp}"' in f.read_text()]
            if not importers:
                raise RuntimeError(f"prometheus patch: nothing imports {imp} in {src}")
            for f in importers:
                _sub(f, rf'^(\t(?:\w+ )?)"{re.escape(imp)}"$', rf'\1"{new_imp}"')

    api = src / "web" / "api" / "v1"
    options = re.search(r"^// OpenAPIOptions .*?^type OpenAPIOptions struct \{\n.*?^\}\n",
                        (api / "openapi.go").read_text(), re.M | re.S)
    if not options:
        raise RuntimeError(f"prometheus patch: OpenAPIOptions not found in {api}")
    for name in PROMETHEUS_OPENAPI_FILES:
        (api / name).unlink()
    for f in api.glob("openapi*_test.go"):
        f.unlink()
    (api / "chatbot_openapi.go").write_text(
        PROMETHEUS_OPENAPI_STUB_GO % {"options": options.group(0)})
    # /api/v1/features no longer lists the OpenAPI document.
    _sub(src / "web" / "web.go", r'^\t+r\.Enable\(features\.API, "openapi_3\.\d"\).*\n', "")


# --------------------------------------------------------------------------- KEDA

# The triggers this product's ScaledObjects use (prometheus) and the resource triggers
# KEDA documents beside them (cpu, memory): every other scaler is removed from the build.
KEDA_KEPT_SCALERS = {"cpu": "cpu_memory", "memory": "cpu_memory", "prometheus": "prometheus"}
# Bumped whenever patch_keda changes what it builds: part of KEDA's cache key.
KEDA_PATCH_REVISION = 1


def patch_keda(src: Path) -> None:
    """Patch a writable copy of KEDA's module source down to the scalers this product uses."""
    scalers = src / "pkg" / "scalers"
    kept_files = {f"{stem}_scaler.go" for stem in KEDA_KEPT_SCALERS.values()}
    for f in scalers.glob("*_scaler*.go"):
        if f.name.replace("_test.go", ".go") not in kept_files:
            f.unlink()
    (scalers / "chatbot_trimmed.go").write_text(KEDA_PROMETHEUS_CLOUD_AUTH_GO)
    prom = scalers / "prometheus_scaler.go"
    _sub(prom, r"^\t\} else \{\n\t\t// could be the case of azure managed prometheus.*?^\t\}\n",
         "\t} else if err := prometheusCloudAuth(config, meta); err != nil {\n"
         "\t\treturn nil, err\n\t}\n", count=1, flags=re.S)
    for pkg in ("aws", "azure", "gcp"):
        _sub(prom, rf'^\t"github.com/kedacore/keda/v2/pkg/scalers/{pkg}"\n', "")
    _sub(prom, r'^\t"errors"\n', "")
    builder = src / "pkg" / "scaling" / "scalers_builder.go"
    text = builder.read_text()
    m = re.search(r"(\tswitch triggerType \{\n)(.*?)(\tdefault:\n)", text, re.S)
    if not m:
        raise RuntimeError(f"keda patch: buildScaler's switch not found in {builder}")
    cases = re.findall(r'^\tcase "([\w-]+)":\n((?:\t\t.*\n)+)', m.group(2), re.M)
    if len(cases) < 20 or not all(k in dict(cases) for k in KEDA_KEPT_SCALERS):
        raise RuntimeError(f"keda patch: unexpected buildScaler cases in {builder}")
    kept = "".join(f'\tcase "{name}":\n{body}' for name, body in cases
                   if name in KEDA_KEPT_SCALERS)
    removed = ", ".join(f'"{name}"' for name, _ in cases if name not in KEDA_KEPT_SCALERS)
    kept += (f"\tcase {removed}:\n"
             '\t\treturn nil, fmt.Errorf("scaler type %q is not in this build of KEDA'
             f' (it has {", ".join(sorted(KEDA_KEPT_SCALERS))})", triggerType)\n')
    builder.write_text(text[: m.start(2)] + kept + text[m.end(2):])

    # The fasthttp round tripper (predictkube-libs: fasthttp, validator, ...) served only the
    # removed predictkube scaler.
    helpers = scalers / "authentication" / "authentication_helpers.go"
    _sub(helpers, r"^\tcase FastHTTP:\n.*?^\t\treturn rt, nil\n\t\}\n",
         "\tcase FastHTTP:\n\t\treturn nil, " + _not_in_build("the fasthttp round tripper")
         + "\n\t}\n", count=1, flags=re.S)
    for imp in (r"libs \S+", r'"github.com/dysnix/predictkube-libs/external/http_transport"',
                r'pConfig "github.com/prometheus/common/config"'):
        _sub(helpers, rf"^\t{imp}\n", "")

    for rel, go in KEDA_RESOLVER_STUBS.items():
        (src / rel).write_text(go)
        (src / rel.replace(".go", "_test.go")).unlink(missing_ok=True)
    # The Azure service-principal parameter names, without the Azure SDKs behind them.
    resolvers = src / "pkg" / "scaling" / "resolver" / "scale_resolvers.go"
    _sub(resolvers, r'^\t"github.com/kedacore/keda/v2/pkg/scalers/azure"\n', "")
    _sub(resolvers, r"\bazure\.(ServicePrincipal\w*Key)\b", r"azure\1")
    consts = re.findall(r"^\s*(ServicePrincipal\w*Key)\s*=\s*(\"[^\"]*\")",
                        (scalers / "azure" / "azure_service_principal.go").read_text(), re.M)
    (resolvers.parent / "chatbot_azure_keys.go").write_text(
        "package resolver\n\n"
        "// The Azure service-principal parameter names (pkg/scalers/azure).\nconst (\n"
        + "".join(f"\tazure{name} = {value}\n" for name, value in consts) + ")\n")


def _not_in_build(what: str) -> str:
    return f'fmt.Errorf("{what} is not in this build of KEDA")'


def _secret_store_stub(handler: str, spec: str, name: str, field: str) -> str:
    """A TriggerAuthentication secret store's handler (Azure Key Vault, GCP Secret Manager:
    the same methods) that refuses."""
    refusal = _not_in_build(f"{field} (TriggerAuthentication)")
    return f"""\
package resolver

import (
	"context"
	"fmt"

	"github.com/go-logr/logr"
	corev1listers "k8s.io/client-go/listers/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
)

// {handler} refuses: {name} is left out of this build.
type {handler} struct{{}}

func New{handler}(*kedav1alpha1.{spec}) *{handler} {{
	return &{handler}{{}}
}}

func (*{handler}) Initialize(context.Context, client.Client, logr.Logger, string,
	corev1listers.SecretLister) error {{
	return {refusal}
}}

func (*{handler}) Read(context.Context, string, string) (string, error) {{
	return "", {refusal}
}}
"""


# Stand-ins for the cloud handlers of pkg/scaling/resolver and pkg/eventemitter: the same
# names and signatures, each refusing with an error that names what is missing. KEDA logs
# it (and leaves the parameter unresolved, or the CloudEventSource not ready) as it does
# for a secret store it cannot reach.
KEDA_RESOLVER_STUBS = {
    "pkg/scaling/resolver/aws_secretmanager_handler.go": f"""\
package resolver

import (
	"context"
	"fmt"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	corev1listers "k8s.io/client-go/listers/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
)

// AwsSecretManagerHandler refuses: AWS Secrets Manager is left out of this build.
type AwsSecretManagerHandler struct{{}}

func NewAwsSecretManagerHandler(*kedav1alpha1.AwsSecretManager) *AwsSecretManagerHandler {{
	return &AwsSecretManagerHandler{{}}
}}

func (*AwsSecretManagerHandler) Read(context.Context, logr.Logger, string, string, string,
	string) (string, error) {{
	return "", {_not_in_build("awsSecretManager (TriggerAuthentication)")}
}}

func (*AwsSecretManagerHandler) Initialize(context.Context, client.Client, logr.Logger, string,
	corev1listers.SecretLister, *corev1.PodSpec) error {{
	return {_not_in_build("awsSecretManager (TriggerAuthentication)")}
}}

func (*AwsSecretManagerHandler) Stop() {{}}
""",
    "pkg/scaling/resolver/azure_keyvault_handler.go": _secret_store_stub(
        "AzureKeyVaultHandler", "AzureKeyVault", "Azure Key Vault", "azureKeyVault"),
    "pkg/scaling/resolver/gcp_secretmanager_handler.go": _secret_store_stub(
        "GCPSecretManagerHandler", "GCPSecretManager", "GCP Secret Manager", "gcpSecretManager"),
    "pkg/eventemitter/azure_event_grid_topic_handler.go": f"""\
package eventemitter

import (
	"context"
	"fmt"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	eventingv1alpha1 "github.com/kedacore/keda/v2/apis/eventing/v1alpha1"
	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	"github.com/kedacore/keda/v2/pkg/eventemitter/eventdata"
)

// AzureEventGridTopicHandler is never made: Azure Event Grid is left out of this build.
type AzureEventGridTopicHandler struct{{ activeStatus metav1.ConditionStatus }}

func NewAzureEventGridTopicHandler(context.Context, string,
	*eventingv1alpha1.AzureEventGridTopicSpec, map[string]string, kedav1alpha1.AuthPodIdentity,
	logr.Logger) (*AzureEventGridTopicHandler, error) {{
	return nil, {_not_in_build("azureEventGridTopic (CloudEventSource destination)")}
}}

func (a *AzureEventGridTopicHandler) CloseHandler() {{}}

func (a *AzureEventGridTopicHandler) SetActiveStatus(status metav1.ConditionStatus) {{
	a.activeStatus = status
}}

func (a *AzureEventGridTopicHandler) GetActiveStatus() metav1.ConditionStatus {{
	return a.activeStatus
}}

func (a *AzureEventGridTopicHandler) EmitEvent(eventdata.EventData,
	func(eventdata.EventData, error)) {{
}}
""",
}

KEDA_PROMETHEUS_CLOUD_AUTH_GO = """\
package scalers

import (
	"fmt"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	"github.com/kedacore/keda/v2/pkg/scalers/scalersconfig"
)

// Defined in a scaler this build leaves out (azure_queue_scaler.go).
const externalMetricType = "External"

// prometheusCloudAuth refuses what the prometheus trigger would have taken to a cloud's
// managed Prometheus (Azure workload identity, GCP credentials, AWS SigV4): not in this build.
func prometheusCloudAuth(config *scalersconfig.ScalerConfig, meta *prometheusMetadata) error {
	asked := ""
	switch {
	case config.PodIdentity.Provider != "" &&
		config.PodIdentity.Provider != kedav1alpha1.PodIdentityProviderNone:
		asked = fmt.Sprintf("pod identity %q", config.PodIdentity.Provider)
	case meta.AwsRegion != "":
		asked = "awsRegion (Amazon Managed Prometheus)"
	case config.AuthParams["GoogleApplicationCredentials"] != "" ||
		config.TriggerMetadata["credentialsFromEnv"] != "" ||
		config.TriggerMetadata["credentialsFromEnvFile"] != "":
		asked = "GCP credentials (Google Managed Prometheus)"
	default:
		return nil
	}
	return fmt.Errorf("prometheus trigger: %s is not in this build of KEDA", asked)
}
"""


# --------------------------------------------------------------------------- CoreDNS

COREDNS = "github.com/coredns/coredns"
# The plugins this build keeps: those of every Corefile this project runs (the real node's,
# tests/kube/realnode.py: bind, errors, kubernetes, cache), of kubeadm's default Corefile,
# which kind deploys too (errors, health, ready, kubernetes, prometheus, forward, cache,
# loop, reload, loadbalance), and log and hosts, common in a user's Corefile. Their order
# is upstream's (plugin.cfg), whatever the order here.
COREDNS_KEPT_PLUGINS = frozenset({
    "bind", "errors", "kubernetes", "cache",
    "health", "ready", "prometheus", "forward", "loop", "reload", "loadbalance",
    "log", "hosts",
})
# Bumped whenever patch_coredns changes what it builds: part of CoreDNS's cache key.
COREDNS_PATCH_REVISION = 1


def _coredns_plugin_import(package: str) -> str:
    """The import path of a plugin.cfg entry's package, as directives_generate.go reads it:
    fully qualified, or a directory of CoreDNS's plugin/."""
    return package if "/" in package else f"{COREDNS}/plugin/{package}"


def patch_coredns(src: Path) -> None:
    """Patch a writable copy of CoreDNS's module source down to COREDNS_KEPT_PLUGINS: the
    generated plugin list (core/plugin/zplugin.go's imports, which compile a plugin in,
    and core/dnsserver/zdirectives.go's directives, in upstream's order) and plugin.cfg,
    which they are generated from. A Corefile naming another plugin fails to load:
    ``Unknown directive 'route53'``."""
    cfg = src / "plugin.cfg"
    entries = re.findall(r"^([\w-]+):(\S+)$", cfg.read_text(), re.M)
    missing = COREDNS_KEPT_PLUGINS - {name for name, _ in entries}
    if missing:
        raise RuntimeError(f"coredns patch: {sorted(missing)} not in {cfg}")
    kept_packages = {pkg for name, pkg in entries if name in COREDNS_KEPT_PLUGINS}
    directives = src / "core" / "dnsserver" / "zdirectives.go"
    imports = src / "core" / "plugin" / "zplugin.go"
    for name, pkg in entries:
        if name in COREDNS_KEPT_PLUGINS:
            continue
        _sub(cfg, rf"^{re.escape(name)}:{re.escape(pkg)}\n", "")
        _sub(directives, rf'^\t"{re.escape(name)}",\n', "")
        if pkg not in kept_packages:
            _sub(imports, rf'^\t_ "{re.escape(_coredns_plugin_import(pkg))}"\n', "")
