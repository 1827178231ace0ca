"""Tiny real HTTP servers that play an OpenAI-compatible upstream for the GPT-route tests.

The happy path uses a second real `chatbot serve` as the upstream; these cover what it
cannot show: what exactly the service sends (`RecordingUpstream`), an upstream that answers
500 (`FailingUpstream`), llama-server's context overflow (`ContextOverflowUpstream`) and one
that never answers (`HangingUpstream`). They speak plain
HTTP/1.1 on loopback from a thread (http.server), nothing is mocked in the client.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Upstream:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.release = threading.Event()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                upstream.requests.append(body)
                upstream.answer(self, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, handler: BaseHTTPRequestHandler, body: dict) -> None:
        raise NotImplementedError

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str) -> None:
    handler.send_response(status)
    handler.send_header("content-type", content_type)
    handler.send_header("content-length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class RecordingUpstream(_Upstream):
    """Answers every chat completion with `reply` (streamed or not) and keeps each request."""

    def __init__(self, reply: str = "기록된 업스트림의 답변입니다. 충분히 깁니다.") -> None:
        super().__init__()
        self.reply = reply

    def answer(self, handler, body) -> None:
        base = {"id": "chatcmpl-recorded", "created": 0, "model": body.get("model", "?")}
        if body.get("stream"):
            chunks = [
                {**base, "object": "chat.completion.chunk",
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": word},
                              "finish_reason": None}]}
                for word in self.reply.split(" ")
            ]
            for chunk in chunks[:-1]:
                chunk["choices"][0]["delta"]["content"] += " "
            data = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            _send(handler, 200, data.encode(), "text/event-stream")
        else:
            out = {**base, "object": "chat.completion",
                   "choices": [{"index": 0, "message": {"role": "assistant",
                                                        "content": self.reply},
                                "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
            _send(handler, 200, json.dumps(out).encode(), "application/json")

    def messages(self, i: int = -1) -> list[dict]:
        return self.requests[i]["messages"]


class FailingUpstream(_Upstream):
    """Answers every request with HTTP 500 and an OpenAI-style error body."""

    def answer(self, handler, body) -> None:
        error = {"error": {"message": "upstream exploded", "type": "server_error"}}
        _send(handler, 500, json.dumps(error).encode(), "application/json")


class ContextOverflowUpstream(_Upstream):
    """Answers every request as llama-server does when the prompt exceeds its context."""

    def answer(self, handler, body) -> None:
        error = {"error": {"code": 400, "type": "exceed_context_size_error",
                           "message": "request (9000 tokens) exceeds the available context "
                                      "size (8192 tokens), try increasing it",
                           "n_prompt_tokens": 9000, "n_ctx": 8192}}
        _send(handler, 400, json.dumps(error).encode(), "application/json")


class HangingUpstream(_Upstream):
    """Reads the request and never answers (until the test ends)."""

    def answer(self, handler, body) -> None:
        self.release.wait(60)
