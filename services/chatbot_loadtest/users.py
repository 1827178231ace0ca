"""Locust users for office and character, as the original load tests behaved.

Each simulated user has its own `user_id` and conversation `db_id` and asks once (or
`requests_per_user` times), then idles until the run ends, so Locust never replaces it
with a fresh user. A 429 (queue full) or a 503 (no pod ready, or its model not loaded
yet) is retried after the wait it names (`retry_after` in the body, then the `Retry-After`
header, else `default_retry_after_s`, 60 s), up to 10 times; every attempt is a CSV row,
with the service's `X-Request-ID` (none when a proxy answered in its place). Success is a
200 whose body is a JSON string with at least 10 non-space characters.
"""

from __future__ import annotations

import time

import gevent
from locust import HttpUser, task

from chatbot_loadtest.answers import (
    body_json,
    error_detail,
    is_real_answer,
    process_time_s,
    retry_after_s,
)
from chatbot_loadtest.records import Attempt, now_iso
from chatbot_loadtest.scenario import character_body, new_db_id, office_body
from chatbot_loadtest.session import session_of

IDLE_S = 3600.0
RETRIED_STATUSES = (429, 503)
REQUEST_ID_HEADER = "X-Request-ID"  # set on every answer of the service (RequestIdMiddleware)
SERVED_BY_HEADER = "X-Served-By"  # the replica that answered (chatbot.peers.forwarding)
IN_FLIGHT = "stopped in flight at the end of the run"
WAITING = "stopped while waiting to retry at the end of the run"


class _ChatUser(HttpUser):
    abstract = True
    persona = ""
    endpoint = ""

    def on_start(self) -> None:
        self.session = session_of(self.environment)
        self.user_id = self.session.next_user_id(self.persona)
        self.db_id = new_db_id()
        self.asked = 0

    def wait_time(self) -> float:
        wanted = self.session.options.requests_per_user
        return IDLE_S if wanted and self.asked >= wanted else 0.0

    @task
    def ask(self) -> None:
        wanted = self.session.options.requests_per_user
        if wanted and self.asked >= wanted:
            return
        body, extra = self.request_body()
        self._ask(body, extra)
        self.asked += 1
        if wanted and self.asked >= wanted:
            self.session.user_done()

    def request_body(self) -> tuple[dict, dict]:
        raise NotImplementedError

    def timeout_s(self) -> float:
        raise NotImplementedError

    def _ask(self, body: dict, extra: dict) -> None:
        options = self.session.options
        retries = 0
        while True:
            sent = now_iso()
            started = time.perf_counter()
            try:
                with self.client.post(self.endpoint, json=body, timeout=self.timeout_s(),
                                      name=self.endpoint, catch_response=True) as response:
                    elapsed = time.perf_counter() - started
                    attempt = self._attempt(response, elapsed, sent, retries, extra)
                    if (attempt.status_code in RETRIED_STATUSES
                            and retries < options.max_retries):
                        attempt.is_retry_record = True
                        attempt.retry_after_seconds = retry_after_s(response,
                                                                  options.default_retry_after_s)
                        response.failure(f"{attempt.status_code}, retrying in "
                                         f"{attempt.retry_after_seconds:g}s")
                    else:
                        attempt.is_final_success = attempt.success
                        attempt.is_final_failure = not attempt.success
                        if attempt.success:
                            response.success()
                        else:
                            response.failure(attempt.failure_reason)
            except gevent.GreenletExit:
                self._record_stopped(IN_FLIGHT, time.perf_counter() - started, sent, retries,
                                     extra)
                raise
            self.session.recorder.record(attempt)
            if not attempt.is_retry_record:
                return
            retries += 1
            try:
                gevent.sleep(attempt.retry_after_seconds)
            except gevent.GreenletExit:
                self._record_stopped(WAITING, 0.0, now_iso(), retries, extra)
                raise

    def _attempt(self, response, elapsed: float, sent: str, retries: int,
                 extra: dict) -> Attempt:
        status = int(response.status_code or 0)
        attempt = Attempt(
            user_id=self.user_id, test_type=self.persona, endpoint=self.endpoint,
            status_code=status, response_time=elapsed, success=False, timestamp=sent,
            response_size=len(response.content or b""), retry_count=retries, extra=extra,
            process_time=process_time_s(response.headers.get("Server-Timing", "")),
            request_id=response.headers.get(REQUEST_ID_HEADER, "") if status else "",
            served_by=response.headers.get(SERVED_BY_HEADER, "") if status else "",
        )
        if status == 0:
            attempt.failure_reason = "no HTTP answer"
            attempt.error = str(response.error)[:300]
        elif status != 200:
            attempt.failure_reason = f"HTTP {status}"
            attempt.error = error_detail(response)
        elif is_real_answer(body_json(response)):
            attempt.success = True
        else:
            attempt.failure_reason = "200 without a real answer"
            attempt.error = (response.text or "")[:300]
        return attempt

    def _record_stopped(self, reason: str, elapsed: float, sent: str, retries: int,
                        extra: dict) -> None:
        self.session.recorder.record(Attempt(
            user_id=self.user_id, test_type=self.persona, endpoint=self.endpoint,
            status_code=0, response_time=elapsed, success=False, timestamp=sent,
            retry_count=retries, is_final_failure=True, failure_reason=reason, extra=extra))


class OfficeUser(_ChatUser):
    """Asks one work or search question, with `google_access` on for some of them."""

    persona = "office"
    endpoint = "/office/Llama"

    def request_body(self) -> tuple[dict, dict]:
        options = self.session.options
        body = office_body(self.user_id, self.db_id, self.session.rng,
                           options.google_access_ratio)
        return body, {"google_access": body["google_access"],
                      "question_length": len(body["input_data"])}

    def timeout_s(self) -> float:
        return self.session.options.office_timeout_s


class CharacterUser(_ChatUser):
    """Greets Rachel, the original's character scenario."""

    persona = "character"
    endpoint = "/character/Llama"

    def request_body(self) -> tuple[dict, dict]:
        body = character_body(self.user_id, self.db_id)
        return body, {"character_name": body["character_name"]}

    def timeout_s(self) -> float:
        return self.session.options.character_timeout_s


USER_CLASSES = {"office": OfficeUser, "character": CharacterUser}
