"""Locust's own web UI against a running stack:

    .venv/bin/locust -f tests/load/locustfile.py --host http://127.0.0.1:8001

then open http://127.0.0.1:8089. Each simulated user asks one question (character retries
429s, honouring Retry-After); each test writes its CSVs and report.html into
`$CHATBOT_LOADTEST_OUT/<date_time>/` (default `loadtest-results/`) when it stops.
"""

from locust import events

from chatbot_loadtest.locust_hooks import install
from chatbot_loadtest.users import CharacterUser, OfficeUser

__all__ = ["CharacterUser", "OfficeUser"]
install(events)
