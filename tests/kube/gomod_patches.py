"""Source patches for Go programs whose module cannot be built as published here.

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


def _sub(path: Path, pattern: str, repl: str, *, count: int = 0) -> None:
    text = path.read_text()
    new, n = re.subn(pattern, repl, text, count=count, flags=re.M)
    if n == 0:
        raise RuntimeError(f"traefik patch: {pattern!r} not found in {path}")
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
