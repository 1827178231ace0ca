"""What `chatbot serve` leaves behind when it stops: each persona's final counters in its
log, so that the requests of a pod a rollout terminated can still be counted."""

from __future__ import annotations

import json
import re
import signal

import httpx

FINAL = re.compile(r"final counters (\w+): (\{.*\})$")


def final_counters(log: str) -> dict[str, dict]:
    found = {}
    for line in log.splitlines():
        match = FINAL.search(line)
        if match:
            found[match.group(1)] = json.loads(match.group(2))
    return found


def test_sigterm_logs_each_personas_final_counters_with_the_request_it_served(start_server):
    server = start_server()
    answer = httpx.post(server.url + "/office/Llama", timeout=120,
                        json={"input_data": "회의록을 요약해 주세요."})
    assert answer.status_code == 200, answer.text
    served = server.performance("office")

    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=60)
    log = server.log.read_text(errors="replace")
    counters = final_counters(log)

    assert set(counters) == {"office", "character"}, log[-3000:]
    office = counters["office"]
    assert office.keys() == served.keys()  # the same report as /performance
    assert (office["total_requests"], office["succeeded"]) == (1, 1)
    assert office["generated_tokens"] == served["generated_tokens"] > 0
    assert counters["character"]["total_requests"] == 0
    # one line per persona, after uvicorn's own shutdown lines
    assert log.index("Shutting down") < log.index("final counters office")
