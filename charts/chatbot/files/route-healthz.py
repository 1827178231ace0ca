# helm test: GET /office/healthz and /character/healthz through the route (port 8001).
# Exits 1 naming every persona that did not answer 200.
import os
import sys
import urllib.request

base = os.environ["ROUTE_URL"].rstrip("/")
host = os.environ.get("ROUTE_HOST", "")
timeout = float(os.environ.get("TIMEOUT_S", "10"))
failed = []
for persona in ("office", "character"):
    url = f"{base}/{persona}/healthz"
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            print(f"{url}: HTTP {response.status} {response.read(200).decode(errors='replace')}")
    except Exception as exc:  # noqa: BLE001 - every failure is reported, then exit 1
        print(f"{url}: FAILED: {exc}")
        failed.append(persona)
if failed:
    sys.exit(f"route check failed for: {', '.join(failed)}")
print("route OK: office and character answer through", base)
