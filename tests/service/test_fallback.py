"""The non-streaming fallback: a streamed answer under 10 characters is generated again."""

from __future__ import annotations


def test_a_too_short_streamed_answer_falls_back_to_a_full_one(start_server):
    # One streamed token cannot make a usable answer (the tiny vocabulary's longest token
    # has 8 non-space characters), so the fallback must produce it.
    server = start_server(env={"CHATBOT_CHARACTER__GENERATION__MAX_TOKENS": "1"})
    body = {"input_data": "Tell me about the stars.", "character_name": "Rachel",
            "greeting": "Hello!", "context": "A student who loves astronomy."}
    with server.client() as http:
        r = http.post("/character/Llama", json=body)
        perf = http.get("/character/performance").json()
        metrics = http.get("/character/metrics").text
    assert r.status_code == 200, r.text
    assert sum(not c.isspace() for c in r.json()) >= 10
    assert "fallback" in r.headers["server-timing"]
    assert int(r.headers["x-generated-tokens"]) > 1
    assert perf["fallbacks"] == 1 and perf["success_rate"] == 100.0
    assert 'chatbot_fallback_generations_total{persona="character"} 1.0' in metrics
