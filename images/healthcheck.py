# The images' HEALTHCHECK (Docker/Podman; Kubernetes uses the operator's probes instead).
# The default command serves both personas (/office/healthz); `chatbot serve <persona>`
# serves one at the root (/healthz). Healthy when either answers 200.
import os
import sys
import urllib.request

port = os.environ.get("CHATBOT_HEALTH_PORT", "8080")
for path in ("/healthz", "/office/healthz"):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=4) as response:
            if response.status == 200:
                sys.exit(0)
    except OSError:
        pass
sys.exit(1)
